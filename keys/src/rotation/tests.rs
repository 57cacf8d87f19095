//! The rotator over the in-process store, an in-test edge (what was
//! published, served after a delay, or not at all) and a manual clock.

use std::collections::BTreeMap;

use super::*;
use crate::ring::KeyState;
use crate::timings::{DAY, HOUR};

mod world;

use world::{Event, T0, World};

fn refusal(result: Result<(), Error>) -> String {
    match result {
        Err(Error::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn three_rotations_with_default_timings_keep_k1_and_k2_and_rotate_is_idempotent() {
    let t = Timings::default();
    let w = World::new(t);
    // What the test itself saw the edge serve: when each kid was first
    // served (hourly checks) and when each key changed state.
    let mut first_served: BTreeMap<String, u64> = BTreeMap::new();
    let mut promoted: BTreeMap<String, u64> = BTreeMap::new();
    let mut demoted: BTreeMap<String, u64> = BTreeMap::new();
    let mut retired: BTreeMap<String, u64> = BTreeMap::new();
    let mut deleted = Vec::new();
    let end = T0 + 3 * t.period + 5 * DAY;
    while w.clock.now_unix() < end {
        let now = w.clock.now_unix();
        let report = w.rotate().await;
        for action in &report.actions {
            match action {
                Action::Promoted { kid, demoted: old } => {
                    let served = first_served.get(kid).copied();
                    assert!(
                        served.is_some_and(|s| now >= s + t.warm_up),
                        "K1: {kid} promoted at {now}, first served at {served:?}"
                    );
                    promoted.insert(kid.clone(), now);
                    if let Some(old) = old {
                        demoted.insert(old.clone(), now);
                    }
                }
                Action::Retired { kid } => {
                    assert!(
                        now >= demoted[kid] + t.previous_retention,
                        "K2: {kid} retired at {now}, demoted at {}",
                        demoted[kid]
                    );
                    retired.insert(kid.clone(), now);
                }
                Action::DeletionScheduled { kid, days } => {
                    assert_eq!(*days, 30);
                    assert!(retired.contains_key(kid));
                    deleted.push(kid.clone());
                }
                _ => {}
            }
        }
        let again = w.rotate().await;
        assert_eq!(again.actions, vec![], "a second run at {now} did something");

        let served = w.edge.served_kids();
        for kid in &served {
            first_served.entry(kid.clone()).or_insert(now);
        }
        assert!(served.len() <= 3, "{served:?}");
        let ring = w.ring().await;
        if let Some(current) = ring.current() {
            assert_eq!(served.first().map(String::as_str), Some(current.kid()));
        }
        w.clock.advance(HOUR);
    }
    // The first key, then one per period.
    assert_eq!(promoted.len(), 4, "{promoted:?}");
    let times: Vec<u64> = {
        let mut v: Vec<u64> = promoted.values().copied().collect();
        v.sort();
        v
    };
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (t.period..=t.period + 2 * HOUR).contains(&gap),
            "promotions {gap} s apart"
        );
    }
    assert_eq!(retired.len(), 3, "{retired:?}");
    assert_eq!(deleted.len(), 3, "{deleted:?}");
}

#[tokio::test]
async fn the_first_key_is_published_at_once_and_signs_only_after_the_warm_up() {
    let t = Timings::default();
    let w = World::new(t);
    let report = w.rotate().await;
    let kid = w.kid(KeyState::Next).await;
    assert!(
        matches!(
            &report.actions[..],
            // Published before `next` points at it.
            [
                Action::Published { kids, .. },
                Action::Staged { adopted: false, .. },
                Action::SeenPublic { kid: seen },
            ] if kids == std::slice::from_ref(&kid) && seen == &kid
        ),
        "{report:?}"
    );
    assert!(
        report
            .waiting
            .iter()
            .any(|w| w.starts_with("K1 refuses") && w.contains("0 s of the")),
        "{report:?}"
    );

    // Seen at once (no delay here), so warm once every edge location may
    // have served it for the warm-up.
    w.clock.advance(t.edge_propagation + t.warm_up - 1);
    let report = w.rotate().await;
    assert_eq!(report.actions, vec![]);
    assert!(report.waiting[0].contains("warm-up"), "{report:?}");

    w.clock.advance(1);
    let report = w.rotate().await;
    assert!(report.actions.contains(&Action::Promoted {
        kid: kid.clone(),
        demoted: None
    }));
    assert_eq!(w.kid(KeyState::Current).await, kid);
}

#[tokio::test]
async fn a_promotion_is_published_before_any_alias_moves() {
    let t = Timings::default();
    let w = World::new(t);
    w.with_current_and_staged_next().await;
    let old = w.kid(KeyState::Current).await;
    let new = w.kid(KeyState::Next).await;
    // A crash between the publication and its stamp: the rotator cannot
    // know the document went out, so it publishes again first.
    let next_id = w.ring().await.next().unwrap().key_id.clone();
    w.store
        .inner
        .unstamp(&next_id, Stamp::Published)
        .await
        .unwrap();
    w.clock.advance(t.edge_propagation + t.warm_up);
    w.events();

    let mut report = Report::default();
    w.rotator.promote(false, &mut report).await.unwrap();
    let events = w.events();
    let first_publish = events
        .iter()
        .position(|e| matches!(e, Event::Publish(_)))
        .unwrap();
    let first_alias = events
        .iter()
        .position(|e| matches!(e, Event::Point(..) | Event::Unpoint(_)))
        .unwrap();
    assert!(first_publish < first_alias, "{events:?}");
    assert_eq!(
        events[first_publish],
        Event::Publish(vec![old.clone(), new.clone()])
    );
    assert_eq!(
        events[first_alias..first_alias + 3],
        [
            Event::Point(Slot::Previous, old.clone()),
            Event::Point(Slot::Current, new.clone()),
            Event::Unpoint(Slot::Next),
        ]
    );
    // Current first once it signs.
    assert_eq!(events.last(), Some(&Event::Publish(vec![new, old])));
}

#[tokio::test]
async fn a_retirement_stamps_first_and_publishes_after_the_alias_goes() {
    let t = Timings::default();
    let w = World::new(t);
    w.with_current_and_staged_next().await;
    w.clock.advance(t.edge_propagation + t.warm_up);
    let mut report = Report::default();
    w.rotator.promote(false, &mut report).await.unwrap();
    let old = w.kid(KeyState::Previous).await;
    let current = w.kid(KeyState::Current).await;
    w.clock.advance(t.previous_retention);
    w.events();

    let mut report = Report::default();
    w.rotator.retire(false, &mut report).await.unwrap();
    assert_eq!(
        w.events(),
        vec![
            Event::Stamp(old.clone(), Stamp::Retired),
            Event::Unpoint(Slot::Previous),
            Event::Publish(vec![current]),
        ]
    );
    assert!(
        report
            .actions
            .contains(&Action::Retired { kid: old.clone() })
    );
    assert!(report.risks.is_empty());

    // Dropped from the public set: disabled and scheduled for deletion.
    let report = w.rotate().await;
    assert_eq!(
        report.actions,
        vec![
            Action::Unlisted { kid: old.clone() },
            Action::Disabled { kid: old.clone() },
            Action::DeletionScheduled {
                kid: old,
                days: t.deletion_window_days
            },
        ]
    );
}

#[tokio::test]
async fn refusals_name_the_invariant_the_cause_and_what_to_do() {
    let t = Timings::default();
    let w = World::new(t);
    let mut report = Report::default();
    let message = refusal(w.rotator.promote(false, &mut report).await);
    assert!(
        message.contains("no next key") && message.contains("keys stage"),
        "{message}"
    );
    let message = refusal(w.rotator.retire(false, &mut report).await);
    assert!(message.contains("no previous key"), "{message}");

    w.rotator.stage(&mut report).await.unwrap();
    let kid = w.kid(KeyState::Next).await;
    let message = refusal(w.rotator.stage(&mut report).await);
    assert!(
        message.contains(&kid) && message.contains("already staged"),
        "{message}"
    );

    // Published but never observed: K1.
    let message = refusal(w.rotator.promote(false, &mut report).await);
    assert!(message.starts_with("K1 refuses the promotion"), "{message}");
    assert!(
        message.contains(&kid) && message.contains("--force"),
        "{message}"
    );

    w.rotate().await;
    w.clock.advance(t.edge_propagation + t.warm_up);
    w.rotate().await;
    w.rotator.stage(&mut report).await.unwrap();
    w.rotate().await;
    w.clock.advance(t.edge_propagation + t.warm_up);
    w.rotator.promote(false, &mut report).await.unwrap();
    let previous = w.kid(KeyState::Previous).await;

    let message = refusal(w.rotator.retire(false, &mut report).await);
    assert!(
        message.starts_with("K2 refuses the retirement"),
        "{message}"
    );
    assert!(message.contains(&previous), "{message}");
    let allowed = plan::at(w.clock.now_unix() + t.previous_retention);
    assert!(message.contains(&allowed), "{message}");

    // Nothing was done by a refused step.
    assert_eq!(w.kid(KeyState::Previous).await, previous);
    // No message carries anything but public values.
    assert!(!message.contains("local-"), "{message}");
}

#[tokio::test]
async fn forcing_a_promotion_reports_what_it_risks() {
    let w = World::new(Timings::default());
    let mut report = Report::default();
    w.rotator.stage(&mut report).await.unwrap();
    let kid = w.kid(KeyState::Next).await;
    let mut report = Report::default();
    w.rotator.promote(true, &mut report).await.unwrap();
    assert_eq!(w.kid(KeyState::Current).await, kid);
    assert!(
        report.risks.iter().any(|r| r.contains("never been seen")),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_unreadable_public_set_is_reported_and_blocks_the_promotion_only() {
    let t = Timings::default();
    let w = World::new(t);
    w.rotate().await;
    w.clock.advance(60);
    w.rotate().await;
    // Warm: only the unreadable set stands in the way.
    w.clock.advance(t.edge_propagation + t.warm_up);
    w.edge.set_down(true);
    let report = w.rotate().await;
    assert!(
        report.waiting.iter().any(|r| r.contains("unreachable")),
        "{report:?}"
    );
    assert!(
        report
            .waiting
            .iter()
            .any(|r| r.contains("could not be read")),
        "{report:?}"
    );
    assert!(
        !report
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promoted { .. })),
        "{report:?}"
    );
    assert!(w.ring().await.current().is_none());

    w.edge.set_down(false);
    let report = w.rotate().await;
    assert!(
        report
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promoted { .. })),
        "{report:?}"
    );
}

