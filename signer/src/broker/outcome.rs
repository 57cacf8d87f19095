//! What a request for a token ends in: the token and where it came from,
//! or the error, each with what it cost upstream.

use std::sync::Arc;

use aws2azure_shared::profile::Profile;
use aws2azure_shared::token_api::TokenResponse;

use crate::Error;
use crate::token::CachedToken;

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

    /// Whether the token was served without asking Entra in this request
    /// (the `CacheHit` metric).
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Self::Hit | Self::SharedHit | Self::Stale | Self::PeerFetched
        )
    }
}

/// As its name in the audit line.
impl std::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As its name in the audit line.
impl serde::Serialize for CacheOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
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
    /// The profile the token is for.
    pub profile: Arc<Profile>,
    pub token: CachedToken,
    pub outcome: CacheOutcome,
    pub upstream: Upstream,
    /// A refresh failure that was absorbed by serving the old token.
    pub absorbed_error: Option<Arc<Error>>,
}

impl Issued {
    /// The token API's answer for this token, `now` by the broker's clock.
    pub fn response(&self, now: u64) -> TokenResponse {
        TokenResponse {
            access_token: self.token.access_token.expose().to_string(),
            expires_in: self.token.expires_on.saturating_sub(now),
            expires_on: self.token.expires_on,
            profile: self.profile.name.to_string(),
            scope: self.profile.scope.to_string(),
            token_type: self.token.token_type.clone(),
        }
    }
}

/// A failed request: the error, and what it cost upstream before failing
/// (for the audit line and the metrics). One failed load fails every
/// request that joined it: they share the error rather than copies of it,
/// so an error need not be `Clone` and can keep its causes.
#[derive(Clone, Debug)]
pub struct Failed {
    pub error: Arc<Error>,
    pub upstream: Upstream,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error: Arc::new(error),
            upstream: Upstream::default(),
        }
    }
}
