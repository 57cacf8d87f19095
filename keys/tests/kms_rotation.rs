//! The rotator on the KMS key store against moto server: a whole
//! lifecycle, checked in KMS itself and by the broker's signer, and a crash
//! between any two steps, after which a rerun reaches the same end.

#[path = "kms_rotation/recording.rs"]
mod recording;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_kms::types::KeyState as KmsKeyState;
use aws2azure_keys::kms::KmsKeyStore;
use aws2azure_keys::publish::Publisher;
use aws2azure_keys::ring::Usability;
use aws2azure_keys::rotation::{Action, Report, Rotator};
use aws2azure_keys::store::KeyStore;
use aws2azure_keys::timings::DAY;
use aws2azure_keys::{KeyRecord, KeyState, Slot, Stamp, Timings};
use aws2azure_shared::clock::{Clock, ManualClock};
use recording::{Recorder, RecordingPublisher, RecordingStore};
use support::*;

fn rotator(
    store: Arc<dyn KeyStore>,
    publisher: Arc<dyn Publisher>,
    edge: Arc<FakeEdge>,
    clock: &ManualClock,
) -> Rotator {
    Rotator::new(
        store,
        publisher,
        edge,
        Arc::new(clock.clone()),
        Timings::default(),
    )
    .unwrap()
}

async fn rotate(rotator: &Rotator) -> Report {
    let mut report = Report::default();
    rotator.rotate(&mut report).await.unwrap();
    report
}

fn promoted(report: &Report) -> Vec<(String, Option<String>)> {
    report
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Promoted { kid, demoted } => Some((kid.clone(), demoted.clone())),
            _ => None,
        })
        .collect()
}

async fn record(store: &KmsKeyStore, key_id: &str) -> KeyRecord {
    store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.key_id == key_id)
        .unwrap_or_else(|| panic!("{key_id} is in the ring"))
}

