//! Soak of the dev stack: `aws2azure dev` under mixed load for a bounded
//! time, with Entra failing during windows, then the verdict.
//!
//! It starts `aws2azure dev` on loopback with many profiles and short-lived
//! tokens, and sends, for `--duration` seconds, valid requests from steady
//! and demanding callers and hostile ones (bad signatures, unknown and
//! malformed profiles, bad `min_validity`, wrong methods), while the Entra
//! stand-in fails every token request during fault windows (429 with
//! `Retry-After`, 503, 6 s delays, AADSTS70021, 500). It asserts:
//!
//! - every 200 carries a token of the profile asked for (the stand-in's
//!   token claims `sub`, `appid`, `tid`, `aud`), valid at least
//!   `min_validity`, and no token is ever served for two profiles;
//! - every hostile request gets its one expected refusal;
//! - valid requests get 503/504 (with `Retry-After`) only during a fault
//!   window or its grace period, never another 5xx, and every window
//!   really faulted token requests at Entra;
//! - the dev process's RSS stays flat after warm-up;
//! - no served token, nor anything JWT-shaped, in the dev process's output;
//! - the dev process stops cleanly on SIGTERM.
//!
//! Exit status: 0 all held, 1 an assertion failed, 2 the soak could not run.

mod dev;
mod hostile;
mod load;
mod plan;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::dev::DevProcess;
use crate::load::{CallerLog, Target};

/// Soak `aws2azure dev`: mixed valid and hostile load with Entra fault
/// windows, then assertions on answers, tokens, memory and logs.
#[derive(Parser)]
#[command(name = "soak")]
struct Options {
    /// Seconds of load (10 to 3600).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    duration: u64,
    /// Concurrent callers: half steady, a quarter demanding, a quarter
    /// hostile (4 to 512).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(4..=512))]
    concurrency: u16,
    /// Requests per second, all callers together (1 to 5000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=5000))]
    rate: u32,
    /// Profiles configured (1 to 200).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u16).range(1..=200))]
    profiles: u16,
    /// Lifetime of the stand-in's tokens, seconds (30 to 3599): short, so
    /// that demanding callers miss the cache and reach Entra.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(30..=3599))]
    token_lifetime: u64,
    /// The `aws2azure` binary (default: next to this one).
    #[arg(long)]
    aws2azure: Option<PathBuf>,
    /// Keep the dev process's output (and the profiles file) even when the
    /// soak passes; it is always kept when it fails.
    #[arg(long)]
    keep_logs: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    match run(options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn aws2azure_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .with_file_name(format!("aws2azure{}", std::env::consts::EXE_SUFFIX)),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no aws2azure binary at {}: build it (`cargo build -p aws2azure-cli`) or pass --aws2azure",
            path.display()
        ))
    }
}

