//! One load, from the in-process tier through the shared tier to Entra.

use std::sync::Arc;

use super::shared_tier::SharedTurn;
use super::{CacheOutcome, Effort, Failed, Inner, Issued, Load, Loading, Upstream};
use crate::Error;
use crate::token::{CachedToken, Freshness};

impl<'a> Loading<'a> {
    pub(super) fn new(inner: &'a Inner, load: &'a Load) -> Self {
        Self {
            inner,
            load,
            upstream: Upstream::default(),
        }
    }

    pub(super) async fn run(mut self) -> Result<Issued, Failed> {
        let (inner, load) = (self.inner, self.load);
        let key = &load.key;
        let now = inner.clock.now_unix();
        // A flight that finished just before this one started may have
        // filled the in-process tier.
        if let Some(t) = inner.memory.get(key)
            && t.freshness(now, load.min_validity) == Freshness::Fresh
        {
            return Ok(self.served(t, CacheOutcome::Hit));
        }
        let mut still_valid: Option<CachedToken> = None;
        let mut leased = false;
        if let Some(shared) = &inner.shared {
            match self.consult_shared(shared.as_ref()).await {
                SharedTurn::Served(t, outcome) => return Ok(self.served(t, outcome)),
                // Fetching alongside a slow peer would turn an Entra
                // slowdown into a stampede.
                SharedTurn::PeerBusy => return Err(self.failed(Error::PeerBusy)),
                SharedTurn::Fetch {
                    leased: lease,
                    still_valid: valid,
                } => (leased, still_valid) = (lease, valid),
            }
        }

        // With a still-valid token to fall back on, one short attempt.
        let effort = if still_valid.is_some() {
            Effort::Refresh
        } else {
            load.effort
        };
        let fetched = self.fetch(effort).await;
        if let Some(shared) = &inner.shared {
            self.finish_shared(shared.as_ref(), fetched.as_ref().ok(), leased)
                .await;
        }
        match fetched {
            Ok(token) => {
                inner.memory.put(key, token.clone());
                Ok(self.served(token, CacheOutcome::Miss))
            }
            Err(err) => match still_valid {
                Some(t) => {
                    tracing::warn!(profile = %key.profile, error = %err, aadsts = err.aadsts(), "refresh failed; serving the still-valid shared token");
                    Ok(Issued {
                        absorbed_error: Some(Arc::new(err)),
                        ..self.served(t, CacheOutcome::Stale)
                    })
                }
                None => Err(self.failed(err)),
            },
        }
    }

    fn served(self, token: CachedToken, outcome: CacheOutcome) -> Issued {
        Issued {
            profile: self.load.profile.clone(),
            token,
            outcome,
            upstream: self.upstream,
            absorbed_error: None,
        }
    }

    fn failed(self, error: Error) -> Failed {
        Failed {
            error: Arc::new(error),
            upstream: self.upstream,
        }
    }
}
