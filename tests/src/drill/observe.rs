//! What runs while a drill goes on: the client exchanging tokens, the
//! schedule running `rotate`, and a watch comparing KMS with the public key
//! set. Each records what it saw, with times in seconds since the rig
//! started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws2azure_devstack::entra::{ASSERTION_KID_CLAIM, EntraStandIn, issued_claims};
use aws2azure_keys::public::PublicKeySet;
use aws2azure_keys::rotation::{Action, Report, Rotator};
use aws2azure_shared::profile::ProfileName;
use aws2azure_signer::broker::{Broker, CacheOutcome, MAX_MIN_VALIDITY_SECS, MinValidity};

use super::{CLIENT_PAUSE, Rig, TICK};

/// One stretch of exchanges validated with the same key.
#[derive(Clone, Debug)]
pub struct Run {
    pub kid: String,
    pub first: f64,
    pub last: f64,
    pub count: u64,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub at: f64,
    pub aadsts: Option<u32>,
    pub message: String,
}

/// What the client saw; times are seconds since the rig started.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub requests: u64,
    pub entra_calls: u64,
    pub failures: Vec<Failure>,
    /// The `kid` Entra validated each successful exchange with, as runs.
    pub runs: Vec<Run>,
}

impl Traffic {
    pub fn record(&mut self, kid: String, at: f64) {
        match self.runs.last_mut() {
            Some(run) if run.kid == kid => {
                run.last = at;
                run.count += 1;
            }
            _ => self.runs.push(Run {
                kid,
                first: at,
                last: at,
                count: 1,
            }),
        }
    }

    pub fn successes(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum()
    }

    pub fn kids(&self) -> BTreeSet<String> {
        self.runs.iter().map(|r| r.kid.clone()).collect()
    }
}

/// A background loop and its stop switch.
pub struct Task<T> {
    stop: Arc<AtomicBool>,
    pub state: Arc<Mutex<T>>,
    handle: tokio::task::JoinHandle<()>,
}

impl<T: Clone> Task<T> {
    pub fn now(&self) -> T {
        self.state.lock().unwrap().clone()
    }

    /// Stops the loop (a panic in it fails the test here) and returns its
    /// final state.
    pub async fn finish(self) -> T {
        self.stop.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        self.handle
            .await
            .expect("the background loop did not panic");
        state.lock().unwrap().clone()
    }
}

/// Requests tokens one after another, each a fresh exchange: the client
/// asks for more validity than Entra's tokens ever have, so the broker can
/// never serve one from its cache.
pub fn start_client(broker: Broker, entra: EntraStandIn, started: Instant) -> Task<Traffic> {
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Mutex::new(Traffic::default()));
    let handle = tokio::spawn({
        let (stop, state) = (stop.clone(), state.clone());
        async move {
            let graph = ProfileName::parse("graph").expect("a valid name");
            while !stop.load(Ordering::SeqCst) {
                let before = entra.stats().token_requests;
                let result = broker
                    .token(&graph, MinValidity::new(MAX_MIN_VALIDITY_SECS).unwrap())
                    .await;
                let seen_by_entra = entra.stats().token_requests - before;
                let at = started.elapsed().as_secs_f64();
                // Checked before the lock is taken, so that a failed check
                // does not poison it for the test reading along.
                let outcome = match result {
                    Ok(issued) => {
                        assert_eq!(issued.outcome, CacheOutcome::Miss, "a fresh exchange");
                        assert_eq!(issued.upstream.entra_calls, 1);
                        assert_eq!(seen_by_entra, 1, "Entra saw this request's exchange");
                        let claims = issued_claims(issued.token.access_token.expose())
                            .expect("a token of the Entra stand-in");
                        let kid = claims[ASSERTION_KID_CLAIM]
                            .as_str()
                            .expect("the stand-in names the kid it validated")
                            .to_string();
                        Ok(kid)
                    }
                    Err(failed) => {
                        let calls = u64::from(failed.upstream.entra_calls);
                        assert_eq!(seen_by_entra, calls, "Entra saw this request's exchanges");
                        Err((
                            calls,
                            Failure {
                                at,
                                aadsts: failed.error.aadsts(),
                                message: failed.error.to_string(),
                            },
                        ))
                    }
                };
                {
                    let mut traffic = state.lock().unwrap();
                    traffic.requests += 1;
                    match outcome {
                        Ok(kid) => {
                            traffic.entra_calls += 1;
                            traffic.record(kid, at);
                        }
                        Err((calls, failure)) => {
                            traffic.entra_calls += calls;
                            traffic.failures.push(failure);
                        }
                    }
                }
                tokio::time::sleep(CLIENT_PAUSE).await;
            }
        }
    });
    Task {
        stop,
        state,
        handle,
    }
}

