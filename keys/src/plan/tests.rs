use super::*;
use crate::ring::Usability;
use crate::timings::DAY;

const NOW: u64 = 1_000 * DAY;

fn key(id: &str, created_at: u64, slots: &[Slot], stamps: &[(Stamp, u64)]) -> KeyRecord {
    KeyRecord {
        key_id: id.into(),
        jwk: crate::memory::test_jwk(id),
        created_at,
        slots: slots.iter().copied().collect(),
        stamps: stamps.iter().copied().collect(),
        usability: Usability::Enabled,
    }
}

fn kids(keys: &[&KeyRecord]) -> Vec<KeyId> {
    keys.iter().map(|k| k.jwk.kid().clone()).collect()
}

/// A current key promoted long ago and a next key first seen publicly at
/// `seen`.
fn current_and_next(seen: u64) -> (KeyRecord, KeyRecord) {
    let current = key(
        "cur",
        1,
        &[Slot::Current],
        &[
            (Stamp::Published, 0),
            (Stamp::SeenPublic, 0),
            (Stamp::Promoted, DAY),
        ],
    );
    let next = key(
        "nxt",
        2,
        &[Slot::Next],
        &[(Stamp::Published, seen), (Stamp::SeenPublic, seen)],
    );
    (current, next)
}

fn previous(demoted: Option<u64>) -> KeyRecord {
    let mut stamps = vec![(Stamp::Promoted, 0)];
    stamps.extend(demoted.map(|d| (Stamp::Demoted, d)));
    key("prv", 0, &[Slot::Previous], &stamps)
}

// ---- repairs ----

#[test]
fn a_ring_in_order_needs_no_repair() {
    let (current, next) = current_and_next(NOW - DAY);
    let ring = KeyRing::new(vec![previous(Some(NOW)), current, next]);
    assert_eq!(repairs(&ring), vec![]);
}

#[test]
fn a_retired_key_loses_the_alias_it_still_has() {
    let k = key(
        "k",
        0,
        &[Slot::Previous],
        &[(Stamp::Demoted, 1), (Stamp::Retired, 2)],
    );
    assert_eq!(
        repairs(&KeyRing::new(vec![k])),
        vec![Repair::Unpoint {
            slot: Slot::Previous,
            key_id: "k".into()
        }]
    );
}

#[test]
fn a_promotion_that_moved_current_is_finished_and_stamped() {
    // `current` moved to the next key, `next` not yet removed, no stamps
    // written: the old current is previous without its demotion time.
    let old = key("old", 0, &[Slot::Previous], &[(Stamp::Promoted, 0)]);
    let new = key(
        "new",
        1,
        &[Slot::Next, Slot::Current],
        &[(Stamp::SeenPublic, 0)],
    );
    let got = repairs(&KeyRing::new(vec![old, new]));
    assert_eq!(
        got,
        vec![
            Repair::Stamp {
                key_id: "old".into(),
                stamp: Stamp::Demoted
            },
            Repair::Unpoint {
                slot: Slot::Next,
                key_id: "new".into()
            },
            Repair::Stamp {
                key_id: "new".into(),
                stamp: Stamp::Promoted
            },
        ]
    );
}

#[test]
fn a_promotion_that_only_moved_previous_is_rolled_back_not_stamped() {
    // `previous` points at the current key, `current` did not move: the
    // promotion is undone and decided again with its guard.
    let cur = key("cur", 0, &[Slot::Current, Slot::Previous], &[]);
    let next = key("nxt", 1, &[Slot::Next], &[(Stamp::SeenPublic, 0)]);
    assert_eq!(
        repairs(&KeyRing::new(vec![cur, next])),
        vec![Repair::Unpoint {
            slot: Slot::Previous,
            key_id: "cur".into()
        }]
    );
}

#[test]
fn a_current_key_without_its_promotion_time_is_stamped() {
    let cur = key("cur", 0, &[Slot::Current], &[]);
    assert_eq!(
        repairs(&KeyRing::new(vec![cur])),
        vec![Repair::Stamp {
            key_id: "cur".into(),
            stamp: Stamp::Promoted
        }]
    );
}

