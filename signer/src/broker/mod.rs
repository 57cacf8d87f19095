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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws2azure_shared::assertion::AssertionBuilder;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::{Profile, Profiles};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::Error;
use crate::cache::{CacheKey, MemoryCache, SharedCache};
use crate::entra::{ExchangeRequest, IssuedToken, TokenExchange};
use crate::signing::AssertionSigner;
use crate::token::{CachedToken, Freshness};
use aws2azure_shared::clock::Clock;

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

/// One load shared by every request for the same token. The load runs as
/// its own task: a caller that gives up (its request deadline, a dropped
/// connection) leaves it running to its own deadline, so the next caller
/// finds its result instead of a parked future.
type Flight = Shared<BoxFuture<'static, Result<Issued, Failed>>>;

/// How hard a load tries at Entra.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effort {
    /// No token to fall back on: retries within the exchange deadline.
    Full,
    /// A still-valid token serves if this fails: one attempt, short budget.
    Refresh,
}

/// What one load is for: the token, how fresh it must be, how hard to try
/// and by when.
#[derive(Clone, Debug)]
struct Load {
    profile: Profile,
    key: CacheKey,
    min_validity: u64,
    effort: Effort,
    deadline: Deadline,
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
    /// In-flight loads by token, each with a number so that a finished
    /// flight removes its own entry and never a successor's.
    flights: Mutex<HashMap<CacheKey, (u64, Flight)>>,
    next_flight: AtomicU64,
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
                next_flight: AtomicU64::new(0),
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
    /// seconds (as far as Entra's token lifetime allows), within the
    /// request deadline.
    pub async fn token(&self, profile_name: &str, min_validity: u64) -> Result<Issued, Failed> {
        let deadline = Deadline::after(self.inner.settings.request_deadline);
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
        let load = |effort| Load {
            profile: profile.clone(),
            key: key.clone(),
            min_validity,
            effort,
            deadline,
        };
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
                match self.load(load(Effort::Refresh)).await {
                    Ok(mut issued) => {
                        inner.clear_refresh_backoff(&key);
                        if issued.outcome == CacheOutcome::Miss {
                            issued.outcome = CacheOutcome::Refreshed;
                        }
                        Ok(issued)
                    }
                    // Still loading (a full load another caller started):
                    // the old token serves now, the load fills the cache
                    // when it finishes, so no backoff.
                    Err(Failed {
                        error: Error::DeadlineExceeded(_),
                        upstream,
                    }) => Ok(stale(upstream, None)),
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
            Some(Freshness::Unusable) | None => self.load(load(Effort::Full)).await,
        }
    }

    /// Single flight: one load per cache key at a time in this process.
    async fn load(&self, load: Load) -> Result<Issued, Failed> {
        // A joined flight may have been started with a laxer `min_validity`
        // and served from a cache tier; then one more round is needed.
        for _round in 0..2 {
            let (flight, joined) = self.flight(&load);
            // The flight runs to its own deadline; this caller waits at
            // most to its own, and a caller holding a still-valid token no
            // longer than a refresh attempt, even when it joined a full
            // load (retries, backoff) that another caller started.
            let wait = match load.effort {
                Effort::Full => load.deadline.left(),
                Effort::Refresh => load.deadline.cap(self.inner.settings.refresh_budget),
            };
            let mut issued = match tokio::time::timeout(wait, flight).await {
                Ok(result) => result?,
                Err(_) => return Err(Error::DeadlineExceeded(wait).into()),
            };
            let now = self.inner.clock.now_unix();
            let satisfied = issued.token.freshness(now, load.min_validity) != Freshness::Unusable;
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
        self.inner.load_uncoalesced(&load).await
    }

    fn flight(&self, load: &Load) -> (Flight, bool) {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, flight)) = flights.get(&load.key) {
            return (flight.clone(), true);
        }
        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
        let (inner, task_load) = (self.inner.clone(), load.clone());
        let task = tokio::spawn(async move {
            // A panic must not poison the shared result (every later
            // request for this token would fail too): it becomes an error.
            let result = match std::panic::AssertUnwindSafe(inner.load_uncoalesced(&task_load))
                .catch_unwind()
                .await
            {
                Ok(result) => result,
                Err(_) => Err(Failed::from(Error::Internal(
                    "loading the token panicked; see the log".into(),
                ))),
            };
            // Leave the map before anyone can observe the result, so that a
            // later miss starts a new load instead of reusing this one.
            inner.end_flight(&task_load.key, id);
            result
        });
        let (inner, key) = (self.inner.clone(), load.key.clone());
        let flight = async move {
            match task.await {
                Ok(result) => result,
                Err(join_error) => {
                    // Only a runtime shutting down cancels the task; its
                    // entry must not outlive it.
                    inner.end_flight(&key, id);
                    Err(Failed::from(Error::Internal(format!(
                        "the token load did not finish: {join_error}"
                    ))))
                }
            }
        }
        .boxed()
        .shared();
        flights.insert(load.key.clone(), (id, flight.clone()));
        (flight, false)
    }
}

