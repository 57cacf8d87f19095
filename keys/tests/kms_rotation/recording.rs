//! The crash test's stand-ins: a store and a publisher that count the
//! run's mutating calls and make the process die at a chosen one.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws2azure_devstack::fault_proxy::FaultProxy;
use aws2azure_keys::cloudflare::PublishError;
use aws2azure_keys::document::KeyDocument;
use aws2azure_keys::kms::KmsKeyStore;
use aws2azure_keys::publish::Publisher;
use aws2azure_keys::store::{KeyStore, StoreError};
use aws2azure_keys::{KeyRecord, Slot, Stamp};

use super::support::{FakeEdge, all_key_ids, created_for_ring};

/// Counts the mutating calls of a run (store and publisher) and makes the
/// one after the first `crash_at` fail, as if the process died right before
/// it (`after: false`) or right after KMS or the API accepted it (`after:
/// true`). Logs every call that took effect, in order.
pub struct Recorder {
    crash_at: Option<usize>,
    after: bool,
    done: Mutex<usize>,
    crashed: Mutex<bool>,
    log: Arc<Mutex<Vec<String>>>,
}

enum Gate {
    Go,
    CrashBefore,
    CrashAfter,
}

impl Recorder {
    pub fn new(crash_at: Option<usize>, after: bool, log: Arc<Mutex<Vec<String>>>) -> Arc<Self> {
        Arc::new(Self {
            crash_at,
            after,
            done: Mutex::new(0),
            crashed: Mutex::new(false),
            log,
        })
    }

    fn gate(&self) -> Gate {
        let mut done = self.done.lock().unwrap();
        let mut crashed = self.crashed.lock().unwrap();
        assert!(!*crashed, "a call after the crash");
        if Some(*done) == self.crash_at {
            *crashed = true;
            return if self.after {
                Gate::CrashAfter
            } else {
                Gate::CrashBefore
            };
        }
        *done += 1;
        Gate::Go
    }

    pub fn calls(&self) -> usize {
        *self.done.lock().unwrap()
    }

    pub fn crashed(&self) -> bool {
        *self.crashed.lock().unwrap()
    }
}

fn died() -> StoreError {
    StoreError::Service {
        operation: "(test)",
        message: "the process died here".into(),
        source: None,
    }
}

pub struct RecordingStore {
    pub inner: Arc<KmsKeyStore>,
    pub rec: Arc<Recorder>,
    /// In front of `kms`: refuses the one KMS call inside `create_key` that
    /// the process died before (the store cannot be stopped in between).
    pub proxy: FaultProxy,
    pub kms: aws_sdk_kms::Client,
    pub ring: String,
    /// Keys KMS created but the ring never found, with the call the process
    /// died before.
    pub stranded: Arc<Mutex<Vec<(String, &'static str)>>>,
}

/// The KMS calls of `KmsKeyStore::create_key`, in order. Each counts as a
/// call of the run, so the crash lands before or after each of them.
const CREATE_CALLS: [&str; 3] = ["CreateKey", "TagResource", "CreateAlias"];

impl RecordingStore {
    async fn mutate<T>(
        &self,
        call: String,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let gate = self.rec.gate();
        if let Gate::CrashBefore = gate {
            return Err(died());
        }
        let out = f.await?;
        self.rec.log.lock().unwrap().push(call);
        match gate {
            Gate::CrashAfter => Err(died()),
            _ => Ok(out),
        }
    }
}

#[async_trait]
impl KeyStore for RecordingStore {
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys().await
    }

    async fn create_key(&self, now: u64) -> Result<String, StoreError> {
        // Which call the process dies before (`CREATE_CALLS.len()`: right
        // after the last one).
        let mut dies_before = None;
        for i in 0..CREATE_CALLS.len() {
            match self.rec.gate() {
                Gate::Go => {}
                Gate::CrashBefore => {
                    dies_before = Some(i);
                    break;
                }
                Gate::CrashAfter => {
                    dies_before = Some(i + 1);
                    break;
                }
            }
        }
        match dies_before {
            Some(0) => return Err(died()),
            Some(i) if i < CREATE_CALLS.len() => {
                let call = CREATE_CALLS[i];
                let before = all_key_ids(&self.kms).await;
                self.proxy.fail(
                    &format!("TrentService.{call}"),
                    "AccessDeniedException",
                    400,
                    1,
                );
                match self.inner.create_key(now).await {
                    Err(StoreError::Denied { operation, .. }) if operation == call => {}
                    other => panic!("create_key with {call} refused: {other:?}"),
                }
                let new = all_key_ids(&self.kms).await;
                let made =
                    created_for_ring(&self.kms, &self.ring, new.difference(&before).cloned()).await;
                assert_eq!(made.len(), 1, "one key made before {call}: {made:?}");
                self.stranded.lock().unwrap().push((made[0].clone(), call));
                return Err(died());
            }
            _ => {}
        }
        let id = self.inner.create_key(now).await?;
        self.rec.log.lock().unwrap().push(format!("create {id}"));
        match dies_before {
            Some(_) => Err(died()),
            None => Ok(id),
        }
    }

    async fn point(&self, slot: Slot, key_id: &str) -> Result<(), StoreError> {
        let call = format!("point {slot} {key_id}");
        self.mutate(call, self.inner.point(slot, key_id)).await
    }

    async fn unpoint(&self, slot: Slot) -> Result<(), StoreError> {
        self.mutate(format!("unpoint {slot}"), self.inner.unpoint(slot))
            .await
    }

    async fn stamp(&self, key_id: &str, stamp: Stamp, at: u64) -> Result<(), StoreError> {
        let call = format!("stamp {key_id} {}", stamp.tag());
        self.mutate(call, self.inner.stamp(key_id, stamp, at)).await
    }

    async fn unstamp(&self, key_id: &str, stamp: Stamp) -> Result<(), StoreError> {
        let call = format!("unstamp {key_id} {}", stamp.tag());
        self.mutate(call, self.inner.unstamp(key_id, stamp)).await
    }

    async fn disable(&self, key_id: &str) -> Result<(), StoreError> {
        self.mutate(format!("disable {key_id}"), self.inner.disable(key_id))
            .await
    }

    async fn schedule_deletion(&self, key_id: &str, days: u32) -> Result<(), StoreError> {
        let call = format!("schedule-deletion {key_id}");
        self.mutate(call, self.inner.schedule_deletion(key_id, days))
            .await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

pub struct RecordingPublisher {
    pub edge: Arc<FakeEdge>,
    pub rec: Arc<Recorder>,
}

#[async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError> {
        let gate = self.rec.gate();
        let died = || PublishError::Server {
            status: 599,
            message: "the process died here".into(),
            attempts: 1,
        };
        if let Gate::CrashBefore = gate {
            return Err(died());
        }
        self.edge.publish(document).await?;
        match gate {
            Gate::CrashAfter => Err(died()),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        self.edge.describe()
    }
}
