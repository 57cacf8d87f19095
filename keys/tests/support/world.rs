//! The world around the rotator in the lifecycle simulation: the
//! in-process store with a crash switch, and Workers KV with the edge in
//! front of it.

use std::sync::Mutex;

use async_trait::async_trait;
use aws2azure_keys::cloudflare::PublishError;
use aws2azure_keys::document::KeyDocument;
use aws2azure_keys::memory::MemoryKeyStore;
use aws2azure_keys::public::{PublicError, PublicKeySet};
use aws2azure_keys::publish::Publisher;
use aws2azure_keys::store::{KeyStore, StoreError};
use aws2azure_keys::{KeyRecord, Slot, Stamp};
use aws2azure_shared::clock::{Clock, ManualClock};
use aws2azure_shared::jwk::{Jwk, JwkSet};

/// The in-process store, with a crash switch (every mutation fails once
/// `budget` mutations have been made) and a record of every key the
/// `current` alias pointed at, since a signer may resolve it between two
/// steps of one operation.
pub struct SimStore {
    pub inner: MemoryKeyStore,
    pub budget: Mutex<Option<usize>>,
    pub current_moves: Mutex<Vec<String>>,
}

impl SimStore {
    fn spend(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut budget = self.budget.lock().unwrap();
        match budget.as_mut() {
            Some(0) => Err(StoreError::Service {
                operation,
                message: "the simulated crash".into(),
                source: None,
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[async_trait]
impl KeyStore for SimStore {
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys().await
    }
    async fn create_key(&self, now: u64) -> Result<String, StoreError> {
        self.spend("CreateKey")?;
        self.inner.create_key(now).await
    }
    async fn point(&self, slot: Slot, key_id: &str) -> Result<(), StoreError> {
        self.spend("UpdateAlias")?;
        self.inner.point(slot, key_id).await?;
        if slot == Slot::Current {
            self.current_moves.lock().unwrap().push(key_id.into());
        }
        Ok(())
    }
    async fn unpoint(&self, slot: Slot) -> Result<(), StoreError> {
        self.spend("DeleteAlias")?;
        self.inner.unpoint(slot).await
    }
    async fn stamp(&self, key_id: &str, stamp: Stamp, at: u64) -> Result<(), StoreError> {
        self.spend("TagResource")?;
        self.inner.stamp(key_id, stamp, at).await
    }
    async fn unstamp(&self, key_id: &str, stamp: Stamp) -> Result<(), StoreError> {
        self.spend("UntagResource")?;
        self.inner.unstamp(key_id, stamp).await
    }
    async fn disable(&self, key_id: &str) -> Result<(), StoreError> {
        self.spend("DisableKey")?;
        self.inner.disable(key_id).await
    }
    async fn schedule_deletion(&self, key_id: &str, days: u32) -> Result<(), StoreError> {
        self.spend("ScheduleKeyDeletion")?;
        self.inner.schedule_deletion(key_id, days).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// One write to Workers KV: served from `visible_at` until a later write is.
#[derive(Clone, Debug)]
pub struct Write {
    pub written_at: u64,
    pub visible_at: u64,
    pub keys: Vec<Jwk>,
}

/// Workers KV behind the edge. Later writes win (KV is last-writer-wins);
/// each is served after the delay in force when it was written, so an
/// earlier write with a longer delay may never be served at all. The
/// rotator and the relying party read the same copy.
pub struct Kv {
    pub clock: ManualClock,
    pub writes: Mutex<Vec<Write>>,
    pub delay: Mutex<u64>,
}

impl Kv {
    pub fn write(&self, keys: Vec<Jwk>) -> u64 {
        let written_at = self.clock.now_unix();
        let visible_at = written_at + *self.delay.lock().unwrap();
        self.writes.lock().unwrap().push(Write {
            written_at,
            visible_at,
            keys,
        });
        visible_at
    }

    /// Index of the write served at `at`.
    pub fn served_at(&self, at: u64) -> Option<usize> {
        let writes = self.writes.lock().unwrap();
        (0..writes.len())
            .rev()
            .find(|&i| writes[i].visible_at <= at)
    }
}

#[async_trait]
impl Publisher for Kv {
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError> {
        let set = JwkSet::from_json(document.bytes()).expect("the rotator's document parses");
        self.write(set.keys().to_vec());
        Ok(())
    }
    fn describe(&self) -> String {
        "simulated Workers KV".into()
    }
}

#[async_trait]
impl PublicKeySet for Kv {
    async fn fetch(&self) -> Result<JwkSet, PublicError> {
        let url = "https://issuer.test/jwks".to_string();
        let Some(i) = self.served_at(self.clock.now_unix()) else {
            return Err(PublicError::Status { url, status: 404 });
        };
        let keys = self.writes.lock().unwrap()[i].keys.clone();
        Ok(JwkSet::new(keys).expect("every write is a valid key set"))
    }
    fn describe(&self) -> String {
        "the simulated edge".into()
    }
}