#[tokio::test]
async fn the_rotator_runs_a_whole_lifecycle_on_kms() {
    let kms = kms().await;
    let ring = unique_ring("rotate");
    let store = Arc::new(KmsKeyStore::new(kms.clone(), &ring, None));
    let edge = FakeEdge::lagging();
    let clock = ManualClock::at(T0);
    let rotator = rotator(store.clone(), edge.clone(), edge.clone(), &clock);
    let broker_clock: Arc<dyn Clock> = Arc::new(clock.clone());

    // Stage: a next key, published at once.
    let mut report = Report::default();
    rotator.stage(&mut report).await.unwrap();
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    let k1 = keys[0].clone();
    assert_eq!(k1.kid(), kid_of(&kms, &k1.key_id).await);
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("next", &k1.key_id)], &[&k1.key_id])
    );
    assert_eq!(edge.last_published(), [k1.kid()]);
    assert_eq!(
        record(&store, &k1.key_id).await.stamp(Stamp::Published),
        Some(T0)
    );

    // Not served yet: not seen, and K1 refuses the promotion.
    let report = rotate(&rotator).await;
    assert!(promoted(&report).is_empty());
    assert_eq!(
        record(&store, &k1.key_id).await.stamp(Stamp::SeenPublic),
        None
    );
    edge.propagate();
    let report = rotate(&rotator).await;
    assert!(report.actions.contains(&Action::SeenPublic {
        kid: k1.kid().into()
    }));
    assert!(promoted(&report).is_empty(), "{report:?}");
    assert!(
        report.waiting.iter().any(|w| w.contains("K1")),
        "{report:?}"
    );
    assert_eq!(
        record(&store, &k1.key_id).await.stamp(Stamp::SeenPublic),
        Some(T0)
    );

    // Warm (every edge location may serve it only the propagation after
    // this sighting, and the warm-up counts from then): promoted.
    let t = Timings::default();
    clock.advance(t.edge_propagation + t.warm_up);
    let report = rotate(&rotator).await;
    assert_eq!(promoted(&report), [(k1.kid().to_string(), None)]);
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("current", &k1.key_id)], &[&k1.key_id])
    );
    assert_eq!(
        broker_signs_with(&kms, &ring, broker_clock.clone(), &k1.jwk).await,
        k1.kid()
    );
    edge.propagate();

    // The successor is staged a warm-up before the period ends.
    clock.advance(89 * DAY);
    let report = rotate(&rotator).await;
    let k2 = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.key_id != k1.key_id)
        .expect("a second key");
    assert!(
        report
            .actions
            .iter()
            .any(|a| matches!(a, Action::Staged { key_id, .. } if *key_id == k2.key_id))
    );
    assert_eq!(edge.last_published(), [k1.kid(), k2.kid()]);
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(
            &[("current", &k1.key_id), ("next", &k2.key_id)],
            &[&k1.key_id, &k2.key_id]
        )
    );
    edge.propagate();
    let report = rotate(&rotator).await;
    assert!(report.actions.contains(&Action::SeenPublic {
        kid: k2.kid().into()
    }));

    // The period has ended and k2 is warm: k2 signs, k1 stays published as
    // previous.
    clock.advance(t.edge_propagation + t.warm_up);
    let report = rotate(&rotator).await;
    assert_eq!(
        promoted(&report),
        [(k2.kid().to_string(), Some(k1.kid().to_string()))]
    );
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(
            &[("current", &k2.key_id), ("previous", &k1.key_id)],
            &[&k1.key_id, &k2.key_id]
        )
    );
    assert_eq!(edge.last_published(), [k2.kid(), k1.kid()]);
    assert_eq!(
        broker_signs_with(&kms, &ring, broker_clock.clone(), &k2.jwk).await,
        k2.kid()
    );
    let demoted_at = clock.now_unix();
    let old = record(&store, &k1.key_id).await;
    assert_eq!(old.state(), KeyState::Previous);
    assert_eq!(old.stamp(Stamp::Demoted), Some(demoted_at));
    edge.propagate();

    // K2: not before the retention.
    clock.advance(DAY - 1);
    let report = rotate(&rotator).await;
    assert!(
        !report
            .actions
            .iter()
            .any(|a| matches!(a, Action::Retired { .. })),
        "{report:?}"
    );
    clock.advance(1);
    let report = rotate(&rotator).await;
    assert!(report.actions.contains(&Action::Retired {
        kid: k1.kid().into()
    }));
    assert_eq!(edge.last_published(), [k2.kid()]);
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("current", &k2.key_id)], &[&k1.key_id, &k2.key_id])
    );
    // Still listed publicly: not unlisted, still enabled.
    let old = record(&store, &k1.key_id).await;
    assert_eq!(old.state(), KeyState::Retired);
    assert_eq!(old.stamp(Stamp::Unlisted), None);
    assert_eq!(old.usability, Usability::Enabled);

    edge.propagate();
    let report = rotate(&rotator).await;
    let kid1 = k1.kid().to_string();
    assert_eq!(
        report.actions,
        [
            Action::Unlisted { kid: kid1.clone() },
            Action::Disabled { kid: kid1.clone() },
            Action::DeletionScheduled {
                kid: kid1,
                days: 30
            },
        ]
    );
    assert_eq!(
        key_state(&kms, &k1.key_id).await,
        KmsKeyState::PendingDeletion
    );
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id, k2.key_id);
    assert_eq!(keys[0].state(), KeyState::Current);
    // KMS keeps a pending key's aliases until it deletes the key.
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("current", &k2.key_id)], &[&k1.key_id, &k2.key_id])
    );
    assert_eq!(
        broker_signs_with(&kms, &ring, broker_clock, &k2.jwk).await,
        k2.kid()
    );

    // Nothing left to do.
    let report = rotate(&rotator).await;
    assert!(report.actions.is_empty(), "{report:?}");
}

/// The schedule: `rotate` at these times (from T0). Covers staging, two
/// promotions (the second demotes), a retirement, the unlisting, disabling
/// and deletion, and a run with nothing to do. K1 lets a key sign the edge
/// propagation plus the warm-up (a day) after its first sighting, so each
/// promotion, and every step after it, comes that propagation later.
fn schedule() -> [u64; 8] {
    let p = Timings::default().edge_propagation;
    [
        0,
        0,
        DAY + p,
        90 * DAY + p,
        90 * DAY + p,
        91 * DAY + 2 * p,
        92 * DAY + 2 * p,
        92 * DAY + 2 * p,
    ]
}

/// A key as `keys()` lists it: (key, state, slots, stamps, usability).
type ListedKey = (usize, KeyState, Vec<Slot>, BTreeMap<Stamp, u64>, Usability);

/// What a run leaves behind, with key ids replaced by their creation order
/// (they differ from run to run).
#[derive(Debug, PartialEq, Eq)]
struct EndState {
    keys: Vec<ListedKey>,
    /// The ring's aliases in KMS: suffix (members as `key-#n`) → key.
    aliases: BTreeMap<String, usize>,
    /// Every key created, by its state in KMS.
    kms_states: Vec<KmsKeyState>,
    /// What the public key set lists: keys.
    served: Vec<usize>,
}

