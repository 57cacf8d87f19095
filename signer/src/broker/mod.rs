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

mod fetch;
mod flight;
mod load;
mod outcome;
mod settings;
mod shared_tier;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use aws2azure_shared::clock::Clock;
use aws2azure_shared::profile::{AssertionSource, Profile, ProfileName, Profiles};

use crate::Error;
use crate::cache::{CacheKey, MemoryCache, SharedCache};
use crate::entra::TokenExchange;
use crate::signing::AssertionSigner;
use crate::sts::WebIdentitySource;
use crate::token::Freshness;
use flight::Flight;
pub use outcome::{CacheOutcome, Failed, Issued, Upstream};
pub use settings::{BrokerSettings, BudgetExceeded, Deadline};

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
    profile: Arc<Profile>,
    key: CacheKey,
    min_validity: u64,
    effort: Effort,
    deadline: Deadline,
}

/// One load under way: what it is for, and what it has cost upstream so
/// far. Its steps (the shared tier, the fetch) add to the cost as they go,
/// so that a failure still reports what it spent.
struct Loading<'a> {
    inner: &'a Inner,
    load: &'a Load,
    upstream: Upstream,
}

/// The broker. Cheap to clone; clones share caches and in-flight loads.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// Where assertions come from, one source per profile's `assertion`.
#[derive(Clone, Default)]
pub struct Assertions {
    /// `kms`: the broker's own key (KMS, or a local key), for its issuer.
    pub key: Option<Arc<dyn AssertionSigner>>,
    /// `sts`: AWS signs (`GetWebIdentityToken`).
    pub sts: Option<Arc<dyn WebIdentitySource>>,
}

impl Assertions {
    /// Only the broker's own key: every profile must be `kms`.
    pub fn key(signer: Arc<dyn AssertionSigner>) -> Self {
        Self {
            key: Some(signer),
            sts: None,
        }
    }

    /// Refuses profiles whose source is missing, naming the first.
    fn check(&self, profiles: &Profiles) -> Result<(), Error> {
        for profile in profiles.iter() {
            let present = match profile.assertion {
                AssertionSource::Kms => self.key.is_some(),
                AssertionSource::Sts => self.sts.is_some(),
            };
            if !present {
                return Err(Error::NoAssertionSource {
                    profile: profile.name.to_string(),
                    source_name: profile.assertion.as_str(),
                });
            }
        }
        Ok(())
    }
}

struct Inner {
    profiles: Profiles,
    /// Each profile with its cache key, worked out once.
    targets: BTreeMap<ProfileName, (Arc<Profile>, CacheKey)>,
    settings: BrokerSettings,
    assertions: Assertions,
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

/// The token API's bound, from its wire format's one home.
pub use aws2azure_shared::token_api::MAX_MIN_VALIDITY_SECS;

/// Seconds a caller needs a token to stay valid: from 0 to
/// [`MAX_MIN_VALIDITY_SECS`], checked here and nowhere else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinValidity(u64);

impl MinValidity {
    pub fn new(secs: u64) -> Result<Self, Error> {
        Self::parse(&secs.to_string())
    }

    /// From text (the query string's `min_validity`).
    pub fn parse(text: &str) -> Result<Self, Error> {
        text.parse::<u64>()
            .ok()
            .filter(|secs| *secs <= MAX_MIN_VALIDITY_SECS)
            .map(Self)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "min_validity must be a whole number of seconds from 0 to \
                     {MAX_MIN_VALIDITY_SECS}, not `{}`",
                    crate::echo(text)
                ))
            })
    }

    pub fn secs(self) -> u64 {
        self.0
    }
}

impl Broker {
    /// A broker whose profiles all sign with `signer` (`assertion = "kms"`);
    /// a profile with another source fails its loads with
    /// [`Error::NoAssertionSource`]. [`Broker::with_assertions`] checks that
    /// up front.
    pub fn new(
        profiles: Profiles,
        settings: BrokerSettings,
        signer: Arc<dyn AssertionSigner>,
        exchange: Arc<dyn TokenExchange>,
        shared: Option<Arc<dyn SharedCache>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::build(
            profiles,
            settings,
            Assertions::key(signer),
            exchange,
            shared,
            clock,
        )
    }

