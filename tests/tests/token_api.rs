//! The token API end to end, driven by real API Gateway REST events: the
//! broker signs with a real key, the Entra-compatible endpoint validates each
//! assertion by fetching discovery and keys over HTTP from the edge core,
//! and every answer, audit line and upstream call count is checked.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_devstack::entra::{Fault, issued_claims};
use aws2azure_devstack::fault_proxy::FaultProxy;
use aws2azure_devstack::loopback;
use aws2azure_devstack::moto::{MotoServer, sdk_config_for};
use aws2azure_devstack::moto::{create_cache_table, create_signing_key, unreachable_dynamodb};
use aws2azure_shared::clock::SystemClock;
use aws2azure_signer::api::{handle, serve};
use aws2azure_signer::dynamodb::DynamoDbCache;
use aws2azure_signer::kms::KmsSigner;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_tests::aws::unique;
use aws2azure_tests::logs::capture;
use aws2azure_tests::rig::{CLIENT, Federation, SCOPE, SUBJECT, TENANT};
use aws2azure_tests::{event, with_profile};
use lambda_http::{Body, Response};
use serde_json::Value;

const ATTEMPT: Duration = Duration::from_secs(2);

fn body(response: &Response<Body>) -> Value {
    match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    }
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn local() -> (Federation, Arc<dyn AssertionSigner>) {
    let signer: Arc<dyn AssertionSigner> = Arc::new(LocalKeySigner::generate().unwrap());
    (Federation::start(signer.as_ref()).await, signer)
}

#[tokio::test]
async fn an_iam_user_gets_a_token_then_a_cache_hit() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    let (logs, _guard) = capture();

    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let json = body(&response);
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["profile"], "graph");
    assert_eq!(json["scope"], SCOPE);
    let expires_in = json["expires_in"].as_u64().unwrap();
    assert!((3590..=3599).contains(&expires_in), "{expires_in}");
    let token = json["access_token"].as_str().unwrap().to_string();
    let claims = issued_claims(&token).unwrap();
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["sub"], SUBJECT);

    let again = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(body(&again)["access_token"], token.as_str());

    let stats = fed.entra.stats();
    assert_eq!((stats.token_requests, stats.issued), (1, 1));
    assert_eq!(
        (stats.discovery_fetches, stats.jwks_fetches),
        (1, 1),
        "Entra read the edge over HTTP"
    );

    let audit = logs.audit();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["caller"], "arn:aws:iam::111122223333:user/alice");
    assert_eq!(
        audit[0]["principal"],
        "arn:aws:iam::111122223333:user/alice"
    );
    assert_eq!(audit[0]["source_ip"], "203.0.113.10");
    assert_eq!(audit[0]["profile"], "graph");
    assert_eq!(audit[0]["assertion"], "kms");
    assert_eq!(audit[0]["status"], 200);
    assert_eq!(audit[0]["cache"], "miss");
    assert_eq!(audit[0]["entra_calls"], 1);
    assert_eq!(audit[1]["cache"], "hit");
    assert_eq!(audit[1]["entra_calls"], 0);
    assert!(!logs.text().contains(&token), "no token in any log line");
    assert!(
        !logs.text().contains("eyJhbGciOiJSUzI1NiI"),
        "no assertion in any log line"
    );
}

#[tokio::test]
async fn an_assumed_role_is_audited_by_role_and_session() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    let (logs, _guard) = capture();
    let response = serve(&broker, event("rest-assumed-role.json", |_| {})).await;
    assert_eq!(response.status(), 200);
    assert!(
        body(&response)["expires_in"].as_u64().unwrap() >= 600,
        "min_validity=600 honoured"
    );
    let audit = &logs.audit()[0];
    assert_eq!(
        audit["caller"],
        "arn:aws:sts::111122223333:assumed-role/orders-service/i-0abc123def4567890"
    );
    assert_eq!(
        audit["principal"],
        "arn:aws:iam::111122223333:role/orders-service"
    );
    assert_eq!(audit["session"], "i-0abc123def4567890");
    assert_eq!(audit["account"], "111122223333");
}

