//! The rotation drill: the signing keys rotated end to end on a compressed
//! schedule while a client keeps exchanging assertions, every part real:
//! the ring in KMS (moto), the broker signing with `alias/{ring}-current`
//! through KMS, the key document published with the Cloudflare API client
//! to the Cloudflare stand-in, whose KV is the compiled edge Worker's KV in
//! workerd, and the Entra stand-in validating every assertion against the
//! key set that Worker serves, caching it like the worst relying party
//! (no refetch on an unknown `kid`).
//!
//! - `drill_full_schedule_four_keys_sign_without_one_failed_exchange`:
//!   the rotator on its schedule (`rotate` every second) through four
//!   promotions; no exchange may fail, and retired keys are disabled and
//!   scheduled for deletion only once the public key set no longer lists
//!   them.
//! - `drill_with_an_early_forced_promotion_fails_exchanges`: the same with
//!   `--force` right after staging: the drill must see failures, which is
//!   what K1's warm-up prevents.
//! - `drill_publication_faults_move_no_alias_and_a_rerun_converges`: the
//!   Cloudflare API answering 401, 403, 429, 500 or not at all during a
//!   `stage` or `rotate`.
//!
//! Each prints one summary line to stderr. The long drill takes about
//! 3.5 minutes; the two short ones run beside it (the test harness runs two
//! tests at a time on two cores, and the long one sorts first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws2azure_devstack::cloudflare::Fault as CloudflareFault;
use aws2azure_keys::cloudflare::PublishError;
use aws2azure_keys::rotation::{Action, Report, Rotator};
use aws2azure_keys::{Error as KeysError, Slot};
use aws2azure_tests::drill::observe::{
    Run, deletion, disabled, retired, start_client, start_schedule, start_watch, unlisted,
};
use aws2azure_tests::drill::{
    ENTRA_KEY_CACHE_SECS, KV_REFRESH_SECS, Rig, relying, staged_kid, timings, wait_for,
};
use aws2azure_tests::workerd::free_port;