#[test]
fn next_and_unstaged_keys_need_no_stamp() {
    let next = key("nxt", 0, &[Slot::Next], &[]);
    let unstaged = key("new", 1, &[], &[]);
    assert_eq!(repairs(&KeyRing::new(vec![next, unstaged])), vec![]);
}

// ---- check_promote ----

#[test]
fn a_next_key_served_for_the_whole_warm_up_is_promoted_without_risk() {
    let t = Timings::default();
    // Exactly at the boundary: every edge location has served it (the
    // propagation after the first sighting) for the whole warm-up.
    let seen = NOW - t.edge_propagation - t.warm_up;
    assert_eq!(t.warm_at(seen), NOW);
    let (current, next) = current_and_next(seen);
    let ring = KeyRing::new(vec![current, next]);
    let public = kids(&[ring.current().unwrap(), ring.next().unwrap()]);
    let p = check_promote(&ring, NOW, &t, Some(&public), false).unwrap();
    assert_eq!(p.next.key_id, "nxt");
    assert_eq!(p.current.map(|c| c.key_id.as_str()), Some("cur"));
    assert!(p.risks.is_empty(), "{:?}", p.risks);
}

#[test]
fn the_first_key_is_promoted_with_nothing_to_demote() {
    let t = Timings::default();
    let next = key("nxt", 0, &[Slot::Next], &[(Stamp::SeenPublic, 0)]);
    let ring = KeyRing::new(vec![next]);
    let public = kids(&[ring.next().unwrap()]);
    let p = check_promote(&ring, t.warm_at(0), &t, Some(&public), false).unwrap();
    assert_eq!(p.current, None);
}

#[test]
fn k1_refuses_a_key_one_second_short_of_its_warm_up_and_says_when() {
    let t = Timings::default();
    // Served through the location the check read for longer than the
    // warm-up, but the others may have served it only the propagation later.
    let seen = NOW - t.edge_propagation - t.warm_up + 1;
    assert_eq!(t.warm_at(seen), NOW + 1);
    let (current, next) = current_and_next(seen);
    let ring = KeyRing::new(vec![current, next]);
    let public = kids(&[ring.current().unwrap(), ring.next().unwrap()]);
    let refusal = check_promote(&ring, NOW, &t, Some(&public), false).unwrap_err();
    assert!(
        refusal.reason.starts_with("K1 refuses"),
        "{}",
        refusal.reason
    );
    assert!(refusal.reason.contains("warm-up"), "{}", refusal.reason);
    assert!(refusal.reason.contains("--force"), "{}", refusal.reason);
    assert!(
        refusal
            .reason
            .contains(&format!("after {}", at(t.warm_at(seen)))),
        "{}",
        refusal.reason
    );
    assert_eq!(refusal.allowed_at, Some(t.warm_at(seen)));
    // The count it gives is of the warm-up proper, which starts once every
    // edge location serves the key.
    assert!(
        refusal.reason.contains(&format!(
            "({} s of the {} s warm-up, which counts from when every edge location serves the \
             key: the first sighting + {} s of edge propagation)",
            t.warm_up - 1,
            t.warm_up,
            t.edge_propagation
        )),
        "{}",
        refusal.reason
    );

    let forced = check_promote(&ring, NOW, &t, Some(&public), true).unwrap();
    assert_eq!(forced.risks.len(), 1, "{:?}", forced.risks);
    assert!(forced.risks[0].contains("warm-up"), "{:?}", forced.risks);
}

#[test]
fn k1_refuses_a_key_the_public_set_does_not_list_whatever_its_stamp_says() {
    let t = Timings::default();
    let (current, next) = current_and_next(0);
    let ring = KeyRing::new(vec![current, next]);
    let public = kids(&[ring.current().unwrap()]);
    let refusal = check_promote(&ring, NOW, &t, Some(&public), false).unwrap_err();
    assert!(
        refusal.reason.starts_with("K1 refuses"),
        "{}",
        refusal.reason
    );
    assert!(
        refusal.reason.contains("does not list kid"),
        "{}",
        refusal.reason
    );
    // Time alone will not fix it.
    assert_eq!(refusal.allowed_at, None);

    let forced = check_promote(&ring, NOW, &t, Some(&public), true).unwrap();
    assert!(
        forced.risks.iter().any(|r| r.contains("does not list kid")),
        "{:?}",
        forced.risks
    );
}

