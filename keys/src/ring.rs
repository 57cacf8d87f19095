//! The key ring: every managed key with the aliases pointing at it and the
//! times recorded in its tags, and the state derived from them.
//!
//! The derivation is total: any combination a crash can leave behind (an
//! alias moved but its tag not yet written, two aliases on one key) maps to
//! one state, and [`crate::plan`] knows the repair for each.

use std::collections::BTreeSet;
use std::fmt;

use aws2azure_shared::jwk::Jwk;
use serde::Serialize;

/// The aliases that give a key an active state. A key can briefly carry two
/// (during a promotion); [`KeyRecord::state`] decides which one counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Next,
    Current,
    Previous,
}

impl Slot {
    pub const ALL: [Slot; 3] = [Slot::Next, Slot::Current, Slot::Previous];

    /// The alias suffix: `alias/{name}-{suffix}`.
    pub fn suffix(self) -> &'static str {
        match self {
            Slot::Next => "next",
            Slot::Current => "current",
            Slot::Previous => "previous",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// A time recorded on a key (a KMS tag `aws2azure:{name}` holding Unix
/// seconds). Written after the step it records, so a crash in between leaves
/// the step done and the stamp missing; the repair stamps the rerun's time,
/// which is later than the truth and therefore on the safe side for both
/// invariants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stamp {
    /// First written to the key document that was published.
    Published,
    /// First found in the key set behind the issuer's public discovery
    /// document (what K1's warm-up counts from).
    SeenPublic,
    /// Became `current`: signs from now on.
    Promoted,
    /// Became `previous`: no longer chosen for signing; signers that
    /// resolved it earlier may still use it until they re-resolve.
    Demoted,
    /// Became `retired`: out of the document. Written *before* the alias is
    /// removed, so the tag is what grants the deletion permission.
    Retired,
    /// Found absent from the public key set after retirement: from here on
    /// it may be disabled and scheduled for deletion.
    Unlisted,
}

impl Stamp {
    pub const ALL: [Stamp; 6] = [
        Stamp::Published,
        Stamp::SeenPublic,
        Stamp::Promoted,
        Stamp::Demoted,
        Stamp::Retired,
        Stamp::Unlisted,
    ];

    /// The tag key in KMS.
    pub fn tag(self) -> &'static str {
        match self {
            Stamp::Published => "aws2azure:published-at",
            Stamp::SeenPublic => "aws2azure:seen-public-at",
            Stamp::Promoted => "aws2azure:promoted-at",
            Stamp::Demoted => "aws2azure:demoted-at",
            Stamp::Retired => "aws2azure:retired-at",
            Stamp::Unlisted => "aws2azure:unlisted-at",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Stamp> {
        Stamp::ALL.into_iter().find(|s| s.tag() == tag)
    }
}

/// The tag holding the key's creation time (Unix seconds).
pub const CREATED_TAG: &str = "aws2azure:created-at";
/// The tag naming the deployment a key belongs to (the alias prefix).
pub const RING_TAG: &str = "aws2azure:ring";

/// A key's state in the lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Created but under no alias (a crash, or a failed publication, between
    /// creating and staging it): adopted by the next `stage`, never used
    /// before that. It may already be listed publicly (published, then not
    /// pointed at), which `rotate` corrects like any other difference.
    Unstaged,
    Next,
    Current,
    Previous,
    Retired,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::Unstaged => "unstaged",
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Previous => "previous",
            KeyState::Retired => "retired",
        })
    }
}

/// What KMS says about whether the key can still be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Usability {
    #[default]
    Enabled,
    Disabled,
    PendingDeletion,
}

/// One managed key as the store reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The KMS key id (or the in-process store's id).
    pub key_id: String,
    /// The public key; its `kid` is what assertions carry.
    pub jwk: Jwk,
    pub created_at: u64,
    /// The aliases pointing at this key.
    pub slots: BTreeSet<Slot>,
    /// The recorded times, by stamp.
    pub stamps: std::collections::BTreeMap<Stamp, u64>,
    pub usability: Usability,
}

impl KeyRecord {
    pub fn stamp(&self, stamp: Stamp) -> Option<u64> {
        self.stamps.get(&stamp).copied()
    }