struct Run {
    ring: String,
    log: Vec<String>,
    calls: usize,
    crashed_at_step: Option<usize>,
    /// Keys a crash inside `create_key` left out of the ring, with the call
    /// it died before.
    stranded: Vec<(String, &'static str)>,
    end: EndState,
}

/// Runs the schedule; if the run dies, reruns from the step that died with
/// a fresh store and rotator (a new process) on the plain store, logging to
/// the same log.
async fn run(crash_at: Option<usize>, after: bool) -> Run {
    let (proxy, _server, kms) = proxied_kms(true).await;
    let ring = unique_ring("crash");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stranded = Arc::new(Mutex::new(Vec::new()));
    let edge = FakeEdge::new(Some(log.clone()));
    let clock = ManualClock::at(T0);
    let recording = |rec: &Arc<Recorder>| {
        Arc::new(RecordingStore {
            inner: Arc::new(KmsKeyStore::new(kms.clone(), &ring, None)),
            rec: rec.clone(),
            proxy: proxy.clone(),
            kms: kms.clone(),
            ring: ring.clone(),
            stranded: stranded.clone(),
        })
    };

    let rec = Recorder::new(crash_at, after, log.clone());
    let store = recording(&rec);
    let publisher = Arc::new(RecordingPublisher {
        edge: edge.clone(),
        rec: rec.clone(),
    });
    let first = rotator(store, publisher, edge.clone(), &clock);
    let mut crashed_at_step = None;
    let schedule = schedule();
    for (step, at) in schedule.iter().enumerate() {
        clock.set(T0 + at);
        let mut report = Report::default();
        if let Err(e) = first.rotate(&mut report).await {
            assert!(rec.crashed(), "step {step} failed without a crash: {e}");
            assert!(e.to_string().contains("died here"), "{e}");
            crashed_at_step = Some(step);
            break;
        }
    }
    assert_eq!(crashed_at_step.is_some(), rec.crashed());

    if let Some(from) = crashed_at_step {
        let rec = Recorder::new(None, false, log.clone());
        let store = recording(&rec);
        let publisher = Arc::new(RecordingPublisher {
            edge: edge.clone(),
            rec,
        });
        let rerun = rotator(store, publisher, edge.clone(), &clock);
        for at in &schedule[from..] {
            clock.set(T0 + at);
            rotate(&rerun).await;
        }
    }

    let log = log.lock().unwrap().clone();
    let end = end_state(&kms, &ring, &log, &edge).await;
    let stranded = stranded.lock().unwrap().clone();
    Run {
        ring,
        log,
        calls: rec.calls(),
        crashed_at_step,
        stranded,
        end,
    }
}

/// A key a crash left inside `create_key` never joins the ring (`end_state`
/// fails on any key of the ring the log does not show created), is never
/// touched again, and carries the ring's tags exactly when the crash came
/// after the tagging.
async fn check_stranded(kms: &aws_sdk_kms::Client, run: &Run) {
    for (key_id, died_before) in &run.stranded {
        assert_eq!(key_state(kms, key_id).await, KmsKeyState::Enabled);
        let tags = tags_of(kms, key_id).await;
        let ring_tag = tags.get("aws2azure:ring");
        match *died_before {
            "TagResource" => assert!(tags.is_empty(), "{key_id}: {tags:?}"),
            "CreateAlias" => assert_eq!(ring_tag, Some(&run.ring), "{key_id}: {tags:?}"),
            other => panic!("died before {other}"),
        }
        assert!(
            !aliases(kms, &run.ring).await.values().any(|t| t == key_id),
            "{key_id} has an alias of the ring"
        );
    }
}

async fn end_state(
    kms: &aws_sdk_kms::Client,
    ring: &str,
    log: &[String],
    edge: &FakeEdge,
) -> EndState {
    let created: Vec<String> = log
        .iter()
        .filter_map(|l| l.strip_prefix("create "))
        .map(String::from)
        .collect();
    let index = |id: &str| {
        created
            .iter()
            .position(|c| c == id)
            .unwrap_or_else(|| panic!("{id} was not created by the run"))
    };
    let mut kids = BTreeMap::new();
    for id in &created {
        kids.insert(kid_of(kms, id).await, index(id));
    }
    let store = KmsKeyStore::new(kms.clone(), ring, None);
    let mut keys: Vec<_> = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| {
            (
                index(&k.key_id),
                k.state(),
                k.slots.iter().copied().collect(),
                k.stamps.clone(),
                k.usability,
            )
        })
        .collect();
    keys.sort_by_key(|k| k.0);
    let aliases = aliases(kms, ring)
        .await
        .into_iter()
        .map(|(name, target)| {
            let i = index(&target);
            let name = if name.starts_with("key-") {
                format!("key-#{i}")
            } else {
                name
            };
            (name, i)
        })
        .collect();
    let mut kms_states = Vec::new();
    for id in &created {
        kms_states.push(key_state(kms, id).await);
    }
    let served = edge.served().iter().map(|k| kids[k]).collect();
    EndState {
        keys,
        aliases,
        kms_states,
        served,
    }
}