/// Four keys through the whole schedule under continuous traffic: the
/// first warms up and is promoted, three more are staged, warm up and
/// replace it one after another, the replaced ones leave the document after
/// the retention and are disabled and scheduled for deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_full_schedule_four_keys_sign_without_one_failed_exchange() {
    let timings = timings();
    let rig = Arc::new(Rig::start("drill", timings).await);
    let relying = relying(&rig, Duration::from_secs(ENTRA_KEY_CACHE_SECS)).await;
    let schedule = start_schedule(rig.rotator.clone(), rig.started);
    let watch = start_watch(rig.clone(), schedule.state.clone());

    // Nothing can sign before the first key has warmed up.
    wait_for(
        "the first promotion",
        Duration::from_secs(timings.warm_up + 30),
        || !schedule.now().promoted().is_empty(),
    )
    .await;
    let client = start_client(
        relying.broker.clone(),
        relying.fed.entra.clone(),
        rig.started,
    );

    let done = || {
        let s = schedule.now();
        let traffic = client.now();
        s.promoted().len() >= 4 && traffic.kids().len() >= 4 && s.deletion_scheduled().len() >= 2
    };
    let within = Duration::from_secs(3 * timings.period + 40);
    let deadline = Instant::now() + within;
    while !done() {
        let s = schedule.now();
        assert!(
            Instant::now() < deadline,
            "the drill did not complete within {within:?}: promoted {:?}, deletions {:?}, \
             client kids {:?}, errors {:?}",
            s.promoted(),
            s.deletion_scheduled(),
            client.now().kids(),
            s.errors
        );
        // A failed exchange fails the drill at once, with the schedule so far.
        let failures = client.now().failures;
        assert!(
            failures.is_empty(),
            "exchanges failed: {:?}; actions so far: {:?}",
            &failures[..failures.len().min(5)],
            s.actions
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let traffic = client.finish().await;
    let schedule = schedule.finish().await;
    let watch = watch.finish().await;
    let elapsed = rig.secs();
    let entra = relying.fed.entra.stats();
    let promoted = schedule.promoted();
    let retired_deleted = schedule.deletion_scheduled();
    // K1 seen from outside: every key was in the public key set for longer
    // than Entra caches it before the first exchange signed with it.
    let warm = |run: &Run| {
        let listed = watch.first_listed.get(&run.kid).copied();
        run.first - listed.unwrap_or_else(|| panic!("kid {} signed, never listed", run.kid))
    };
    let least_warm = traffic.runs.iter().map(warm).fold(f64::INFINITY, f64::min);
    eprintln!(
        "rotation drill (full schedule): {} promotions ({} replacing a key), {} keys retired and \
         scheduled for deletion, {} requests, {} failed, {} kids signed, {} Entra key-set \
         fetches, {} rotate runs, first signature at least {least_warm:.1} s after the key was \
         listed, elapsed {elapsed:.0} s (warm-up {} s, period {} s, retention \
         {} s, Entra key cache {} s, edge KV refresh {} s)",
        promoted.len(),
        promoted.iter().filter(|p| p.2).count(),
        retired_deleted.len(),
        traffic.requests,
        traffic.failures.len(),
        traffic.kids().len(),
        entra.jwks_fetches,
        schedule.ticks,
        timings.warm_up,
        timings.period,
        timings.previous_retention,
        ENTRA_KEY_CACHE_SECS,
        KV_REFRESH_SECS,
    );

    assert!(schedule.errors.is_empty(), "{:?}", schedule.errors);
    assert!(
        traffic.failures.is_empty(),
        "{} of {} exchanges failed, first: {:?}",
        traffic.failures.len(),
        traffic.requests,
        &traffic.failures[..traffic.failures.len().min(5)]
    );
    // Every request really was an exchange Entra validated.
    assert_eq!(entra.token_requests, traffic.entra_calls);
    assert_eq!(entra.issued, traffic.successes());
    assert_eq!(traffic.requests, traffic.successes());
    assert!(entra.refused.is_empty(), "{:?}", entra.refused);

    assert!(
        promoted.iter().filter(|p| p.2).count() >= 3,
        "three promotions that replaced a key: {promoted:?}"
    );
    // Each key signed in one stretch, in the order of the promotions: the
    // kids come from what Entra validated, not from the rotator.
    let signed: Vec<&str> = traffic.runs.iter().map(|r| r.kid.as_str()).collect();
    let order: Vec<&str> = promoted.iter().map(|p| p.1.as_str()).collect();
    assert!(signed.len() >= 4, "{:?}", traffic.runs);
    assert_eq!(signed, order[..signed.len()], "{:?}", traffic.runs);
    assert!(
        least_warm > ENTRA_KEY_CACHE_SECS as f64,
        "a key signed {least_warm:.1} s after it was first listed: {:?}, {:?}",
        traffic.runs,
        watch.first_listed
    );

    // Retired keys: out of the document first, unusable in KMS only after.
    assert!(retired_deleted.len() >= 2, "{retired_deleted:?}");
    assert!(watch.violations.is_empty(), "{:?}", watch.violations);
    let key_ids = schedule.key_ids();
    for kid in &retired_deleted {
        let steps: Vec<usize> = [retired, unlisted, disabled, deletion]
            .into_iter()
            .map(|kind| {
                schedule
                    .first(kid, kind)
                    .unwrap_or_else(|| {
                        panic!("kid {kid}: a step is missing: {:?}", schedule.actions)
                    })
                    .0
            })
            .collect();
        assert!(
            steps.is_sorted(),
            "kid {kid}: steps out of order: {steps:?}"
        );
        let last_listed = watch.last_listed.get(kid).copied();
        let unusable = watch.first_unusable.get(kid).copied();
        assert!(
            matches!((last_listed, unusable), (Some(l), Some(u)) if l < u),
            "kid {kid}: last listed {last_listed:?}, unusable from {unusable:?}"
        );
        assert_eq!(
            rig.key_state(&key_ids[kid]).await,
            "PendingDeletion",
            "kid {kid}"
        );
        assert!(
            traffic
                .runs
                .iter()
                .all(|r| &r.kid != kid || r.last < schedule.first(kid, retired).unwrap().1),
            "kid {kid} signed after its retirement"
        );
    }
    assert!(
        watch.samples > 100,
        "the watch sampled {} times",
        watch.samples
    );
    rig.converge(Duration::from_secs(5)).await;
}

/// The same rig with `--force` right after staging: the key is served
/// publicly, but Entra's cached key set predates it, and Entra refuses the
/// assertions it signs until that cache expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_with_an_early_forced_promotion_fails_exchanges() {
    // Long enough that the promotion lands well inside it on a busy machine.
    const KEY_CACHE: Duration = Duration::from_secs(10);
    let rig = Rig::start("forced", timings()).await;
    let relying = relying(&rig, KEY_CACHE).await;
    let entra = relying.fed.entra.clone();

    // The first key, forced in before anyone has fetched the key set: no
    // relying party can hold an older copy yet.
    let mut report = Report::default();
    rig.rotator.stage(&mut report).await.unwrap();
    let first = staged_kid(&report);
    rig.until_listed(&first, Duration::from_secs(10)).await;
    rig.rotator.promote(true, &mut report).await.unwrap();
    let client = start_client(relying.broker.clone(), entra.clone(), rig.started);
    wait_for(
        "exchanges with the first key",
        Duration::from_secs(20),
        || client.now().successes() >= 3,
    )
    .await;

    // Entra caches the key set as it is now, without the next key.
    let fetches = entra.stats().jwks_fetches;
    entra.forget_keys().await;
    wait_for("Entra's refetch", Duration::from_secs(10), || {
        entra.stats().jwks_fetches > fetches
    })
    .await;
    let cached = Instant::now();
    let mut report = Report::default();
    rig.rotator.stage(&mut report).await.unwrap();
    let next = staged_kid(&report);
    // The moment `rotate` finds it in the public key set, it is forced in.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut report = Report::default();
        rig.rotator.rotate(&mut report).await.unwrap();
        if report
            .actions
            .iter()
            .any(|a| matches!(a, Action::SeenPublic { kid } if *kid == next))
        {
            break;
        }
        assert!(Instant::now() < deadline, "kid {next} never seen public");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut report = Report::default();
    // The broker may sign with the new key as soon as `promote` moves the
    // alias, before it has stamped and republished and returned: failures
    // count from the call.
    let promoted_at = rig.secs();
    rig.rotator.promote(true, &mut report).await.unwrap();
    let promoted_after = cached.elapsed();
    assert!(
        promoted_after + Duration::from_secs(2) < KEY_CACHE,
        "the forced promotion came {promoted_after:?} after Entra cached the key set: too late \
         for this drill to show anything (a machine this slow needs a longer cache)"
    );
    assert!(
        report.risks.iter().any(|r| r.contains("warm-up")),
        "--force says what it risks: {:?}",
        report.risks
    );

    wait_for(
        "an exchange with the forced key once Entra's cache expired",
        KEY_CACHE + Duration::from_secs(15),
        || client.now().kids().contains(&next),
    )
    .await;
    let traffic = client.finish().await;
    let stats = entra.stats();
    eprintln!(
        "rotation drill (forced promotion {:.1} s after Entra cached the key set, cache {} s): \
         {} requests, {} failed ({:?}), recovered after {:.1} s, elapsed {:.0} s",
        promoted_after.as_secs_f64(),
        KEY_CACHE.as_secs(),
        traffic.requests,
        traffic.failures.len(),
        stats.refused,
        traffic.runs.last().map_or(0.0, |r| r.first - promoted_at),
        rig.secs()
    );
    assert!(
        !traffic.failures.is_empty(),
        "a promotion before the warm-up must fail exchanges: {:?}",
        traffic.runs
    );
    for failure in &traffic.failures {
        assert_eq!(failure.aadsts, Some(700027), "{failure:?}");
        assert!(failure.message.contains(&next), "{failure:?}");
        assert!(failure.at >= promoted_at, "{failure:?}");
    }
    assert_eq!(
        stats.refused.get(&700027).copied(),
        Some(traffic.failures.len() as u64)
    );
    assert_eq!(
        traffic
            .runs
            .iter()
            .map(|r| r.kid.as_str())
            .collect::<Vec<_>>(),
        [first.as_str(), next.as_str()]
    );
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Stage,
    Rotate,
}

