//! The key ring in AWS KMS.
//!
//! A ring is an alias prefix (the CloudFormation stack name, `aws2azure` by
//! default). Its state aliases are `alias/{ring}-next`, `-current` and
//! `-previous`; the times of the lifecycle are tags on the keys
//! ([`Stamp::tag`]). Every key of the ring also carries a permanent member
//! alias `alias/{ring}-key-{key_id}`, so one paginated `ListAliases` finds
//! every key, retired ones included, without listing every key of the
//! account; KMS deletes a key's aliases with the key, so a deleted key leaves
//! the ring by itself.
//!
//! The rotation role reads the ring afresh on every run: nothing here is a
//! source of truth except KMS. Public keys are cached by key id (they never
//! change), and so is which keys have their member alias.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{KeySpec, KeyState as KmsKeyState, KeyUsageType, Tag};
use aws2azure_shared::jwk::{Jwk, KeyId};

use crate::Error;
use crate::ring::{CREATED_TAG, KeyRecord, KeyState, RING_TAG, Slot, Stamp, Usability};
use crate::store::{KeyStore, StoreError};

/// The tag holding a key's `kid`, written before the key is disabled: KMS
/// refuses `GetPublicKey` on a disabled key, and a retired key that was
/// disabled but not yet scheduled for deletion (a crash, a throttled call in
/// between) must still be listed, by its `kid`, so that the next run
/// finishes the job.
pub const KID_TAG: &str = "aws2azure:kid";

/// KMS's limit on an alias name, `alias/` included.
const MAX_ALIAS_LEN: usize = 256;
/// A KMS key id: a UUID, or `mrk-` and 32 hex digits; both 36 characters.
const KEY_ID_LEN: usize = 36;
const MEMBER_INFIX: &str = "key-";

/// Checks a ring name once, before any KMS call: it becomes part of every
/// alias of the ring, so it must fit KMS's alias rules with the longest
/// suffix (`-key-{key_id}`).
pub fn validate_ring(ring: &str) -> Result<(), Error> {
    let config = |message: String| {
        Err(Error::Config {
            setting: "key ring name",
            message,
        })
    };
    let max = MAX_ALIAS_LEN - "alias/".len() - "-".len() - MEMBER_INFIX.len() - KEY_ID_LEN;
    if ring.is_empty() {
        return config(
            "empty: name the deployment, e.g. the CloudFormation stack name `aws2azure`".into(),
        );
    }
    if let Some(bad) = ring
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-')))
    {
        return config(format!(
            "`{ring}` holds {bad:?}: KMS aliases allow only letters, digits, `/`, `_` and `-`"
        ));
    }
    if ring.len() > max {
        return config(format!(
            "`{ring}` is {} characters: at most {max} fit in a KMS alias with the ring's \
             suffixes; use a shorter name",
            ring.len()
        ));
    }
    if ring.to_ascii_lowercase().starts_with("aws/") {
        return config(format!(
            "`{ring}` starts with `aws/`, which KMS reserves for AWS managed keys; use another \
             name"
        ));
    }
    Ok(())
}

/// What an alias of the account means to the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingAlias {
    State(Slot),
    Member,
}

/// `alias/{ring}-{slot}` or `alias/{ring}-key-{target}`. A member alias
/// counts only if it names the key it points at, so the aliases of a ring
/// whose name extends this one (`{ring}-key`, `{ring}-next`) never count.
fn parse_alias(ring: &str, name: &str, target: &str) -> Option<RingAlias> {
    let rest = name
        .strip_prefix("alias/")?
        .strip_prefix(ring)?
        .strip_prefix('-')?;
    if let Some(slot) = Slot::ALL.into_iter().find(|s| s.suffix() == rest) {
        return Some(RingAlias::State(slot));
    }
    (rest.strip_prefix(MEMBER_INFIX)? == target).then_some(RingAlias::Member)
}

fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.as_service_error().and_then(ProvideErrorMetadata::code)
}