#[test]
fn k1_refuses_when_the_public_set_cannot_be_read() {
    let t = Timings::default();
    let (current, next) = current_and_next(0);
    let ring = KeyRing::new(vec![current, next]);
    let refusal = check_promote(&ring, NOW, &t, None, false).unwrap_err();
    assert!(
        refusal.reason.starts_with("K1 refuses"),
        "{}",
        refusal.reason
    );
    assert!(
        refusal.reason.contains("could not be read"),
        "{}",
        refusal.reason
    );
    assert_eq!(refusal.allowed_at, None);
    let forced = check_promote(&ring, NOW, &t, None, true).unwrap();
    assert!(
        forced.risks.iter().any(|r| r.contains("could not be read")),
        "{:?}",
        forced.risks
    );
}

#[test]
fn k1_refuses_a_key_never_seen_publicly_and_force_lists_every_risk() {
    let t = Timings::default();
    let next = key("nxt", 0, &[Slot::Next], &[(Stamp::Published, 0)]);
    let ring = KeyRing::new(vec![next]);
    let refusal = check_promote(&ring, NOW, &t, Some(&[]), false).unwrap_err();
    assert!(
        refusal.reason.starts_with("K1 refuses"),
        "{}",
        refusal.reason
    );
    assert!(
        refusal.reason.contains("never been seen"),
        "{}",
        refusal.reason
    );
    let forced = check_promote(&ring, NOW, &t, Some(&[]), true).unwrap();
    assert_eq!(forced.risks.len(), 2, "{:?}", forced.risks);
    assert!(forced.risks[0].contains("does not list kid"));
    assert!(forced.risks[1].contains("never been seen"));
}

#[test]
fn force_does_not_promote_without_a_next_key() {
    let t = Timings::default();
    let (current, _) = current_and_next(0);
    let ring = KeyRing::new(vec![current]);
    for force in [false, true] {
        let refusal = check_promote(&ring, NOW, &t, Some(&[]), force).unwrap_err();
        assert!(
            refusal.reason.contains("no next key") && refusal.reason.contains("keys stage"),
            "{}",
            refusal.reason
        );
    }
}

#[test]
fn force_does_not_promote_a_key_kms_will_not_sign_with() {
    let t = Timings::default();
    let (current, mut next) = current_and_next(0);
    next.usability = Usability::Disabled;
    let ring = KeyRing::new(vec![current, next]);
    let public = kids(&[ring.current().unwrap(), ring.next().unwrap()]);
    for force in [false, true] {
        let refusal = check_promote(&ring, NOW, &t, Some(&public), force).unwrap_err();
        assert!(
            refusal.reason.contains("Disabled") && refusal.reason.contains("cannot sign"),
            "{}",
            refusal.reason
        );
    }
}

#[test]
fn force_does_not_promote_while_a_previous_key_is_still_published() {
    // A fourth key would be published, and the previous key would lose its
    // K2 retention to the demotion of the current one.
    let t = Timings::default();
    let demoted = NOW - 10;
    let (current, next) = current_and_next(0);
    let ring = KeyRing::new(vec![previous(Some(demoted)), current, next]);
    let public: Vec<KeyId> = ring.keys().iter().map(|k| k.jwk.kid().clone()).collect();
    for force in [false, true] {
        let refusal = check_promote(&ring, NOW, &t, Some(&public), force).unwrap_err();
        assert!(
            refusal.reason.contains("still published: retire it first"),
            "{}",
            refusal.reason
        );
        assert!(
            refusal.reason.contains(&at(demoted + t.previous_retention)),
            "{}",
            refusal.reason
        );
        assert_eq!(refusal.allowed_at, Some(demoted + t.previous_retention));
    }
    let undated = KeyRing::new(vec![
        previous(None),
        ring.current().unwrap().clone(),
        ring.next().unwrap().clone(),
    ]);
    let refusal = check_promote(&undated, NOW, &t, Some(&public), true).unwrap_err();
    assert!(
        refusal.reason.contains("once its demotion is recorded"),
        "{}",
        refusal.reason
    );
    assert_eq!(refusal.allowed_at, None);
}