    /// A broker with the sources its profiles name: refused when a profile
    /// names one that `assertions` lacks.
    pub fn with_assertions(
        profiles: Profiles,
        settings: BrokerSettings,
        assertions: Assertions,
        exchange: Arc<dyn TokenExchange>,
        shared: Option<Arc<dyn SharedCache>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        assertions.check(&profiles)?;
        Ok(Self::build(
            profiles, settings, assertions, exchange, shared, clock,
        ))
    }

    fn build(
        profiles: Profiles,
        settings: BrokerSettings,
        assertions: Assertions,
        exchange: Arc<dyn TokenExchange>,
        shared: Option<Arc<dyn SharedCache>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let targets = profiles
            .iter()
            .map(|p| {
                let target = (Arc::new(p.clone()), CacheKey::for_profile(p));
                (p.name.clone(), target)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                profiles,
                targets,
                settings,
                assertions,
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

    /// The broker's own key, when it has one (`kms` profiles).
    pub fn signer(&self) -> Option<&Arc<dyn AssertionSigner>> {
        self.inner.assertions.key.as_ref()
    }

    /// Now, by the broker's clock (Unix seconds).
    pub fn now_unix(&self) -> u64 {
        self.inner.clock.now_unix()
    }

    /// A token for `profile` that stays valid at least `min_validity`
    /// (as far as Entra's token lifetime allows), within the request
    /// deadline. The issued token names the profile it is for.
    pub async fn token(
        &self,
        profile: &ProfileName,
        min_validity: MinValidity,
    ) -> Result<Issued, Failed> {
        let deadline = Deadline::after(self.inner.settings.request_deadline);
        let inner = &self.inner;
        let (profile, key) = inner
            .targets
            .get(profile)
            .ok_or_else(|| Error::UnknownProfile(profile.to_string()))?;
        let min_validity = min_validity.secs();
        let now = inner.clock.now_unix();
        let cached = inner.memory.get(key);
        let load = |effort| Load {
            profile: profile.clone(),
            key: key.clone(),
            min_validity,
            effort,
            deadline,
        };
        match cached.as_ref().map(|t| t.freshness(now, min_validity)) {
            Some(Freshness::Fresh) => Ok(Issued {
                profile: profile.clone(),
                token: cached.expect("matched Some"),
                outcome: CacheOutcome::Hit,
                upstream: Upstream::default(),
                absorbed_error: None,
            }),
            Some(Freshness::RefreshDue) => {
                let old = cached.expect("matched Some");
                let stale = |upstream, absorbed_error| Issued {
                    profile: profile.clone(),
                    token: old.clone(),
                    outcome: CacheOutcome::Stale,
                    upstream,
                    absorbed_error,
                };
                if now < inner.refresh_not_before(key) {
                    // A refresh failed moments ago: do not ask Entra again
                    // on every request (AADSTS50196 punishes that).
                    return Ok(stale(Upstream::default(), None));
                }
                match self.load(load(Effort::Refresh)).await {
                    Ok(mut issued) => {
                        inner.clear_refresh_backoff(key);
                        if issued.outcome == CacheOutcome::Miss {
                            issued.outcome = CacheOutcome::Refreshed;
                        }
                        Ok(issued)
                    }
                    // Still loading (a full load another caller started):
                    // the old token serves now, the load fills the cache
                    // when it finishes, so no backoff.
                    Err(Failed { error, upstream })
                        if matches!(*error, Error::DeadlineExceeded(_)) =>
                    {
                        Ok(stale(upstream, None))
                    }
                    Err(failed) => {
                        let wait = failed
                            .error
                            .retry_after()
                            .unwrap_or_default()
                            .max(inner.settings.refresh_backoff);
                        inner.back_off_refresh(key, now.saturating_add(wait.as_secs()));
                        tracing::warn!(
                            profile = %profile.name,
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
}

#[cfg(test)]
mod tests;