    /// The state: a retired stamp wins over any alias (the alias removal
    /// that follows it may not have happened yet); then `current` wins over
    /// the other aliases (mid-promotion a key is both next and current, or
    /// current and previous).
    pub fn state(&self) -> KeyState {
        if self.stamps.contains_key(&Stamp::Retired) {
            KeyState::Retired
        } else if self.slots.contains(&Slot::Current) {
            KeyState::Current
        } else if self.slots.contains(&Slot::Previous) {
            KeyState::Previous
        } else if self.slots.contains(&Slot::Next) {
            KeyState::Next
        } else if self.stamps.contains_key(&Stamp::Promoted)
            || self.stamps.contains_key(&Stamp::Demoted)
        {
            // Was in service and lost its alias without the retired stamp
            // (an operator's hand, or a second run repairing a promotion
            // that was still under way): signers may still hold it, so it
            // stays published like a previous key until K2's retention
            // after its (repaired) demotion, then retires the usual way.
            KeyState::Previous
        } else {
            KeyState::Unstaged
        }
    }

    pub fn kid(&self) -> &str {
        self.jwk.kid().as_str()
    }
}

/// Every managed key of one deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyRing {
    keys: Vec<KeyRecord>,
}

impl KeyRing {
    /// Keys ordered by creation (then id), so every derived view is
    /// deterministic whatever order the store listed them in.
    pub fn new(mut keys: Vec<KeyRecord>) -> Self {
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Self { keys }
    }

    pub fn keys(&self) -> &[KeyRecord] {
        &self.keys
    }

    pub fn get(&self, key_id: &str) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    /// The key in this state; with several (an operator moved aliases by
    /// hand), the newest.
    pub fn in_state(&self, state: KeyState) -> Option<&KeyRecord> {
        self.keys.iter().rev().find(|k| k.state() == state)
    }

    pub fn current(&self) -> Option<&KeyRecord> {
        self.in_state(KeyState::Current)
    }

    pub fn next(&self) -> Option<&KeyRecord> {
        self.in_state(KeyState::Next)
    }

    pub fn previous(&self) -> Option<&KeyRecord> {
        self.in_state(KeyState::Previous)
    }

    /// The key an alias points at, whatever its derived state.
    pub fn at(&self, slot: Slot) -> Option<&KeyRecord> {
        self.keys.iter().rev().find(|k| k.slots.contains(&slot))
    }

    /// The keys the document lists, in its order: current first (a
    /// validator that stops at the first match finds it at once), then
    /// next, then every previous key, newest first (normally one; more only
    /// when a key lost its alias, see [`KeyRecord::state`]).
    pub fn published(&self) -> Vec<&KeyRecord> {
        let mut keys: Vec<&KeyRecord> = [KeyState::Current, KeyState::Next]
            .into_iter()
            .filter_map(|s| self.in_state(s))
            .collect();
        keys.extend(
            self.keys
                .iter()
                .rev()
                .filter(|k| k.state() == KeyState::Previous),
        );
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str, slots: &[Slot], stamps: &[(Stamp, u64)]) -> KeyRecord {
        KeyRecord {
            key_id: id.into(),
            jwk: crate::memory::test_jwk(id),
            created_at: 0,
            slots: slots.iter().copied().collect(),
            stamps: stamps.iter().copied().collect(),
            usability: Usability::Enabled,
        }
    }

    #[test]
    fn a_retired_stamp_wins_over_the_alias_it_has_not_lost_yet() {
        let k = record("a", &[Slot::Previous], &[(Stamp::Retired, 5)]);
        assert_eq!(k.state(), KeyState::Retired);
    }

    #[test]
    fn current_wins_over_the_other_alias_mid_promotion() {
        assert_eq!(
            record("a", &[Slot::Next, Slot::Current], &[]).state(),
            KeyState::Current
        );
        assert_eq!(
            record("a", &[Slot::Current, Slot::Previous], &[]).state(),
            KeyState::Current
        );
    }

    #[test]
    fn a_key_without_alias_is_unstaged_unless_it_ever_served() {
        assert_eq!(record("a", &[], &[]).state(), KeyState::Unstaged);
        for stamp in [Stamp::Demoted, Stamp::Promoted] {
            assert_eq!(
                record("a", &[], &[(stamp, 1)]).state(),
                KeyState::Previous,
                "a key that served and lost its alias stays published"
            );
        }
    }

    #[test]
    fn every_previous_key_is_published_after_current_and_next() {
        let mut old = record("old", &[], &[(Stamp::Demoted, 1)]);
        old.created_at = 1;
        let mut prev = record("prev", &[Slot::Previous], &[(Stamp::Demoted, 2)]);
        prev.created_at = 2;
        let mut cur = record("cur", &[Slot::Current], &[]);
        cur.created_at = 3;
        let ring = KeyRing::new(vec![old, prev, cur]);
        let ids: Vec<_> = ring.published().iter().map(|k| k.key_id.as_str()).collect();
        assert_eq!(ids, ["cur", "prev", "old"]);
    }
}
