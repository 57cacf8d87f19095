//! The signer's AWS adapters against moto server: KMS signing (verified with
//! the public key from `GetPublicKey`, by PyJWT and by aws-lc-rs) and the
//! DynamoDB token cache (hit, expiry, lease contention, missing table, down).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::types::KeySpec;
use aws2azure_devstack::fault_proxy::FaultProxy;
use aws2azure_devstack::loopback;
use aws2azure_devstack::moto::{MotoServer, sdk_config_for};
use aws2azure_devstack::moto::{
    create_cache_table, create_key, create_signing_key, unreachable_dynamodb,
};
use aws2azure_shared::assertion::{AUDIENCE, AssertionBuilder};
use aws2azure_shared::clock::{Clock, SystemClock};
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::Jwk;
use aws2azure_shared::profile::Subject;
use aws2azure_signer::Error;
use aws2azure_signer::cache::{CacheKey, SharedCache};
use aws2azure_signer::dynamodb::DynamoDbCache;
use aws2azure_signer::kms::KmsSigner;
use aws2azure_signer::signing::AssertionSigner;
use aws2azure_signer::token::{AccessToken, CachedToken};
use aws2azure_tests::aws::unique;
use aws2azure_tests::python::pyjwt_verify;
use base64::Engine as _;

const ISSUER: &str = "https://issuer.example.com/";

async fn clients() -> (aws_sdk_kms::Client, aws_sdk_dynamodb::Client) {
    let config = MotoServer::shared().sdk_config().await;
    (
        aws_sdk_kms::Client::new(&config),
        aws_sdk_dynamodb::Client::new(&config),
    )
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test]
async fn kms_assertions_verify_with_the_key_from_get_public_key() {
    let (kms, _) = clients().await;
    let alias = format!("alias/{}", unique("signer"));
    let key_id = create_signing_key(&kms, &alias).await;
    let signer = KmsSigner::new(kms.clone(), &alias, clock());

    let issuer = Issuer::parse(ISSUER).unwrap();
    let subject = Subject::parse("aws2azure:graph").unwrap();
    let now = SystemClock.now_unix();
    let claims = AssertionBuilder::new(&issuer, &subject)
        .build(now, "jti-1")
        .unwrap();
    let assertion = signer.sign_assertion(&claims).await.unwrap();

    // The public key as KMS publishes it, independently of the signer.
    let der = kms.get_public_key().key_id(&key_id).send().await.unwrap();
    let der = der.public_key().unwrap().as_ref().to_vec();
    let jwk = Jwk::from_spki_der(&der).unwrap();
    assert_eq!(signer.public_key().await.unwrap(), jwk);

    let jwt = assertion.expose();
    let (input, signature) = jwt.rsplit_once('.').unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&b64(input.split('.').next().unwrap())).unwrap();
    assert_eq!(
        header,
        serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": jwk.thumbprint()})
    );

    // Verifier 1: aws-lc-rs straight from the DER SubjectPublicKeyInfo.
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &der,
    )
    .verify(input.as_bytes(), &b64(signature))
    .expect("KMS signature verifies against GetPublicKey");

    // Verifier 2: PyJWT, with the PEM form of the same key.
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let verified = pyjwt_verify(jwt, &pem, AUDIENCE, ISSUER);
    assert_eq!(verified["claims"]["sub"], "aws2azure:graph");
    assert_eq!(verified["claims"]["iss"], ISSUER);
    assert_eq!(verified["claims"]["jti"], "jti-1");
    assert_eq!(
        verified["claims"]["exp"].as_u64().unwrap() - verified["claims"]["iat"].as_u64().unwrap(),
        300
    );

    // The check can fail: other signed bytes do not verify.
    let tampered = format!("{input}x");
    assert!(
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &der
        )
        .verify(tampered.as_bytes(), &b64(signature))
        .is_err()
    );
}

#[tokio::test]
async fn kms_refuses_unusable_keys_at_resolution() {
    let (kms, _) = clients().await;

    let ec_alias = format!("alias/{}", unique("ec"));
    create_key(&kms, &ec_alias, KeySpec::EccNistP256).await;
    let err = KmsSigner::new(kms.clone(), &ec_alias, clock())
        .resolve()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shared(aws2azure_shared::Error::UnsupportedKeyType { .. })
        ),
        "{err:?}"
    );

    let disabled_alias = format!("alias/{}", unique("disabled"));
    let key_id = create_signing_key(&kms, &disabled_alias).await;
    kms.disable_key().key_id(&key_id).send().await.unwrap();
    let err = KmsSigner::new(kms.clone(), &disabled_alias, clock())
        .resolve()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not enabled"), "{err}");

    let err = KmsSigner::new(kms.clone(), "alias/does-not-exist", clock())
        .resolve()
        .await
        .unwrap_err();
    match &err {
        Error::Kms { code, .. } => assert_eq!(code, "NotFoundException"),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.api_status().0, 500);
}

