//! The in-process key store: the same ring as KMS holds, in memory, for
//! `aws2azure dev` (which signs with it) and the native tests of the state
//! machine (which only need public keys, see [`KeyMaterial::Fake`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws2azure_shared::assertion::{AssertionClaims, ClientAssertion};
use aws2azure_shared::jwk::Jwk;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use sha2::{Digest, Sha256};

use crate::ring::{KeyRecord, Slot, Stamp, Usability};
use crate::store::{KeyStore, StoreError};

/// What a created key is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// A real RSA 2048 key that can sign (tens of milliseconds to make).
    Generated,
    /// A public key only, derived from a counter: instant, for tests of the
    /// state machine that never sign.
    Fake,
}

struct Entry {
    signer: Option<Arc<LocalKeySigner>>,
    record: KeyRecord,
}

#[derive(Default)]
struct Ring {
    keys: BTreeMap<String, Entry>,
    aliases: BTreeMap<Slot, String>,
    created: u64,
}

pub struct MemoryKeyStore {
    material: KeyMaterial,
    ring: Mutex<Ring>,
}

impl MemoryKeyStore {
    pub fn new(material: KeyMaterial) -> Self {
        Self {
            material,
            ring: Mutex::default(),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_key<T>(&self, key_id: &str, f: impl FnOnce(&mut Entry) -> T) -> Result<T, StoreError> {
        let mut ring = self.ring();
        let entry = ring.keys.get_mut(key_id).ok_or_else(|| unknown(key_id))?;
        Ok(f(entry))
    }

    /// The signing key the `current` alias points at, if it can sign.
    pub fn current_signer(&self) -> Option<Arc<LocalKeySigner>> {
        let ring = self.ring();
        let entry = ring.keys.get(ring.aliases.get(&Slot::Current)?)?;
        match entry.record.usability {
            Usability::Enabled => entry.signer.clone(),
            _ => None,
        }
    }

    /// Adds an existing key as `current`, promoted at `now` (the dev stack's
    /// first key, already published when the edge starts).
    pub fn adopt_current(&self, signer: LocalKeySigner, now: u64) -> String {
        let mut ring = self.ring();
        ring.created += 1;
        let key_id = format!("local-{}", ring.created);
        let mut record = record(&key_id, signer.jwk().clone(), now);
        record.slots.insert(Slot::Current);
        for stamp in [Stamp::Published, Stamp::SeenPublic, Stamp::Promoted] {
            record.stamps.insert(stamp, now);
        }
        ring.aliases.insert(Slot::Current, key_id.clone());
        ring.keys.insert(
            key_id.clone(),
            Entry {
                signer: Some(Arc::new(signer)),
                record,
            },
        );
        key_id
    }

    /// A signer that resolves `current` like the broker's KMS signer does:
    /// again after `resolve_every`, so a promotion reaches it with the same
    /// lag it has in production.
    pub fn signer(self: &Arc<Self>, resolve_every: Duration) -> CurrentKeySigner {
        CurrentKeySigner {
            store: self.clone(),
            resolve_every,
            resolved: Mutex::new(None),
        }
    }
}

fn unknown(key_id: &str) -> StoreError {
    StoreError::UnknownKey {
        key_id: key_id.into(),
        reason: "no such key in the in-process store".into(),
    }
}

fn record(key_id: &str, jwk: Jwk, now: u64) -> KeyRecord {
    KeyRecord {
        key_id: key_id.into(),
        jwk,
        created_at: now,
        slots: BTreeSet::new(),
        stamps: BTreeMap::new(),
        usability: Usability::Enabled,
    }
}

/// A valid public key made from a seed: distinct seeds, distinct `kid`s.
pub fn test_jwk(seed: &str) -> Jwk {
    let mut n = Vec::with_capacity(256);
    let mut block = Sha256::digest(seed.as_bytes());
    while n.len() < 256 {
        n.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    n[0] |= 0x80;
    n[255] |= 1;
    Jwk::from_rsa_components(&n, &[1, 0, 1]).expect("a 2048-bit odd modulus is a valid key")
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let ring = self.ring();
        Ok(ring
            .keys
            .values()
            .filter(|e| e.record.usability != Usability::PendingDeletion)
            .map(|e| e.record.clone())
            .collect())
    }

    async fn create_key(&self, now: u64) -> Result<String, StoreError> {
        let n = {
            let mut ring = self.ring();
            ring.created += 1;
            ring.created
        };
        let key_id = format!("local-{n}");
        let (signer, jwk) = match self.material {
            KeyMaterial::Generated => {
                let signer = LocalKeySigner::generate().map_err(|e| StoreError::Service {
                    operation: "CreateKey",
                    message: e.to_string(),
                    source: None,
                })?;
                let jwk = signer.jwk().clone();
                (Some(Arc::new(signer)), jwk)
            }
            KeyMaterial::Fake => (None, test_jwk(&key_id)),
        };
        self.ring().keys.insert(
            key_id.clone(),
            Entry {
                signer,
                record: record(&key_id, jwk, now),
            },
        );
        Ok(key_id)
    }

    async fn point(&self, slot: Slot, key_id: &str) -> Result<(), StoreError> {
        let mut ring = self.ring();
        if !ring.keys.contains_key(key_id) {
            return Err(unknown(key_id));
        }
        if let Some(old) = ring.aliases.insert(slot, key_id.to_string())
            && let Some(entry) = ring.keys.get_mut(&old)
        {
            entry.record.slots.remove(&slot);
        }
        if let Some(entry) = ring.keys.get_mut(key_id) {
            entry.record.slots.insert(slot);
        }
        Ok(())
    }

    async fn unpoint(&self, slot: Slot) -> Result<(), StoreError> {
        let mut ring = self.ring();
        if let Some(old) = ring.aliases.remove(&slot)
            && let Some(entry) = ring.keys.get_mut(&old)
        {
            entry.record.slots.remove(&slot);
        }
        Ok(())
    }

    async fn stamp(&self, key_id: &str, stamp: Stamp, at: u64) -> Result<(), StoreError> {
        self.with_key(key_id, |e| {
            e.record.stamps.insert(stamp, at);
        })
    }

    async fn unstamp(&self, key_id: &str, stamp: Stamp) -> Result<(), StoreError> {
        self.with_key(key_id, |e| {
            e.record.stamps.remove(&stamp);
        })
    }

    async fn disable(&self, key_id: &str) -> Result<(), StoreError> {
        self.with_key(key_id, |e| {
            if e.record.usability == Usability::Enabled {
                e.record.usability = Usability::Disabled;
            }
        })
    }

    async fn schedule_deletion(&self, key_id: &str, _pending_days: u32) -> Result<(), StoreError> {
        let mut ring = self.ring();
        let entry = ring.keys.get_mut(key_id).ok_or_else(|| unknown(key_id))?;
        entry.record.usability = Usability::PendingDeletion;
        // KMS deletes a key's aliases with it.
        let slots = std::mem::take(&mut entry.record.slots);
        ring.aliases.retain(|slot, _| !slots.contains(slot));
        Ok(())
    }

    fn describe(&self) -> String {
        "the in-process key store".into()
    }
}

/// Signs with the key under `current`, re-resolved every `resolve_every`.
pub struct CurrentKeySigner {
    store: Arc<MemoryKeyStore>,
    resolve_every: Duration,
    resolved: Mutex<Option<(Arc<LocalKeySigner>, Instant)>>,
}

impl CurrentKeySigner {
    fn key(&self) -> Result<Arc<LocalKeySigner>, aws2azure_signer::Error> {
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, at)) = resolved.as_ref()
            && at.elapsed() < self.resolve_every
        {
            return Ok(key.clone());
        }
        let key = self.store.current_signer().ok_or_else(|| {
            aws2azure_signer::Error::LocalKey(
                "the in-process key store has no usable current key".into(),
            )
        })?;
        *resolved = Some((key.clone(), Instant::now()));
        Ok(key)
    }
}

#[async_trait]
impl AssertionSigner for CurrentKeySigner {
    async fn public_key(&self) -> Result<Jwk, aws2azure_signer::Error> {
        Ok(self.key()?.jwk().clone())
    }

    async fn sign_assertion(
        &self,
        claims: &AssertionClaims,
    ) -> Result<ClientAssertion, aws2azure_signer::Error> {
        let key = self.key()?;
        key.sign_assertion(claims).await
    }
}
