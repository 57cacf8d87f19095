//! The KMS key store against moto server: every operation of the
//! `KeyStore` contract, the aliases and tags it leaves in KMS, and what it
//! does when KMS throttles or refuses a disabled key's public key (the
//! fault proxy plays real KMS where moto is more lenient).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aws_sdk_kms::types::KeyState as KmsKeyState;
use aws2azure_devstack::fault_proxy::FaultProxy;
use aws2azure_devstack::moto::create_signing_key;
use aws2azure_keys::kms::{KID_TAG, KmsKeyStore, validate_ring};
use aws2azure_keys::ring::{RING_TAG, Usability};
use aws2azure_keys::rotation::{Action, Report, Rotator};
use aws2azure_keys::store::{KeyStore, StoreError};
use aws2azure_keys::{Error, KeyRecord, KeyState, Slot, Stamp, Timings};
use aws2azure_shared::clock::ManualClock;
use support::*;

fn by_id(keys: Vec<KeyRecord>) -> BTreeMap<String, KeyRecord> {
    keys.into_iter().map(|k| (k.key_id.clone(), k)).collect()
}

fn slots(s: &[Slot]) -> BTreeSet<Slot> {
    s.iter().copied().collect()
}

/// A KMS client through a fault proxy in front of moto, without retries,
/// so that an injected error reaches the store.
async fn proxied() -> (FaultProxy, aws2azure_devstack::Server, aws_sdk_kms::Client) {
    proxied_kms(false).await
}

#[tokio::test]
async fn the_store_keeps_the_ring_in_aliases_and_tags() {
    let kms = kms().await;
    let ring = unique_ring("life");
    validate_ring(&ring).unwrap();
    let store = KmsKeyStore::new(kms.clone(), &ring, None);
    assert_eq!(store.describe(), format!("KMS alias/{ring}-*"));
    assert!(store.keys().await.unwrap().is_empty());

    let k1 = store.create_key(T0).await.unwrap();
    let k2 = store.create_key(T0 + 10).await.unwrap();
    assert_ne!(k1, k2);
    // Member aliases only: no state yet.
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[], &[&k1, &k2])
    );
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(keys.len(), 2);
    for (id, created) in [(&k1, T0), (&k2, T0 + 10)] {
        let key = &keys[id];
        assert_eq!(key.created_at, created);
        assert!(key.slots.is_empty());
        assert!(key.stamps.is_empty());
        assert_eq!(key.usability, Usability::Enabled);
        assert_eq!(key.state(), KeyState::Unstaged);
        assert_eq!(key.kid(), kid_of(&kms, id).await);
        assert_eq!(key.jwk.bits(), 2048);
    }
    assert_eq!(
        tags_of(&kms, &k1).await,
        BTreeMap::from([
            ("aws2azure:ring".to_string(), ring.clone()),
            ("aws2azure:created-at".to_string(), T0.to_string()),
        ])
    );
    let meta = kms.describe_key().key_id(&k1).send().await.unwrap();
    let meta = meta.key_metadata().unwrap();
    assert_eq!(
        meta.description(),
        Some(format!("aws2azure client assertion signing key (RS256), ring {ring}").as_str())
    );
    assert_eq!(meta.key_spec(), Some(&aws_sdk_kms::types::KeySpec::Rsa2048));

    // Point: CreateAlias the first time.
    store.point(Slot::Current, &k1).await.unwrap();
    store.point(Slot::Next, &k2).await.unwrap();
    // Pointing again where it already points is fine.
    store.point(Slot::Next, &k2).await.unwrap();
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("current", &k1), ("next", &k2)], &[&k1, &k2])
    );
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(keys[&k1].slots, slots(&[Slot::Current]));
    assert_eq!(keys[&k2].slots, slots(&[Slot::Next]));
    // What the broker signs with is what the store says is current.
    let clock: Arc<dyn aws2azure_shared::clock::Clock> = Arc::new(ManualClock::at(T0));
    assert_eq!(
        broker_signs_with(&kms, &ring, clock.clone(), &keys[&k1].jwk).await,
        keys[&k1].kid()
    );

    // Stamps round-trip, overwrite, and go.
    store.stamp(&k1, Stamp::Promoted, T0 + 20).await.unwrap();
    store.stamp(&k2, Stamp::Published, T0 + 30).await.unwrap();
    store.stamp(&k2, Stamp::Published, T0 + 31).await.unwrap();
    store.stamp(&k2, Stamp::SeenPublic, T0 + 40).await.unwrap();
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(
        keys[&k1].stamps,
        BTreeMap::from([(Stamp::Promoted, T0 + 20)])
    );
    assert_eq!(
        keys[&k2].stamps,
        BTreeMap::from([(Stamp::Published, T0 + 31), (Stamp::SeenPublic, T0 + 40)])
    );
    store.unstamp(&k2, Stamp::SeenPublic).await.unwrap();
    store.unstamp(&k2, Stamp::SeenPublic).await.unwrap();
    // A lifecycle tag that is not Unix seconds (written by hand) is ignored.
    kms.tag_resource()
        .key_id(&k2)
        .tags(
            aws_sdk_kms::types::Tag::builder()
                .tag_key(Stamp::Demoted.tag())
                .tag_value("yesterday")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(
        keys[&k2].stamps,
        BTreeMap::from([(Stamp::Published, T0 + 31)])
    );

    // Promotion by hand: UpdateAlias moves the aliases.
    store.point(Slot::Previous, &k1).await.unwrap();
    store.point(Slot::Current, &k2).await.unwrap();
    store.unpoint(Slot::Next).await.unwrap();
    store.unpoint(Slot::Next).await.unwrap();
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("current", &k2), ("previous", &k1)], &[&k1, &k2])
    );
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(keys[&k1].slots, slots(&[Slot::Previous]));
    assert_eq!(keys[&k2].slots, slots(&[Slot::Current]));
    assert_eq!(
        broker_signs_with(&kms, &ring, clock, &keys[&k2].jwk).await,
        keys[&k2].kid()
    );

    // Retirement: the key stays in the ring through its member alias.
    store.stamp(&k1, Stamp::Retired, T0 + 50).await.unwrap();
    store.unpoint(Slot::Previous).await.unwrap();
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(keys[&k1].state(), KeyState::Retired);
    assert!(keys[&k1].slots.is_empty());

    store.disable(&k1).await.unwrap();
    store.disable(&k1).await.unwrap();
    assert_eq!(key_state(&kms, &k1).await, KmsKeyState::Disabled);
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(keys[&k1].usability, Usability::Disabled);
    let tags = kms.list_resource_tags().key_id(&k1).send().await.unwrap();
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.tag_key() == KID_TAG && t.tag_value() == keys[&k1].kid()),
        "the kid is on the key before it is disabled"
    );

    store.schedule_deletion(&k1, 7).await.unwrap();
    store.schedule_deletion(&k1, 7).await.unwrap();
    assert_eq!(key_state(&kms, &k1).await, KmsKeyState::PendingDeletion);
    let keys = store.keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
        [k2.as_str()],
        "a key pending deletion is out of the ring, like in the in-process store"
    );
}