// ---- check_retire ----

#[test]
fn k2_allows_retirement_exactly_at_the_end_of_the_retention() {
    let t = Timings::default();
    let demoted = NOW - t.previous_retention;
    let (current, _) = current_and_next(0);
    let ring = KeyRing::new(vec![previous(Some(demoted)), current]);
    let (key, risks) = check_retire(&ring, NOW, &t, false).unwrap();
    assert_eq!(key.key_id, "prv");
    assert!(risks.is_empty(), "{risks:?}");
}

#[test]
fn k2_refuses_a_second_early_and_force_names_the_risk() {
    let t = Timings::default();
    let demoted = NOW - t.previous_retention + 1;
    let (current, _) = current_and_next(0);
    let ring = KeyRing::new(vec![previous(Some(demoted)), current]);
    let refusal = check_retire(&ring, NOW, &t, false).unwrap_err();
    assert!(
        refusal.reason.starts_with("K2 refuses"),
        "{}",
        refusal.reason
    );
    assert!(
        refusal.reason.contains(&at(NOW + 1)) && refusal.reason.contains("--force"),
        "{}",
        refusal.reason
    );
    assert_eq!(refusal.allowed_at, Some(NOW + 1));

    let (key, risks) = check_retire(&ring, NOW, &t, true).unwrap();
    assert_eq!(key.key_id, "prv");
    assert_eq!(risks.len(), 1);
    assert!(risks[0].contains("may still be in use"), "{risks:?}");
}

#[test]
fn retirement_needs_a_previous_key_with_a_recorded_demotion_even_when_forced() {
    let t = Timings::default();
    let (current, _) = current_and_next(0);
    let ring = KeyRing::new(vec![current.clone()]);
    for force in [false, true] {
        let refusal = check_retire(&ring, NOW, &t, force).unwrap_err();
        assert!(
            refusal.reason.contains("no previous key"),
            "{}",
            refusal.reason
        );
    }
    let ring = KeyRing::new(vec![previous(None), current]);
    for force in [false, true] {
        let refusal = check_retire(&ring, NOW, &t, force).unwrap_err();
        assert!(
            refusal.reason.contains("no recorded demotion time")
                && refusal.reason.contains("keys rotate"),
            "{}",
            refusal.reason
        );
    }
}

// ---- stage_due, promotion_due_at, retirement_due_at ----

#[test]
fn the_first_key_is_due_at_once() {
    let t = Timings::default();
    assert!(stage_due(&KeyRing::default(), 0, &t));
    assert_eq!(promotion_due_at(&KeyRing::default(), &t), Some(0));
    assert_eq!(retirement_due_at(&KeyRing::default(), &t), None);
}

#[test]
fn the_successor_is_due_a_warm_up_and_the_edge_propagation_before_the_period_ends() {
    let t = Timings::default();
    let promoted = DAY;
    let (current, next) = current_and_next(0);
    let ring = KeyRing::new(vec![current.clone()]);
    // Seen everywhere and warm (`warm_at`) exactly when the period ends.
    let due = promoted + t.period - t.warm_up - t.edge_propagation;
    assert_eq!(t.warm_at(due), promoted + t.period);
    assert!(!stage_due(&ring, due - 1, &t));
    assert!(stage_due(&ring, due, &t));
    assert_eq!(promotion_due_at(&ring, &t), Some(promoted + t.period));
    // Once one is staged, never another.
    let ring = KeyRing::new(vec![current, next]);
    assert!(!stage_due(&ring, due + t.period, &t));
}

