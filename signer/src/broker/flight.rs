//! Single flight: one load per token at a time in this process, run as its
//! own task and shared by every request that wants it.

use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::{Broker, CacheOutcome, Effort, Failed, Inner, Issued, Load, Loading};
use crate::Error;
use crate::cache::CacheKey;
use crate::token::Freshness;

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
        Loading::new(&self.inner, &load).run().await
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
            let result = match std::panic::AssertUnwindSafe(Loading::new(&inner, &task_load).run())
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
}