#[tokio::test]
async fn the_warm_up_counts_from_when_the_edge_serves_the_key_not_from_the_write() {
    let t = Timings::default();
    let w = World::new(t);
    w.edge.set_delay(t.edge_propagation);
    w.rotate().await;
    let kid = w.kid(KeyState::Next).await;
    w.clock.advance(t.edge_propagation - 1);
    let report = w.rotate().await;
    // Not served yet: written again, not seen.
    assert!(
        !report
            .actions
            .contains(&Action::SeenPublic { kid: kid.clone() }),
        "{report:?}"
    );
    w.clock.advance(1);
    let report = w.rotate().await;
    assert!(
        report
            .actions
            .contains(&Action::SeenPublic { kid: kid.clone() })
    );
    let seen = w.clock.now_unix();
    assert_eq!(
        w.ring().await.next().unwrap().stamp(Stamp::SeenPublic),
        Some(seen)
    );
    // This edge is one location; others may serve the key up to the
    // propagation after it, so K1 waits for that too.
    w.clock.set(seen + t.edge_propagation + t.warm_up - 1);
    assert!(w.ring().await.current().is_none() && w.rotate().await.waiting[0].contains("warm-up"));
    w.clock.set(seen + t.edge_propagation + t.warm_up);
    w.rotate().await;
    assert_eq!(w.kid(KeyState::Current).await, kid);
}