#[test]
fn a_current_key_without_its_promotion_time_schedules_nothing() {
    // `rotate` repairs the stamp first; until then, no guess.
    let t = Timings::default();
    let ring = KeyRing::new(vec![key("cur", 0, &[Slot::Current], &[])]);
    assert!(!stage_due(&ring, u64::MAX / 2, &t));
    assert_eq!(promotion_due_at(&ring, &t), None);
}

#[test]
fn an_unstaged_key_does_not_count_as_next() {
    let t = Timings::default();
    let ring = KeyRing::new(vec![key("new", 0, &[], &[])]);
    assert!(stage_due(&ring, 0, &t));
}

#[test]
fn retirement_is_due_a_retention_after_the_demotion() {
    let t = Timings::default();
    let ring = KeyRing::new(vec![previous(Some(NOW))]);
    assert_eq!(
        retirement_due_at(&ring, &t),
        Some(NOW + t.previous_retention)
    );
    assert_eq!(
        retirement_due_at(&KeyRing::new(vec![previous(None)]), &t),
        None
    );
}

// ---- observations, deletions ----

#[test]
fn a_key_first_found_in_the_public_set_is_seen_once() {
    let next = key("nxt", 0, &[Slot::Next], &[(Stamp::Published, 0)]);
    let ring = KeyRing::new(vec![next.clone()]);
    let public = kids(&[&next]);
    assert_eq!(
        observations(&ring, &public),
        vec![Observation::Seen("nxt".into())]
    );
    let (_, seen) = current_and_next(0);
    assert_eq!(
        observations(&KeyRing::new(vec![seen.clone()]), &kids(&[&seen])),
        vec![]
    );
}

#[test]
fn a_next_key_lost_from_the_public_set_starts_its_warm_up_again() {
    let (current, next) = current_and_next(0);
    let public = kids(&[&current]);
    assert_eq!(
        observations(&KeyRing::new(vec![current, next]), &public),
        vec![Observation::Lost("nxt".into())]
    );
}

#[test]
fn a_current_or_previous_key_missing_publicly_is_not_reset() {
    // They sign or may have signed already; their warm-up no longer matters
    // (rotate republishes the document instead).
    let (current, _) = current_and_next(0);
    let previous = key(
        "prv",
        0,
        &[Slot::Previous],
        &[(Stamp::SeenPublic, 0), (Stamp::Demoted, 1)],
    );
    assert_eq!(
        observations(&KeyRing::new(vec![previous, current]), &[]),
        vec![]
    );
}

#[test]
fn a_retired_key_is_unlisted_once_the_public_set_drops_it() {
    let retired = key("old", 0, &[], &[(Stamp::Demoted, 1), (Stamp::Retired, 2)]);
    let ring = KeyRing::new(vec![retired.clone()]);
    assert_eq!(observations(&ring, &kids(&[&retired])), vec![]);
    assert_eq!(
        observations(&ring, &[]),
        vec![Observation::Unlisted("old".into())]
    );
    assert_eq!(deletions(&ring), vec![]);

    let mut unlisted = retired;
    unlisted.stamps.insert(Stamp::Unlisted, 3);
    let ring = KeyRing::new(vec![unlisted.clone()]);
    assert_eq!(observations(&ring, &[]), vec![]);
    assert_eq!(deletions(&ring), vec![(&unlisted, Usability::Enabled)]);

    let mut pending = unlisted;
    pending.usability = Usability::PendingDeletion;
    assert_eq!(deletions(&KeyRing::new(vec![pending])), vec![]);
}

#[test]
fn an_unstaged_key_is_not_observed() {
    let unstaged = key("new", 0, &[], &[]);
    let ring = KeyRing::new(vec![unstaged.clone()]);
    assert_eq!(observations(&ring, &kids(&[&unstaged])), vec![]);
    assert_eq!(observations(&ring, &[]), vec![]);
}

// ---- status ----

