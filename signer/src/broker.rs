//! The token broker: profile → cache → single flight → assertion → sign →
//! exchange → cache.
//!
//! - Cache hits never call KMS or Entra (the KMS Sign quota is shared by the
//!   account; Entra punishes uncached callers with AADSTS50196).
//! - Concurrent misses for one token in one process share one load (single
//!   flight); across processes a lease in the shared tier lets one instance
//!   refresh while the others wait for its result or serve the old token.
//! - Tokens are refreshed ahead of expiry (a jittered margin, or Entra's
//!   `refresh_in`); when a refresh fails and the old token is still valid for
//!   the caller, the old token is served.
//! - Entra errors that can succeed on retry are retried with jittered
//!   exponential backoff (honouring `Retry-After`) within a deadline far
//!   inside API Gateway's 29 s, each attempt with a fresh assertion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws2azure_shared::assertion::AssertionBuilder;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::{Profile, Profiles};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::Error;
use crate::cache::{CacheKey, MemoryCache, SharedCache};
use crate::clock::Clock;
use crate::entra::{ExchangeRequest, IssuedToken, TokenExchange};
use crate::signing::AssertionSigner;
use crate::token::{CachedToken, Freshness};

/// Tunables, with the defaults of the design.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub issuer: Issuer,
    /// Refresh a token with less than this left (default 300 s).
    pub refresh_margin_secs: u64,
    /// Lifetime of each assertion (default 300 s, at most 600 s).
    pub assertion_lifetime_secs: u64,
    /// The whole exchange, retries included (default 20 s; API Gateway
    /// gives up at 29 s).
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
    /// Lambda times out at 28 s, API Gateway at 29 s).
    pub request_deadline: Duration,
    /// How long a refresh lease in the shared tier holds (default 30 s).
    pub lease_secs: u64,
    /// How long to wait for a peer that holds the lease (default 5 s)...
    pub peer_wait: Duration,
    /// ...polling the shared tier this often (default 100 ms).
    pub peer_poll: Duration,
}

impl BrokerSettings {
    pub fn new(issuer: Issuer) -> Self {
        Self {
            issuer,
            refresh_margin_secs: 300,
            assertion_lifetime_secs: aws2azure_shared::assertion::DEFAULT_LIFETIME_SECS,
            exchange_deadline: Duration::from_secs(20),
            max_attempts: 4,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            refresh_budget: Duration::from_secs(3),
            refresh_backoff: Duration::from_secs(30),
            request_deadline: Duration::from_secs(24),
            lease_secs: 30,
            peer_wait: Duration::from_secs(5),
            peer_poll: Duration::from_millis(100),
        }
    }
}

/// Where a served token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The in-process tier.
    Hit,
    /// The shared tier (another instance fetched it).
    SharedHit,
    /// Fetched from Entra by this request.
    Miss,
    /// Joined a fetch another request in this process had started.
    Coalesced,
    /// A peer instance held the refresh lease; its result was awaited.
    PeerFetched,
    /// Due for refresh, refreshed.
    Refreshed,
    /// Due for refresh, but refreshing failed or a peer is refreshing: the
    /// still-valid token was served.
    Stale,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::SharedHit => "shared-hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::PeerFetched => "peer",
            Self::Refreshed => "refreshed",
            Self::Stale => "stale",
        }
    }

    /// Whether the token was served without asking Entra in this request.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Self::Hit | Self::SharedHit | Self::Stale | Self::PeerFetched
        )
    }
}

/// What one load cost upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    pub entra_calls: u32,
    pub entra_ms: u64,
    pub sign_calls: u32,
    pub sign_ms: u64,
    /// The shared tier failed during this request; the in-process tier
    /// carried on alone.
    pub shared_cache_degraded: bool,
}

/// A served token and how it was obtained.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: CachedToken,
    pub outcome: CacheOutcome,
    pub upstream: Upstream,
    /// A refresh failure that was absorbed by serving the old token.
    pub absorbed_error: Option<Error>,
}

/// A failed request: the error, and what it cost upstream before failing
/// (for the audit line and the metrics).
#[derive(Clone, Debug)]
pub struct Failed {
    pub error: Error,
    pub upstream: Upstream,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error,
            upstream: Upstream::default(),
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<Issued, Failed>>>;

/// How hard a load tries at Entra.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effort {
    /// No token to fall back on: retries within the exchange deadline.
    Full,
    /// A still-valid token serves if this fails: one attempt, short budget.
    Refresh,
}

/// The broker. Cheap to clone; clones share caches and in-flight loads.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    profiles: Profiles,
    settings: BrokerSettings,
    signer: Arc<dyn AssertionSigner>,
    exchange: Arc<dyn TokenExchange>,
    shared: Option<Arc<dyn SharedCache>>,
    memory: MemoryCache,
    clock: Arc<dyn Clock>,
    flights: Mutex<HashMap<CacheKey, Flight>>,
    /// Per token, when a refresh may be tried again after a failed one.
    refresh_not_before: Mutex<HashMap<CacheKey, u64>>,
    /// Names this instance as a lease holder.
    instance_id: String,
}