#[tokio::test]
async fn a_next_key_lost_from_the_edge_starts_its_warm_up_again() {
    let t = Timings::default();
    let w = World::new(t);
    w.with_current_and_staged_next().await;
    let current = w.ring().await.current().unwrap().jwk.clone();
    let next = w.kid(KeyState::Next).await;
    w.clock.advance(t.warm_up / 2);
    w.edge.overwrite(vec![current]);
    let report = w.rotate().await;
    let lost = Action::LostPublic { kid: next.clone() };
    let seen = Action::SeenPublic { kid: next.clone() };
    let lost_at = report.actions.iter().position(|a| a == &lost);
    let seen_at = report.actions.iter().position(|a| a == &seen);
    assert!(
        lost_at.is_some() && lost_at < seen_at,
        "lost, republished, seen again: {report:?}"
    );
    let relisted = w.clock.now_unix();
    w.clock.set(t.warm_at(relisted) - 1);
    let mut report = Report::default();
    let message = refusal(w.rotator.promote(false, &mut report).await);
    assert!(message.contains("warm-up"), "{message}");
}

/// Regression: only `rotate` used to record a loss, and any other step that
/// publishes (`publish`, `retire`, and `rotate`'s own retirement) wrote the
/// key back first, so the warm-up went on from the first sighting.
#[tokio::test]
async fn a_republication_does_not_hide_that_the_next_key_was_lost() {
    let t = Timings::default();
    let w = World::new(t);
    w.with_current_and_staged_next().await;
    let next = w.kid(KeyState::Next).await;
    let current = w.ring().await.current().unwrap().jwk.clone();
    w.clock.advance(t.warm_up / 2);
    w.edge.overwrite(vec![current]);
    w.clock.advance(60);

    let mut report = Report::default();
    w.rotator.publish(&mut report).await.unwrap();
    assert!(
        report
            .actions
            .contains(&Action::LostPublic { kid: next.clone() }),
        "{report:?}"
    );
    assert_eq!(w.edge.served_kids().len(), 2);
    // The rest of the first warm-up is not enough.
    w.clock.advance(t.warm_up / 2);
    let mut report = Report::default();
    let message = refusal(w.rotator.promote(false, &mut report).await);
    assert!(message.contains("never been seen"), "{message}");
    w.rotate().await;
    let message = refusal(w.rotator.promote(false, &mut report).await);
    assert!(message.contains("0 s of the"), "{message}");
    assert_eq!(w.kid(KeyState::Next).await, next);
}

