//! Where the key ring lives: KMS in production ([`crate::kms`]), process
//! memory for `aws2azure dev` and the native tests ([`crate::memory`]).
//!
//! Every operation is idempotent, so a rerun after a crash may repeat the
//! step that was under way.

use async_trait::async_trait;

use crate::ring::{KeyRecord, Slot, Stamp};

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Every key of this ring that is not yet deleted, with its aliases,
    /// stamps and usability.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Creates an RSA 2048 signing key tagged with the ring and its creation
    /// time, under no state alias yet; returns its key id.
    async fn create_key(&self, now: u64) -> Result<String, StoreError>;

    /// Points the slot's alias at the key (creates or moves it).
    async fn point(&self, slot: Slot, key_id: &str) -> Result<(), StoreError>;

    /// Removes the slot's alias; nothing to do if there is none.
    async fn unpoint(&self, slot: Slot) -> Result<(), StoreError>;

    /// Records a time on the key (overwrites).
    async fn stamp(&self, key_id: &str, stamp: Stamp, at: u64) -> Result<(), StoreError>;

    /// Removes a recorded time (a next key lost from the public key set
    /// starts its warm-up again); nothing to do if there is none.
    async fn unstamp(&self, key_id: &str, stamp: Stamp) -> Result<(), StoreError>;

    /// Disables the key: it can no longer sign.
    async fn disable(&self, key_id: &str) -> Result<(), StoreError>;

    /// Schedules the key's deletion after `pending_days` (KMS: 7–30).
    async fn schedule_deletion(&self, key_id: &str, pending_days: u32) -> Result<(), StoreError>;

    /// Where the ring lives, for messages (`KMS alias/aws2azure-*`).
    fn describe(&self) -> String;
}

/// A failed key store call. The message names the operation, the cause as
/// the service gave it, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "KMS {operation} was throttled ({message}); nothing was changed by this step: rerun \
         later, or raise the account's KMS request quota"
    )]
    Throttled {
        operation: &'static str,
        message: String,
    },
    #[error(
        "KMS {operation} was denied ({message}): give the rotation role this permission on \
         the ring's keys and aliases (see template.yaml, RotationRole)"
    )]
    Denied {
        operation: &'static str,
        message: String,
    },
    #[error("KMS {operation} failed: {message}")]
    Service {
        operation: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("key `{key_id}` is not a key of this ring ({reason})")]
    UnknownKey { key_id: String, reason: String },
}
