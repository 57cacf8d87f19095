//! Entra fault windows: when they open, how long they last, and injecting
//! them through the stand-in's `POST /_devstack/faults` (`window_ms`: every
//! token request in the window gets the fault).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// After a window closes, the broker can still be finishing a flight that
/// met the fault: one Entra attempt that timed out (5 s, dev's attempt
/// timeout), the longest wait between attempts (2 s: `Retry-After` 2 or the
/// 2 s backoff cap), and 3 s of slack for a loaded machine. A 5xx answered
/// from a window's opening to its close plus this grace belongs to it.
pub const GRACE: Duration = Duration::from_secs(10);
/// Fault-free time between one window's grace and the next window, at least.
const MIN_CLEAN: Duration = Duration::from_secs(10);
/// Fault-free time at the end of the run, at least.
const MIN_TAIL: Duration = Duration::from_secs(5);
/// At most one window per started minute of run, and 100 in all.
fn max_windows(run: Duration) -> usize {
    (run.as_secs().div_ceil(60) as usize).clamp(1, 100)
}

/// One kind of Entra failure and how long its window lasts: long enough
/// that a load with no token to fall back on (4 attempts within the 15 s
/// exchange deadline: about 6 s with `Retry-After` 2, 3 s with backoff
/// alone, the whole deadline when every attempt times out) fails inside
/// it, so that callers see 503 or 504, not only slow answers.
struct Kind {
    label: &'static str,
    fault: fn() -> Value,
    length: Duration,
}

const KINDS: [Kind; 5] = [
    Kind {
        label: "429 Retry-After 2",
        fault: || json!({"kind": "throttle", "retry_after_secs": 2}),
        length: Duration::from_secs(10),
    },
    Kind {
        label: "503",
        fault: || json!({"kind": "server_error", "status": 503}),
        length: Duration::from_secs(10),
    },
    Kind {
        // Longer than dev's 5 s attempt timeout; the window outlasts the
        // broker's 15 s exchange deadline so that loads time out (504).
        label: "6 s delay",
        fault: || json!({"kind": "delay", "millis": 6000}),
        length: Duration::from_secs(25),
    },
    Kind {
        label: "AADSTS70021",
        fault: || json!({"kind": "not_propagated"}),
        length: Duration::from_secs(10),
    },
    Kind {
        label: "500",
        fault: || json!({"kind": "server_error", "status": 500}),
        length: Duration::from_secs(10),
    },
];

#[derive(Clone, Debug)]
pub struct Window {
    pub label: &'static str,
    pub fault: Value,
    /// From the start of the load.
    pub start: Duration,
    pub length: Duration,
}

/// The windows of a run: after a warm-up, the kinds in turn, each followed
/// by its grace and fault-free time, as many as fit (at most one per
/// minute); the time left over is spread evenly after each.
pub fn windows(run: Duration) -> Vec<Window> {
    let warm_up = (run / 10).clamp(Duration::from_secs(5), Duration::from_secs(20));
    let mut fitting: Vec<&Kind> = Vec::new();
    let mut needed = warm_up + MIN_TAIL;
    for kind in KINDS.iter().cycle().take(max_windows(run)) {
        let more = kind.length
            + GRACE
            + if fitting.is_empty() {
                Duration::ZERO
            } else {
                MIN_CLEAN
            };
        if needed + more > run {
            break;
        }
        needed += more;
        fitting.push(kind);
    }
    let spare = (run - needed) / fitting.len().max(1) as u32;
    let mut start = warm_up;
    fitting
        .into_iter()
        .map(|kind| {
            let window = Window {
                label: kind.label,
                fault: (kind.fault)(),
                start,
                length: kind.length,
            };
            start += kind.length + GRACE + MIN_CLEAN + spare;
            window
        })
        .collect()
}

/// A window as it was applied.
#[derive(Clone, Debug)]
pub struct Applied {
    pub window: Window,
    /// Milliseconds from the start of the load: when the fault request was
    /// sent, and when the window closed (its answer plus the length).
    pub from_ms: u64,
    pub to_ms: u64,
    /// Token requests the stand-in failed on purpose during the window.
    pub faults_served: u64,
    /// Token requests the stand-in received during the window.
    pub entra_requests: u64,
    pub error: Option<String>,
}

/// Opens each window at its time; returns what was applied.
pub async fn inject(entra: String, windows: Vec<Window>, t0: Instant) -> Vec<Applied> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client builds");
    let mut applied = Vec::new();
    for window in windows {
        tokio::time::sleep_until((t0 + window.start).into()).await;
        let before = stats(&http, &entra).await;
        let from_ms = t0.elapsed().as_millis() as u64;
        let mut body = window.fault.clone();
        body["window_ms"] = json!(window.length.as_millis() as u64);
        let posted = http
            .post(format!("{entra}/_devstack/faults"))
            .json(&body)
            .send()
            .await;
        let to_ms = t0.elapsed().as_millis() as u64 + window.length.as_millis() as u64;
        let mut error = match posted {
            Ok(r) if r.status() == 204 => None,
            Ok(r) => Some(format!("the stand-in answered {}", r.status())),
            Err(e) => Some(format!("cannot reach the stand-in: {e}")),
        };
        // Counted after the close; the next window opens well after that.
        tokio::time::sleep_until((t0 + Duration::from_millis(to_ms + 500)).into()).await;
        let after = stats(&http, &entra).await;
        let delta = |field: &str| match (&before, &after) {
            (Ok(b), Ok(a)) => a[field]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(b[field].as_u64().unwrap_or(0)),
            _ => 0,
        };
        if let (Err(e), _) | (_, Err(e)) = (&before, &after) {
            error.get_or_insert_with(|| e.clone());
        }
        applied.push(Applied {
            faults_served: delta("faults"),
            entra_requests: delta("token_requests"),
            window,
            from_ms,
            to_ms,
            error,
        });
    }
    applied
}

/// The stand-in's counters (`GET /_devstack/stats`).
pub async fn stats(http: &reqwest::Client, entra: &str) -> Result<Value, String> {
    let response = http
        .get(format!("{entra}/_devstack/stats"))
        .send()
        .await
        .map_err(|e| format!("cannot read the stand-in's stats: {e}"))?;
    response
        .json()
        .await
        .map_err(|e| format!("the stand-in's stats are not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn windows_fit_the_run_with_grace_and_clean_time_around_them() {
        for run in [10, 30, 60, 120, 300, 900, 3600] {
            let plan = windows(secs(run));
            let mut clean_until = secs(5);
            for w in &plan {
                assert!(w.start >= clean_until, "run {run}: {plan:?}");
                clean_until = w.start + w.length + GRACE + MIN_CLEAN;
            }
            if let Some(last) = plan.last() {
                assert!(last.start + last.length + GRACE + MIN_TAIL <= secs(run));
            }
            assert!(plan.len() <= max_windows(secs(run)));
        }
        assert!(windows(secs(10)).is_empty());
        let ci: Vec<_> = windows(secs(30)).iter().map(|w| w.label).collect();
        assert_eq!(ci, ["429 Retry-After 2"]);
        let five_minutes: Vec<_> = windows(secs(300)).iter().map(|w| w.label).collect();
        assert_eq!(
            five_minutes,
            [
                "429 Retry-After 2",
                "503",
                "6 s delay",
                "AADSTS70021",
                "500"
            ]
        );
    }
}