/// A fault of the Cloudflare API, the operation it hits, and what the
/// error must say (`fault: None`: the API is unreachable).
struct Case {
    name: &'static str,
    op: Op,
    fault: Option<(CloudflareFault, usize)>,
    needles: &'static [&'static str],
    check: fn(&PublishError) -> bool,
}

async fn run(op: Op, rotator: &Rotator, report: &mut Report) -> Result<(), KeysError> {
    match op {
        Op::Stage => rotator.stage(report).await,
        Op::Rotate => rotator.rotate(report).await,
    }
}

/// The Cloudflare API failing during a `stage` or a `rotate` (which stages
/// at once here): the message names cause and fix, no alias moves, the edge
/// keeps serving the document it had, and once the fault is gone a rerun
/// adopts the key the failed run created and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_publication_faults_move_no_alias_and_a_rerun_converges() {
    // A successor is due as soon as a key is promoted, so `rotate` stages.
    let mut timings = timings();
    timings.warm_up = timings.period;
    let rig = Rig::start("faults", timings).await;
    let mut report = Report::default();
    rig.rotator.stage(&mut report).await.unwrap();
    rig.until_listed(&staged_kid(&report), Duration::from_secs(10))
        .await;
    rig.rotator.promote(true, &mut report).await.unwrap();
    rig.converge(Duration::from_secs(10)).await;

    let closed = format!("http://127.0.0.1:{}/client/v4", free_port());
    let unreachable = rig.rotator_publishing_to(&closed);
    let status = |status, retry_after| CloudflareFault::Status {
        status,
        retry_after,
    };
    let cases = [
        Case {
            name: "401",
            op: Op::Stage,
            fault: Some((status(401, None), 1)),
            needles: &["401", "create a new API token"],
            check: |e| matches!(e, PublishError::Unauthorized { .. }),
        },
        Case {
            name: "403",
            op: Op::Rotate,
            fault: Some((status(403, None), 1)),
            needles: &["403", "Workers KV Storage: Edit"],
            check: |e| matches!(e, PublishError::Forbidden { .. }),
        },
        Case {
            name: "429",
            op: Op::Stage,
            fault: Some((status(429, Some(30)), 1)),
            needles: &["429", "retry after 30 s"],
            check: |e| matches!(e, PublishError::RateLimited { retry_after: Some(d) } if d.as_secs() == 30),
        },
        Case {
            name: "500",
            op: Op::Rotate,
            // The client retries a 5xx; every attempt fails.
            fault: Some((
                status(500, None),
                1 + aws2azure_keys::cloudflare::MAX_RETRIES as usize,
            )),
            needles: &["500", "rerun later"],
            check: |e| matches!(e, PublishError::Server { status: 500, .. }),
        },
        Case {
            name: "unreachable",
            op: Op::Rotate,
            fault: None,
            needles: &["unreachable", "API base URL"],
            check: |e| matches!(e, PublishError::Unreachable { .. }),
        },
    ];
    let mut injected = 0;
    for Case {
        name,
        op,
        fault,
        needles,
        check,
    } in cases
    {
        let aliases = rig.aliases().await;
        let document = rig.served_document().await;
        let writes = rig.cloudflare.stats().writes_accepted;
        let rotator = match fault {
            Some((fault, count)) => {
                rig.cloudflare.fail_next(count, fault);
                injected += count as u64;
                &rig.rotator
            }
            None => &unreachable,
        };
        let mut report = Report::default();
        let err = run(op, rotator, &mut report)
            .await
            .expect_err("the publication fails");
        let message = err.to_string();
        assert!(
            matches!(&err, KeysError::Publish(e) if check(e)),
            "{name} {op:?}: {message}"
        );
        for needle in needles.iter().chain(&[
            "lists every key that may sign",
            "the edge keeps serving the document it had",
        ]) {
            assert!(message.contains(needle), "{name} {op:?}: {message}");
        }
        assert!(!message.contains(&rig.api_token), "{name}: {message}");
        eprintln!("publication fault {name} during {op:?}: {message}");
        assert_eq!(
            rig.cloudflare.stats().faults,
            injected,
            "{name}: every injected fault was served"
        );
        assert_eq!(
            rig.aliases().await,
            aliases,
            "{name} {op:?}: an alias moved"
        );
        assert_eq!(rig.cloudflare.stats().writes_accepted, writes);
        tokio::time::sleep(Duration::from_secs(KV_REFRESH_SECS) + Duration::from_millis(500)).await;
        assert!(
            rig.served_document().await == document,
            "{name}: the edge no longer serves the document it had"
        );

        // The fault is gone: the rerun adopts the key the failed run made.
        let mut report = Report::default();
        run(op, &rig.rotator, &mut report)
            .await
            .unwrap_or_else(|e| panic!("{name} {op:?} rerun: {e}"));
        assert!(
            report
                .actions
                .iter()
                .any(|a| matches!(a, Action::Staged { adopted: true, .. })),
            "{name}: {report:?}"
        );
        rig.converge(Duration::from_secs(10)).await;
        let now = rig.aliases().await;
        assert_eq!(now[&Slot::Current], aliases[&Slot::Current], "{name}");
        assert!(now[&Slot::Next].is_some(), "{name}: {now:?}");

        // Room for the next case: the staged key takes over, the old one
        // leaves.
        let mut report = Report::default();
        rig.rotator.promote(true, &mut report).await.unwrap();
        rig.rotator.retire(true, &mut report).await.unwrap();
        rig.converge(Duration::from_secs(10)).await;
    }
    eprintln!(
        "rotation drill (publication faults): 401, 403, 429 Retry-After 30, 500 x{}, \
         unreachable: each refused with its fix, no alias moved, the edge kept its document, a \
         rerun converged; {} API writes accepted, {} refused, elapsed {:.0} s",
        1 + aws2azure_keys::cloudflare::MAX_RETRIES,
        rig.cloudflare.stats().writes_accepted,
        rig.cloudflare.stats().requests_refused,
        rig.secs()
    );
}
