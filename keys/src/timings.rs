//! How long each step of the lifecycle waits, and what K2's retention must
//! cover. Checked once, when the operation starts.

use serde::Serialize;

use crate::Error;

pub const HOUR: u64 = 3600;
pub const DAY: u64 = 24 * HOUR;

/// Lifecycle timings, seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// K1: how long a key is served publicly before it may sign. Relying
    /// parties commonly cache key sets for up to 24 h, and Entra does not
    /// document whether it refetches on an unknown `kid`.
    pub warm_up: u64,
    /// How long a key stays current.
    pub period: u64,
    /// K2: how long `previous` stays published after its demotion.
    pub previous_retention: u64,
    /// KMS deletion window for retired keys (7–30 days).
    pub deletion_window_days: u32,
    /// Longest lifetime of an assertion the signers issue.
    pub assertion_lifetime: u64,
    /// Edge caches plus Workers KV propagation (KV is eventually consistent,
    /// 60 s and more).
    pub edge_propagation: u64,
    /// The longest a signer goes on signing with a key after the alias
    /// stopped naming it: the broker's KMS signer re-resolves every 300 s and
    /// stops using a key KMS has not confirmed for 900 s.
    pub signer_resolve_interval: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            warm_up: DAY,
            period: 90 * DAY,
            previous_retention: DAY,
            deletion_window_days: 30,
            assertion_lifetime: aws2azure_shared::assertion::MAX_LIFETIME_SECS,
            edge_propagation: 2 * 60 + 60,
            signer_resolve_interval: aws2azure_signer::kms::RESOLVE_TTL_SECS
                * aws2azure_signer::kms::UNCONFIRMED_INTERVALS,
        }
    }
}

impl Timings {
    /// The least retention K2 allows: a signer may sign with the demoted key
    /// until it re-resolves the alias, that assertion is good for its
    /// lifetime, and the edge's copies lag behind KV.
    pub fn min_retention(&self) -> u64 {
        self.signer_resolve_interval
            .saturating_add(self.assertion_lifetime)
            .saturating_add(self.edge_propagation)
    }

    /// The last moment a key demoted at `demoted_at` can have signed.
    pub fn last_possible_use(&self, demoted_at: u64) -> u64 {
        demoted_at.saturating_add(self.signer_resolve_interval)
    }

    /// When a key first seen publicly at `seen` has been served everywhere
    /// for the warm-up: the sighting is through one edge location, and the
    /// others may serve it up to the edge propagation later.
    pub fn warm_at(&self, seen: u64) -> u64 {
        seen.saturating_add(self.edge_propagation)
            .saturating_add(self.warm_up)
    }

    /// When the next key should be staged so that it is warm (everywhere,
    /// see [`Self::warm_at`]) when the current one's period ends.
    pub fn stage_due(&self, promoted_at: u64) -> u64 {
        promoted_at.saturating_add(
            self.period
                .saturating_sub(self.warm_up)
                .saturating_sub(self.edge_propagation),
        )
    }

    pub fn validate(&self) -> Result<(), Error> {
        let config = |setting, message: String| Err(Error::Config { setting, message });
        if self.warm_up == 0 {
            return config("warm-up", "must be more than 0 seconds".into());
        }
        if self.period < self.warm_up {
            return config(
                "rotation period",
                format!(
                    "{} s is shorter than the warm-up ({} s): a key would be due for \
                     promotion before it may sign; raise the period or shorten the warm-up",
                    self.period, self.warm_up
                ),
            );
        }
        if self.previous_retention < self.min_retention() {
            return config(
                "previous retention",
                format!(
                    "{} s is too short for K2: the previous key must stay published for at \
                     least {} s (signer re-resolution {} s + assertion lifetime {} s + edge \
                     propagation {} s); raise it",
                    self.previous_retention,
                    self.min_retention(),
                    self.signer_resolve_interval,
                    self.assertion_lifetime,
                    self.edge_propagation
                ),
            );
        }
        if self.previous_retention > self.period {
            return config(
                "previous retention",
                format!(
                    "{} s is longer than the rotation period ({} s): the previous key would \
                     still be published when the next promotion is due; shorten it",
                    self.previous_retention, self.period
                ),
            );
        }
        if !(7..=30).contains(&self.deletion_window_days) {
            return config(
                "deletion window",
                format!("{} days: KMS accepts 7 to 30", self.deletion_window_days),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Timings::default().validate().unwrap();
    }

    #[test]
    fn a_retention_shorter_than_k2_needs_is_refused_with_the_arithmetic() {
        let t = Timings {
            previous_retention: 600,
            ..Timings::default()
        };
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("previous retention"), "{err}");
        assert!(err.contains("at least 1680 s"), "{err}");
    }

    #[test]
    fn a_period_shorter_than_the_warm_up_is_refused() {
        let t = Timings {
            period: HOUR,
            ..Timings::default()
        };
        assert!(t.validate().unwrap_err().to_string().contains("warm-up"));
    }
}