/// The one mapping of KMS failures to [`StoreError`]. Messages are KMS's
/// own (key ids, ARNs, the denied action), never key material.
fn store_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = match err.as_service_error() {
        Some(e) => format!(
            "{}: {}",
            e.code().unwrap_or("unknown error"),
            e.message().unwrap_or("no message")
        ),
        None => DisplayErrorContext(&err).to_string(),
    };
    match code(&err) {
        Some("ThrottlingException" | "LimitExceededException") => {
            StoreError::Throttled { operation, message }
        }
        Some("AccessDeniedException") => StoreError::Denied { operation, message },
        _ => StoreError::Service {
            operation,
            message,
            source: Some(Box::new(err)),
        },
    }
}

/// Like [`store_error`], for calls on one key: a key KMS does not know is
/// the caller's mistake, not KMS's failure.
fn key_error<E, R>(operation: &'static str, key_id: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if code(&err) == Some("NotFoundException") {
        return StoreError::UnknownKey {
            key_id: key_id.into(),
            reason: format!(
                "KMS {operation}: {}",
                err.as_service_error()
                    .and_then(ProvideErrorMetadata::message)
                    .unwrap_or("not found")
            ),
        };
    }
    store_error(operation, err)
}

/// How often a call about a key KMS has just created is retried while KMS
/// says the key does not exist.
const FRESH_KEY_ATTEMPTS: u32 = 4;