#[tokio::test]
async fn a_promotion_cut_short_is_finished_by_the_next_run() {
    let t = Timings::default();
    let w = World::new(t);
    w.with_current_and_staged_next().await;
    let old = w.kid(KeyState::Current).await;
    let new = w.kid(KeyState::Next).await;
    w.clock.advance(t.edge_propagation + t.warm_up);
    // The re-publication, then `previous` and `current` move; dies before
    // `next` is removed.
    w.store.fail_after(Some(2));
    let mut report = Report::default();
    let err = w.rotator.promote(false, &mut report).await.unwrap_err();
    assert!(err.to_string().contains("the test's crash"), "{err}");
    w.store.fail_after(None);
    assert_eq!(w.ring().await.current().unwrap().kid(), new);

    w.clock.advance(10);
    let report = w.rotate().await;
    let repaired: Vec<&Repair> = report
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Repaired { repair } => Some(repair),
            _ => None,
        })
        .collect();
    assert_eq!(repaired.len(), 3, "{report:?}");
    let ring = w.ring().await;
    // Both stamps are the rerun's time: later than the truth, so K2's
    // retention only grows.
    let now = w.clock.now_unix();
    assert_eq!(ring.previous().unwrap().kid(), old);
    assert_eq!(ring.previous().unwrap().stamp(Stamp::Demoted), Some(now));
    assert_eq!(ring.current().unwrap().stamp(Stamp::Promoted), Some(now));
    assert!(ring.next().is_none());
    assert_eq!(w.edge.served_kids(), vec![new, old]);
}

/// Two runs at once (the schedule and an operator's `aws2azure keys
/// rotate`): the second one's repair rolls back the first one's half-done
/// promotion while the first goes on. The demoted key loses every alias but
/// must stay published until K2's retention after its demotion.
#[tokio::test]
async fn a_key_a_concurrent_run_left_without_alias_stays_published_for_k2() {
    let world = World::new(Timings::default());
    world.with_current_and_staged_next().await;
    let t = *world.rotator.timings();
    world.clock.advance(t.edge_propagation + t.warm_up);
    let ring = world.ring().await;
    let (old, new) = (
        ring.current().unwrap().clone(),
        ring.next().unwrap().clone(),
    );

    // The first run: `previous` → the current key ...
    world
        .store
        .point(Slot::Previous, &old.key_id)
        .await
        .unwrap();
    // ... the second run's repair sees a promotion to roll back ...
    world.rotate().await;
    assert!(world.ring().await.at(Slot::Previous).is_none());
    // ... and the first run finishes its promotion.
    world.store.point(Slot::Current, &new.key_id).await.unwrap();
    world.store.unpoint(Slot::Next).await.unwrap();
    let now = world.clock.now_unix();
    world
        .store
        .stamp(&new.key_id, Stamp::Promoted, now)
        .await
        .unwrap();
    world
        .store
        .stamp(&old.key_id, Stamp::Demoted, now)
        .await
        .unwrap();

    // The old key has no alias left, and is still previous: published.
    world.rotate().await;
    let ring = world.ring().await;
    let kept = ring.get(&old.key_id).unwrap();
    assert!(kept.slots.is_empty());
    assert_eq!(kept.state(), KeyState::Previous);
    assert!(
        world.edge.served_kids().contains(&old.kid().to_string()),
        "{:?}",
        world.edge.served_kids()
    );
    // Until K2 allows its retirement, and not before.
    world.clock.advance(t.previous_retention - 1);
    world.rotate().await;
    assert!(world.edge.served_kids().contains(&old.kid().to_string()));
    world.clock.advance(1);
    world.rotate().await;
    // Retired, then (no longer listed) scheduled for deletion in the same
    // run, which takes it out of the ring.
    assert!(
        world
            .ring()
            .await
            .get(&old.key_id)
            .is_none_or(|k| k.state() == KeyState::Retired)
    );
    assert!(!world.edge.served_kids().contains(&old.kid().to_string()));
    assert!(
        world
            .events()
            .iter()
            .any(|e| matches!(e, Event::Stamp(kid, Stamp::Retired) if kid == old.kid()))
    );
}