/// Largest `min_validity` accepted: Entra's client-credential tokens live
/// 60 to 90 minutes, so asking for more than 55 can never be met.
pub const MAX_MIN_VALIDITY_SECS: u64 = 3300;

impl Broker {
    pub fn new(
        profiles: Profiles,
        settings: BrokerSettings,
        signer: Arc<dyn AssertionSigner>,
        exchange: Arc<dyn TokenExchange>,
        shared: Option<Arc<dyn SharedCache>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                profiles,
                settings,
                signer,
                exchange,
                shared,
                memory: MemoryCache::default(),
                clock,
                flights: Mutex::new(HashMap::new()),
                refresh_not_before: Mutex::new(HashMap::new()),
                instance_id: uuid::Uuid::new_v4().to_string(),
            }),
        }
    }

    pub fn profiles(&self) -> &Profiles {
        &self.inner.profiles
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.inner.settings
    }

    pub fn signer(&self) -> &Arc<dyn AssertionSigner> {
        &self.inner.signer
    }

    /// Now, by the broker's clock (Unix seconds).
    pub fn now_unix(&self) -> u64 {
        self.inner.clock.now_unix()
    }

    /// A token for `profile_name` that stays valid at least `min_validity`
    /// seconds (as far as Entra's token lifetime allows).
    pub async fn token(&self, profile_name: &str, min_validity: u64) -> Result<Issued, Failed> {
        let inner = &self.inner;
        let profile = inner
            .profiles
            .get(profile_name)
            .ok_or_else(|| Error::UnknownProfile(profile_name.to_string()))?;
        if min_validity > MAX_MIN_VALIDITY_SECS {
            return Err(Error::InvalidRequest(format!(
                "min_validity must be at most {MAX_MIN_VALIDITY_SECS} seconds: Entra's tokens \
                 live 60 to 90 minutes"
            ))
            .into());
        }
        let key = CacheKey::for_profile(profile);
        let now = inner.clock.now_unix();
        let cached = inner.memory.get(&key);
        match cached.as_ref().map(|t| t.freshness(now, min_validity)) {
            Some(Freshness::Fresh) => Ok(Issued {
                token: cached.expect("matched Some"),
                outcome: CacheOutcome::Hit,
                upstream: Upstream::default(),
                absorbed_error: None,
            }),
            Some(Freshness::RefreshDue) => {
                let old = cached.expect("matched Some");
                let stale = |upstream, absorbed_error| Issued {
                    token: old.clone(),
                    outcome: CacheOutcome::Stale,
                    upstream,
                    absorbed_error,
                };
                if now < inner.refresh_not_before(&key) {
                    // A refresh failed moments ago: do not ask Entra again
                    // on every request (AADSTS50196 punishes that).
                    return Ok(stale(Upstream::default(), None));
                }
                match self
                    .load(profile, &key, min_validity, Effort::Refresh)
                    .await
                {
                    Ok(mut issued) => {
                        inner.clear_refresh_backoff(&key);
                        if issued.outcome == CacheOutcome::Miss {
                            issued.outcome = CacheOutcome::Refreshed;
                        }
                        Ok(issued)
                    }
                    Err(failed) => {
                        let wait = failed
                            .error
                            .retry_after()
                            .unwrap_or_default()
                            .max(inner.settings.refresh_backoff);
                        inner.back_off_refresh(&key, now.saturating_add(wait.as_secs()));
                        tracing::warn!(
                            profile = profile_name,
                            error = %failed.error,
                            aadsts = failed.error.aadsts(),
                            remaining_secs = old.remaining(now),
                            retry_in_secs = wait.as_secs(),
                            "refresh failed; serving the still-valid token"
                        );
                        Ok(stale(failed.upstream, Some(failed.error)))
                    }
                }
            }
            Some(Freshness::Unusable) | None => {
                self.load(profile, &key, min_validity, Effort::Full).await
            }
        }
    }

    /// Single flight: one load per cache key at a time in this process.
    async fn load(
        &self,
        profile: &Profile,
        key: &CacheKey,
        min_validity: u64,
        effort: Effort,
    ) -> Result<Issued, Failed> {
        // A joined flight may have been started with a laxer `min_validity`
        // and served from a cache tier; then one more round is needed.
        for _round in 0..2 {
            let (flight, joined) = self.flight(profile, key, min_validity, effort);
            let mut issued = flight.await?;
            let now = self.inner.clock.now_unix();
            let satisfied = issued.token.freshness(now, min_validity) != Freshness::Unusable;
            if !joined {
                return Ok(issued);
            }
            if satisfied || matches!(issued.outcome, CacheOutcome::Miss) {
                issued.outcome = match issued.outcome {
                    CacheOutcome::Miss => CacheOutcome::Coalesced,
                    other => other,
                };
                return Ok(issued);
            }
        }
        // Two rounds of joined flights that could not satisfy the caller:
        // load alone (no coalescing) as a last resort.
        self.inner
            .load_uncoalesced(profile, key, min_validity, effort)
            .await
    }

    fn flight(
        &self,
        profile: &Profile,
        key: &CacheKey,
        min_validity: u64,
        effort: Effort,
    ) -> (Flight, bool) {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(key) {
            return (flight.clone(), true);
        }
        let inner = self.inner.clone();
        let (profile, owned_key) = (profile.clone(), key.clone());
        let flight = async move {
            // A panic must not poison the shared future (every later
            // request for this token would panic too): it becomes an error.
            let load = inner.load_uncoalesced(&profile, &owned_key, min_validity, effort);
            let result = match std::panic::AssertUnwindSafe(load).catch_unwind().await {
                Ok(result) => result,
                Err(_) => Err(Failed::from(Error::Internal(
                    "loading the token panicked; see the log".into(),
                ))),
            };
            // Leave the map before anyone can observe the result, so that a
            // later miss starts a new load instead of reusing this one.
            inner
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&owned_key);
            result
        }
        .boxed()
        .shared();
        flights.insert(key.clone(), flight.clone());
        (flight, false)
    }
}