/// Runs a call about a key KMS has just created: KMS is eventually
/// consistent, and the next call can briefly find no such key. Any other
/// outcome is returned at once.
async fn while_fresh<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = std::time::Duration::from_millis(200);
    for _ in 1..FRESH_KEY_ATTEMPTS {
        match call().await {
            Err(StoreError::UnknownKey { .. }) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    call().await
}

fn tag(key: &str, value: impl Into<String>) -> Result<Tag, StoreError> {
    Tag::builder()
        .tag_key(key)
        .tag_value(value)
        .build()
        .map_err(|e| StoreError::Service {
            operation: "TagResource",
            message: e.to_string(),
            source: Some(Box::new(e)),
        })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct KmsKeyStore {
    client: Client,
    ring: String,
    key_policy: Option<String>,
    public_keys: Mutex<HashMap<String, Jwk>>,
    members: Mutex<HashSet<String>>,
}

impl KmsKeyStore {
    /// `ring`: the alias prefix (check it with [`validate_ring`] first).
    /// `key_policy`: the policy of every key created (production passes the
    /// signing key policy, whose `RotationStampsItsKeys` lets the rotation's
    /// role tag the new key: its IAM policy tags only keys already in the
    /// ring; without one, KMS applies its default policy).
    pub fn new(client: Client, ring: impl Into<String>, key_policy: Option<String>) -> Self {
        Self {
            client,
            ring: ring.into(),
            key_policy,
            public_keys: Mutex::default(),
            members: Mutex::default(),
        }
    }

    pub fn ring(&self) -> &str {
        &self.ring
    }

    /// `alias/{ring}-{slot}`.
    pub fn alias(&self, slot: Slot) -> String {
        format!("alias/{}-{}", self.ring, slot.suffix())
    }

    /// `alias/{ring}-key-{key_id}`.
    pub fn member_alias(&self, key_id: &str) -> String {
        format!("alias/{}-{MEMBER_INFIX}{key_id}", self.ring)
    }

    /// The ring's aliases: (name, target key id).
    async fn aliases(&self) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = format!("alias/{}-", self.ring);
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_aliases()
                .limit(100)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| store_error("ListAliases", e))?;
            for alias in page.aliases() {
                if let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id())
                    && name.starts_with(&prefix)
                {
                    out.push((name.to_string(), target.to_string()));
                }
            }
            match page.next_marker() {
                Some(next) if page.truncated() => marker = Some(next.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn key_state(&self, key_id: &str) -> Result<Option<KmsKeyState>, StoreError> {
        let described = self
            .client
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| key_error("DescribeKey", key_id, e))?;
        Ok(described
            .key_metadata()
            .and_then(|m| m.key_state())
            .cloned())
    }

    async fn tags(&self, key_id: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let mut out = BTreeMap::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_resource_tags()
                .key_id(key_id)
                .limit(50)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| key_error("ListResourceTags", key_id, e))?;
            for tag in page.tags() {
                out.insert(tag.tag_key().to_string(), tag.tag_value().to_string());
            }
            match page.next_marker() {
                Some(next) if page.truncated() => marker = Some(next.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The key's public key (cached: it never changes). `Ok(None)`: KMS
    /// refuses to give it because the key is disabled.
    async fn public_key(&self, key_id: &str) -> Result<Option<Jwk>, StoreError> {
        if let Some(jwk) = lock(&self.public_keys).get(key_id) {
            return Ok(Some(jwk.clone()));
        }
        let out = match self.client.get_public_key().key_id(key_id).send().await {
            Ok(out) => out,
            Err(e)
                if matches!(
                    code(&e),
                    Some("DisabledException" | "KMSInvalidStateException")
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(key_error("GetPublicKey", key_id, e)),
        };
        let der = out.public_key().ok_or_else(|| StoreError::Service {
            operation: "GetPublicKey",
            message: format!("KMS returned no public key for {key_id}"),
            source: None,
        })?;
        let jwk = Jwk::from_spki_der(der.as_ref()).map_err(|e| StoreError::Service {
            operation: "GetPublicKey",
            message: format!(
                "key {key_id} is not an RSA signing key ({e}); point the ring's aliases only \
                 at keys `aws2azure keys stage` created"
            ),
            source: Some(Box::new(e)),
        })?;
        lock(&self.public_keys).insert(key_id.to_string(), jwk.clone());
        Ok(Some(jwk))
    }

    /// One key as the ring sees it; `None` if it is gone or pending deletion
    /// (it will never be used again; the in-process store drops those too).
    async fn record(
        &self,
        key_id: &str,
        slots: BTreeSet<Slot>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let described = match self.client.describe_key().key_id(key_id).send().await {
            Ok(d) => d,
            // Deleted between ListAliases and now.
            Err(e) if code(&e) == Some("NotFoundException") => return Ok(None),
            Err(e) => return Err(store_error("DescribeKey", e)),
        };
        let Some(meta) = described.key_metadata() else {
            return Ok(None);
        };
        let usability = match meta.key_state() {
            Some(KmsKeyState::Enabled) => Usability::Enabled,
            Some(KmsKeyState::PendingDeletion | KmsKeyState::PendingReplicaDeletion) => {
                return Ok(None);
            }
            // Disabled, or unavailable for another reason: it cannot sign.
            _ => Usability::Disabled,
        };
        let tags = self.tags(key_id).await?;
        let created_at = tags
            .get(CREATED_TAG)
            .and_then(|v| v.parse().ok())
            // A key created outside the ring (the stack's first key).
            .or_else(|| meta.creation_date().map(|d| d.secs().max(0) as u64))
            .unwrap_or(0);
        let mut stamps = BTreeMap::new();
        for (name, value) in &tags {
            if let Some(stamp) = Stamp::from_tag(name) {
                match value.parse::<u64>() {
                    Ok(at) => {
                        stamps.insert(stamp, at);
                    }
                    Err(_) => tracing::warn!(
                        key_id,
                        tag = %name,
                        value = %value,
                        "ignoring a lifecycle tag that is not Unix seconds"
                    ),
                }
            }
        }
        if let Some(other) = tags.get(RING_TAG).filter(|r| **r != self.ring) {
            tracing::warn!(key_id, ring = %other, "a key of this ring is tagged with another ring");
        }
        let known = self.public_key(key_id).await?;
        let record = KeyRecord {
            key_id: key_id.to_string(),
            jwk: known
                .clone()
                .unwrap_or_else(|| placeholder(key_id, tags.get(KID_TAG))),
            created_at,
            slots,
            stamps,
            usability,
        };
        if known.is_none() && record.state() != KeyState::Retired {
            return Err(StoreError::Service {
                operation: "GetPublicKey",
                message: format!(
                    "key {key_id} ({}) is disabled, so KMS does not give its public key and it \
                     cannot be published: enable it (`aws kms enable-key --key-id {key_id}`) or \
                     move the ring's aliases off it",
                    record.state()
                ),
                source: None,
            });
        }
        Ok(Some(record))
    }

    /// Gives the key its member alias, so that it stays in the ring after it
    /// loses its state aliases (a key the stack created, pointed at by hand).
    async fn ensure_member(&self, key_id: &str) -> Result<(), StoreError> {
        if lock(&self.members).contains(key_id) {
            return Ok(());
        }
        match self
            .client
            .create_alias()
            .alias_name(self.member_alias(key_id))
            .target_key_id(key_id)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if code(&e) == Some("AlreadyExistsException") => {}
            Err(e) => return Err(key_error("CreateAlias", key_id, e)),
        }
        lock(&self.members).insert(key_id.to_string());
        Ok(())
    }

    async fn update_alias(&self, slot: Slot, key_id: &str) -> Result<bool, StoreError> {
        match self
            .client
            .update_alias()
            .alias_name(self.alias(slot))
            .target_key_id(key_id)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("NotFoundException") => Ok(false),
            Err(e) => Err(key_error("UpdateAlias", key_id, e)),
        }
    }
}

/// The record of a disabled retired key: its `kid` (from [`KID_TAG`]) is
/// all the ring needs of it, to report it and to check that the public key
/// set no longer lists it. A retired key is never published, so the
/// stand-in modulus never leaves the process.
fn placeholder(key_id: &str, kid: Option<&String>) -> Jwk {
    let stand_in = crate::memory::test_jwk(&format!("disabled KMS key {key_id}"));
    let kid = match kid.map(|k| KeyId::new(k.as_str())) {
        Some(Ok(kid)) => kid,
        _ => {
            tracing::warn!(key_id, "a disabled retired key has no readable kid tag");
            KeyId::new(format!("disabled-{key_id}")).unwrap_or_else(|_| stand_in.kid().clone())
        }
    };
    stand_in.with_kid(kid)
}

#[async_trait]
impl KeyStore for KmsKeyStore {
    /// Every key with a member alias or a state alias of the ring. A key
    /// that [`KeyStore::create_key`] created but did not finish (the
    /// process died, or a call failed, after `CreateKey` or after the
    /// tagging, before the member alias) is not found: that is harmless, it
    /// was never staged, published or used. It costs its monthly fee until
    /// deleted by hand (`create_key` logs its id as soon as KMS returns it).
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut slots: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
        let mut members = HashSet::new();
        for (name, target) in self.aliases().await? {
            match parse_alias(&self.ring, &name, &target) {
                Some(RingAlias::State(slot)) => {
                    slots.entry(target).or_default().insert(slot);
                }
                Some(RingAlias::Member) => {
                    members.insert(target);
                }
                None => {}
            }
        }
        let ids: BTreeSet<String> = members.iter().chain(slots.keys()).cloned().collect();
        *lock(&self.members) = members;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let key_slots = slots.remove(&id).unwrap_or_default();
            if let Some(record) = self.record(&id, key_slots).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// `CreateKey` without tags, then `TagResource` (the ring and the
    /// creation time), then the member alias. Tags passed to `CreateKey`
    /// would need `kms:TagResource` in the role's IAM policy on every key of
    /// the account (a key being created has no tag to condition on), and so
    /// the power to tag any key into the ring; the key's own policy
    /// (`RotationStampsItsKeys`) lets the role tag the new key, and it holds
    /// from the moment the key exists. Tags before the alias: a key the ring
    /// finds always carries the ring tag its IAM conditions need.
    async fn create_key(&self, now: u64) -> Result<String, StoreError> {
        let tags = [
            tag(RING_TAG, &self.ring)?,
            tag(CREATED_TAG, now.to_string())?,
        ];
        let created = self
            .client
            .create_key()
            .key_spec(KeySpec::Rsa2048)
            .key_usage(KeyUsageType::SignVerify)
            .description(format!(
                "aws2azure client assertion signing key (RS256), ring {}",
                self.ring
            ))
            .set_policy(self.key_policy.clone())
            .send()
            .await
            .map_err(|e| store_error("CreateKey", e))?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_string())
            .ok_or_else(|| StoreError::Service {
                operation: "CreateKey",
                message: "KMS returned no key metadata".into(),
                source: None,
            })?;
        // Before anything else can fail or the process die: the id of a key
        // that never joins the ring is in the log (see `keys`).
        tracing::info!(key_id, ring = %self.ring, "created a signing key");
        let not_in_ring = |e: StoreError| {
            tracing::warn!(
                key_id,
                "created a key but could not make it part of the ring: it was never used; \
                 schedule its deletion by hand"
            );
            e
        };
        let tags = tags.to_vec();
        while_fresh(|| async {
            self.client
                .tag_resource()
                .key_id(&key_id)
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(|e| key_error("TagResource", &key_id, e))
        })
        .await
        .map_err(not_in_ring)?;
        while_fresh(|| self.ensure_member(&key_id))
            .await
            .map_err(not_in_ring)?;
        Ok(key_id)
    }

    /// `UpdateAlias`, or `CreateAlias` if the alias does not exist yet (and
    /// `UpdateAlias` again if another run created it meanwhile).
    async fn point(&self, slot: Slot, key_id: &str) -> Result<(), StoreError> {
        self.ensure_member(key_id).await?;
        if self.update_alias(slot, key_id).await? {
            return Ok(());
        }
        match self
            .client
            .create_alias()
            .alias_name(self.alias(slot))
            .target_key_id(key_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("AlreadyExistsException") => {
                if self.update_alias(slot, key_id).await? {
                    Ok(())
                } else {
                    Err(StoreError::Service {
                        operation: "UpdateAlias",
                        message: format!(
                            "{} exists and does not exist by turns: another process is moving \
                             it; rerun when it is done",
                            self.alias(slot)
                        ),
                        source: None,
                    })
                }
            }
            Err(e) => Err(key_error("CreateAlias", key_id, e)),
        }
    }

    async fn unpoint(&self, slot: Slot) -> Result<(), StoreError> {
        match self
            .client
            .delete_alias()
            .alias_name(self.alias(slot))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("NotFoundException") => Ok(()),
            Err(e) => Err(store_error("DeleteAlias", e)),
        }
    }

    async fn stamp(&self, key_id: &str, stamp: Stamp, at: u64) -> Result<(), StoreError> {
        self.client
            .tag_resource()
            .key_id(key_id)
            .tags(tag(stamp.tag(), at.to_string())?)
            .send()
            .await
            .map_err(|e| key_error("TagResource", key_id, e))?;
        Ok(())
    }

    async fn unstamp(&self, key_id: &str, stamp: Stamp) -> Result<(), StoreError> {
        self.client
            .untag_resource()
            .key_id(key_id)
            .tag_keys(stamp.tag())
            .send()
            .await
            .map_err(|e| key_error("UntagResource", key_id, e))?;
        Ok(())
    }

    /// Writes the key's `kid` to [`KID_TAG`] first (see there), then
    /// disables it. Already disabled, or pending deletion: done.
    async fn disable(&self, key_id: &str) -> Result<(), StoreError> {
        if let Some(jwk) = self.public_key(key_id).await? {
            let tagged = self
                .client
                .tag_resource()
                .key_id(key_id)
                .tags(tag(KID_TAG, jwk.kid().as_str())?)
                .send()
                .await;
            match tagged {
                Ok(_) => {}
                // Pending deletion: it will never be listed again anyway.
                Err(e) if code(&e) == Some("KMSInvalidStateException") => {}
                Err(e) => return Err(key_error("TagResource", key_id, e)),
            }
        }
        match self.client.disable_key().key_id(key_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("KMSInvalidStateException") => {
                match self.key_state(key_id).await? {
                    Some(KmsKeyState::Disabled | KmsKeyState::PendingDeletion) => Ok(()),
                    _ => Err(key_error("DisableKey", key_id, e)),
                }
            }
            Err(e) => Err(key_error("DisableKey", key_id, e)),
        }
    }

    /// Already pending deletion: done (KMS keeps the first date).
    async fn schedule_deletion(&self, key_id: &str, pending_days: u32) -> Result<(), StoreError> {
        let days = i32::try_from(pending_days).unwrap_or(i32::MAX);
        match self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(days)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("KMSInvalidStateException") => {
                match self.key_state(key_id).await? {
                    Some(KmsKeyState::PendingDeletion) => Ok(()),
                    _ => Err(key_error("ScheduleKeyDeletion", key_id, e)),
                }
            }
            Err(e) => Err(key_error("ScheduleKeyDeletion", key_id, e)),
        }
    }

    fn describe(&self) -> String {
        format!("KMS alias/{}-*", self.ring)
    }
}

#[cfg(test)]
mod tests;
