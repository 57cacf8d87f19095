//! The soak's verdict: the assertions over everything recorded, and the
//! summary it prints (never a token).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::load::Outcome;
use crate::plan::{Applied, GRACE};

/// RSS is flat when its maximum over the second half of the run stays
/// within this much of the baseline (the largest sample of the last 5 s of
/// the first quarter)...
pub const RSS_ALLOWANCE_MIB: u64 = 8;
/// ...or this share of the baseline, whichever is larger.
pub const RSS_ALLOWANCE_PERCENT: u64 = 20;
const RSS_BASELINE_SPAN_MS: u64 = 5_000;

/// `eyJ` (a base64url JSON object), then two dot-terminated base64url
/// segments of at least 10 characters: a JWT, signed or not.
pub fn has_jwt(text: &str) -> bool {
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let bytes = text.as_bytes();
    text.match_indices("eyJ").any(|(start, _)| {
        let mut i = start;
        for _ in 0..2 {
            let from = i;
            while i < bytes.len() && token_char(bytes[i]) {
                i += 1;
            }
            if i - from < 10 || bytes.get(i) != Some(&b'.') {
                return false;
            }
            i += 1;
        }
        true
    })
}

/// What the dev process's output held.
#[derive(Debug, Default)]
pub struct LogScan {
    pub lines: usize,
    pub bytes: usize,
    /// Where a served token or a JWT-shaped string was found (file and line,
    /// never the content).
    pub findings: Vec<String>,
    /// How long each `stale` answer took (dev's request lines end with
    /// `-> 200 (stale) in N ms`), in milliseconds.
    pub stale_ms: Vec<u64>,
}

/// A caller whose token still satisfies it is served that token when the
/// refresh fails: after one attempt of at most 3 s (docs/signer.md, "Refresh
/// ahead"), plus 1 s for a loaded machine (such answers take 3.00-3.01 s
/// when the attempt times out).
pub const STALE_LIMIT_MS: u64 = 4_000;

