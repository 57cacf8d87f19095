//! Staging when the publication fails: no alias moves, the rerun adopts
//! the key.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use aws2azure_shared::clock::ManualClock;
use aws2azure_shared::jwk::JwkSet;

use super::*;
use crate::cloudflare::PublishError;
use crate::memory::{KeyMaterial, MemoryKeyStore};
use crate::public::PublicError;
use crate::ring::KeyState;

/// A publisher that fails while `down`, and records for each document it
/// accepts its kids and which key `next` pointed at when it came in.
struct Flaky {
    store: Arc<MemoryKeyStore>,
    down: AtomicBool,
    accepted: Mutex<Vec<(Vec<String>, Option<String>)>>,
}

#[async_trait]
impl Publisher for Flaky {
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PublishError::RateLimited { retry_after: None });
        }
        let ring = KeyRing::new(self.store.keys().await.expect("memory store"));
        let next = ring.at(Slot::Next).map(|k| k.key_id.clone());
        let kids = document.kids().iter().map(ToString::to_string).collect();
        self.accepted.lock().unwrap().push((kids, next));
        Ok(())
    }

    fn describe(&self) -> String {
        "a test publisher".into()
    }
}

/// Staging never reads the public key set.
struct Unread;

#[async_trait]
impl PublicKeySet for Unread {
    async fn fetch(&self) -> Result<JwkSet, PublicError> {
        Err(PublicError::Status {
            url: "https://issuer.example.com/jwks".into(),
            status: 503,
        })
    }

    fn describe(&self) -> String {
        "nowhere".into()
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Stage,
    Rotate,
}

/// The Cloudflare API failing while a key is staged (a drill against the
/// real client and KMS found `next` already pointing at the new key while
/// the error said no alias had moved): the key stays unstaged, no alias
/// moves, and the rerun adopts it and publishes it before pointing `next`.
async fn a_failed_publication_while_staging_moves_no_alias(op: Op) {
    let store = Arc::new(MemoryKeyStore::new(KeyMaterial::Fake));
    let publisher = Arc::new(Flaky {
        store: store.clone(),
        down: AtomicBool::new(true),
        accepted: Mutex::default(),
    });
    let rotator = Rotator::new(
        store.clone(),
        publisher.clone(),
        Arc::new(Unread),
        Arc::new(ManualClock::at(1_000_000)),
        Timings::default(),
    )
    .unwrap();
    let run = |report: &mut Report| {
        let (rotator, op) = (&rotator, op);
        let mut report = std::mem::take(report);
        async move {
            let result = match op {
                Op::Stage => rotator.stage(&mut report).await,
                Op::Rotate => rotator.rotate(&mut report).await,
            };
            (result, report)
        }
    };

    let (result, report) = run(&mut Report::default()).await;
    let err = result.expect_err("the publication fails");
    assert!(matches!(err, Error::Publish(_)), "{op:?}: {err}");
    assert!(
        err.to_string().contains("lists every key that may sign"),
        "{err}"
    );
    let ring = KeyRing::new(store.keys().await.unwrap());
    assert_eq!(ring.keys().len(), 1, "{op:?}");
    assert_eq!(ring.keys()[0].state(), KeyState::Unstaged, "{op:?}");
    for slot in Slot::ALL {
        assert!(ring.at(slot).is_none(), "{op:?}: `{slot}` moved");
    }
    assert!(report.actions.is_empty(), "{op:?}: {:?}", report.actions);
    let created = ring.keys()[0].clone();

    publisher.down.store(false, Ordering::SeqCst);
    let (result, report) = run(&mut Report::default()).await;
    result.unwrap();
    let ring = KeyRing::new(store.keys().await.unwrap());
    assert_eq!(ring.keys().len(), 1, "{op:?}: the rerun made no second key");
    assert_eq!(
        ring.next().map(|k| &k.key_id),
        Some(&created.key_id),
        "{op:?}"
    );
    assert!(
        report
            .actions
            .iter()
            .any(|a| matches!(a, Action::Staged { adopted: true, .. })),
        "{op:?}: {:?}",
        report.actions
    );
    let accepted = publisher.accepted.lock().unwrap();
    assert_eq!(
        accepted.first(),
        Some(&(vec![created.kid().to_string()], None)),
        "{op:?}: the first document lists the key, and came before `next` pointed at it"
    );
}

#[tokio::test]
async fn a_failed_publication_during_stage_moves_no_alias() {
    a_failed_publication_while_staging_moves_no_alias(Op::Stage).await;
}

#[tokio::test]
async fn a_failed_publication_during_rotate_moves_no_alias() {
    a_failed_publication_while_staging_moves_no_alias(Op::Rotate).await;
}