async fn run(o: Options) -> Result<bool, String> {
    let bin = aws2azure_binary(o.aws2azure)?;
    let dir = tempfile::Builder::new()
        .prefix("aws2azure-soak-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let profiles = load::profiles(o.profiles.into());
    let config = dir.path().join("profiles.toml");
    std::fs::write(&config, load::config_toml(&profiles))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let dev = DevProcess::start(&bin, &config, o.token_lifetime, dir.path())?;
    let target = Arc::new(Target::new(
        &dev.endpoint,
        &dev.region,
        dev.credentials.clone(),
        profiles,
        o.token_lifetime,
    )?);
    let run_for = Duration::from_secs(o.duration);
    let windows = plan::windows(run_for);
    let settings = format!(
        "{} s, {} callers, {} req/s target, {} profiles, tokens live {} s, {} fault windows; aws2azure dev pid {} ({})",
        o.duration,
        o.concurrency,
        o.rate,
        o.profiles,
        o.token_lifetime,
        windows.len(),
        dev.pid,
        bin.display()
    );
    println!("soak: {settings}");
    for w in &windows {
        println!(
            "  fault window {:<18} at {:>5.1} s for {} s",
            w.label,
            w.start.as_secs_f64(),
            w.length.as_secs()
        );
    }

    let t0 = Instant::now();
    let deadline = t0 + run_for;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    // Once a second: the dev process's RSS, and the stand-in's counters
    // (for timeline.csv).
    let sampler = {
        let (pid, entra, stop) = (dev.pid, dev.entra.clone(), stop_sampling.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut rss, mut timeline) = (
                Vec::new(),
                String::from("t_ms,rss_kib,entra_token_requests,entra_faults\n"),
            );
            // Bounded: the run, the drain (at most the request timeout) and a margin.
            let bound = run_for + load::REQUEST_TIMEOUT + Duration::from_secs(30);
            for _ in 0..bound.as_secs() {
                if stop.load(Ordering::Relaxed) || t0.elapsed() >= bound {
                    break;
                }
                let t = t0.elapsed().as_millis() as u64;
                let kib = dev::rss_kib(pid);
                if let Some(kib) = kib {
                    rss.push((t, kib));
                }
                let stats = plan::stats(&http, &entra).await.unwrap_or_default();
                timeline.push_str(&format!(
                    "{t},{},{},{}\n",
                    kib.unwrap_or(0),
                    stats["token_requests"],
                    stats["faults"]
                ));
                tokio::time::sleep_until((t0 + Duration::from_millis(t + 1000)).into()).await;
            }
            (rss, timeline)
        })
    };
    let injector = tokio::spawn(plan::inject(dev.entra.clone(), windows, t0));
    let callers = usize::from(o.concurrency);
    let interval = Duration::from_secs_f64(callers as f64 / f64::from(o.rate));
    let max_requests = (run_for.as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 1;
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let target = target.clone();
            tokio::spawn(async move {
                load::run_caller(caller, &target, t0, deadline, interval, max_requests).await
            })
        })
        .collect();
    let mut logs: Vec<CallerLog> = Vec::new();
    for task in tasks {
        logs.push(task.await.map_err(|e| format!("a caller panicked: {e}"))?);
    }
    let applied = injector
        .await
        .map_err(|e| format!("the fault injector panicked: {e}"))?;
    let entra_stats = plan::stats(&reqwest::Client::new(), &dev.entra).await.ok();
    stop_sampling.store(true, Ordering::Relaxed);
    let (rss, timeline) = sampler
        .await
        .map_err(|e| format!("the sampler panicked: {e}"))?;
    let timeline_path = dir.path().join("timeline.csv");
    std::fs::write(&timeline_path, timeline)
        .map_err(|e| format!("{}: {e}", timeline_path.display()))?;

    let (stdout, stderr) = (dev.stdout.clone(), dev.stderr.clone());
    let dev_exit = dev.stop();

    let mut outcomes = Vec::new();
    let mut tokens = std::collections::HashMap::new();
    let mut crossed = Vec::new();
    for log in logs {
        outcomes.extend(log.outcomes);
        crossed.extend(log.crossed);
        for (token, profile) in log.tokens {
            if *tokens.entry(token).or_insert(profile) != profile {
                crossed.push("a token was served for two profiles to different callers".into());
            }
        }
    }
    write_outcomes(&dir.path().join("outcomes.csv"), &outcomes)?;
    let served: Vec<&str> = tokens.keys().map(String::as_str).collect();
    let mut scan = report::LogScan::default();
    for (name, path) in [("stdout", &stdout), ("stderr", &stderr)] {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        report::scan_log(name, &String::from_utf8_lossy(&bytes), &served, &mut scan);
    }
    let (summary, failures) = report::evaluate(&report::Run {
        run: run_for,
        outcomes: &outcomes,
        windows: &applied,
        rss: &rss,
        entra: entra_stats.as_ref(),
        distinct_tokens: tokens.len(),
        crossed: &crossed,
        logs: &scan,
        dev_exit: &dev_exit,
    });
    print!("{summary}");
    if failures.is_empty() {
        println!("soak PASSED");
    } else {
        println!("soak FAILED:");
        for f in &failures {
            println!("  - {f}");
        }
    }
    if o.keep_logs || !failures.is_empty() {
        println!(
            "the dev process's output, every request's outcome and a timeline are kept in {} (dev.stdout, dev.stderr, outcomes.csv, timeline.csv)",
            dir.keep().display()
        );
    }
    Ok(failures.is_empty())
}

/// One line per request, for a closer look at a run.
fn write_outcomes(path: &std::path::Path, outcomes: &[load::Outcome]) -> Result<(), String> {
    let mut csv =
        String::from("sent_ms,done_ms,kind,profile,min_validity,status,unavailable,problem\n");
    for o in outcomes {
        let (profile, min_validity) = match o.asked {
            Some((p, mv)) => (format!("soak-{p:02}"), mv.to_string()),
            None => Default::default(),
        };
        csv.push_str(&format!(
            "{},{},{},{profile},{min_validity},{},{},{:?}\n",
            o.sent_ms,
            o.done_ms,
            o.kind,
            o.status,
            o.unavailable,
            o.problem.as_deref().unwrap_or("")
        ));
    }
    std::fs::write(path, csv).map_err(|e| format!("{}: {e}", path.display()))
}