/// What the scheduled rotation did: every action with the time its
/// `rotate` returned, and every failed `rotate`.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    pub ticks: u64,
    pub actions: Vec<(f64, Action)>,
    pub errors: Vec<(f64, String)>,
}

impl Schedule {
    pub fn promoted(&self) -> Vec<(f64, String, bool)> {
        self.actions
            .iter()
            .filter_map(|(at, a)| match a {
                Action::Promoted { kid, demoted } => Some((*at, kid.clone(), demoted.is_some())),
                _ => None,
            })
            .collect()
    }

    pub fn key_ids(&self) -> BTreeMap<String, String> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Staged { key_id, kid, .. } => Some((kid.clone(), key_id.clone())),
                _ => None,
            })
            .collect()
    }

    /// The index and time of the first action of this kind for `kid`.
    pub fn first(&self, kid: &str, kind: fn(&Action) -> Option<&String>) -> Option<(usize, f64)> {
        self.actions
            .iter()
            .enumerate()
            .find(|(_, (_, a))| kind(a).is_some_and(|k| k == kid))
            .map(|(i, (at, _))| (i, *at))
    }

    pub fn deletion_scheduled(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::DeletionScheduled { kid, .. } => Some(kid.clone()),
                _ => None,
            })
            .collect()
    }
}

pub fn retired(a: &Action) -> Option<&String> {
    match a {
        Action::Retired { kid } => Some(kid),
        _ => None,
    }
}
pub fn unlisted(a: &Action) -> Option<&String> {
    match a {
        Action::Unlisted { kid } => Some(kid),
        _ => None,
    }
}
pub fn disabled(a: &Action) -> Option<&String> {
    match a {
        Action::Disabled { kid } => Some(kid),
        _ => None,
    }
}
pub fn deletion(a: &Action) -> Option<&String> {
    match a {
        Action::DeletionScheduled { kid, .. } => Some(kid),
        _ => None,
    }
}

/// `rotate` every second, as the schedule would run it.
pub fn start_schedule(rotator: Arc<Rotator>, started: Instant) -> Task<Schedule> {
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Mutex::new(Schedule::default()));
    let handle = tokio::spawn({
        let (stop, state) = (stop.clone(), state.clone());
        async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let mut report = Report::default();
                let result = rotator.rotate(&mut report).await;
                let at = started.elapsed().as_secs_f64();
                let mut schedule = state.lock().unwrap();
                schedule.ticks += 1;
                schedule
                    .actions
                    .extend(report.actions.into_iter().map(|a| (at, a)));
                if let Err(e) = result {
                    schedule.errors.push((at, e.to_string()));
                }
            }
        }
    });
    Task {
        stop,
        state,
        handle,
    }
}

/// An observer independent of the rotator: when each key was last seen in
/// the public key set (by the start of the read), and when KMS first
/// reported it disabled or pending deletion (by the end of the call).
#[derive(Clone, Debug, Default)]
pub struct Watch {
    pub samples: u64,
    pub first_listed: BTreeMap<String, f64>,
    pub last_listed: BTreeMap<String, f64>,
    pub first_unusable: BTreeMap<String, f64>,
    /// A key listed publicly in a read that started after KMS had already
    /// reported it unusable.
    pub violations: Vec<String>,
}

pub fn start_watch(rig: Arc<Rig>, schedule: Arc<Mutex<Schedule>>) -> Task<Watch> {
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Mutex::new(Watch::default()));
    let handle = tokio::spawn({
        let (stop, state) = (stop.clone(), state.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let keys = schedule.lock().unwrap().key_ids();
                for (kid, key_id) in keys {
                    let usable = rig.key_state(&key_id).await == "Enabled";
                    let at = rig.secs();
                    if !usable {
                        state
                            .lock()
                            .unwrap()
                            .first_unusable
                            .entry(kid)
                            .or_insert(at);
                    }
                }
                let read_at = rig.secs();
                if let Ok(set) = rig.public.fetch().await {
                    let mut watch = state.lock().unwrap();
                    watch.samples += 1;
                    for key in set.keys() {
                        let kid = key.kid().to_string();
                        if let Some(unusable) = watch.first_unusable.get(&kid).copied()
                            && unusable < read_at
                        {
                            watch.violations.push(format!(
                                "kid {kid} listed at {read_at:.1} s, unusable in KMS since {unusable:.1} s"
                            ));
                        }
                        watch.first_listed.entry(kid.clone()).or_insert(read_at);
                        watch.last_listed.insert(kid, read_at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    Task {
        stop,
        state,
        handle,
    }
}