#[tokio::test]
async fn calls_on_a_key_kms_does_not_know_name_the_key() {
    let store = KmsKeyStore::new(kms().await, unique_ring("unknown"), None);
    let missing = "00000000-0000-4000-8000-000000000000";
    let errors = [
        store
            .stamp(missing, Stamp::Published, T0)
            .await
            .unwrap_err(),
        store.unstamp(missing, Stamp::Published).await.unwrap_err(),
        store.point(Slot::Next, missing).await.unwrap_err(),
        store.disable(missing).await.unwrap_err(),
        store.schedule_deletion(missing, 7).await.unwrap_err(),
    ];
    for err in errors {
        assert!(
            matches!(&err, StoreError::UnknownKey { key_id, .. } if key_id == missing),
            "{err:?}"
        );
    }
    // Nothing was left behind.
    assert!(aliases(&kms().await, store.ring()).await.is_empty());
}

#[tokio::test]
async fn a_key_pointed_at_by_hand_joins_the_ring_and_stays_after_retirement() {
    // The stack's first key: created by CloudFormation under
    // `alias/{ring}-current`, without the ring's tags or member alias.
    let kms = kms().await;
    let ring = unique_ring("adopt");
    let stack_key = create_signing_key(&kms, &format!("alias/{ring}-current")).await;
    let store = KmsKeyStore::new(kms.clone(), &ring, None);

    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id, stack_key);
    assert_eq!(keys[0].state(), KeyState::Current);
    let now = aws2azure_shared::clock::Clock::now_unix(&aws2azure_shared::clock::SystemClock);
    assert!(
        keys[0].created_at > 0 && keys[0].created_at <= now + 5,
        "the creation date comes from KMS when the tag is missing: {}",
        keys[0].created_at
    );

    // Demoting it gives it its member alias: once retired, it is still
    // found, so it will be disabled and deleted like any other.
    let k2 = store.create_key(T0).await.unwrap();
    store.point(Slot::Previous, &stack_key).await.unwrap();
    store.point(Slot::Current, &k2).await.unwrap();
    store.stamp(&stack_key, Stamp::Retired, T0).await.unwrap();
    store.unpoint(Slot::Previous).await.unwrap();
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("current", &k2)], &[&stack_key, &k2])
    );
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(keys[&stack_key].state(), KeyState::Retired);
}

