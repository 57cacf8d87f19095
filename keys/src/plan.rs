//! The decisions, as pure functions of the key ring, the time, the timings
//! and (for promotion) the key set the public edge serves now. No I/O here:
//! [`crate::rotation`] does what these functions decide, and the property
//! tests drive them directly.

use aws2azure_shared::jwk::KeyId;
use serde::Serialize;

use crate::ring::{KeyRecord, KeyRing, KeyState, Slot, Stamp, Usability};
use crate::timings::Timings;

/// A step that puts a ring left half-way by a crash back into a state the
/// lifecycle knows. Each is safe to repeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "repair", rename_all = "kebab-case")]
pub enum Repair {
    /// An alias still points at a key that is retired, or a second alias at
    /// the current key (a promotion interrupted between two alias moves).
    Unpoint { slot: Slot, key_id: String },
    /// A step happened but its time was not recorded: record the rerun's
    /// time, which is later than the truth (on the safe side for K1 and K2).
    Stamp { key_id: String, stamp: Stamp },
}

/// What has to be done to put the ring back in order.
pub fn repairs(ring: &KeyRing) -> Vec<Repair> {
    let mut out = Vec::new();
    for key in ring.keys() {
        let state = key.state();
        for &slot in &key.slots {
            let stray = match state {
                KeyState::Retired => true,
                // Mid-promotion: `previous` moved to the current key but
                // `current` did not move yet: undo (the promotion is
                // decided again, with its guard). Or `current` moved and
                // `next` was not removed yet: finish.
                KeyState::Current => slot != Slot::Current,
                _ => false,
            };
            if stray {
                out.push(Repair::Unpoint {
                    slot,
                    key_id: key.key_id.clone(),
                });
            }
        }
        // Only the final alias counts: a key that is current and still under
        // `previous` is being rolled back, not demoted.
        let missing = match state {
            KeyState::Current => Some(Stamp::Promoted),
            KeyState::Previous => Some(Stamp::Demoted),
            _ => None,
        };
        if let Some(stamp) = missing.filter(|s| key.stamp(*s).is_none()) {
            let rolling_back = state == KeyState::Current && key.slots.contains(&Slot::Previous);
            if !rolling_back {
                out.push(Repair::Stamp {
                    key_id: key.key_id.clone(),
                    stamp,
                });
            }
        }
    }
    out
}

/// A step refused by its guard: which invariant, why, and from when it would
/// be allowed (if time alone will allow it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub reason: String,
    pub allowed_at: Option<u64>,
}

impl Refusal {
    fn new(reason: impl Into<String>, allowed_at: Option<u64>) -> Self {
        Self {
            reason: reason.into(),
            allowed_at,
        }
    }
}

/// A promotion that may go ahead: the key to promote and the one it
/// demotes (none for the very first key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion<'a> {
    pub next: &'a KeyRecord,
    pub current: Option<&'a KeyRecord>,
    /// What forcing it risks; empty when K1 holds.
    pub risks: Vec<String>,
}

/// K1's guard. `public` is the key set the issuer's discovery document leads
/// to right now (`None`: it could not be read). Without `force` the next key
/// must be served publicly now and have been first seen at least the edge
/// propagation plus the warm-up ago ([`Timings::warm_at`]): the sighting is
/// through one edge location, and the others may serve the key up to the
/// propagation later. `force` skips K1 only, and says what that risks; it never skips the
/// structural checks (a next key exists and can sign, no previous key is
/// still published).
pub fn check_promote<'a>(
    ring: &'a KeyRing,
    now: u64,
    timings: &Timings,
    public: Option<&[KeyId]>,
    force: bool,
) -> Result<Promotion<'a>, Refusal> {
    let Some(next) = ring.next() else {
        return Err(Refusal::new(
            "there is no next key to promote: stage one first (`aws2azure keys stage`)",
            None,
        ));
    };
    if next.usability != Usability::Enabled {
        return Err(Refusal::new(
            format!(
                "the next key {} is {:?} in KMS and cannot sign",
                next.key_id, next.usability
            ),
            None,
        ));
    }
    if let Some(previous) = ring.previous() {
        let allowed_at = previous
            .stamp(Stamp::Demoted)
            .map(|d| d.saturating_add(timings.previous_retention));
        return Err(Refusal::new(
            format!(
                "the previous key {} is still published: retire it first (K2 allows that {})",
                previous.kid(),
                allowed_at.map_or("once its demotion is recorded".into(), |t| format!(
                    "from {}",
                    at(t)
                ))
            ),
            allowed_at,
        ));
    }
    let listed = public.map(|kids| kids.iter().any(|k| k == next.jwk.kid()));
    let seen = next.stamp(Stamp::SeenPublic);
    let warm_at = seen.map(|s| timings.warm_at(s));
    let mut problems = Vec::new();
    match listed {
        None => problems.push(
            "the public key set could not be read, so it is unknown whether Entra can find the key"
                .to_string(),
        ),
        Some(false) => problems.push(format!(
            "the public key set does not list kid {}: Entra would refuse every assertion signed with it",
            next.kid()
        )),
        Some(true) => {}
    }
    match (seen, warm_at) {
        (Some(seen), Some(warm_at)) if now < warm_at => problems.push(format!(
            "kid {} was first seen publicly at {} ({} s of the {} s warm-up, which counts from \
             when every edge location serves the key: the first sighting + {} s of edge \
             propagation): a relying party that cached the key set before its edge location \
             served the key and does not refetch on an unknown kid (Entra does not document \
             what it does) refuses assertions signed with it until its cache expires",
            next.kid(),
            at(seen),
            now.saturating_sub(seen.saturating_add(timings.edge_propagation)),
            timings.warm_up,
            timings.edge_propagation
        )),
        (None, _) => problems.push(format!(
            "kid {} has never been seen in the public key set: nothing proves the edge serves it",
            next.kid()
        )),
        _ => {}
    }
    if problems.is_empty() {
        return Ok(Promotion {
            next,
            current: ring.current(),
            risks: Vec::new(),
        });
    }
    if force {
        return Ok(Promotion {
            next,
            current: ring.current(),
            risks: problems,
        });
    }
    let allowed_at = match listed {
        Some(true) => warm_at,
        _ => None,
    };
    Err(Refusal::new(
        format!(
            "K1 refuses the promotion: {}; rerun {}, or pass --force to take the risk",
            problems.join("; "),
            allowed_at.map_or("once the key is served publicly".into(), |t| format!(
                "after {}",
                at(t)
            ))
        ),
        allowed_at,
    ))
}