#[tokio::test]
async fn kms_throttling_is_retried_a_bounded_number_of_times() {
    let moto = MotoServer::shared();
    let proxy = FaultProxy::new(moto.endpoint());
    let server = proxy.clone().serve(loopback()).await.unwrap();
    let config = sdk_config_for(&server.url()).await;
    let kms_config = aws_sdk_kms::config::Builder::from(&config)
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .build();
    let kms = aws_sdk_kms::Client::from_conf(kms_config);
    let alias = format!("alias/{}", unique("throttled"));
    create_signing_key(&kms, &alias).await;
    let signer = KmsSigner::new(kms, &alias, clock());
    let issuer = Issuer::parse(ISSUER).unwrap();
    let subject = Subject::parse("s").unwrap();
    let claims = AssertionBuilder::new(&issuer, &subject)
        .build(SystemClock.now_unix(), "j")
        .unwrap();

    // Two throttles, then KMS answers: the SDK's bounded retry absorbs them.
    proxy.fail("TrentService.Sign", "ThrottlingException", 400, 2);
    signer
        .sign_assertion(&claims)
        .await
        .expect("third attempt succeeds");
    assert_eq!(proxy.calls("TrentService.Sign"), 3);

    // Throttled throughout: three attempts, then a 503-class error.
    proxy.fail("TrentService.Sign", "ThrottlingException", 400, 10);
    let err = signer.sign_assertion(&claims).await.unwrap_err();
    assert_eq!(err, Error::KmsThrottled);
    assert_eq!(err.api_status().0, 503);
    assert_eq!(proxy.calls("TrentService.Sign"), 6);
}

/// A signer whose key re-resolution is stuck (a request abandoned in the
/// middle of it, or KMS slow to describe the key) must not hold up signing
/// for anyone else: no lock is held across a KMS call.
#[tokio::test]
async fn a_stuck_key_re_resolution_does_not_hold_up_other_signatures() {
    let moto = MotoServer::shared();
    let proxy = FaultProxy::new(moto.endpoint());
    let server = proxy.clone().serve(loopback()).await.unwrap();
    let kms = aws_sdk_kms::Client::new(&sdk_config_for(&server.url()).await);
    let alias = format!("alias/{}", unique("stuck"));
    create_signing_key(&kms, &alias).await;
    let clock = aws2azure_shared::clock::ManualClock::at(SystemClock.now_unix());
    let signer = Arc::new(KmsSigner::new(kms, &alias, Arc::new(clock.clone())));
    signer.resolve().await.unwrap();
    let issuer = Issuer::parse(ISSUER).unwrap();
    let subject = Subject::parse("s").unwrap();
    let claims = AssertionBuilder::new(&issuer, &subject)
        .build(SystemClock.now_unix(), "j")
        .unwrap();

    // The resolved key is due for re-resolution, and DescribeKey hangs.
    clock.advance(301);
    proxy.delay("TrentService.DescribeKey", Duration::from_secs(30), 1);
    let mut stuck = Box::pin(signer.sign_assertion(&claims));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stuck)
            .await
            .is_err(),
        "the first signature waits on DescribeKey"
    );
    assert_eq!(proxy.calls("TrentService.DescribeKey"), 2);
    // `stuck` stays alive but is never polled again: a parked request.
    let started = std::time::Instant::now();
    let other = tokio::time::timeout(Duration::from_secs(5), signer.sign_assertion(&claims))
        .await
        .expect("another signature is not held up by the stuck re-resolution");
    other.expect("signed with the key already known");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
    // Dropping the stuck call gives the turn back: the next caller re-resolves.
    signer.sign_assertion(&claims).await.unwrap();
    assert_eq!(proxy.calls("TrentService.DescribeKey"), 3);
}

