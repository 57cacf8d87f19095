//! Access tokens as the broker holds them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An Entra access token. `Debug` never shows it, so a stray `{:?}` in a log
/// line cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(<redacted, {} bytes>)", self.0.len())
    }
}

/// A token with the times that govern its reuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedToken {
    pub access_token: AccessToken,
    pub token_type: String,
    /// Unix seconds when Entra says the token expires.
    pub expires_on: u64,
    /// Unix seconds from when the token should be replaced (refresh ahead).
    pub refresh_on: u64,
}

/// Whether a cached token can be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it.
    Fresh,
    /// Still valid for the caller, but due for refresh: refresh, and serve
    /// it if the refresh fails.
    RefreshDue,
    /// Too close to expiry for the caller (or expired): do not serve.
    Unusable,
}

impl CachedToken {
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_on.saturating_sub(now)
    }

    /// `min_validity`: seconds the caller needs the token to stay valid.
    pub fn freshness(&self, now: u64, min_validity: u64) -> Freshness {
        let remaining = self.remaining(now);
        if remaining == 0 || remaining < min_validity {
            Freshness::Unusable
        } else if now >= self.refresh_on {
            Freshness::RefreshDue
        } else {
            Freshness::Fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_on: u64, refresh_on: u64) -> CachedToken {
        CachedToken {
            access_token: AccessToken::new("secret-token-value".into()),
            token_type: "Bearer".into(),
            expires_on,
            refresh_on,
        }
    }

    #[test]
    fn freshness_rules() {
        let t = token(1000, 700);
        assert_eq!(t.freshness(100, 0), Freshness::Fresh);
        assert_eq!(t.freshness(699, 300), Freshness::Fresh);
        assert_eq!(t.freshness(700, 0), Freshness::RefreshDue);
        assert_eq!(
            t.freshness(100, 901),
            Freshness::Unusable,
            "min_validity beyond expiry"
        );
        assert_eq!(t.freshness(100, 900), Freshness::Fresh);
        assert_eq!(t.freshness(1000, 0), Freshness::Unusable);
        assert_eq!(t.freshness(5000, 0), Freshness::Unusable);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", token(1, 1));
        assert!(!shown.contains("secret-token-value"), "{shown}");
    }
}