/// K2's guard: the previous key may leave the document once it has been
/// previous for the retention ([`Timings::validate`] makes that cover its
/// last possible use, an assertion's lifetime and the edge's propagation).
/// `force` skips K2 (an emergency: the key is compromised).
pub fn check_retire<'a>(
    ring: &'a KeyRing,
    now: u64,
    timings: &Timings,
    force: bool,
) -> Result<(&'a KeyRecord, Vec<String>), Refusal> {
    let Some(previous) = ring.previous() else {
        return Err(Refusal::new("there is no previous key to retire", None));
    };
    let Some(demoted) = previous.stamp(Stamp::Demoted) else {
        return Err(Refusal::new(
            format!(
                "the previous key {} has no recorded demotion time: run `aws2azure keys rotate` \
                 to repair the ring first",
                previous.kid()
            ),
            None,
        ));
    };
    let allowed_at = demoted.saturating_add(timings.previous_retention);
    if now >= allowed_at {
        return Ok((previous, Vec::new()));
    }
    let risk = format!(
        "kid {} was demoted at {} and may still be in use: a signer may go on signing with it for {} \
         s and an assertion lives {} s; removing it before {} can fail exchanges signed with it",
        previous.kid(),
        at(demoted),
        timings.signer_resolve_interval,
        timings.assertion_lifetime,
        at(allowed_at)
    );
    if force {
        return Ok((previous, vec![risk]));
    }
    Err(Refusal::new(
        format!(
            "K2 refuses the retirement: {risk}; rerun after then, or pass --force if the key is compromised"
        ),
        Some(allowed_at),
    ))
}

/// Whether `rotate` should stage a key now: none is next (or waiting to be
/// staged) and the current key's period ends within the warm-up, or there
/// is no current key at all.
pub fn stage_due(ring: &KeyRing, now: u64, timings: &Timings) -> bool {
    if ring.next().is_some() {
        return false;
    }
    match ring.current() {
        None => true,
        Some(current) => current
            .stamp(Stamp::Promoted)
            .is_some_and(|p| now >= timings.stage_due(p)),
    }
}

/// When `rotate` promotes: the current key's period is over (or there is
/// none). K1 is checked separately.
pub fn promotion_due_at(ring: &KeyRing, timings: &Timings) -> Option<u64> {
    match ring.current() {
        None => Some(0),
        Some(current) => current
            .stamp(Stamp::Promoted)
            .map(|p| p.saturating_add(timings.period)),
    }
}

/// When `rotate` retires the previous key.
pub fn retirement_due_at(ring: &KeyRing, timings: &Timings) -> Option<u64> {
    ring.previous()?
        .stamp(Stamp::Demoted)
        .map(|d| d.saturating_add(timings.previous_retention))
}