/// Rotation moves the alias; the signer picks the new key up after its
/// resolve interval and not before (K2's retention counts on that bound).
#[tokio::test]
async fn a_moved_alias_is_picked_up_after_the_resolve_interval_and_not_before() {
    let (kms, _) = clients().await;
    let alias = format!("alias/{}", unique("moved"));
    let first = create_signing_key(&kms, &alias).await;
    let second = create_signing_key(&kms, &format!("alias/{}", unique("other"))).await;
    let clock = aws2azure_shared::clock::ManualClock::at(SystemClock.now_unix());
    let kid_of = |key_id: &str| {
        let kms = kms.clone();
        let key_id = key_id.to_string();
        async move {
            let der = kms
                .get_public_key()
                .key_id(key_id)
                .send()
                .await
                .unwrap()
                .public_key()
                .unwrap()
                .as_ref()
                .to_vec();
            Jwk::from_spki_der(&der).unwrap().kid().clone()
        }
    };
    let (first_kid, second_kid) = (kid_of(&first).await, kid_of(&second).await);

    let default = KmsSigner::new(kms.clone(), &alias, Arc::new(clock.clone()));
    let short = KmsSigner::new(kms.clone(), &alias, Arc::new(clock.clone()))
        .with_resolve_interval(Duration::from_secs(2));
    assert_eq!(default.resolve().await.unwrap().kid(), &first_kid);
    assert_eq!(short.resolve().await.unwrap().kid(), &first_kid);
    kms.update_alias()
        .alias_name(&alias)
        .target_key_id(&second)
        .send()
        .await
        .unwrap();

    clock.advance(1);
    assert_eq!(
        short.public_key().await.unwrap().kid(),
        &first_kid,
        "inside the interval"
    );
    clock.advance(1);
    assert_eq!(
        short.public_key().await.unwrap().kid(),
        &second_kid,
        "after it"
    );
    assert_eq!(
        default.public_key().await.unwrap().kid(),
        &first_kid,
        "the default interval is longer"
    );
    clock.advance(aws2azure_signer::kms::RESOLVE_TTL_SECS - 2);
    assert_eq!(default.public_key().await.unwrap().kid(), &second_kid);
}

fn token(expires_on: u64, value: &str) -> CachedToken {
    CachedToken {
        access_token: AccessToken::new(value.into()),
        token_type: "Bearer".into(),
        expires_on,
        refresh_on: expires_on - 300,
    }
}

fn key(profile: &str) -> CacheKey {
    CacheKey {
        profile: profile.into(),
        digest: unique("digest"),
    }
}

#[tokio::test]
async fn dynamodb_cache_hit_expiry_and_no_regression() {
    let (_, ddb) = clients().await;
    let table = unique("tokens");
    create_cache_table(&ddb, &table).await;
    let cache = DynamoDbCache::new(ddb.clone(), &table);
    cache.check().await.unwrap();
    let now = SystemClock.now_unix();
    let k = key("graph");

    assert_eq!(cache.get(&k, now).await.unwrap(), None);
    cache.put(&k, &token(now + 3600, "t1")).await.unwrap();
    assert_eq!(
        cache.get(&k, now).await.unwrap(),
        Some(token(now + 3600, "t1"))
    );

    // An older token never replaces a newer one.
    cache.put(&k, &token(now + 1800, "older")).await.unwrap();
    assert_eq!(
        cache
            .get(&k, now)
            .await
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "t1"
    );
    cache.put(&k, &token(now + 4000, "newer")).await.unwrap();
    assert_eq!(
        cache
            .get(&k, now)
            .await
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "newer"
    );

    // moto (like DynamoDB for hours) never deletes expired items: the code
    // must not serve them.
    assert_eq!(cache.get(&k, now + 4000).await.unwrap(), None);
    let item = ddb
        .get_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("token#{}", k.digest)),
        )
        .send()
        .await
        .unwrap();
    assert!(item.item().is_some(), "the expired item is still stored");
    assert_eq!(
        item.item().unwrap()["ttl"],
        aws_sdk_dynamodb::types::AttributeValue::N((now + 4000).to_string()),
        "TTL attribute for DynamoDB's own deletion"
    );

    // Another profile's key sees nothing.
    assert_eq!(cache.get(&key("other"), now).await.unwrap(), None);
}