impl Inner {
    fn end_flight(&self, key: &CacheKey, id: u64) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(key).is_some_and(|(current, _)| *current == id) {
            flights.remove(key);
        }
    }

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

    async fn load_uncoalesced(&self, load: &Load) -> Result<Issued, Failed> {
        let key = &load.key;
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
            && t.freshness(now, load.min_validity) == Freshness::Fresh
        {
            return Ok(served(t, CacheOutcome::Hit, Upstream::default()));
        }
        let mut upstream = Upstream::default();
        let mut still_valid: Option<CachedToken> = None;
        let mut leased = false;
        if let Some(shared) = &self.shared {
            // The shared tier's whole share of the request: its calls and
            // the wait for a peer, whatever happens in between.
            let until = load
                .deadline
                .within(self.settings.shared_cache_timeout + self.settings.peer_wait);
            match self
                .read_shared(shared.as_ref(), load, until, &mut upstream)
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
                let lease_until = now + self.settings.lease_secs;
                let leasing = shared.try_lease(key, &self.instance_id, now, lease_until);
                match self.bounded(until, leasing).await {
                    Ok(true) => leased = true,
                    Ok(false) => {
                        if let Some(t) = still_valid.take() {
                            // A peer is refreshing; the old token serves.
                            return Ok(served(t, CacheOutcome::Stale, upstream));
                        }
                        match self
                            .await_peer(shared.as_ref(), load, until, &mut upstream)
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
            if leased {
                // A peer may have stored the token between our read and our
                // lease (it released its lease just before we took ours):
                // one more read spares KMS and Entra a duplicate load.
                match self
                    .read_shared(shared.as_ref(), load, until, &mut upstream)
                    .await
                {
                    SharedState::Fresh(t) => {
                        self.finish_shared(shared, key, None, true, load.deadline, &mut upstream)
                            .await;
                        self.memory.put(key, t.clone());
                        return Ok(served(t, CacheOutcome::SharedHit, upstream));
                    }
                    SharedState::RefreshDue(t) => still_valid = still_valid.or(Some(t)),
                    SharedState::Missing | SharedState::Degraded => {}
                }
            }
        }

        // With a still-valid token to fall back on, one short attempt.
        let effort = if still_valid.is_some() {
            Effort::Refresh
        } else {
            load.effort
        };
        let fetched = self
            .fetch(&load.profile, &mut upstream, effort, load.deadline)
            .await;
        if let Some(shared) = &self.shared {
            self.finish_shared(
                shared,
                key,
                fetched.as_ref().ok(),
                leased,
                load.deadline,
                &mut upstream,
            )
            .await;
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

    /// Stores a fetched token in the shared tier and gives the lease back,
    /// both within one shared-tier call timeout.
    async fn finish_shared(
        &self,
        shared: &Arc<dyn SharedCache>,
        key: &CacheKey,
        token: Option<&CachedToken>,
        leased: bool,
        deadline: Deadline,
        upstream: &mut Upstream,
    ) {
        let until = deadline.within(self.settings.shared_cache_timeout);
        if let Some(token) = token
            && !upstream.shared_cache_degraded
            && let Err(err) = self.bounded(until, shared.put(key, token)).await
        {
            self.degrade(&err, upstream);
        }
        if leased
            && let Err(err) = self
                .bounded(until, shared.release_lease(key, &self.instance_id))
                .await
        {
            tracing::warn!(profile = %key.profile, error = %err, "could not release the refresh lease; it expires by itself");
        }
    }

    /// One shared-tier call, given at most its timeout and never past
    /// `until`.
    async fn bounded<T>(
        &self,
        until: Deadline,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let budget = until.cap(self.settings.shared_cache_timeout);
        match tokio::time::timeout(budget, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Cache(format!(
                "the shared token cache did not answer within {} ms",
                budget.as_millis()
            ))),
        }
    }

    async fn read_shared(
        &self,
        shared: &dyn SharedCache,
        load: &Load,
        until: Deadline,
        upstream: &mut Upstream,
    ) -> SharedState {
        let now = self.clock.now_unix();
        match self.bounded(until, shared.get(&load.key, now)).await {
            Ok(Some(t)) => match t.freshness(now, load.min_validity) {
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
    /// not within `peer_wait` (or before `until`), tries to take the lease
    /// over.
    async fn await_peer(
        &self,
        shared: &dyn SharedCache,
        load: &Load,
        until: Deadline,
        upstream: &mut Upstream,
    ) -> PeerOutcome {
        // Keep one call's time for taking the lease over.
        let waiting = Deadline::after(
            until
                .left()
                .saturating_sub(self.settings.shared_cache_timeout),
        )
        .within(self.settings.peer_wait);
        while !waiting.is_past() {
            tokio::time::sleep(waiting.cap(self.settings.peer_poll)).await;
            match self.read_shared(shared, load, until, upstream).await {
                SharedState::Fresh(t) => return PeerOutcome::Delivered(t),
                SharedState::Degraded => return PeerOutcome::Degraded,
                SharedState::RefreshDue(_) | SharedState::Missing => {}
            }
        }
        let now = self.clock.now_unix();
        let leasing = shared.try_lease(
            &load.key,
            &self.instance_id,
            now,
            now + self.settings.lease_secs,
        );
        match self.bounded(until, leasing).await {
            Ok(true) => {
                tracing::warn!(profile = %load.key.profile, "the peer holding the refresh lease released it without a token; fetching");
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

    /// Signs a fresh assertion and exchanges it, retrying what can succeed,
    /// each step within the time left.
    async fn fetch(
        &self,
        profile: &Profile,
        upstream: &mut Upstream,
        effort: Effort,
        request_deadline: Deadline,
    ) -> Result<CachedToken, Error> {
        let settings = &self.settings;
        let (max_attempts, budget) = match effort {
            Effort::Full => (settings.max_attempts, settings.exchange_deadline),
            Effort::Refresh => (1, settings.refresh_budget.min(settings.exchange_deadline)),
        };
        let deadline = request_deadline.within(budget);
        let budget = deadline.left();
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
            let assertion =
                match tokio::time::timeout(deadline.left(), self.signer.sign_assertion(&claims))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Error::KmsUnreachable(format!(
                        "signing did not finish within the {} ms left",
                        budget.as_millis()
                    ))),
                };
            upstream.sign_calls += 1;
            upstream.sign_ms += signing.elapsed().as_millis() as u64;
            let assertion = assertion?;

            let request = ExchangeRequest {
                token_endpoint: &token_endpoint,
                client_id: profile.client_id.as_str(),
                scope: profile.scope.as_str(),
                assertion: &assertion,
            };
            let calling = Instant::now();
            let result =
                match tokio::time::timeout(deadline.left(), self.exchange.exchange(&request)).await
                {
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
            if wait >= deadline.left() {
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
mod tests;