/// What the public key set says about each key, as stamps to write.
pub fn observations(ring: &KeyRing, public: &[KeyId]) -> Vec<Observation> {
    let listed = |k: &KeyRecord| public.iter().any(|kid| kid == k.jwk.kid());
    let mut out = Vec::new();
    for key in ring.keys() {
        match key.state() {
            KeyState::Next | KeyState::Current | KeyState::Previous => {
                match (listed(key), key.stamp(Stamp::SeenPublic)) {
                    (true, None) => out.push(Observation::Seen(key.key_id.clone())),
                    // Lost from the public document (overwritten by hand, or
                    // a publication rolled back): the warm-up of a key that
                    // does not sign yet starts again.
                    (false, Some(_)) if key.state() == KeyState::Next => {
                        out.push(Observation::Lost(key.key_id.clone()))
                    }
                    _ => {}
                }
            }
            KeyState::Retired => {
                if !listed(key) && key.stamp(Stamp::Unlisted).is_none() {
                    out.push(Observation::Unlisted(key.key_id.clone()));
                }
            }
            KeyState::Unstaged => {}
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// First seen in the public key set: stamp it.
    Seen(String),
    /// A next key missing from the public set: its warm-up restarts.
    Lost(String),
    /// A retired key no longer listed: it may be disabled and deleted.
    Unlisted(String),
}

/// Retired keys that the public key set no longer lists, and what KMS still
/// has to do for each.
pub fn deletions(ring: &KeyRing) -> Vec<(&KeyRecord, Usability)> {
    ring.keys()
        .iter()
        .filter(|k| k.state() == KeyState::Retired && k.stamp(Stamp::Unlisted).is_some())
        .filter(|k| k.usability != Usability::PendingDeletion)
        .map(|k| (k, k.usability))
        .collect()
}

/// One key's line in `aws2azure keys status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    pub state: KeyState,
    pub kid: String,
    pub key_id: String,
    pub created_at: u64,
    pub published_at: Option<u64>,
    pub seen_public_at: Option<u64>,
    pub promoted_at: Option<u64>,
    pub demoted_at: Option<u64>,
    pub retired_at: Option<u64>,
    pub usability: Usability,
    /// The next step for this key and when it is due (`None`: nothing
    /// scheduled, or waiting on something other than time).
    pub next_step: String,
    pub due_at: Option<u64>,
}

/// Every key with its next step, current first.
pub fn status(ring: &KeyRing, now: u64, timings: &Timings) -> Vec<KeyStatus> {
    let order = |s: KeyState| match s {
        KeyState::Current => 0,
        KeyState::Next => 1,
        KeyState::Previous => 2,
        KeyState::Unstaged => 3,
        KeyState::Retired => 4,
    };
    let mut keys: Vec<&KeyRecord> = ring.keys().iter().collect();
    keys.sort_by_key(|k| (order(k.state()), std::cmp::Reverse(k.created_at)));
    keys.into_iter()
        .map(|k| {
            let (next_step, due_at) = next_step(ring, k, now, timings);
            KeyStatus {
                state: k.state(),
                kid: k.kid().to_string(),
                key_id: k.key_id.clone(),
                created_at: k.created_at,
                published_at: k.stamp(Stamp::Published),
                seen_public_at: k.stamp(Stamp::SeenPublic),
                promoted_at: k.stamp(Stamp::Promoted),
                demoted_at: k.stamp(Stamp::Demoted),
                retired_at: k.stamp(Stamp::Retired),
                usability: k.usability,
                next_step,
                due_at,
            }
        })
        .collect()
}

fn next_step(ring: &KeyRing, key: &KeyRecord, now: u64, t: &Timings) -> (String, Option<u64>) {
    match key.state() {
        KeyState::Unstaged => (
            "stage (adopted by the next `stage` or `rotate`)".into(),
            Some(now),
        ),
        KeyState::Next => match (key.stamp(Stamp::Published), key.stamp(Stamp::SeenPublic)) {
            (None, _) => ("publish".into(), Some(now)),
            (Some(_), None) => ("wait until the public key set lists it".into(), None),
            (Some(_), Some(seen)) => {
                let due = promotion_due_at(ring, t).unwrap_or(0).max(t.warm_at(seen));
                ("promote to current".into(), Some(due))
            }
        },
        KeyState::Current => {
            if ring.next().is_none() {
                let due = key.stamp(Stamp::Promoted).map(|p| t.stage_due(p));
                ("stage its successor".into(), due)
            } else {
                let due = key
                    .stamp(Stamp::Promoted)
                    .map(|p| p.saturating_add(t.period));
                (
                    "demote to previous (when its successor is promoted)".into(),
                    due,
                )
            }
        }
        KeyState::Previous => ("retire".into(), retirement_due_at(ring, t)),
        KeyState::Retired => match (key.stamp(Stamp::Unlisted), key.usability) {
            (_, Usability::PendingDeletion) => {
                ("none: KMS deletes it at the end of its window".into(), None)
            }
            (None, _) => (
                "wait until the public key set no longer lists it".into(),
                None,
            ),
            (Some(_), Usability::Enabled) => ("disable and schedule deletion".into(), Some(now)),
            (Some(_), Usability::Disabled) => ("schedule deletion".into(), Some(now)),
        },
    }
}

/// A Unix time as RFC 3339, for messages.
pub fn at(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix}"))
}

#[cfg(test)]
mod tests;
