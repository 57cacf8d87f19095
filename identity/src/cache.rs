//! The endpoint's in-memory token cache.
//!
//! Rules, in the spirit of the AWS SDKs' identity cache:
//! - never hand out a token with less than [`CachePolicy::floor`] left:
//!   Azure SDKs (MSAL) treat a token with under five minutes as expired and
//!   would ask again on every call;
//! - refresh ahead, [`CachePolicy::refresh_ahead`] (plus jitter) before
//!   expiry, in the background while the held token is still handed out;
//! - one load per profile at a time: concurrent callers share it, and a
//!   caller that gives up leaves the load running for the next one;
//! - a failed or fruitless refresh is not retried for
//!   [`CachePolicy::retry_after`], so a broken token API is not hammered
//!   while the held token still serves;
//! - time comes from an injected [`Clock`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws2azure_shared::clock::Clock;
use aws2azure_shared::profile::ProfileName;
use aws2azure_shared::token_api::MAX_MIN_VALIDITY_SECS;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::Error;
use crate::source::{Token, TokenSource};

#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// Least life a handed-out token has: MSAL's five minutes plus a minute
    /// for clock skew and the SDK's own work.
    pub floor: u64,
    /// Refresh this long before expiry...
    pub refresh_ahead: u64,
    /// ...plus up to this much, chosen per token, so that many endpoints
    /// started together do not refresh together.
    pub jitter: u64,
    /// Wait this long after a failed or fruitless refresh.
    pub retry_after: u64,
    /// Longest one load may take (the token API's own deadline is 24 s).
    pub load_timeout: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            floor: 360,
            refresh_ahead: 900,
            jitter: 120,
            retry_after: 30,
            load_timeout: Duration::from_secs(27),
        }
    }
}

/// How a request was served, for its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    /// Fetched from the token source, by its name ([`TokenSource::origin`]).
    Fetched(&'static str),
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Fetched(source) => source,
        }
    }
}

type Loaded = Result<Arc<Token>, Arc<Error>>;
type Flight = Shared<BoxFuture<'static, Loaded>>;

#[derive(Default)]
struct Entry {
    token: Option<Arc<Token>>,
    refresh_at: u64,
    retry_not_before: u64,
    flight: Option<(u64, Flight)>,
}

struct Inner {
    source: Arc<dyn TokenSource>,
    clock: Arc<dyn Clock>,
    policy: CachePolicy,
    entries: Mutex<HashMap<ProfileName, Entry>>,
    next_flight: AtomicU64,
}

/// Cheap to clone; every clone is the same cache.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

/// What a [`TokenCache::refresh_due`] pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub refreshed: usize,
    pub failed: usize,
}