impl Inner {
    fn refresh_not_before(&self, key: &CacheKey) -> u64 {
        let map = self
            .refresh_not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(key).copied().unwrap_or(0)
    }

    fn back_off_refresh(&self, key: &CacheKey, until: u64) {
        let mut map = self
            .refresh_not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.insert(key.clone(), until);
    }

    fn clear_refresh_backoff(&self, key: &CacheKey) {
        let mut map = self
            .refresh_not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    async fn load_uncoalesced(
        &self,
        profile: &Profile,
        key: &CacheKey,
        min_validity: u64,
        effort: Effort,
    ) -> Result<Issued, Failed> {
        let now = self.clock.now_unix();
        let served = |token: CachedToken, outcome, upstream| Issued {
            token,
            outcome,
            upstream,
            absorbed_error: None,
        };
        // A flight that finished just before this one started may have
        // filled the in-process tier.
        if let Some(t) = self.memory.get(key)
            && t.freshness(now, min_validity) == Freshness::Fresh
        {
            return Ok(served(t, CacheOutcome::Hit, Upstream::default()));
        }
        let mut upstream = Upstream::default();
        let mut still_valid: Option<CachedToken> = None;
        let mut leased = false;
        if let Some(shared) = &self.shared {
            match self
                .read_shared(shared.as_ref(), key, now, min_validity, &mut upstream)
                .await
            {
                SharedState::Fresh(t) => {
                    self.memory.put(key, t.clone());
                    return Ok(served(t, CacheOutcome::SharedHit, upstream));
                }
                SharedState::RefreshDue(t) => still_valid = Some(t),
                SharedState::Missing | SharedState::Degraded => {}
            }
            if !upstream.shared_cache_degraded {
                let until = now + self.settings.lease_secs;
                match shared.try_lease(key, &self.instance_id, now, until).await {
                    Ok(true) => leased = true,
                    Ok(false) => {
                        if let Some(t) = still_valid.take() {
                            // A peer is refreshing; the old token serves.
                            return Ok(served(t, CacheOutcome::Stale, upstream));
                        }
                        match self
                            .await_peer(shared.as_ref(), key, min_validity, &mut upstream)
                            .await
                        {
                            PeerOutcome::Delivered(t) => {
                                self.memory.put(key, t.clone());
                                return Ok(served(t, CacheOutcome::PeerFetched, upstream));
                            }
                            // The peer gave up (or died): the lease is ours.
                            PeerOutcome::LeaseTaken => leased = true,
                            PeerOutcome::Degraded => {}
                            PeerOutcome::StillBusy => {
                                // Fetching alongside a slow peer would turn an
                                // Entra slowdown into a stampede.
                                return Err(Failed {
                                    error: Error::PeerBusy,
                                    upstream,
                                });
                            }
                        }
                    }
                    Err(err) => self.degrade(&err, &mut upstream),
                }
            }
        }

        // With a still-valid token to fall back on, one short attempt.
        let effort = if still_valid.is_some() {
            Effort::Refresh
        } else {
            effort
        };
        let fetched = self.fetch(profile, &mut upstream, effort).await;
        if let Some(shared) = &self.shared {
            if let Ok(token) = &fetched
                && !upstream.shared_cache_degraded
                && let Err(err) = shared.put(key, token).await
            {
                self.degrade(&err, &mut upstream);
            }
            if leased && let Err(err) = shared.release_lease(key, &self.instance_id).await {
                tracing::warn!(profile = %key.profile, error = %err, "could not release the refresh lease; it expires by itself");
            }
        }
        match fetched {
            Ok(token) => {
                self.memory.put(key, token.clone());
                Ok(served(token, CacheOutcome::Miss, upstream))
            }
            Err(err) => match still_valid {
                Some(t) => {
                    tracing::warn!(profile = %key.profile, error = %err, aadsts = err.aadsts(), "refresh failed; serving the still-valid shared token");
                    Ok(Issued {
                        token: t,
                        outcome: CacheOutcome::Stale,
                        upstream,
                        absorbed_error: Some(err),
                    })
                }
                None => Err(Failed {
                    error: err,
                    upstream,
                }),
            },
        }
    }

    async fn read_shared(
        &self,
        shared: &dyn SharedCache,
        key: &CacheKey,
        now: u64,
        min_validity: u64,
        upstream: &mut Upstream,
    ) -> SharedState {
        match shared.get(key, now).await {
            Ok(Some(t)) => match t.freshness(now, min_validity) {
                Freshness::Fresh => SharedState::Fresh(t),
                Freshness::RefreshDue => SharedState::RefreshDue(t),
                Freshness::Unusable => SharedState::Missing,
            },
            Ok(None) => SharedState::Missing,
            Err(err) => {
                self.degrade(&err, upstream);
                SharedState::Degraded
            }
        }
    }

    /// Waits for the peer holding the lease to store a token; if it does
    /// not within `peer_wait`, tries to take the lease over.
    async fn await_peer(
        &self,
        shared: &dyn SharedCache,
        key: &CacheKey,
        min_validity: u64,
        upstream: &mut Upstream,
    ) -> PeerOutcome {
        let deadline = Instant::now() + self.settings.peer_wait;
        while Instant::now() < deadline {
            tokio::time::sleep(self.settings.peer_poll).await;
            let now = self.clock.now_unix();
            match self
                .read_shared(shared, key, now, min_validity, upstream)
                .await
            {
                SharedState::Fresh(t) => return PeerOutcome::Delivered(t),
                SharedState::Degraded => return PeerOutcome::Degraded,
                SharedState::RefreshDue(_) | SharedState::Missing => {}
            }
        }
        let now = self.clock.now_unix();
        match shared
            .try_lease(key, &self.instance_id, now, now + self.settings.lease_secs)
            .await
        {
            Ok(true) => {
                tracing::warn!(profile = %key.profile, "the peer holding the refresh lease released it without a token; fetching");
                PeerOutcome::LeaseTaken
            }
            Ok(false) => PeerOutcome::StillBusy,
            Err(err) => {
                self.degrade(&err, upstream);
                PeerOutcome::Degraded
            }
        }
    }

    fn degrade(&self, err: &Error, upstream: &mut Upstream) {
        if !upstream.shared_cache_degraded {
            tracing::warn!(error = %err, "shared token cache unavailable; continuing with the in-process cache");
        }
        upstream.shared_cache_degraded = true;
    }

    /// Signs a fresh assertion and exchanges it, retrying what can succeed.
    async fn fetch(
        &self,
        profile: &Profile,
        upstream: &mut Upstream,
        effort: Effort,
    ) -> Result<CachedToken, Error> {
        let settings = &self.settings;
        let (max_attempts, budget) = match effort {
            Effort::Full => (settings.max_attempts, settings.exchange_deadline),
            Effort::Refresh => (1, settings.refresh_budget.min(settings.exchange_deadline)),
        };
        let deadline = Instant::now() + budget;
        let token_endpoint = profile.token_endpoint();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = self.clock.now_unix();
            let claims = AssertionBuilder::new(&settings.issuer, &profile.subject)
                .lifetime_secs(settings.assertion_lifetime_secs)?
                .build(now, &uuid::Uuid::new_v4().to_string())?;
            let signing = Instant::now();
            // KMS throttling is retried by the SDK client itself (bounded);
            // a second retry loop here would multiply the attempts.
            let assertion = self.signer.sign_assertion(&claims).await;
            upstream.sign_calls += 1;
            upstream.sign_ms += signing.elapsed().as_millis() as u64;
            let assertion = assertion?;

            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = ExchangeRequest {
                token_endpoint: &token_endpoint,
                client_id: profile.client_id.as_str(),
                scope: profile.scope.as_str(),
                assertion: &assertion,
            };
            let calling = Instant::now();
            let result =
                match tokio::time::timeout(remaining, self.exchange.exchange(&request)).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::EntraTimeout(budget)),
                };
            upstream.entra_calls += 1;
            upstream.entra_ms += calling.elapsed().as_millis() as u64;
            let err = match result {
                Ok(issued) => return Ok(self.to_cached(issued, now)),
                Err(err) => err,
            };
            if !err.is_retryable() || attempt >= max_attempts {
                return Err(err);
            }
            let wait = err.retry_after().unwrap_or_else(|| self.backoff(attempt));
            if Instant::now()
                .checked_add(wait)
                .is_none_or(|at| at >= deadline)
            {
                tracing::warn!(profile = %profile.name, attempt, wait_ms = wait.as_millis() as u64, "no time left to retry Entra");
                return Err(err);
            }
            tracing::warn!(
                profile = %profile.name,
                attempt,
                aadsts = err.aadsts(),
                error = %err,
                wait_ms = wait.as_millis() as u64,
                "retrying the token exchange"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Exponential backoff, capped, with "equal jitter": half fixed, half
    /// random, so retries of many callers spread out yet never come at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.backoff_base.as_millis() as u64;
        let cap = self.settings.backoff_max.as_millis() as u64;
        let ceiling = base.saturating_mul(1 << attempt.min(16)).min(cap);
        Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling.max(1)))
    }

    fn to_cached(&self, issued: IssuedToken, now: u64) -> CachedToken {
        let expires_on = now + issued.expires_in;
        let margin = self.settings.refresh_margin_secs;
        let planned = match issued.refresh_in {
            Some(refresh_in) if refresh_in > 0 && refresh_in < issued.expires_in => {
                now + refresh_in
            }
            // Short-lived tokens refresh at half-life, not immediately.
            _ if issued.expires_in <= 2 * margin => now + issued.expires_in / 2,
            _ => expires_on - margin,
        };
        // Jitter spreads the refreshes of many instances over a minute or so.
        let jitter = fastrand::u64(0..=(margin / 5).min(planned.saturating_sub(now) / 5));
        CachedToken {
            access_token: issued.access_token,
            token_type: issued.token_type,
            expires_on,
            refresh_on: planned - jitter,
        }
    }
}