#[tokio::test]
async fn client_mistakes_are_refused_before_any_upstream_call() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    let (logs, _guard) = capture();

    let hostile = [
        "graph%2F..%2Fadmin",
        "..",
        "%2E%2E",
        "graph%00",
        "graph\u{0}",
        "a/b",
        &"g".repeat(10_000),
        "профиль",
        "graph ",
        "",
        ".graph",
        "graph;rm -rf",
    ];
    for raw in hostile {
        let (response, audit) = handle(
            &broker,
            &event("rest-iam-user.json", |e| with_profile(e, raw)),
        )
        .await;
        assert_eq!(
            response.status(),
            400,
            "{:?}",
            raw.chars().take(20).collect::<String>()
        );
        let json = body(&response);
        assert_eq!(json["error"], "invalid_request");
        assert!(json["error_description"].as_str().unwrap().len() < 400);
        assert!(audit.profile.chars().count() <= 65, "bounded in the log");
        assert!(!audit.profile.contains('\u{0}'));
    }

    let (response, _) = handle(
        &broker,
        &event("rest-iam-user.json", |e| with_profile(e, "GRAPH")),
    )
    .await;
    assert_eq!(response.status(), 404, "profile names are case-sensitive");
    assert_eq!(body(&response)["error"], "unknown_profile");

    let (response, _) = handle(&broker, &event("rest-no-identity.json", |_| {})).await;
    assert_eq!(response.status(), 403);
    assert_eq!(body(&response)["error"], "access_denied");

    let (response, _) = handle(
        &broker,
        &event("rest-iam-user.json", |e| e["httpMethod"] = "POST".into()),
    )
    .await;
    assert_eq!(response.status(), 405);
    assert_eq!(header(&response, "allow"), Some("GET"));

    for (query, expect) in [
        (serde_json::json!({"min_validity": ["abc"]}), "whole number"),
        (serde_json::json!({"min_validity": ["-1"]}), "whole number"),
        (
            serde_json::json!({"min_validity": ["99999"]}),
            "whole number",
        ),
        (serde_json::json!({"min_validity": ["1", "2"]}), "twice"),
        (
            serde_json::json!({"scope": ["https://vault.azure.net/.default"]}),
            "unknown query parameter",
        ),
    ] {
        let (response, _) = handle(
            &broker,
            &event("rest-iam-user.json", |e| {
                e["multiValueQueryStringParameters"] = query.clone()
            }),
        )
        .await;
        assert_eq!(response.status(), 400, "{query}");
        let text = body(&response)["error_description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains(expect), "{text}");
    }

    assert_eq!(
        fed.entra.stats().token_requests,
        0,
        "no mistake reached Entra"
    );
    assert!(
        logs.audit().is_empty(),
        "handle() alone does not log; serve() does"
    );
}

#[tokio::test]
async fn entra_throttling_is_retried_after_retry_after() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    fed.entra.inject(
        Fault::Throttle {
            retry_after_secs: 1,
        },
        1,
    );
    let (logs, _guard) = capture();
    let started = std::time::Instant::now();
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(fed.entra.stats().token_requests, 2);
    let retry = logs
        .lines()
        .into_iter()
        .find(|l| l["fields"]["message"] == "retrying the token exchange")
        .expect("a retry log line");
    assert_eq!(retry["level"], "WARN");
    assert_eq!(retry["fields"]["attempt"], 1);
    assert_eq!(retry["fields"]["wait_ms"], 1000);
    assert_eq!(logs.audit()[0]["entra_calls"], 2);
}