#[tokio::test]
async fn dynamodb_lease_contention() {
    let (_, ddb) = clients().await;
    let table = unique("leases");
    create_cache_table(&ddb, &table).await;
    let cache = DynamoDbCache::new(ddb, &table);
    let now = SystemClock.now_unix();
    let k = key("graph");

    assert!(cache.try_lease(&k, "a", now, now + 30).await.unwrap());
    assert!(
        !cache.try_lease(&k, "b", now, now + 30).await.unwrap(),
        "held by a"
    );
    assert!(
        !cache.try_lease(&k, "a", now, now + 30).await.unwrap(),
        "not re-entrant"
    );
    // Releasing someone else's lease does nothing.
    cache.release_lease(&k, "b").await.unwrap();
    assert!(!cache.try_lease(&k, "b", now, now + 30).await.unwrap());
    cache.release_lease(&k, "a").await.unwrap();
    assert!(cache.try_lease(&k, "b", now, now + 30).await.unwrap());
    // An expired lease (its holder died) is taken over.
    assert!(cache.try_lease(&k, "c", now + 31, now + 61).await.unwrap());

    // Many contenders at once: exactly one wins.
    let k2 = key("graph2");
    let attempts = futures_util::future::join_all((0..20).map(|i| {
        let cache = &cache;
        let k2 = &k2;
        async move {
            cache
                .try_lease(k2, &format!("h{i}"), now, now + 30)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(attempts.iter().filter(|won| **won).count(), 1);
}

#[tokio::test]
async fn dynamodb_missing_table_and_unreachable_service_are_clear_errors() {
    let (_, ddb) = clients().await;
    let cache = DynamoDbCache::new(ddb, "no-such-table");
    let err = cache.check().await.unwrap_err();
    assert!(
        err.to_string().contains("`no-such-table` does not exist"),
        "{err}"
    );
    let err = cache.get(&key("g"), 0).await.unwrap_err();
    assert!(matches!(err, Error::Cache(_)));

    // Nothing listens on its port: DynamoDB is down.
    let cache = DynamoDbCache::new(unreachable_dynamodb().await, "t");
    let started = std::time::Instant::now();
    let err = cache.get(&key("g"), 0).await.unwrap_err();
    assert_eq!(err, Error::Cache("DynamoDB could not be reached".into()));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn dynamodb_malformed_items_do_not_block_the_shared_tier() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (_, ddb) = clients().await;
    let table = unique("malformed");
    create_cache_table(&ddb, &table).await;
    let cache = DynamoDbCache::new(ddb.clone(), &table);
    let now = SystemClock.now_unix();
    let k = key("graph");
    // Items written by hand or by an older version: no usable times.
    for (pk, attr) in [
        (format!("token#{}", k.digest), "expires_on"),
        (format!("lease#{}", k.digest), "lease_until"),
    ] {
        ddb.put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(pk))
            .item(attr, AttributeValue::S("soon".into()))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        cache.get(&k, now).await.unwrap(),
        None,
        "ignored, not an error"
    );
    cache.put(&k, &token(now + 3600, "fresh")).await.unwrap();
    assert_eq!(
        cache.get(&k, now).await.unwrap(),
        Some(token(now + 3600, "fresh")),
        "replaced"
    );
    assert!(
        cache.try_lease(&k, "me", now, now + 30).await.unwrap(),
        "a malformed lease is taken over"
    );
}

/// A key whose re-resolution keeps failing is used for a bounded time only
/// (`UNCONFIRMED_INTERVALS` resolve intervals): key rotation's K2 counts on
/// no one signing with a demoted key for longer than that.
#[tokio::test]
async fn a_key_that_cannot_be_confirmed_is_used_for_a_bounded_time_only() {
    let moto = MotoServer::shared();
    let proxy = FaultProxy::new(moto.endpoint());
    let server = proxy.clone().serve(loopback()).await.unwrap();
    let kms = aws_sdk_kms::Client::new(&sdk_config_for(&server.url()).await);
    let alias = format!("alias/{}", unique("unconfirmed"));
    create_signing_key(&kms, &alias).await;
    let clock = aws2azure_shared::clock::ManualClock::at(SystemClock.now_unix());
    let signer = KmsSigner::new(kms, &alias, Arc::new(clock.clone()));
    signer.resolve().await.unwrap();
    let issuer = Issuer::parse(ISSUER).unwrap();
    let subject = Subject::parse("s").unwrap();
    let claims = AssertionBuilder::new(&issuer, &subject)
        .build(SystemClock.now_unix(), "j")
        .unwrap();

    // DescribeKey denied from now on: the known key signs on for a while ...
    proxy.fail(
        "TrentService.DescribeKey",
        "AccessDeniedException",
        400,
        100,
    );
    let limit =
        aws2azure_signer::kms::RESOLVE_TTL_SECS * aws2azure_signer::kms::UNCONFIRMED_INTERVALS;
    clock.advance(aws2azure_signer::kms::RESOLVE_TTL_SECS + 1);
    signer
        .sign_assertion(&claims)
        .await
        .expect("still the known key");
    clock.advance(limit - aws2azure_signer::kms::RESOLVE_TTL_SECS - 2);
    signer
        .sign_assertion(&claims)
        .await
        .expect("still within the bound");
    // ... and not past the bound, even before the next resolve interval.
    clock.advance(1);
    let err = signer.sign_assertion(&claims).await.unwrap_err();
    assert!(matches!(err, Error::Kms { .. }), "{err:?}");
}