#[tokio::test]
async fn a_throttled_create_key_changes_nothing_and_a_rerun_converges() {
    let (proxy, _server, kms) = proxied().await;
    let ring = unique_ring("throttle");
    let store = Arc::new(KmsKeyStore::new(kms.clone(), &ring, None));
    let edge = FakeEdge::new(None);
    let clock = ManualClock::at(T0);
    let rotator = Rotator::new(
        store.clone(),
        edge.clone(),
        edge.clone(),
        Arc::new(clock),
        Timings::default(),
    )
    .unwrap();

    proxy.fail("TrentService.CreateKey", "ThrottlingException", 400, 1);
    let mut report = Report::default();
    let err = rotator.stage(&mut report).await.unwrap_err();
    match &err {
        Error::Store(StoreError::Throttled { operation, message }) => {
            assert_eq!(*operation, "CreateKey");
            assert!(message.contains("ThrottlingException"), "{message}");
        }
        other => panic!("expected a throttled CreateKey, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("rerun later"), "{text}");
    assert!(text.contains("request quota"), "{text}");
    assert_eq!(
        proxy.calls("TrentService.CreateKey"),
        1,
        "no retry by the SDK"
    );
    assert!(
        aliases(&kms, &ring).await.is_empty(),
        "no alias was created"
    );
    assert!(
        edge.published.lock().unwrap().is_empty(),
        "nothing was published"
    );
    assert!(report.actions.is_empty());

    let mut report = Report::default();
    rotator.stage(&mut report).await.unwrap();
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1, "exactly one key: {keys:?}");
    assert_eq!(keys[0].state(), KeyState::Next);
    assert_eq!(
        aliases(&kms, &ring).await,
        expected_aliases(&[("next", &keys[0].key_id)], &[&keys[0].key_id])
    );
    assert_eq!(edge.last_published(), [keys[0].kid().to_string()]);
}

/// `CreateKey` carries no tags (tags there would need `kms:TagResource` on
/// every key of the account in the rotation role's IAM policy): the key is
/// tagged by `TagResource` after it exists, then given its member alias. A
/// refusal of either leaves a key that KMS made and the ring never finds,
/// untagged or tagged without its alias; the next attempt makes a key that
/// joins the ring, and the stranded ones stay out.
#[tokio::test]
async fn a_key_is_created_untagged_then_tagged_then_aliased() {
    let (proxy, _server, kms) = proxied().await;
    let ring = unique_ring("untagged");
    let store = KmsKeyStore::new(kms.clone(), &ring, None);
    let calls = |op: &str| proxy.calls(&format!("TrentService.{op}"));

    // Tagging refused: the key has no tag at all, so CreateKey passed none.
    let before = all_key_ids(&kms).await;
    proxy.fail("TrentService.TagResource", "AccessDeniedException", 400, 1);
    let err = store.create_key(T0).await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Denied {
                operation: "TagResource",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (
            calls("CreateKey"),
            calls("TagResource"),
            calls("CreateAlias")
        ),
        (1, 1, 0),
        "no member alias before the tags"
    );
    let new = all_key_ids(&kms)
        .await
        .difference(&before)
        .cloned()
        .collect::<Vec<_>>();
    let untagged = created_for_ring(&kms, &ring, new).await;
    assert_eq!(untagged.len(), 1, "{untagged:?}");
    assert_eq!(
        tags_of(&kms, &untagged[0]).await,
        BTreeMap::new(),
        "CreateKey passed tags"
    );
    assert_eq!(key_state(&kms, &untagged[0]).await, KmsKeyState::Enabled);

    // The member alias refused: the key is tagged, but not a member.
    let before = all_key_ids(&kms).await;
    proxy.fail("TrentService.CreateAlias", "AccessDeniedException", 400, 1);
    let err = store.create_key(T0 + 1).await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Denied {
                operation: "CreateAlias",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (
            calls("CreateKey"),
            calls("TagResource"),
            calls("CreateAlias")
        ),
        (2, 2, 1)
    );
    let new = all_key_ids(&kms)
        .await
        .difference(&before)
        .cloned()
        .collect::<Vec<_>>();
    let unaliased = created_for_ring(&kms, &ring, new).await;
    assert_eq!(unaliased.len(), 1, "{unaliased:?}");
    assert_eq!(
        tags_of(&kms, &unaliased[0]).await,
        BTreeMap::from([
            ("aws2azure:ring".to_string(), ring.clone()),
            ("aws2azure:created-at".to_string(), (T0 + 1).to_string()),
        ])
    );

    assert!(store.keys().await.unwrap().is_empty());
    assert!(aliases(&kms, &ring).await.is_empty());

    let key = store.create_key(T0 + 2).await.unwrap();
    assert_eq!(
        (
            calls("CreateKey"),
            calls("TagResource"),
            calls("CreateAlias")
        ),
        (3, 3, 2)
    );
    let keys = store.keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
        [key.as_str()]
    );
    assert_eq!(keys[0].created_at, T0 + 2);
    assert_eq!(keys[0].state(), KeyState::Unstaged);
    assert_eq!(aliases(&kms, &ring).await, expected_aliases(&[], &[&key]));
}

