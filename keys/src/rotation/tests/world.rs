//! The test doubles around the rotator: the in-process store logging
//! every mutation and able to die half-way, an edge serving what was
//! published (after a delay, or not at all), and a manual clock.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws2azure_shared::clock::{Clock, ManualClock};
use aws2azure_shared::jwk::JwkSet;

use crate::cloudflare::PublishError;
use crate::document::KeyDocument;
use crate::memory::{KeyMaterial, MemoryKeyStore};
use crate::public::{PublicError, PublicKeySet};
use crate::publish::Publisher;
use crate::ring::{KeyRecord, KeyRing, KeyState, Slot, Stamp};
use crate::rotation::{Report, Rotator};
use crate::store::{KeyStore, StoreError};
use crate::timings::{HOUR, Timings};

pub(super) const T0: u64 = 1_750_000_000;

/// What happened to the store and the edge, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Event {
    Point(Slot, String),
    Unpoint(Slot),
    Stamp(String, Stamp),
    Publish(Vec<String>),
}

pub(super) type Log = Arc<Mutex<Vec<Event>>>;

/// The in-process store, logging each mutation (by kid) and failing every
/// mutation once its budget is spent, like a process that dies mid-step.
pub(super) struct Store {
    pub(super) inner: MemoryKeyStore,
    pub(super) log: Log,
    pub(super) budget: Mutex<Option<usize>>,
}

impl Store {
    pub(super) async fn kid(&self, key_id: &str) -> String {
        self.inner
            .keys()
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.key_id == key_id)
            .map(|k| k.kid().to_string())
            .unwrap_or_default()
    }

    pub(super) fn spend(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut budget = self.budget.lock().unwrap();
        match budget.as_mut() {
            Some(0) => Err(StoreError::Service {
                operation,
                message: "the test's crash".into(),
                source: None,
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub(super) fn fail_after(&self, mutations: Option<usize>) {
        *self.budget.lock().unwrap() = mutations;
    }

    pub(super) fn record(&self, event: Event) {
        self.log.lock().unwrap().push(event);
    }
}

#[async_trait]
impl KeyStore for Store {
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
        self.record(Event::Point(slot, self.kid(key_id).await));
        Ok(())
    }
    async fn unpoint(&self, slot: Slot) -> Result<(), StoreError> {
        self.spend("DeleteAlias")?;
        self.inner.unpoint(slot).await?;
        self.record(Event::Unpoint(slot));
        Ok(())
    }
    async fn stamp(&self, key_id: &str, stamp: Stamp, at: u64) -> Result<(), StoreError> {
        self.spend("TagResource")?;
        self.inner.stamp(key_id, stamp, at).await?;
        self.record(Event::Stamp(self.kid(key_id).await, stamp));
        Ok(())
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

/// Workers KV and the edge in front of it: the last document written is
/// served once `delay` has passed since it was written (a later write wins
/// even if an earlier one becomes visible after it); `down` makes the public
/// key set unreadable.
pub(super) struct Edge {
    pub(super) clock: ManualClock,
    pub(super) log: Log,
    pub(super) state: Mutex<EdgeState>,
}

#[derive(Default)]
pub(super) struct EdgeState {
    writes: Vec<(u64, Vec<u8>)>,
    delay: u64,
    down: bool,
}

impl Edge {
    pub(super) fn served(&self) -> Option<JwkSet> {
        let now = self.clock.now_unix();
        let state = self.state.lock().unwrap();
        let (_, bytes) = state.writes.iter().rev().find(|(at, _)| *at <= now)?;
        Some(JwkSet::from_json(bytes).unwrap())
    }

    pub(super) fn served_kids(&self) -> Vec<String> {
        self.served()
            .map(|s| s.keys().iter().map(|k| k.kid().to_string()).collect())
            .unwrap_or_default()
    }

    /// Someone writes a document by hand, served at once.
    pub(super) fn overwrite(&self, keys: Vec<aws2azure_shared::jwk::Jwk>) {
        let bytes = JwkSet::new(keys).unwrap().to_json().into_bytes();
        let now = self.clock.now_unix();
        self.state.lock().unwrap().writes.push((now, bytes));
    }

    pub(super) fn set_delay(&self, delay: u64) {
        self.state.lock().unwrap().delay = delay;
    }

    pub(super) fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
}

#[async_trait]
impl Publisher for Edge {
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError> {
        let now = self.clock.now_unix();
        let mut state = self.state.lock().unwrap();
        let visible_at = now + state.delay;
        state.writes.push((visible_at, document.bytes().to_vec()));
        self.log.lock().unwrap().push(Event::Publish(
            document.kids().iter().map(ToString::to_string).collect(),
        ));
        Ok(())
    }
    fn describe(&self) -> String {
        "the test's edge".into()
    }
}

#[async_trait]
impl PublicKeySet for Edge {
    async fn fetch(&self) -> Result<JwkSet, PublicError> {
        let url = "https://issuer.test/.well-known/openid-configuration".to_string();
        if self.state.lock().unwrap().down {
            return Err(PublicError::Unreachable {
                url,
                reason: "connection refused".into(),
            });
        }
        self.served()
            .ok_or(PublicError::Status { url, status: 404 })
    }
    fn describe(&self) -> String {
        "the test's edge".into()
    }
}

pub(super) struct World {
    pub(super) clock: ManualClock,
    pub(super) store: Arc<Store>,
    pub(super) edge: Arc<Edge>,
    pub(super) log: Log,
    pub(super) rotator: Rotator,
}

impl World {
    pub(super) fn new(timings: Timings) -> Self {
        let clock = ManualClock::at(T0);
        let log = Log::default();
        let store = Arc::new(Store {
            inner: MemoryKeyStore::new(KeyMaterial::Fake),
            log: log.clone(),
            budget: Mutex::new(None),
        });
        let edge = Arc::new(Edge {
            clock: clock.clone(),
            log: log.clone(),
            state: Mutex::default(),
        });
        let rotator = Rotator::new(
            store.clone(),
            edge.clone(),
            edge.clone(),
            Arc::new(clock.clone()),
            timings,
        )
        .unwrap();
        Self {
            clock,
            store,
            edge,
            log,
            rotator,
        }
    }

    pub(super) async fn ring(&self) -> KeyRing {
        KeyRing::new(self.store.keys().await.unwrap())
    }

    pub(super) async fn rotate(&self) -> Report {
        let mut report = Report::default();
        self.rotator.rotate(&mut report).await.unwrap();
        report
    }

    pub(super) async fn kid(&self, state: KeyState) -> String {
        self.ring()
            .await
            .in_state(state)
            .map(|k| k.kid().to_string())
            .unwrap_or_else(|| panic!("no {state} key"))
    }

    pub(super) fn events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// A current key and a next key that the edge has served since now.
    pub(super) async fn with_current_and_staged_next(&self) {
        self.rotate().await;
        self.clock.advance(HOUR);
        self.rotate().await;
        self.clock.advance(self.rotator.timings().warm_up);
        self.rotate().await;
        assert!(self.ring().await.current().is_some());
        let mut report = Report::default();
        self.rotator.stage(&mut report).await.unwrap();
        self.rotate().await;
        let ring = self.ring().await;
        assert!(ring.next().unwrap().stamp(Stamp::SeenPublic).is_some());
    }
}
