//! The shared tier's part in a load: reads bounded by the call timeout, the
//! refresh lease, the wait for a peer that holds it, and degrading to the
//! in-process tier when the shared tier fails.

use super::{CacheOutcome, Deadline, Loading};
use crate::Error;
use crate::cache::SharedCache;
use crate::token::{CachedToken, Freshness};

/// What the shared tier leaves a load with.
pub(super) enum SharedTurn {
    /// A token to serve: stored by a peer, or the old one while a peer
    /// refreshes it.
    Served(CachedToken, CacheOutcome),
    /// A peer holds the lease and did not deliver in time.
    PeerBusy,
    /// Fetch, holding the lease or not (the tier failed), with a
    /// still-valid token to fall back on if there is one.
    Fetch {
        leased: bool,
        still_valid: Option<CachedToken>,
    },
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

impl Loading<'_> {
    /// Reads the shared tier and takes the refresh lease, or waits for the
    /// peer that holds it.
    pub(super) async fn consult_shared(&mut self, shared: &dyn SharedCache) -> SharedTurn {
        let (inner, key) = (self.inner, &self.load.key);
        let now = inner.clock.now_unix();
        let mut still_valid: Option<CachedToken> = None;
        let mut leased = false;
        // The shared tier's whole share of the request: its calls and the
        // wait for a peer, whatever happens in between.
        let until = self
            .load
            .deadline
            .within(inner.settings.shared_cache_timeout + inner.settings.peer_wait);
        match self.read_shared(shared, until).await {
            SharedState::Fresh(t) => {
                inner.memory.put(key, t.clone());
                return SharedTurn::Served(t, CacheOutcome::SharedHit);
            }
            SharedState::RefreshDue(t) => still_valid = Some(t),
            SharedState::Missing | SharedState::Degraded => {}
        }
        if !self.upstream.shared_cache_degraded {
            let lease_until = now + inner.settings.lease_secs;
            let leasing = shared.try_lease(key, &inner.instance_id, now, lease_until);
            match self.bounded(until, leasing).await {
                Ok(true) => leased = true,
                Ok(false) => {
                    if let Some(t) = still_valid.take() {
                        // A peer is refreshing; the old token serves.
                        return SharedTurn::Served(t, CacheOutcome::Stale);
                    }
                    match self.await_peer(shared, until).await {
                        PeerOutcome::Delivered(t) => {
                            inner.memory.put(key, t.clone());
                            return SharedTurn::Served(t, CacheOutcome::PeerFetched);
                        }
                        // The peer gave up (or died): the lease is ours.
                        PeerOutcome::LeaseTaken => leased = true,
                        PeerOutcome::Degraded => {}
                        PeerOutcome::StillBusy => return SharedTurn::PeerBusy,
                    }
                }
                Err(err) => self.degrade(&err),
            }
        }
        if leased {
            // A peer may have stored the token between our read and our
            // lease (it released its lease just before we took ours): one
            // more read spares KMS and Entra a duplicate load.
            match self.read_shared(shared, until).await {
                SharedState::Fresh(t) => {
                    self.finish_shared(shared, None, true).await;
                    inner.memory.put(key, t.clone());
                    return SharedTurn::Served(t, CacheOutcome::SharedHit);
                }
                SharedState::RefreshDue(t) => still_valid = still_valid.or(Some(t)),
                SharedState::Missing | SharedState::Degraded => {}
            }
        }
        SharedTurn::Fetch {
            leased,
            still_valid,
        }
    }

    /// Stores a fetched token in the shared tier and gives the lease back,
    /// both within one shared-tier call timeout.
    pub(super) async fn finish_shared(
        &mut self,
        shared: &dyn SharedCache,
        token: Option<&CachedToken>,
        leased: bool,
    ) {
        let (inner, key) = (self.inner, &self.load.key);
        let until = self
            .load
            .deadline
            .within(inner.settings.shared_cache_timeout);
        if let Some(token) = token
            && !self.upstream.shared_cache_degraded
            && let Err(err) = self.bounded(until, shared.put(key, token)).await
        {
            self.degrade(&err);
        }
        if leased
            && let Err(err) = self
                .bounded(until, shared.release_lease(key, &inner.instance_id))
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
        let budget = until.cap(self.inner.settings.shared_cache_timeout);
        match tokio::time::timeout(budget, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Cache(format!(
                "the shared token cache did not answer within {} ms",
                budget.as_millis()
            ))),
        }
    }

    async fn read_shared(&mut self, shared: &dyn SharedCache, until: Deadline) -> SharedState {
        let now = self.inner.clock.now_unix();
        match self.bounded(until, shared.get(&self.load.key, now)).await {
            Ok(Some(t)) => match t.freshness(now, self.load.min_validity) {
                Freshness::Fresh => SharedState::Fresh(t),
                Freshness::RefreshDue => SharedState::RefreshDue(t),
                Freshness::Unusable => SharedState::Missing,
            },
            Ok(None) => SharedState::Missing,
            Err(err) => {
                self.degrade(&err);
                SharedState::Degraded
            }
        }
    }

    /// Waits for the peer holding the lease to store a token; if it does
    /// not within `peer_wait` (or before `until`), tries to take the lease
    /// over.
    async fn await_peer(&mut self, shared: &dyn SharedCache, until: Deadline) -> PeerOutcome {
        let settings = &self.inner.settings;
        // Keep one call's time for taking the lease over.
        let waiting = Deadline::after(until.left().saturating_sub(settings.shared_cache_timeout))
            .within(settings.peer_wait);
        while !waiting.is_past() {
            tokio::time::sleep(waiting.cap(settings.peer_poll)).await;
            match self.read_shared(shared, until).await {
                SharedState::Fresh(t) => return PeerOutcome::Delivered(t),
                SharedState::Degraded => return PeerOutcome::Degraded,
                SharedState::RefreshDue(_) | SharedState::Missing => {}
            }
        }
        let (inner, key) = (self.inner, &self.load.key);
        let now = inner.clock.now_unix();
        let leasing = shared.try_lease(
            key,
            &inner.instance_id,
            now,
            now + inner.settings.lease_secs,
        );
        match self.bounded(until, leasing).await {
            Ok(true) => {
                tracing::warn!(profile = %key.profile, "the peer holding the refresh lease released it without a token; fetching");
                PeerOutcome::LeaseTaken
            }
            Ok(false) => PeerOutcome::StillBusy,
            Err(err) => {
                self.degrade(&err);
                PeerOutcome::Degraded
            }
        }
    }

    fn degrade(&mut self, err: &Error) {
        if !self.upstream.shared_cache_degraded {
            tracing::warn!(error = %err, "shared token cache unavailable; continuing with the in-process cache");
        }
        self.upstream.shared_cache_degraded = true;
    }
}
