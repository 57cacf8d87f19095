//! The whole chain with the compiled Worker: a token obtained through KMS
//! (moto) from the Entra-compatible endpoint, which fetched the discovery
//! document and the key set over HTTP from the wasm edge running in workerd.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_devstack::moto::{MotoServer, create_signing_key};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::JwkSet;
use aws2azure_signer::api::handle;
use aws2azure_signer::broker::CacheOutcome;
use aws2azure_signer::kms::KmsSigner;
use aws2azure_tests::aws::unique;
use aws2azure_tests::event;
use aws2azure_tests::rig::Federation;
use aws2azure_tests::workerd::{EdgeOptions, WorkerdEdge, free_port};
use lambda_http::Body;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_signed_assertion_is_validated_against_the_wasm_edge() {
    let kms = aws_sdk_kms::Client::new(&MotoServer::shared().sdk_config().await);
    let alias = format!("alias/{}", unique("workerd"));
    create_signing_key(&kms, &alias).await;
    let signer = Arc::new(KmsSigner::new(kms, &alias, Arc::new(SystemClock)));
    let keys = JwkSet::new(vec![signer.resolve().await.unwrap()]).unwrap();

    // The Worker, as deployed: key document in KV, allowlist in its default
    // mode (monitor: loopback is not Azure AD, so it is logged, not refused).
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let edge = tokio::task::spawn_blocking({
        let options = EdgeOptions::new(&issuer, port).kv("jwks", &keys.to_json());
        move || WorkerdEdge::start(&options)
    })
    .await
    .unwrap();

    let fed = Federation::trusting(Issuer::parse(&issuer).unwrap(), &issuer).await;
    let broker = fed.broker(signer, None, Duration::from_secs(5));
    let (response, audit) = handle(&broker, &event("rest-iam-user.json", |_| {})).await;
    let Body::Text(text) = response.body() else {
        panic!("text body")
    };
    assert_eq!(response.status(), 200, "{text}");
    assert_eq!(audit.cache, Some(CacheOutcome::Miss));
    let stats = fed.entra.stats();
    assert_eq!(
        (stats.discovery_fetches, stats.jwks_fetches, stats.issued),
        (1, 1, 1)
    );

    // The Worker saw Entra's two fetches and served them from KV. A log
    // line can arrive a little after its response (later still on a busy
    // machine): wait for both, then check.
    let served = || -> Vec<String> {
        edge.logs()
            .iter()
            .filter(|l| l["status"] == 200)
            .map(|l| l["path"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let waited = std::time::Instant::now();
    while served().len() < 2 && waited.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let paths = served();
    assert!(
        paths.contains(&"/.well-known/openid-configuration".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"/jwks".to_string()), "{paths:?}");
    drop(edge);
}