/// Looks for every served token, and for anything JWT-shaped, in `text`.
/// A token only has base64url characters and dots, so an occurrence lies
/// within one maximal run of those: only runs at least as long as the
/// shortest token are compared.
pub fn scan_log(name: &str, text: &str, tokens: &[&str], scan: &mut LogScan) {
    let shortest = tokens.iter().map(|t| t.len()).min().unwrap_or(usize::MAX);
    let run_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    scan.bytes += text.len();
    for (number, line) in text.lines().enumerate() {
        scan.lines += 1;
        if let Some(ms) = line
            .split_once("-> 200 (stale) in ")
            .and_then(|(_, rest)| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
        {
            scan.stale_ms.push(ms);
        }
        let served = line
            .split(|c: char| !run_char(c))
            .filter(|run| run.len() >= shortest)
            .any(|run| tokens.iter().any(|t| run.contains(t)));
        if served {
            scan.findings
                .push(format!("{name} line {}: a served token", number + 1));
        } else if has_jwt(line) {
            scan.findings
                .push(format!("{name} line {}: a JWT-shaped string", number + 1));
        }
    }
}

/// The RSS figures and whether they are flat.
#[derive(Debug, PartialEq)]
pub struct RssVerdict {
    pub baseline_kib: u64,
    pub last_half_max_kib: u64,
    pub limit_kib: u64,
    pub first_kib: u64,
    pub last_kib: u64,
    pub samples: usize,
}

impl RssVerdict {
    pub fn flat(&self) -> bool {
        self.last_half_max_kib <= self.limit_kib
    }
}

/// `samples`: (ms from the start of the load, KiB).
pub fn rss_verdict(samples: &[(u64, u64)], run_ms: u64) -> Option<RssVerdict> {
    let warm_end = run_ms / 4;
    let baseline_kib = samples
        .iter()
        .filter(|(t, _)| *t <= warm_end && *t + RSS_BASELINE_SPAN_MS >= warm_end)
        .map(|(_, kib)| *kib)
        .max()?;
    let last_half_max_kib = samples
        .iter()
        .filter(|(t, _)| *t >= run_ms / 2 && *t <= run_ms)
        .map(|(_, kib)| *kib)
        .max()?;
    let allowance = (RSS_ALLOWANCE_MIB * 1024).max(baseline_kib * RSS_ALLOWANCE_PERCENT / 100);
    Some(RssVerdict {
        baseline_kib,
        last_half_max_kib,
        limit_kib: baseline_kib + allowance,
        first_kib: samples.first()?.1,
        last_kib: samples.last()?.1,
        samples: samples.len(),
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Everything recorded.
pub struct Run<'a> {
    pub run: Duration,
    pub outcomes: &'a [Outcome],
    pub windows: &'a [Applied],
    pub rss: &'a [(u64, u64)],
    pub entra: Option<&'a Value>,
    pub distinct_tokens: usize,
    pub crossed: &'a [String],
    pub logs: &'a LogScan,
    pub dev_exit: &'a Result<std::process::ExitStatus, String>,
}

/// The summary to print, and every assertion that failed.
pub fn evaluate(run: &Run<'_>) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut failures: Vec<String> = Vec::new();
    let grace_ms = GRACE.as_millis() as u64;
    let in_window = |ms: u64| {
        run.windows
            .iter()
            .any(|w| ms >= w.from_ms && ms <= w.to_ms + grace_ms)
    };

    let mut classes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut valid: BTreeMap<u16, u64> = BTreeMap::new();
    let mut hostile_total = 0u64;
    let mut by_case: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut problems = 0u64;
    for o in run.outcomes {
        let class = match o.status {
            0 => "no answer",
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        *classes.entry(class).or_default() += 1;
        if o.kind == "valid" {
            *valid.entry(o.status).or_default() += 1;
        } else {
            hostile_total += 1;
            let entry = by_case.entry(o.kind).or_default();
            entry.0 += 1;
            entry.1 += u64::from(o.problem.is_some());
        }
        if let Some(p) = &o.problem {
            problems += 1;
            if failures.len() < 20 {
                failures.push(format!(
                    "t={:.1} s {}: {p}",
                    o.done_ms as f64 / 1000.0,
                    o.kind
                ));
            }
        } else if o.unavailable && !in_window(o.done_ms) {
            problems += 1;
            if failures.len() < 20 {
                failures.push(format!(
                    "t={:.1} s: {} to a valid request outside every fault window and its {} s grace (sent at {:.1} s)",
                    o.done_ms as f64 / 1000.0,
                    o.status,
                    GRACE.as_secs(),
                    o.sent_ms as f64 / 1000.0
                ));
            }
        }
    }
    if problems > 20 {
        failures.push(format!("… {} failed requests in all", problems));
    }
    let total = run.outcomes.len() as u64;
    let secs = run.run.as_secs_f64();
    let _ = writeln!(
        out,
        "requests: {total} ({:.0}/s): {}",
        total as f64 / secs,
        classes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "  valid {}: {}",
        valid.values().sum::<u64>(),
        valid
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "  hostile {hostile_total} in {} cases, each with its one expected answer; wrong answers: {}",
        by_case.len(),
        by_case.values().map(|(_, bad)| bad).sum::<u64>()
    );
    for (case, (n, bad)) in &by_case {
        if *bad > 0 {
            let _ = writeln!(out, "    {case}: {bad} of {n} wrong");
        }
    }

    let latency = |filter: &dyn Fn(&Outcome) -> bool| {
        let mut v: Vec<u64> = run
            .outcomes
            .iter()
            .filter(|o| o.kind == "valid" && o.status == 200 && filter(o))
            .map(|o| o.latency_us)
            .collect();
        v.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "n {}, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            v.len(),
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 99.0)),
            ms(v.last().copied().unwrap_or(0))
        )
    };
    let _ = writeln!(out, "latency of 200s: {}", latency(&|_| true));
    let _ = writeln!(
        out,
        "  outside fault windows: {}",
        latency(&|o| !in_window(o.done_ms) && !in_window(o.sent_ms))
    );
    if valid.get(&200).copied().unwrap_or(0) == 0 {
        failures.push("no valid request got a token".into());
    }
    if !run.crossed.is_empty() {
        failures.push(format!(
            "{} tokens served for more than one profile, e.g. {}",
            run.crossed.len(),
            run.crossed[0]
        ));
    }

    let _ = writeln!(
        out,
        "fault windows ({} s grace after each):",
        GRACE.as_secs()
    );
    for w in run.windows {
        let answered: Vec<&Outcome> = run
            .outcomes
            .iter()
            .filter(|o| {
                o.kind == "valid" && o.done_ms >= w.from_ms && o.done_ms <= w.to_ms + grace_ms
            })
            .collect();
        let count = |s: u16| answered.iter().filter(|o| o.status == s).count();
        let _ = writeln!(
            out,
            "  {:<18} {:>6.1}-{:>6.1} s: Entra got {} token requests, {} faulted; valid answers until grace end: 200 {}, 503 {}, 504 {}, other {}",
            w.window.label,
            w.from_ms as f64 / 1000.0,
            w.to_ms as f64 / 1000.0,
            w.entra_requests,
            w.faults_served,
            count(200),
            count(503),
            count(504),
            answered.len() - count(200) - count(503) - count(504)
        );
        if let Some(e) = &w.error {
            failures.push(format!("window {}: {e}", w.window.label));
        } else if w.faults_served == 0 {
            failures.push(format!(
                "window {} did not reach Entra: no token request was faulted",
                w.window.label
            ));
        }
    }
    if let Some(stats) = run.entra {
        let _ = writeln!(
            out,
            "Entra stand-in: {} token requests, {} tokens issued, {} faults, refusals {}; {} distinct tokens served to the soak",
            stats["token_requests"],
            stats["issued"],
            stats["faults"],
            stats["refused"],
            run.distinct_tokens
        );
    }

    match rss_verdict(run.rss, run.run.as_millis() as u64) {
        Some(r) => {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let _ = writeln!(
                out,
                "RSS of aws2azure dev: {:.1} MiB at start, {:.1} MiB after warm-up (max of the last 5 s of the first quarter), max {:.1} MiB over the last half ({:+.1} MiB, {:+.1}%), limit {:.1} MiB (+max({RSS_ALLOWANCE_MIB} MiB, {RSS_ALLOWANCE_PERCENT}%)), {:.1} MiB at the end; {} samples",
                mib(r.first_kib),
                mib(r.baseline_kib),
                mib(r.last_half_max_kib),
                mib(r.last_half_max_kib) - mib(r.baseline_kib),
                (r.last_half_max_kib as f64 / r.baseline_kib as f64 - 1.0) * 100.0,
                mib(r.limit_kib),
                mib(r.last_kib),
                r.samples
            );
            if !r.flat() {
                failures.push(format!(
                    "RSS not flat: {:.1} MiB over the last half, limit {:.1} MiB",
                    mib(r.last_half_max_kib),
                    mib(r.limit_kib)
                ));
            }
        }
        None => failures.push("too few RSS samples to judge".into()),
    }

    let _ = writeln!(
        out,
        "logs of aws2azure dev: {} lines, {} bytes; served tokens or JWT-shaped strings found: {}",
        run.logs.lines,
        run.logs.bytes,
        run.logs.findings.len()
    );
    for f in run.logs.findings.iter().take(10) {
        failures.push(format!("token in the logs: {f}"));
    }
    let slow_stale: Vec<u64> = run
        .logs
        .stale_ms
        .iter()
        .copied()
        .filter(|ms| *ms > STALE_LIMIT_MS)
        .collect();
    let _ = writeln!(
        out,
        "stale answers (a still-valid token served when its refresh failed): {}, slowest {} ms, over {} ms: {}",
        run.logs.stale_ms.len(),
        run.logs.stale_ms.iter().max().unwrap_or(&0),
        STALE_LIMIT_MS,
        slow_stale.len()
    );
    if let Some(slowest) = slow_stale.iter().max() {
        failures.push(format!(
            "{} callers holding a still-valid token waited more than {} ms for it (slowest {slowest} ms): a refresh is one attempt within 3 s, then the old token at once (docs/signer.md)",
            slow_stale.len(),
            STALE_LIMIT_MS
        ));
    }
    match run.dev_exit {
        Ok(status) if status.success() => {}
        Ok(status) => failures.push(format!("aws2azure dev exited {status} after SIGTERM")),
        Err(e) => failures.push(e.clone()),
    }
    (out, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_jwts_and_nothing_else() {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJhdWQiOiJodHRwczovL2dyYXBoIn0.";
        assert!(has_jwt(jwt));
        assert!(has_jwt(&format!("token={jwt}sig more")));
        assert!(!has_jwt("eyJ0eXAiOiJK… (redacted, 345 bytes)"));
        assert!(!has_jwt("eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.short."));
        assert!(!has_jwt(
            "[dev] GET /token/soak-01 by arn:aws:sts::0:assumed-role/x -> 200 (hit)"
        ));
    }

    #[test]
    fn finds_served_tokens_in_log_lines() {
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzb2FrIn0.";
        let mut scan = LogScan::default();
        scan_log("out", "fine\nleaked: x", &[token], &mut scan);
        assert!(scan.findings.is_empty());
        scan_log("err", &format!("a\nb {token}\n"), &[token], &mut scan);
        assert_eq!(scan.findings, ["err line 2: a served token"]);
        assert_eq!(scan.lines, 4);
        scan_log(
            "err",
            "[dev] GET /token/a by x -> 200 (stale) in 3012 ms\n[dev] GET /token/a by x -> 200 (hit) in 1 ms",
            &[token],
            &mut scan,
        );
        assert_eq!(scan.stale_ms, [3012]);
        // A token's characters run on into the surrounding word: still found.
        let mut scan = LogScan::default();
        scan_log("err", &format!("x{token}abc"), &[token], &mut scan);
        assert_eq!(scan.findings.len(), 1);
    }

    #[test]
    fn rss_flatness_and_percentiles() {
        let mib = |m: u64| m * 1024;
        // 100 s run: baseline from 20-25 s, last half from 50 s.
        let flat_at = |m: u64| (0..=100).map(|s| (s * 1000, mib(m))).collect::<Vec<_>>();
        let r = rss_verdict(&flat_at(40), 100_000).unwrap();
        assert_eq!((r.baseline_kib, r.limit_kib), (mib(40), mib(48)), "8 MiB");
        assert!(r.flat());
        let r = rss_verdict(&flat_at(100), 100_000).unwrap();
        assert_eq!(r.limit_kib, mib(120), "20%");
        let steady = flat_at(40);
        let leaking: Vec<(u64, u64)> = (0..=100).map(|s| (s * 1000, mib(40) + s * 200)).collect();
        assert!(!rss_verdict(&leaking, 100_000).unwrap().flat());
        assert_eq!(rss_verdict(&steady[..10], 100_000), None);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 99.0), 4);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
