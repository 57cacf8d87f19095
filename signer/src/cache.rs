//! The token cache's two tiers: an in-process map (per Lambda instance) and
//! a shared tier (DynamoDB) that instances fill for each other, with a lease
//! so that only one instance at a time asks Entra for a given token.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::token::CachedToken;

/// Identifies one token: every profile field that changes the token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The profile name, kept readable for operators looking at the table.
    pub profile: String,
    /// Hex SHA-256 of the full key (authority, tenant, client, scope,
    /// subject), bounded in length and safe as a table key.
    pub digest: String,
}

impl CacheKey {
    pub fn for_profile(profile: &aws2azure_shared::profile::Profile) -> Self {
        Self {
            profile: profile.name.to_string(),
            digest: hex::encode(Sha256::digest(profile.cache_key().as_bytes())),
        }
    }
}

/// The in-process tier.
#[derive(Debug, Default)]
pub struct MemoryCache {
    tokens: Mutex<HashMap<CacheKey, CachedToken>>,
}

impl MemoryCache {
    pub fn get(&self, key: &CacheKey) -> Option<CachedToken> {
        self.lock().get(key).cloned()
    }

    pub fn put(&self, key: &CacheKey, token: CachedToken) {
        self.lock().insert(key.clone(), token);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, CachedToken>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (each operation is a single insert or lookup), so poisoning is moot.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A tier shared between broker instances.
#[async_trait]
pub trait SharedCache: Send + Sync + 'static {
    /// The stored token, if any and not yet expired at `now`. Stores whose
    /// expiry deletion is lazy (DynamoDB TTL) must check expiry here.
    async fn get(&self, key: &CacheKey, now: u64) -> Result<Option<CachedToken>, Error>;

    async fn put(&self, key: &CacheKey, token: &CachedToken) -> Result<(), Error>;

    /// Takes the refresh lease for `key` until `until` (Unix seconds) if no
    /// one else holds an unexpired one. `true` when taken.
    async fn try_lease(
        &self,
        key: &CacheKey,
        holder: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, Error>;

    /// Gives the lease back early (only if `holder` still holds it).
    async fn release_lease(&self, key: &CacheKey, holder: &str) -> Result<(), Error>;
}