enum PeerOutcome {
    Delivered(CachedToken),
    LeaseTaken,
    StillBusy,
    Degraded,
}

enum SharedState {
    Fresh(CachedToken),
    RefreshDue(CachedToken),
    Missing,
    Degraded,
}

#[cfg(test)]
mod tests {
    //! The broker's rules with in-memory fakes of its collaborators (this
    //! module only; the adapters are tested against moto and the devstack's
    //! Entra-compatible endpoint in the `tests` crate).

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use aws2azure_shared::assertion::{AssertionClaims, ClientAssertion};
    use aws2azure_shared::jwk::Jwk;

    use super::*;
    use crate::clock::ManualClock;
    use crate::token::AccessToken;

    const T0: u64 = 1_800_000_000;

    struct FakeSigner {
        calls: AtomicU32,
        inner: crate::signing::LocalKeySigner,
    }

    #[async_trait]
    impl AssertionSigner for FakeSigner {
        async fn public_key(&self) -> Result<Jwk, Error> {
            self.inner.public_key().await
        }
        async fn sign_assertion(&self, claims: &AssertionClaims) -> Result<ClientAssertion, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.sign_assertion(claims).await
        }
    }

    /// Answers from a script, then succeeds; counts calls.
    struct FakeEntra {
        calls: AtomicU32,
        script: Mutex<VecDeque<Error>>,
        lifetime: u64,
        refresh_in: Option<u64>,
        delay: Duration,
        panic_next: std::sync::atomic::AtomicBool,
    }

    impl FakeEntra {
        fn new(script: Vec<Error>, delay: Duration) -> Self {
            Self {
                calls: AtomicU32::new(0),
                script: Mutex::new(script.into()),
                lifetime: 3599,
                refresh_in: None,
                delay,
                panic_next: Default::default(),
            }
        }
    }

    #[async_trait]
    impl TokenExchange for FakeEntra {
        async fn exchange(&self, _req: &ExchangeRequest<'_>) -> Result<IssuedToken, Error> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.panic_next.swap(false, Ordering::SeqCst) {
                panic!("a bug in an adapter");
            }
            if let Some(err) = self.script.lock().unwrap().pop_front() {
                return Err(err);
            }
            Ok(IssuedToken {
                access_token: AccessToken::new(format!("token-{n}")),
                token_type: "Bearer".into(),
                expires_in: self.lifetime,
                refresh_in: self.refresh_in,
            })
        }
    }

    struct Rig {
        broker: Broker,
        clock: ManualClock,
        signer: Arc<FakeSigner>,
        entra: Arc<FakeEntra>,
    }

    fn rig(script: Vec<Error>, delay: Duration) -> Rig {
        rig_with(FakeEntra::new(script, delay), None)
    }

    fn rig_with(entra: FakeEntra, shared: Option<Arc<dyn SharedCache>>) -> Rig {
        let profiles = Profiles::from_json(
            r#"{"graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "client_id": "00000000-1111-2222-3333-444444444444",
                "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"}}"#,
        )
        .unwrap();
        let clock = ManualClock::at(T0);
        let signer = Arc::new(FakeSigner {
            calls: AtomicU32::new(0),
            inner: crate::signing::LocalKeySigner::generate().unwrap(),
        });
        let entra = Arc::new(entra);
        let mut settings =
            BrokerSettings::new(Issuer::parse("https://issuer.example.com").unwrap());
        settings.backoff_base = Duration::from_millis(5);
        settings.backoff_max = Duration::from_millis(20);
        settings.exchange_deadline = Duration::from_secs(2);
        settings.peer_wait = Duration::from_millis(200);
        settings.peer_poll = Duration::from_millis(20);
        let broker = Broker::new(
            profiles,
            settings,
            signer.clone(),
            entra.clone(),
            shared,
            Arc::new(clock.clone()),
        );
        Rig {
            broker,
            clock,
            signer,
            entra,
        }
    }

    fn entra_error(status: u16, aadsts: Option<u32>, retry_after: Option<u64>) -> Error {
        Error::Entra {
            status,
            error: "x".into(),
            description: "d".into(),
            aadsts,
            correlation_id: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    impl Rig {
        async fn token(&self, name: &str, min_validity: u64) -> Result<Issued, Error> {
            self.broker
                .token(name, min_validity)
                .await
                .map_err(|f| f.error)
        }
        fn entra_calls(&self) -> u32 {
            self.entra.calls.load(Ordering::SeqCst)
        }
        fn sign_calls(&self) -> u32 {
            self.signer.calls.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn hits_never_call_kms_or_entra() {
        let r = rig(vec![], Duration::ZERO);
        let first = r.token("graph", 0).await.unwrap();
        assert_eq!(first.outcome, CacheOutcome::Miss);
        for _ in 0..100 {
            let again = r.token("graph", 0).await.unwrap();
            assert_eq!(again.outcome, CacheOutcome::Hit);
            assert_eq!(again.token, first.token);
        }
        assert_eq!((r.sign_calls(), r.entra_calls()), (1, 1));
        assert!(matches!(
            r.token("nope", 0).await,
            Err(Error::UnknownProfile(_))
        ));
    }

    #[tokio::test]
    async fn refreshes_ahead_with_a_jittered_margin() {
        let r = rig(vec![], Duration::ZERO);
        let first = r.token("graph", 0).await.unwrap();
        let refresh_on = first.token.refresh_on;
        // Margin 300 s, jitter at most a fifth of it.
        assert!(
            (T0 + 3599 - 360..=T0 + 3599 - 300).contains(&refresh_on),
            "{refresh_on}"
        );
        r.clock.set(refresh_on - 1);
        assert_eq!(
            r.token("graph", 0).await.unwrap().outcome,
            CacheOutcome::Hit
        );
        r.clock.set(refresh_on);
        let refreshed = r.token("graph", 0).await.unwrap();
        assert_eq!(refreshed.outcome, CacheOutcome::Refreshed);
        assert_ne!(refreshed.token, first.token);
        assert_eq!(r.entra_calls(), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_serves_the_still_valid_token() {
        let r = rig(vec![], Duration::ZERO);
        let first = r.token("graph", 0).await.unwrap();
        r.entra
            .script
            .lock()
            .unwrap()
            .push_back(entra_error(400, Some(700213), None));
        r.clock.set(first.token.refresh_on + 10);
        let served = r.token("graph", 0).await.unwrap();
        assert_eq!(served.outcome, CacheOutcome::Stale);
        assert_eq!(served.token, first.token);
        assert_eq!(
            served.absorbed_error.as_ref().and_then(Error::aadsts),
            Some(700213)
        );
        // Once the old token no longer satisfies the caller, the error shows.
        r.entra
            .script
            .lock()
            .unwrap()
            .push_back(entra_error(400, Some(700213), None));
        let err = r
            .token("graph", first.token.remaining(r.clock.now_unix()) + 1)
            .await
            .unwrap_err();
        assert_eq!(err.aadsts(), Some(700213));
    }

    #[tokio::test]
    async fn min_validity_forces_a_fresh_token() {
        let r = rig(vec![], Duration::ZERO);
        r.token("graph", 0).await.unwrap();
        r.clock.advance(3000); // 599 s left, refresh due
        let issued = r.token("graph", 1000).await.unwrap();
        assert_eq!(
            issued.outcome,
            CacheOutcome::Miss,
            "the cached token cannot serve 1000 s"
        );
        assert!(issued.token.remaining(r.clock.now_unix()) >= 1000);
        assert!(matches!(
            r.token("graph", MAX_MIN_VALIDITY_SECS + 1).await,
            Err(Error::InvalidRequest(_))
        ));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_sign_and_one_exchange() {
        let r = rig(vec![], Duration::from_millis(50));
        let calls: Vec<_> = (0..1000).map(|_| r.token("graph", 0)).collect();
        let results = futures_util::future::join_all(calls).await;
        let tokens: std::collections::HashSet<String> = results
            .iter()
            .map(|r| r.as_ref().unwrap().token.access_token.expose().to_string())
            .collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!((r.sign_calls(), r.entra_calls()), (1, 1));
        let coalesced = results
            .iter()
            .filter(|r| r.as_ref().unwrap().outcome == CacheOutcome::Coalesced)
            .count();
        assert_eq!(coalesced, 999);
    }

    #[tokio::test]
    async fn a_failed_flight_fails_every_waiter_once() {
        let r = rig(
            vec![entra_error(401, Some(700213), None)],
            Duration::from_millis(20),
        );
        let results = futures_util::future::join_all((0..50).map(|_| r.token("graph", 0))).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().unwrap_err().aadsts() == Some(700213))
        );
        assert_eq!(r.entra_calls(), 1, "one failed exchange, shared; not 50");
        // The failure is not cached: the next request tries again.
        assert_eq!(
            r.token("graph", 0).await.unwrap().outcome,
            CacheOutcome::Miss
        );
    }

    #[tokio::test]
    async fn retries_what_can_succeed_with_a_fresh_assertion_each_time() {
        let r = rig(
            vec![
                entra_error(429, None, Some(0)),
                entra_error(503, None, None),
                entra_error(400, Some(70021), None),
            ],
            Duration::ZERO,
        );
        let issued = r.token("graph", 0).await.unwrap();
        assert_eq!(issued.upstream.entra_calls, 4);
        assert_eq!((r.sign_calls(), r.entra_calls()), (4, 4));
    }

    #[tokio::test]
    async fn never_retries_configuration_errors() {
        for code in crate::CONFIGURATION_AADSTS {
            let r = rig(vec![entra_error(401, Some(code), None)], Duration::ZERO);
            let err = r.token("graph", 0).await.unwrap_err();
            assert_eq!(err.aadsts(), Some(code));
            assert_eq!(err.api_status().0, http::StatusCode::BAD_GATEWAY);
            assert_eq!(r.entra_calls(), 1, "AADSTS{code} must not be retried");
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_or_when_retry_after_exceeds_the_deadline() {
        let r = rig(
            (0..10).map(|_| entra_error(503, None, None)).collect(),
            Duration::ZERO,
        );
        let err = r.token("graph", 0).await.unwrap_err();
        assert_eq!(err.api_status().0, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.entra_calls(), 4);

        let r = rig(vec![entra_error(429, None, Some(60))], Duration::ZERO);
        let started = Instant::now();
        let err = r.token("graph", 0).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "does not sleep past the deadline"
        );
        assert_eq!(
            err.retry_after(),
            Some(Duration::from_secs(60)),
            "passed on to the caller"
        );
        assert_eq!(r.entra_calls(), 1);
    }

    #[tokio::test]
    async fn short_lived_tokens_refresh_at_half_life() {
        let r = rig(vec![], Duration::ZERO);
        let entra = Arc::new(FakeEntra {
            lifetime: 400,
            ..FakeEntra::new(vec![], Duration::ZERO)
        });
        let broker = Broker::new(
            r.broker.profiles().clone(),
            r.broker.settings().clone(),
            r.signer.clone(),
            entra,
            None,
            Arc::new(r.clock.clone()),
        );
        let t = broker.token("graph", 0).await.unwrap().token;
        assert!(
            t.refresh_on > T0 + 150 && t.refresh_on <= T0 + 200,
            "{}",
            t.refresh_on
        );
    }

    #[tokio::test]
    async fn a_retryable_refresh_failure_costs_one_attempt_then_backs_off() {
        let r = rig(vec![], Duration::ZERO);
        let first = r.token("graph", 0).await.unwrap();
        r.clock.set(first.token.refresh_on + 1);
        r.entra
            .script
            .lock()
            .unwrap()
            .extend((0..10).map(|_| entra_error(503, None, Some(120))));
        let started = Instant::now();
        let served = r.token("graph", 0).await.unwrap();
        assert_eq!(served.outcome, CacheOutcome::Stale);
        assert_eq!(served.token, first.token);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no retry loop, no Retry-After sleep"
        );
        assert_eq!(r.entra_calls(), 2, "one refresh attempt");
        // Within Entra's Retry-After (120 s, longer than the 30 s default),
        // the old token serves without asking Entra.
        r.clock.advance(100);
        for _ in 0..20 {
            assert_eq!(
                r.token("graph", 0).await.unwrap().outcome,
                CacheOutcome::Stale
            );
        }
        assert_eq!(r.entra_calls(), 2);
        // After it, the next request tries again; success clears the backoff.
        r.entra.script.lock().unwrap().clear();
        r.clock.advance(30);
        assert_eq!(
            r.token("graph", 0).await.unwrap().outcome,
            CacheOutcome::Refreshed
        );
        assert_eq!(r.entra_calls(), 3);
    }

    #[tokio::test]
    async fn a_panicking_adapter_fails_one_load_not_the_profile() {
        let r = rig(vec![], Duration::ZERO);
        r.entra.panic_next.store(true, Ordering::SeqCst);
        let err = r.token("graph", 0).await.unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
        assert_eq!(err.api_status().0, http::StatusCode::INTERNAL_SERVER_ERROR);
        let issued = r.token("graph", 0).await.unwrap();
        assert_eq!(
            issued.outcome,
            CacheOutcome::Miss,
            "the flight was not poisoned"
        );
    }

    #[tokio::test]
    async fn entra_refresh_in_sets_the_refresh_time() {
        let r = rig_with(
            FakeEntra {
                refresh_in: Some(1800),
                ..FakeEntra::new(vec![], Duration::ZERO)
            },
            None,
        );
        let t = r.token("graph", 0).await.unwrap().token;
        assert!(
            (T0 + 1800 - 360..=T0 + 1800).contains(&t.refresh_on),
            "{}",
            t.refresh_on
        );
    }

    /// A shared tier in memory, with a lease another instance can hold.
    #[derive(Default)]
    struct FakeShared {
        tokens: Mutex<HashMap<CacheKey, CachedToken>>,
        lease: Mutex<Option<(String, u64)>>,
        releases: AtomicU32,
    }

    #[async_trait]
    impl SharedCache for FakeShared {
        async fn get(&self, key: &CacheKey, now: u64) -> Result<Option<CachedToken>, Error> {
            let tokens = self.tokens.lock().unwrap();
            Ok(tokens.get(key).filter(|t| t.expires_on > now).cloned())
        }
        async fn put(&self, key: &CacheKey, token: &CachedToken) -> Result<(), Error> {
            self.tokens
                .lock()
                .unwrap()
                .insert(key.clone(), token.clone());
            Ok(())
        }
        async fn try_lease(
            &self,
            _: &CacheKey,
            holder: &str,
            now: u64,
            until: u64,
        ) -> Result<bool, Error> {
            let mut lease = self.lease.lock().unwrap();
            match &*lease {
                Some((_, held_until)) if *held_until >= now => Ok(false),
                _ => {
                    *lease = Some((holder.to_string(), until));
                    Ok(true)
                }
            }
        }
        async fn release_lease(&self, _: &CacheKey, holder: &str) -> Result<(), Error> {
            self.releases.fetch_add(1, Ordering::SeqCst);
            let mut lease = self.lease.lock().unwrap();
            if lease.as_ref().is_some_and(|(h, _)| h == holder) {
                *lease = None;
            }
            Ok(())
        }
    }

    fn shared_rig() -> (Rig, Arc<FakeShared>) {
        let shared = Arc::new(FakeShared::default());
        let r = rig_with(FakeEntra::new(vec![], Duration::ZERO), Some(shared.clone()));
        (r, shared)
    }

    fn peer_holds_lease(shared: &FakeShared) {
        *shared.lease.lock().unwrap() = Some(("peer".into(), T0 + 1_000_000));
    }

    #[tokio::test]
    async fn a_peer_refreshing_leaves_the_old_shared_token_serving() {
        let (r, shared) = shared_rig();
        let first = r.token("graph", 0).await.unwrap();
        assert_eq!(
            shared.releases.load(Ordering::SeqCst),
            1,
            "lease given back"
        );
        // Another instance (its own memory) when the token is due for
        // refresh and a peer holds the lease: the old token, no Entra call.
        let other = rig_with(FakeEntra::new(vec![], Duration::ZERO), Some(shared.clone()));
        other.clock.set(first.token.refresh_on + 1);
        peer_holds_lease(&shared);
        let served = other.token("graph", 0).await.unwrap();
        assert_eq!(served.outcome, CacheOutcome::Stale);
        assert_eq!(served.token, first.token);
        assert_eq!(other.entra_calls(), 0);
    }

    #[tokio::test]
    async fn a_busy_peer_with_nothing_to_serve_gives_503_not_a_stampede() {
        let (r, shared) = shared_rig();
        peer_holds_lease(&shared);
        let err = r.token("graph", 0).await.unwrap_err();
        assert_eq!(err, Error::PeerBusy);
        assert_eq!(err.api_status().0, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.entra_calls(), 0);
    }

    #[tokio::test]
    async fn a_peer_that_released_the_lease_without_a_token_is_taken_over() {
        let (r, shared) = shared_rig();
        peer_holds_lease(&shared);
        let releaser = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            *releaser.lease.lock().unwrap() = None;
        });
        let issued = r.token("graph", 0).await.unwrap();
        assert_eq!(issued.outcome, CacheOutcome::Miss);
        assert_eq!(r.entra_calls(), 1);
        assert!(
            shared
                .tokens
                .lock()
                .unwrap()
                .values()
                .any(|t| *t == issued.token)
        );
    }

    #[tokio::test]
    async fn the_lease_is_released_after_a_failed_fetch() {
        let (r, shared) = shared_rig();
        r.entra
            .script
            .lock()
            .unwrap()
            .push_back(entra_error(401, Some(700213), None));
        assert!(r.token("graph", 0).await.is_err());
        assert_eq!(shared.releases.load(Ordering::SeqCst), 1);
        assert!(
            shared.lease.lock().unwrap().is_none(),
            "others may try at once"
        );
    }
}