/// The orders the lifecycle promises, whatever happened in between: a key
/// is published before the `current` alias moves to it; a key is disabled
/// or deleted only once retired and found unlisted.
async fn check_order(kms: &aws_sdk_kms::Client, run: &Run) {
    let mut kid_of_key = BTreeMap::new();
    for line in &run.log {
        if let Some(id) = line.strip_prefix("create ") {
            kid_of_key.insert(id.to_string(), kid_of(kms, id).await);
        }
    }
    for (i, line) in run.log.iter().enumerate() {
        let before = &run.log[..i];
        if let Some(id) = line.strip_prefix("point current ") {
            let kid = &kid_of_key[id];
            assert!(
                before
                    .iter()
                    .any(|l| l.starts_with("publish ") && l.contains(kid.as_str())),
                "current moved to {id} before a document listing it was published: {:#?}",
                run.log
            );
        }
        for op in ["disable ", "schedule-deletion "] {
            if let Some(id) = line.strip_prefix(op) {
                for stamp in [Stamp::Retired, Stamp::Unlisted] {
                    let stamped = format!("stamp {id} {}", stamp.tag());
                    assert!(
                        before.contains(&stamped),
                        "{op}{id} before `{stamped}`: {:#?}",
                        run.log
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_crash_between_any_two_steps_converges_on_the_same_end() {
    let kms = kms().await;
    let reference = run(None, false).await;
    assert_eq!(reference.crashed_at_step, None);
    assert!(reference.stranded.is_empty());
    check_order(&kms, &reference).await;
    let end = &reference.end;
    // The uninterrupted end: the second key current, the first deleted.
    assert_eq!(end.keys.len(), 1, "{end:#?}");
    assert_eq!(end.keys[0].0, 1);
    assert_eq!(end.keys[0].1, KeyState::Current);
    assert_eq!(end.keys[0].2, [Slot::Current]);
    assert_eq!(
        end.aliases,
        BTreeMap::from([
            ("current".to_string(), 1),
            ("key-#0".to_string(), 0),
            ("key-#1".to_string(), 1)
        ])
    );
    assert_eq!(
        end.kms_states,
        [KmsKeyState::PendingDeletion, KmsKeyState::Enabled]
    );
    assert_eq!(end.served, [1]);
    let calls = reference.calls;
    assert!(
        calls >= 20,
        "the schedule makes {calls} calls: {:#?}",
        reference.log
    );

    // Four runs at a time: each has its own ring, and moto answers them
    // in parallel.
    let mut stranded_before = BTreeMap::<&str, usize>::new();
    let mut cases: Vec<(usize, bool)> = [false, true]
        .into_iter()
        .flat_map(|after| (0..=calls).map(move |n| (n, after)))
        .collect();
    while !cases.is_empty() {
        let batch: Vec<_> = cases.drain(..cases.len().min(4)).collect();
        let mut runs = tokio::task::JoinSet::new();
        for (crash_at, after) in batch {
            runs.spawn(async move { (crash_at, after, run(Some(crash_at), after).await) });
        }
        while let Some(done) = runs.join_next().await {
            let (crash_at, after, run) = done.unwrap();
            let context = format!(
                "crash {} call {crash_at} (step {:?}), ring {}",
                if after { "after" } else { "before" },
                run.crashed_at_step,
                run.ring
            );
            assert_eq!(
                run.crashed_at_step.is_none(),
                crash_at == calls,
                "{context}"
            );
            check_order(&kms, &run).await;
            check_stranded(&kms, &run).await;
            for (_, call) in &run.stranded {
                *stranded_before.entry(*call).or_default() += 1;
            }
            assert_eq!(run.end, reference.end, "{context}: {:#?}", run.log);
        }
    }
    // Each of the two keys the schedule creates, crashed before its
    // tagging and before its alias, once each way (before the call, after
    // the one before it).
    assert_eq!(
        stranded_before,
        BTreeMap::from([("CreateAlias", 4), ("TagResource", 4)])
    );
}
