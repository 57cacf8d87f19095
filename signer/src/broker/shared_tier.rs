//! The shared tier's part in a load: reads bounded by the call timeout, the
//! refresh lease, the wait for a peer that holds it, and degrading to the
//! in-process tier when the shared tier fails.

use std::sync::Arc;

use super::{Deadline, Inner, Load, Upstream};
use crate::Error;
use crate::cache::{CacheKey, SharedCache};
use crate::token::{CachedToken, Freshness};

impl Inner {
    /// Stores a fetched token in the shared tier and gives the lease back,
    /// both within one shared-tier call timeout.
    pub(super) async fn finish_shared(
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
    pub(super) async fn bounded<T>(
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

    pub(super) async fn read_shared(
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
    pub(super) async fn await_peer(
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

    pub(super) fn degrade(&self, err: &Error, upstream: &mut Upstream) {
        if !upstream.shared_cache_degraded {
            tracing::warn!(error = %err, "shared token cache unavailable; continuing with the in-process cache");
        }
        upstream.shared_cache_degraded = true;
    }
}

pub(super) enum PeerOutcome {
    Delivered(CachedToken),
    LeaseTaken,
    StillBusy,
    Degraded,
}

pub(super) enum SharedState {
    Fresh(CachedToken),
    RefreshDue(CachedToken),
    Missing,
    Degraded,
}