impl TokenCache {
    pub fn new(source: Arc<dyn TokenSource>, clock: Arc<dyn Clock>, policy: CachePolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                clock,
                policy,
                entries: Mutex::default(),
                next_flight: AtomicU64::new(1),
            }),
        }
    }

    /// The cache's clock, for reporting a token's remaining life.
    pub fn now(&self) -> u64 {
        self.inner.clock.now_unix()
    }

    pub fn policy(&self) -> CachePolicy {
        self.inner.policy
    }

    /// A token for `profile` with at least the floor left.
    pub async fn get(&self, profile: &ProfileName) -> Result<(Arc<Token>, Origin), Arc<Error>> {
        let policy = self.inner.policy;
        let now = self.inner.clock.now_unix();
        let flight = {
            let mut entries = self.inner.lock();
            let entry = entries.entry(profile.clone()).or_default();
            if let Some(token) = entry.token.clone()
                && token.remaining(now) >= policy.floor
            {
                if now >= entry.refresh_at
                    && now >= entry.retry_not_before
                    && entry.flight.is_none()
                {
                    // Ask for more life than the held token has, so the
                    // token API cannot answer with the same token again.
                    let wanted =
                        (token.remaining(now) + 60).clamp(policy.floor, MAX_MIN_VALIDITY_SECS);
                    drop(self.inner.start(entry, profile, wanted));
                }
                return Ok((token, Origin::Cache));
            }
            match &entry.flight {
                Some((_, flight)) => flight.clone(),
                None => self.inner.start(entry, profile, policy.floor),
            }
        };
        let token = self.inner.wait(profile, flight).await?;
        let remaining = token.remaining(self.inner.clock.now_unix());
        if remaining < policy.floor {
            return Err(Arc::new(Error::ShortLived {
                profile: profile.to_string(),
                remaining,
                floor: policy.floor,
            }));
        }
        Ok((token, Origin::Fetched(self.inner.source.origin())))
    }

    /// Refreshes every held token whose refresh is due (or that can no
    /// longer be handed out), waiting for the loads. The Lambda extension
    /// calls it on each INVOKE: between invokes the sandbox is frozen, so a
    /// background refresh could not run.
    pub async fn refresh_due(&self) -> Refreshed {
        let now = self.inner.clock.now_unix();
        let policy = self.inner.policy;
        let flights: Vec<(ProfileName, Flight)> = {
            let mut entries = self.inner.lock();
            entries
                .iter_mut()
                .filter(|(_, e)| now >= e.refresh_at && now >= e.retry_not_before)
                .map(|(profile, entry)| {
                    let flight = match &entry.flight {
                        Some((_, flight)) => flight.clone(),
                        None => {
                            let held = entry.token.as_ref().map_or(0, |t| t.remaining(now));
                            let wanted = (held + 60).clamp(policy.floor, MAX_MIN_VALIDITY_SECS);
                            self.inner.start(entry, profile, wanted)
                        }
                    };
                    (profile.clone(), flight)
                })
                .collect()
        };
        let mut report = Refreshed::default();
        for (profile, flight) in flights {
            match self.inner.wait(&profile, flight).await {
                Ok(_) => report.refreshed += 1,
                Err(_) => report.failed += 1,
            }
        }
        report
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<ProfileName, Entry>> {
        // A panic while holding the map cannot leave an entry half-written
        // (every update is one assignment): carry on with it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a load in its own task, so it finishes (and fills the cache)
    /// even when every caller has given up.
    fn start(
        self: &Arc<Self>,
        entry: &mut Entry,
        profile: &ProfileName,
        min_validity: u64,
    ) -> Flight {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn({
            let inner = Arc::clone(self);
            let profile = profile.clone();
            async move {
                let timeout = inner.policy.load_timeout;
                let loaded =
                    match tokio::time::timeout(timeout, inner.source.token(&profile, min_validity))
                        .await
                    {
                        Ok(Ok(token)) => Ok(Arc::new(token)),
                        Ok(Err(e)) => Err(Arc::new(e)),
                        Err(_) => Err(Arc::new(Error::Timeout {
                            profile: profile.to_string(),
                            secs: timeout.as_secs(),
                        })),
                    };
                inner.settle(&profile, id, &loaded);
                loaded
            }
        });
        let cancelled = profile.to_string();
        let flight = async move {
            task.await
                .unwrap_or_else(|_| Err(Arc::new(Error::Cancelled(cancelled))))
        }
        .boxed()
        .shared();
        entry.flight = Some((id, flight.clone()));
        flight
    }

    async fn wait(&self, profile: &ProfileName, flight: Flight) -> Loaded {
        // The load has its own deadline; this one only guards against a
        // load that never settles.
        let limit = self.policy.load_timeout + Duration::from_secs(1);
        tokio::time::timeout(limit, flight)
            .await
            .unwrap_or_else(|_| {
                Err(Arc::new(Error::Timeout {
                    profile: profile.to_string(),
                    secs: limit.as_secs(),
                }))
            })
    }

    fn settle(&self, profile: &ProfileName, id: u64, loaded: &Loaded) {
        let now = self.clock.now_unix();
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(profile) else {
            return;
        };
        if entry.flight.as_ref().is_some_and(|(f, _)| *f == id) {
            entry.flight = None;
        }
        match loaded {
            Ok(token) => {
                let held = entry.token.as_ref().map_or(0, |t| t.expires_on);
                // A slower, older load must not replace a fresher token.
                if token.expires_on > held {
                    entry.token = Some(Arc::clone(token));
                    let ahead = self.policy.refresh_ahead + fastrand::u64(0..=self.policy.jitter);
                    entry.refresh_at = token.expires_on.saturating_sub(ahead);
                    entry.retry_not_before = 0;
                } else {
                    entry.retry_not_before = now + self.policy.retry_after;
                }
            }
            Err(_) => entry.retry_not_before = now + self.policy.retry_after,
        }
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