#[test]
fn status_lists_current_first_with_each_next_step_and_its_time() {
    let t = Timings::default();
    let promoted = NOW - 10 * DAY;
    let seen = NOW - 10;
    let current = key(
        "cur",
        1,
        &[Slot::Current],
        &[(Stamp::Published, 0), (Stamp::Promoted, promoted)],
    );
    let next = key(
        "nxt",
        2,
        &[Slot::Next],
        &[(Stamp::Published, seen), (Stamp::SeenPublic, seen)],
    );
    let prev = previous(Some(NOW - 100));
    let unstaged = key("new", 3, &[], &[]);
    let retired = key(
        "old",
        0,
        &[],
        &[
            (Stamp::Demoted, 1),
            (Stamp::Retired, 2),
            (Stamp::Unlisted, 3),
        ],
    );
    let ring = KeyRing::new(vec![retired, unstaged, prev, next, current]);
    let got = status(&ring, NOW, &t);
    let order: Vec<(&str, KeyState)> = got.iter().map(|s| (s.key_id.as_str(), s.state)).collect();
    assert_eq!(
        order,
        vec![
            ("cur", KeyState::Current),
            ("nxt", KeyState::Next),
            ("prv", KeyState::Previous),
            ("new", KeyState::Unstaged),
            ("old", KeyState::Retired),
        ]
    );
    let step = |i: usize| (got[i].next_step.as_str(), got[i].due_at);
    assert_eq!(
        step(0),
        (
            "demote to previous (when its successor is promoted)",
            Some(promoted + t.period)
        )
    );
    // Promotion waits for the later of the period's end and the warm-up.
    assert_eq!(step(1), ("promote to current", Some(promoted + t.period)));
    assert_eq!(step(2), ("retire", Some(NOW - 100 + t.previous_retention)));
    assert_eq!(step(3).1, Some(NOW));
    assert_eq!(step(4), ("disable and schedule deletion", Some(NOW)));
    assert_eq!(got[0].promoted_at, Some(promoted));
    assert_eq!(got[1].seen_public_at, Some(seen));
    assert_eq!(got[4].retired_at, Some(2));
}

#[test]
fn status_of_a_next_key_follows_its_publication() {
    let t = Timings::default();
    let step = |k: KeyRecord| {
        let s = status(&KeyRing::new(vec![k]), NOW, &t).remove(0);
        (s.next_step, s.due_at)
    };
    assert_eq!(
        step(key("n", 0, &[Slot::Next], &[])),
        ("publish".into(), Some(NOW))
    );
    assert_eq!(
        step(key("n", 0, &[Slot::Next], &[(Stamp::Published, 1)])),
        ("wait until the public key set lists it".into(), None)
    );
    // No current key: due as soon as it is warm.
    assert_eq!(
        step(key(
            "n",
            0,
            &[Slot::Next],
            &[(Stamp::Published, 1), (Stamp::SeenPublic, NOW)]
        )),
        (
            "promote to current".into(),
            Some(NOW + t.edge_propagation + t.warm_up)
        )
    );
}

#[test]
fn status_of_a_current_key_alone_schedules_its_successor() {
    let t = Timings::default();
    let current = key("c", 0, &[Slot::Current], &[(Stamp::Promoted, DAY)]);
    let s = status(&KeyRing::new(vec![current]), NOW, &t).remove(0);
    assert_eq!(s.next_step, "stage its successor");
    assert_eq!(s.due_at, Some(t.stage_due(DAY)));
}

#[test]
fn status_of_a_retired_key_follows_kms() {
    let t = Timings::default();
    let mut k = key("o", 0, &[], &[(Stamp::Retired, 2)]);
    let step = |k: &KeyRecord| {
        let s = status(&KeyRing::new(vec![k.clone()]), NOW, &t).remove(0);
        (s.next_step, s.due_at)
    };
    assert_eq!(
        step(&k),
        (
            "wait until the public key set no longer lists it".into(),
            None
        )
    );
    k.stamps.insert(Stamp::Unlisted, 3);
    k.usability = Usability::Disabled;
    assert_eq!(step(&k), ("schedule deletion".into(), Some(NOW)));
    k.usability = Usability::PendingDeletion;
    assert_eq!(step(&k).1, None);
}

#[test]
fn times_in_messages_are_rfc3339() {
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(DAY + 61), "1970-01-02T00:01:01Z");
}