#[tokio::test]
async fn entra_unavailable_gives_503_with_retry_after_after_bounded_attempts() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    fed.entra.inject(Fault::ServerError { status: 503 }, 10);
    let (logs, _guard) = capture();
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 503);
    assert_eq!(body(&response)["error"], "upstream_unavailable");
    assert!(
        header(&response, "retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(fed.entra.stats().token_requests, 4, "max attempts");
    let audit = &logs.audit()[0];
    assert_eq!(audit["status"], 503);
    assert_eq!(audit["error"], "upstream_unavailable");
    assert_eq!(audit["entra_calls"], 4);
}

#[tokio::test]
async fn entra_timeouts_give_504_within_the_deadline() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, Duration::from_millis(500));
    fed.entra.inject(Fault::Delay { millis: 5_000 }, 10);
    let (logs, _guard) = capture();
    let started = std::time::Instant::now();
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(body(&response)["error"], "upstream_timeout");
    assert!(header(&response, "retry-after").is_some());
    assert!(
        elapsed < Duration::from_secs(4),
        "the 3 s deadline holds: {elapsed:?}"
    );
    let calls = fed.entra.stats().token_requests;
    assert!(
        (2..=4).contains(&calls),
        "timeouts are retried within the deadline: {calls}"
    );
    assert_eq!(logs.audit()[0]["entra_calls"], calls);
}

#[tokio::test]
async fn a_credential_not_yet_propagated_is_retried_until_it_is() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    fed.entra.inject(Fault::NotPropagated, 2);
    let (logs, _guard) = capture();
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fed.entra.stats().token_requests, 3);
    assert_eq!(fed.entra.stats().refused.get(&70021), Some(&2));
    let retries: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["fields"]["message"] == "retrying the token exchange")
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0]["fields"]["aadsts"], 70021);
}

#[tokio::test]
async fn a_subject_mismatch_is_not_retried_and_the_code_is_passed_on() {
    let (fed, signer) = local().await;
    let broker = fed.broker(signer, None, ATTEMPT);
    let (logs, _guard) = capture();
    let response = serve(
        &broker,
        event("rest-iam-user.json", |e| with_profile(e, "wrong-subject")),
    )
    .await;
    assert_eq!(response.status(), 502);
    let json = body(&response);
    assert_eq!(json["error"], "entra_refused");
    assert_eq!(json["aadsts"], "AADSTS700213");
    assert!(
        json["error_description"]
            .as_str()
            .unwrap()
            .contains("aws2azure:Graph"),
        "{json}"
    );
    assert!(
        json["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(
        fed.entra.stats().token_requests,
        1,
        "700213 is never retried"
    );
    let audit = &logs.audit()[0];
    assert_eq!(audit["aadsts"], 700213);
    assert_eq!(audit["status"], 502);
    assert_eq!(audit["correlation_id"], json["correlation_id"]);

    let response = serve(
        &broker,
        event("rest-iam-user.json", |e| with_profile(e, "unknown-app")),
    )
    .await;
    assert_eq!(response.status(), 502);
    assert_eq!(body(&response)["aadsts"], "AADSTS700016");
}

#[tokio::test]
async fn an_issuer_mismatch_is_reported_as_such() {
    let signer: Arc<dyn AssertionSigner> = Arc::new(LocalKeySigner::generate().unwrap());
    let keys =
        aws2azure_shared::jwk::JwkSet::new(vec![signer.public_key().await.unwrap()]).unwrap();
    // The edge says http://127.0.0.1:PORT; Entra's credential has a trailing slash.
    let edge = aws2azure_devstack::edge_server::EdgeServer::start(
        loopback(),
        |a| format!("http://{a}"),
        Some(&keys),
    )
    .await
    .unwrap();
    let with_slash = format!("{}/", edge.issuer());
    let fed = Federation::with_issuer(edge, &with_slash).await;
    let broker = fed.broker(signer, None, ATTEMPT);
    let (response, _) = handle(&broker, &event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 502);
    assert_eq!(body(&response)["aadsts"], "AADSTS700211");
    assert_eq!(fed.entra.stats().token_requests, 1);
}

#[tokio::test]
async fn kms_throttling_surfaces_as_503_after_the_sdk_retries() {
    let proxy = FaultProxy::new(MotoServer::shared().endpoint());
    let proxy_server = proxy.clone().serve(loopback()).await.unwrap();
    let config = sdk_config_for(&proxy_server.url()).await;
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&config)
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(10)),
            )
            .build(),
    );
    let alias = format!("alias/{}", unique("api-throttle"));
    create_signing_key(&kms, &alias).await;
    let signer = Arc::new(KmsSigner::new(kms, &alias, Arc::new(SystemClock)));
    signer.resolve().await.unwrap();
    let fed = Federation::start(signer.as_ref()).await;
    let broker = fed.broker(signer, None, ATTEMPT);

    proxy.fail("TrentService.Sign", "ThrottlingException", 400, 100);
    let (logs, _guard) = capture();
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "retry-after"), Some("1"));
    assert_eq!(body(&response)["error"], "upstream_unavailable");
    assert_eq!(
        proxy.calls("TrentService.Sign"),
        3,
        "bounded: the SDK's 3 attempts, not retried again"
    );
    assert_eq!(fed.entra.stats().token_requests, 0);
    let audit = &logs.audit()[0];
    assert_eq!(audit["status"], 503);
    assert_eq!(audit["sign_calls"], 1);
}