#[tokio::test]
async fn kms_errors_map_to_what_the_operator_can_do() {
    let (proxy, _server, kms) = proxied().await;
    let store = KmsKeyStore::new(kms, unique_ring("errors"), None);
    proxy.fail("TrentService.ListAliases", "AccessDeniedException", 400, 1);
    let err = store.keys().await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Denied {
                operation: "ListAliases",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("RotationRole"), "{err}");

    proxy.fail("TrentService.ListAliases", "LimitExceededException", 400, 1);
    let err = store.keys().await.unwrap_err();
    assert!(matches!(&err, StoreError::Throttled { .. }), "{err:?}");

    proxy.fail("TrentService.ListAliases", "KMSInternalException", 500, 1);
    let err = store.keys().await.unwrap_err();
    match &err {
        StoreError::Service {
            operation, source, ..
        } => {
            assert_eq!(*operation, "ListAliases");
            assert!(source.is_some(), "the SDK error is kept as the source");
        }
        other => panic!("{other:?}"),
    }
}

/// Real KMS refuses `GetPublicKey` on a disabled key (moto does not: the
/// proxy answers as KMS would). A retired key disabled by a run that died
/// before scheduling its deletion must still be found, by its kid, so that
/// the next run schedules it.
#[tokio::test]
async fn a_disabled_retired_key_is_still_listed_and_its_deletion_scheduled() {
    let (proxy, _server, kms) = proxied().await;
    let ring = unique_ring("disabled");
    // The rotation process, which knows the current key's public key.
    let store = Arc::new(KmsKeyStore::new(kms.clone(), &ring, None));
    let current = store.create_key(T0).await.unwrap();
    store.point(Slot::Current, &current).await.unwrap();
    store.stamp(&current, Stamp::Promoted, T0).await.unwrap();
    assert_eq!(store.keys().await.unwrap().len(), 1);

    // An earlier run retired a key and disabled it, then died.
    let earlier = KmsKeyStore::new(kms.clone(), &ring, None);
    let old = earlier.create_key(T0).await.unwrap();
    let kid = kid_of(&kms, &old).await;
    earlier.stamp(&old, Stamp::Retired, T0).await.unwrap();
    earlier.stamp(&old, Stamp::Unlisted, T0).await.unwrap();
    earlier.disable(&old).await.unwrap();

    // From now on KMS refuses the disabled key's public key.
    let before = proxy.calls("TrentService.GetPublicKey");
    proxy.fail("TrentService.GetPublicKey", "DisabledException", 400, 1000);
    let keys = by_id(store.keys().await.unwrap());
    assert_eq!(proxy.calls("TrentService.GetPublicKey"), before + 1);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[&old].kid(), kid);
    assert_eq!(keys[&old].usability, Usability::Disabled);
    assert_eq!(keys[&old].state(), KeyState::Retired);

    let edge = FakeEdge::new(None);
    let rotator = Rotator::new(
        store.clone(),
        edge.clone(),
        edge.clone(),
        Arc::new(ManualClock::at(T0 + 60)),
        Timings::default(),
    )
    .unwrap();
    let mut report = Report::default();
    rotator.rotate(&mut report).await.unwrap();
    assert!(
        proxy.calls("TrentService.GetPublicKey") > before + 1,
        "every read of the ring met the refusal"
    );
    assert_eq!(
        report
            .actions
            .iter()
            .filter(|a| matches!(a, Action::DeletionScheduled { .. }))
            .count(),
        1,
        "{:?}",
        report.actions
    );
    assert!(
        report.actions.contains(&Action::DeletionScheduled {
            kid: kid.clone(),
            days: 30
        }),
        "{:?}",
        report.actions
    );
    let direct = support::kms().await;
    assert_eq!(edge.last_published(), [kid_of(&direct, &current).await]);
    assert_eq!(key_state(&kms, &old).await, KmsKeyState::PendingDeletion);
    assert!(store.keys().await.unwrap().iter().all(|k| k.key_id != old));
}

