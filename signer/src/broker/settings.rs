//! The broker's tunables and the time budget they add up to.

use std::time::{Duration, Instant};

use aws2azure_shared::discovery::Issuer;

/// Tunables, with the defaults of the design.
///
/// The time settings add up: a request's worst case (see
/// [`BrokerSettings::worst_case`]) must fit in `request_deadline`, and
/// [`BrokerSettings::check_budget`] refuses settings where it does not.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub issuer: Issuer,
    /// Refresh a token with less than this left (default 300 s).
    pub refresh_margin_secs: u64,
    /// Lifetime of each assertion (default 300 s, at most 600 s).
    pub assertion_lifetime_secs: u64,
    /// Every KMS `Sign` and Entra attempt of one load, retries and backoff
    /// included (default 15 s).
    pub exchange_deadline: Duration,
    /// Attempts at Entra for one load, the first included (default 4).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, full jitter (default 200 ms).
    pub backoff_base: Duration,
    /// Longest single backoff when Entra sends no `Retry-After` (default 2 s).
    pub backoff_max: Duration,
    /// A refresh while the old token still serves: one attempt within
    /// this budget (default 3 s), so that a caller holding a valid token
    /// never waits out a full retry loop.
    pub refresh_budget: Duration,
    /// After a failed refresh, the old token is served without asking
    /// Entra again for this long (default 30 s), or Entra's `Retry-After`
    /// if longer.
    pub refresh_backoff: Duration,
    /// The whole request, waits and retries included (default 24 s: the
    /// Lambda times out at 28 s, API Gateway at 29 s). Every inner budget
    /// is cut to the time left before it.
    pub request_deadline: Duration,
    /// How long a refresh lease in the shared tier holds (default 30 s).
    pub lease_secs: u64,
    /// How long to wait for a peer that holds the lease (default 4 s)...
    pub peer_wait: Duration,
    /// ...polling the shared tier this often (default 100 ms).
    pub peer_poll: Duration,
    /// Longest wait for one call to the shared tier (default 2 s); the
    /// first that runs over degrades the request to the in-process tier.
    pub shared_cache_timeout: Duration,
}

impl BrokerSettings {
    pub fn new(issuer: Issuer) -> Self {
        Self {
            issuer,
            refresh_margin_secs: 300,
            assertion_lifetime_secs: aws2azure_shared::assertion::DEFAULT_LIFETIME_SECS,
            exchange_deadline: Duration::from_secs(15),
            max_attempts: 4,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            refresh_budget: Duration::from_secs(3),
            refresh_backoff: Duration::from_secs(30),
            request_deadline: Duration::from_secs(24),
            lease_secs: 30,
            peer_wait: Duration::from_secs(4),
            peer_poll: Duration::from_millis(100),
            shared_cache_timeout: Duration::from_secs(2),
        }
    }

    /// The longest a request can take with these settings: the shared tier
    /// before the fetch (its calls and the wait for a peer, together at most
    /// one call timeout plus the peer wait), every KMS and Entra attempt
    /// (the exchange deadline), then storing the token and giving the lease
    /// back (one call timeout for both).
    pub fn worst_case(&self) -> Duration {
        self.shared_cache_timeout
            .saturating_mul(2)
            .saturating_add(self.peer_wait)
            .saturating_add(self.exchange_deadline)
    }

    /// Refuses settings whose worst case does not fit the request deadline:
    /// the caller would get a timeout while the broker still worked, and
    /// the work would be thrown away.
    pub fn check_budget(&self) -> Result<(), BudgetExceeded> {
        let worst_case = self.worst_case();
        if worst_case <= self.request_deadline {
            return Ok(());
        }
        let others = worst_case.saturating_sub(self.exchange_deadline);
        Err(BudgetExceeded {
            worst_case,
            request_deadline: self.request_deadline,
            shared_cache: self.shared_cache_timeout,
            peer_wait: self.peer_wait,
            exchange: self.exchange_deadline,
            largest_exchange: self.request_deadline.saturating_sub(others),
        })
    }
}

/// Settings whose worst case exceeds the request deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "a request could take {} ms (2 x shared cache {} ms + peer wait {} ms + exchange {} ms), \
     more than the request deadline of {} ms; the exchange deadline can be at most {} ms",
    worst_case.as_millis(), shared_cache.as_millis(), peer_wait.as_millis(), exchange.as_millis(),
    request_deadline.as_millis(), largest_exchange.as_millis()
)]
pub struct BudgetExceeded {
    pub worst_case: Duration,
    pub request_deadline: Duration,
    pub shared_cache: Duration,
    pub peer_wait: Duration,
    pub exchange: Duration,
    /// The largest exchange deadline that fits with the other settings.
    pub largest_exchange: Duration,
}

/// The instant by which a request must be answered; every inner wait is
/// cut to the time left before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub fn left(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn is_past(self) -> bool {
        Instant::now() >= self.0
    }

    /// `budget`, or the time left if that is shorter.
    pub fn cap(self, budget: Duration) -> Duration {
        budget.min(self.left())
    }

    /// The earlier of this deadline and `budget` from now.
    pub fn within(self, budget: Duration) -> Self {
        self.min(Self::after(budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_whose_worst_case_exceeds_the_request_deadline_are_refused() {
        let mut settings =
            BrokerSettings::new(Issuer::parse("https://issuer.example.com").unwrap());
        assert_eq!(settings.check_budget(), Ok(()));
        assert!(settings.worst_case() <= settings.request_deadline);
        settings.exchange_deadline = Duration::from_secs(25);
        let err = settings.check_budget().unwrap_err();
        assert_eq!(err.largest_exchange, Duration::from_secs(16));
        assert!(err.to_string().contains("at most 16000 ms"), "{err}");
    }
}