#[tokio::test]
async fn dynamodb_down_degrades_to_the_in_process_cache() {
    let (fed, signer) = local().await;
    let ddb = unreachable_dynamodb().await;
    let broker = fed.broker(
        signer,
        Some(Arc::new(DynamoDbCache::new(ddb, "tokens"))),
        ATTEMPT,
    );
    let (logs, _guard) = capture();
    let first = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(
        first.status(),
        200,
        "the shared tier is an optimisation, not a dependency"
    );
    let second = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(body(&second)["access_token"], body(&first)["access_token"]);
    assert_eq!(fed.entra.stats().token_requests, 1);
    let audit = logs.audit();
    assert_eq!(audit[0]["shared_cache_degraded"], true);
    assert_eq!(audit[1]["cache"], "hit");
    assert!(
        logs.lines().iter().any(|l| l["fields"]["message"]
            == "shared token cache unavailable; continuing with the in-process cache"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn kms_signed_assertions_federate_through_the_edge_and_the_shared_cache() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config().await;
    let kms = aws_sdk_kms::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let alias = format!("alias/{}", unique("e2e"));
    create_signing_key(&kms, &alias).await;
    let table = unique("e2e-tokens");
    create_cache_table(&ddb, &table).await;

    // The key the edge publishes comes from KMS GetPublicKey.
    let signer = Arc::new(KmsSigner::new(kms.clone(), &alias, Arc::new(SystemClock)));
    let fed = Federation::start(signer.as_ref()).await;
    let shared = Arc::new(DynamoDbCache::new(ddb.clone(), &table));
    let one = fed.broker(signer.clone(), Some(shared.clone()), ATTEMPT);
    let response = serve(&one, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    let token = body(&response)["access_token"].clone();

    // A second instance (its own memory) finds the token in DynamoDB.
    let two = fed.broker(signer, Some(shared), ATTEMPT);
    let (logs, _guard) = capture();
    let response = serve(&two, event("rest-assumed-role.json", |_| {})).await;
    assert_eq!(body(&response)["access_token"], token);
    assert_eq!(logs.audit()[0]["cache"], "shared-hit");
    assert_eq!(fed.entra.stats().token_requests, 1);
    assert_eq!(fed.entra.stats().issued, 1);
}

#[tokio::test]
async fn a_thousand_concurrent_cold_requests_make_one_sign_and_one_exchange() {
    let proxy = FaultProxy::new(MotoServer::shared().endpoint());
    let proxy_server = proxy.clone().serve(loopback()).await.unwrap();
    let kms = aws_sdk_kms::Client::new(&sdk_config_for(&proxy_server.url()).await);
    let alias = format!("alias/{}", unique("stampede"));
    create_signing_key(&kms, &alias).await;
    let signer = Arc::new(KmsSigner::new(kms, &alias, Arc::new(SystemClock)));
    let fed = Federation::start(signer.as_ref()).await;
    let broker = fed.broker(signer, None, ATTEMPT);
    let requests: Vec<_> = (0..1000)
        .map(|_| event("rest-iam-user.json", |_| {}))
        .collect();
    let responses =
        futures_util::future::join_all(requests.iter().map(|r| handle(&broker, r))).await;
    assert!(responses.iter().all(|(r, _)| r.status() == 200));
    let tokens: std::collections::HashSet<String> = responses
        .iter()
        .map(|(r, _)| body(r)["access_token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(proxy.calls("TrentService.Sign"), 1, "one KMS Sign");
    assert_eq!(fed.entra.stats().token_requests, 1, "one Entra call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_sharing_one_table_make_one_entra_call() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config().await;
    let kms = aws_sdk_kms::Client::new(&config);
    let alias = format!("alias/{}", unique("four"));
    create_signing_key(&kms, &alias).await;
    let table = unique("four-tokens");
    create_cache_table(&aws_sdk_dynamodb::Client::new(&config), &table).await;
    let signer = KmsSigner::new(kms, &alias, Arc::new(SystemClock));
    let fed = Federation::start(&signer).await;

    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_000;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_stampede_worker"))
                .args([
                    moto.endpoint(),
                    table.clone(),
                    alias.clone(),
                    fed.issuer.to_string(),
                    fed.authority(),
                    "250".to_string(),
                    start_at.to_string(),
                ])
                .output()
        })
        .collect();
    let outputs = futures_util::future::join_all(workers).await;
    let mut digests = std::collections::BTreeSet::new();
    let mut served = 0;
    for output in outputs {
        let output = output.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        for (outcome, count) in report["outcomes"].as_object().unwrap() {
            assert!(!outcome.starts_with("error"), "{report}");
            served += count.as_u64().unwrap();
        }
        for d in report["token_digests"].as_array().unwrap() {
            digests.insert(d.as_str().unwrap().to_string());
        }
    }
    assert_eq!(served, 1000);
    assert_eq!(digests.len(), 1, "every process served the same token");
    assert_eq!(
        fed.entra.stats().token_requests,
        1,
        "one Entra call across four processes"
    );
}

#[tokio::test]
async fn a_kms_refusal_is_a_500_that_names_the_cause() {
    let proxy = FaultProxy::new(MotoServer::shared().endpoint());
    let proxy_server = proxy.clone().serve(loopback()).await.unwrap();
    let kms = aws_sdk_kms::Client::new(&sdk_config_for(&proxy_server.url()).await);
    let alias = format!("alias/{}", unique("disabled"));
    create_signing_key(&kms, &alias).await;
    let signer = Arc::new(KmsSigner::new(kms, &alias, Arc::new(SystemClock)));
    let fed = Federation::start(signer.as_ref()).await;
    let broker = fed.broker(signer, None, ATTEMPT);
    // moto signs with disabled keys; the proxy answers as KMS does.
    proxy.fail("TrentService.Sign", "DisabledException", 400, 1);
    let (logs, _guard) = capture();
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 500);
    let json = body(&response);
    assert_eq!(json["error"], "signer_unavailable");
    assert!(
        json["error_description"]
            .as_str()
            .unwrap()
            .contains("DisabledException"),
        "{json}"
    );
    assert!(header(&response, "retry-after").is_none());
    assert_eq!(proxy.calls("TrentService.Sign"), 1, "not a retryable error");
    assert_eq!(fed.entra.stats().token_requests, 0);
    assert_eq!(logs.audit()[0]["error"], "signer_unavailable");
}

#[tokio::test]
async fn the_whole_request_is_bounded_by_its_deadline() {
    let (fed, signer) = local().await;
    let broker = fed.broker_with(signer, None, Duration::from_secs(10), |s| {
        s.exchange_deadline = Duration::from_secs(20);
        s.request_deadline = Duration::from_secs(1);
    });
    fed.entra.inject(Fault::Delay { millis: 5_000 }, 1);
    let started = std::time::Instant::now();
    let (response, audit) = handle(&broker, &event("rest-iam-user.json", |_| {})).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 504);
    assert_eq!(body(&response)["error"], "upstream_timeout");
    assert!(header(&response, "retry-after").is_some());
    assert_eq!(audit.error, Some("upstream_timeout"));
}
