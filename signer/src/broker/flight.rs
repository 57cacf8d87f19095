//! Single flight: one load per token at a time in this process, run as its
//! own task and shared by every request that wants it; and the load itself,
//! from the in-process tier through the shared tier to Entra.

use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::shared_tier::{PeerOutcome, SharedState};
use super::{Broker, CacheOutcome, Effort, Failed, Inner, Issued, Load, Upstream};
use crate::Error;
use crate::cache::CacheKey;
use crate::token::{CachedToken, Freshness};

/// One load shared by every request for the same token. The load runs as
/// its own task: a caller that gives up (its request deadline, a dropped
/// connection) leaves it running to its own deadline, so the next caller
/// finds its result instead of a parked future.
pub(super) type Flight = Shared<BoxFuture<'static, Result<Issued, Failed>>>;

impl Broker {
    /// Single flight: one load per cache key at a time in this process.
    pub(super) async fn load(&self, load: Load) -> Result<Issued, Failed> {
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

    pub(super) fn flight(&self, load: &Load) -> (Flight, bool) {
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
    pub(super) fn end_flight(&self, key: &CacheKey, id: u64) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(key).is_some_and(|(current, _)| *current == id) {
            flights.remove(key);
        }
    }

    pub(super) async fn load_uncoalesced(&self, load: &Load) -> Result<Issued, Failed> {
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
}