/// Real KMS refuses to disable or schedule the deletion of a key pending
/// deletion (moto accepts both; the proxy answers as KMS would): a rerun
/// that repeats the step is done, anything else is an error.
#[tokio::test]
async fn disabling_or_deleting_again_is_done_where_kms_refuses_the_repeat() {
    let (proxy, _server, kms) = proxied().await;
    let store = KmsKeyStore::new(kms.clone(), unique_ring("again"), None);
    let key = store.create_key(T0).await.unwrap();
    store.disable(&key).await.unwrap();
    store.schedule_deletion(&key, 7).await.unwrap();
    let invalid = "KMSInvalidStateException";
    proxy.fail("TrentService.DisableKey", invalid, 400, 1);
    store.disable(&key).await.unwrap();
    proxy.fail("TrentService.ScheduleKeyDeletion", invalid, 400, 1);
    store.schedule_deletion(&key, 7).await.unwrap();
    assert_eq!(proxy.calls("TrentService.ScheduleKeyDeletion"), 2);
    assert_eq!(key_state(&kms, &key).await, KmsKeyState::PendingDeletion);

    // The same refusal for an enabled key is not success.
    let enabled = store.create_key(T0).await.unwrap();
    proxy.fail("TrentService.ScheduleKeyDeletion", invalid, 400, 1);
    let err = store.schedule_deletion(&enabled, 7).await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Service {
                operation: "ScheduleKeyDeletion",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(invalid), "{err}");
    proxy.fail("TrentService.DisableKey", invalid, 400, 1);
    let err = store.disable(&enabled).await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Service {
                operation: "DisableKey",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(key_state(&kms, &enabled).await, KmsKeyState::Enabled);
}

#[tokio::test]
async fn a_disabled_key_that_would_be_published_is_an_error_naming_the_fix() {
    let (proxy, _server, kms) = proxied().await;
    let ring = unique_ring("disnext");
    let store = KmsKeyStore::new(kms.clone(), &ring, None);
    let key = store.create_key(T0).await.unwrap();
    store.point(Slot::Next, &key).await.unwrap();
    kms.disable_key().key_id(&key).send().await.unwrap();

    let fresh = KmsKeyStore::new(kms.clone(), &ring, None);
    proxy.fail("TrentService.GetPublicKey", "DisabledException", 400, 1);
    let err = fresh.keys().await.unwrap_err().to_string();
    assert!(err.contains(&key), "{err}");
    assert!(err.contains("enable-key"), "{err}");
    assert!(err.contains("next"), "{err}");
}

/// KMS is eventually consistent: the calls right after `CreateKey` can find
/// no such key for a moment. They are retried, and the key joins the ring.
#[tokio::test]
async fn a_fresh_key_kms_does_not_know_yet_is_tagged_and_aliased_on_a_retry() {
    let (proxy, _server, kms) = proxied().await;
    let ring = unique_ring("fresh");
    let store = KmsKeyStore::new(kms.clone(), &ring, None);
    let calls = |op: &str| proxy.calls(&format!("TrentService.{op}"));
    proxy.fail("TrentService.TagResource", "NotFoundException", 400, 2);
    proxy.fail("TrentService.CreateAlias", "NotFoundException", 400, 1);

    let key_id = store
        .create_key(T0)
        .await
        .expect("joins the ring after the retries");
    assert_eq!((calls("TagResource"), calls("CreateAlias")), (3, 2));
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id, key_id);
    assert_eq!(keys[0].created_at, T0);
    assert_eq!(tags_of(&kms, &key_id).await.get(RING_TAG), Some(&ring));

    // A key that stays unknown is reported, after a bounded number of tries.
    let ring = unique_ring("fresh-gone");
    let store = KmsKeyStore::new(kms.clone(), &ring, None);
    let before = calls("TagResource");
    proxy.fail("TrentService.TagResource", "NotFoundException", 400, 100);
    let err = store.create_key(T0).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownKey { .. }), "{err:?}");
    assert_eq!(calls("TagResource") - before, 4);
}
