//! `CloudflareKv` against the devstack's Cloudflare API stand-in over real
//! sockets: what is stored is the document, every failure maps to its error
//! with a message naming cause and fix and never the token, transient ones
//! are retried, and a failed publication leaves the stored document as it
//! was. The token's Secrets Manager source runs against moto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws2azure_devstack::cloudflare::{
    CloudflareConfig, CloudflareStandIn, CloudflareStats, Fault, api_base,
};
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::moto::MotoServer;
use aws2azure_devstack::{Server, loopback};
use aws2azure_keys::Error;
use aws2azure_keys::cloudflare::{
    API_TOKEN, ApiToken, CloudflareKv, CloudflareSettings, MAX_RETRIES, PublishError,
};
use aws2azure_keys::document::KeyDocument;
use aws2azure_keys::memory::test_jwk;
use aws2azure_keys::publish::Publisher;
use aws2azure_shared::jwk::JwkSet;

const TOKEN: &str = "cf-test-token-Zq8rT1vW3xY5";
const ACCOUNT: &str = "test-account";
const NAMESPACE: &str = "test-namespace";

fn config() -> CloudflareConfig {
    CloudflareConfig {
        api_token: TOKEN.into(),
        account_id: ACCOUNT.into(),
        namespace_id: NAMESPACE.into(),
    }
}

fn document(seed: &str) -> KeyDocument {
    KeyDocument::from_keys(vec![test_jwk(seed)]).unwrap()
}

fn client(server: &Server, account: &str, token: &str) -> CloudflareKv {
    let settings = CloudflareSettings::new(account, NAMESPACE)
        .unwrap()
        .with_api_base(&api_base(server))
        .unwrap();
    CloudflareKv::new(settings, ApiToken::new(token, API_TOKEN).unwrap()).unwrap()
}

async fn start() -> (CloudflareStandIn, Server) {
    let stand_in = CloudflareStandIn::new(config());
    let server = stand_in.clone().serve(loopback()).await.unwrap();
    (stand_in, server)
}

/// The message names the cause and the fix, and holds no token.
fn assert_message(error: &PublishError, cause: &str, fix: &str) {
    let message = error.to_string();
    assert!(message.contains(cause), "cause `{cause}` in: {message}");
    assert!(message.contains(fix), "fix `{fix}` in: {message}");
    assert!(!message.contains(TOKEN), "token in: {message}");
    assert!(!format!("{error:?}").contains(TOKEN), "token in: {error:?}");
}

/// Publishes `first`, then fails a publication of another document and
/// checks that `first` is still what is stored.
async fn fails_and_keeps(
    stand_in: &CloudflareStandIn,
    kv: &CloudflareKv,
    first: &KeyDocument,
) -> PublishError {
    let error = kv.publish(&document("second")).await.unwrap_err();
    assert_eq!(
        stand_in.value("jwks").await.unwrap().as_deref(),
        Some(first.bytes()),
        "a failed publication left the stored document unchanged"
    );
    error
}

#[tokio::test]
async fn publishes_the_document_bytes_and_reads_them_back() {
    let (stand_in, server) = start().await;
    let kv = client(&server, ACCOUNT, TOKEN);
    assert_eq!(kv.read().await.unwrap(), None, "nothing published yet");

    let doc = document("first");
    kv.publish(&doc).await.unwrap();
    assert_eq!(
        stand_in.value("jwks").await.unwrap().as_deref(),
        Some(doc.bytes())
    );
    assert_eq!(kv.read().await.unwrap().as_deref(), Some(doc.bytes()));
    assert_eq!(
        stand_in.stats(),
        CloudflareStats {
            writes_accepted: 1,
            reads: 2,
            requests_refused: 0,
            faults: 0,
        }
    );
    assert!(!kv.describe().contains(TOKEN));
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let (stand_in, server) = start().await;
    let first = document("first");
    client(&server, ACCOUNT, TOKEN)
        .publish(&first)
        .await
        .unwrap();

    let wrong = "cf-wrong-token-000000";
    let error = fails_and_keeps(&stand_in, &client(&server, ACCOUNT, wrong), &first).await;
    assert!(
        matches!(error, PublishError::Unauthorized { .. }),
        "{error:?}"
    );
    assert_message(&error, "Authentication error", "create a new API token");
    assert!(!error.to_string().contains(wrong));
    assert_eq!(stand_in.stats().requests_refused, 1, "not retried");
    server.stop().await;
}

#[tokio::test]
async fn another_account_is_forbidden() {
    let (stand_in, server) = start().await;
    let first = document("first");
    client(&server, ACCOUNT, TOKEN)
        .publish(&first)
        .await
        .unwrap();

    let error = fails_and_keeps(&stand_in, &client(&server, "other-account", TOKEN), &first).await;
    assert!(matches!(error, PublishError::Forbidden { .. }), "{error:?}");
    assert_message(&error, "403", "check the account and namespace ids");
    // An injected 403 maps the same way.
    stand_in.fail_next(
        1,
        Fault::Status {
            status: 403,
            retry_after: None,
        },
    );
    let error = fails_and_keeps(&stand_in, &client(&server, ACCOUNT, TOKEN), &first).await;
    assert!(matches!(error, PublishError::Forbidden { .. }), "{error:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_short_rate_limit_is_waited_out() {
    let (stand_in, server) = start().await;
    let kv = client(&server, ACCOUNT, TOKEN);
    stand_in.fail_next(
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
    );
    let started = Instant::now();
    let doc = document("first");
    kv.publish(&doc).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(
        stand_in.value("jwks").await.unwrap().as_deref(),
        Some(doc.bytes())
    );
    let stats = stand_in.stats();
    assert_eq!((stats.faults, stats.writes_accepted), (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn a_long_rate_limit_is_returned_at_once_with_its_seconds() {
    let (stand_in, server) = start().await;
    let kv = client(&server, ACCOUNT, TOKEN);
    let first = document("first");
    kv.publish(&first).await.unwrap();
    stand_in.fail_next(
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(90),
        },
    );
    let started = Instant::now();
    let error = fails_and_keeps(&stand_in, &kv, &first).await;
    assert!(started.elapsed() < Duration::from_secs(2), "not waited for");
    assert!(
        matches!(
            error,
            PublishError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(90)
        ),
        "{error:?}"
    );
    assert_message(&error, "retry after 90 s", "rerun after that");
    assert_eq!(stand_in.stats().faults, 1, "one request only");
    server.stop().await;
}

#[tokio::test]
async fn a_server_error_is_retried_then_succeeds_or_is_returned() {
    let (stand_in, server) = start().await;
    let kv = client(&server, ACCOUNT, TOKEN);
    let first = document("first");
    let fault = Fault::Status {
        status: 503,
        retry_after: None,
    };
    stand_in.fail_next(MAX_RETRIES as usize, fault.clone());
    kv.publish(&first).await.unwrap();
    assert_eq!(stand_in.stats().faults, u64::from(MAX_RETRIES));

    stand_in.fail_next(MAX_RETRIES as usize + 1, fault);
    let error = fails_and_keeps(&stand_in, &kv, &first).await;
    assert!(
        matches!(
            error,
            PublishError::Server {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert_message(&error, "Internal server error", "rerun later");
    assert_eq!(
        stand_in.stats().faults,
        2 * u64::from(MAX_RETRIES) + 1,
        "three attempts, no more"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let (_, server) = start().await;
    let kv = client(&server, ACCOUNT, TOKEN);
    server.stop().await;
    let error = kv.publish(&document("first")).await.unwrap_err();
    assert!(
        matches!(error, PublishError::Unreachable { .. }),
        "{error:?}"
    );
    assert_message(&error, "refused", "check the network");
    assert!(error.to_string().contains("http://127.0.0.1:"), "{error}");
    let error = kv.read().await.unwrap_err();
    assert!(
        matches!(error, PublishError::Unreachable { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Connections are queued by the kernel and never answered.
    let silent = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let settings = CloudflareSettings::new(ACCOUNT, NAMESPACE)
        .unwrap()
        .with_api_base(&format!(
            "http://{}/client/v4",
            silent.local_addr().unwrap()
        ))
        .unwrap()
        .with_timeout(Duration::from_secs(1))
        .unwrap();
    let kv = CloudflareKv::new(settings, ApiToken::new(TOKEN, API_TOKEN).unwrap()).unwrap();
    let started = Instant::now();
    let error = kv.publish(&document("first")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "not retried");
    assert!(
        matches!(error, PublishError::Unreachable { .. }),
        "{error:?}"
    );
    assert_message(&error, "no answer within 1 s", "check the network");
}

#[tokio::test]
async fn an_unknown_namespace_is_rejected_by_reads_and_writes() {
    let (_stand_in, server) = start().await;
    let settings = CloudflareSettings::new(ACCOUNT, "other-namespace")
        .unwrap()
        .with_api_base(&api_base(&server))
        .unwrap();
    let kv = CloudflareKv::new(settings, ApiToken::new(TOKEN, API_TOKEN).unwrap()).unwrap();
    for error in [
        kv.publish(&document("first")).await.unwrap_err(),
        kv.read().await.unwrap_err(),
    ] {
        assert!(
            matches!(error, PublishError::Rejected { status: 404, .. }),
            "{error:?}"
        );
        assert_message(&error, "namespace not found", "check the account id");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_api_base_is_not_mistaken_for_cloudflare() {
    // The edge answers 404 (not Cloudflare's envelope) for these paths.
    let edge = EdgeServer::start(loopback(), |a| format!("http://{a}"), None)
        .await
        .unwrap();
    let settings = CloudflareSettings::new(ACCOUNT, NAMESPACE)
        .unwrap()
        .with_api_base(&format!("http://{}/client/v4", edge.addr()))
        .unwrap();
    let kv = CloudflareKv::new(settings, ApiToken::new(TOKEN, API_TOKEN).unwrap()).unwrap();
    for error in [
        kv.read().await.unwrap_err(),
        kv.publish(&document("first")).await.unwrap_err(),
    ] {
        assert!(
            matches!(
                error,
                PublishError::Unexpected {
                    status: 404 | 405,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_message(&error, "not the Cloudflare API's", "check the API base URL");
    }
    edge.stop().await;
}

#[tokio::test]
async fn publishing_to_the_native_edge_changes_what_it_serves() {
    let first = document("first");
    let edge = EdgeServer::start(
        loopback(),
        |a| format!("http://{a}"),
        Some(&JwkSet::from_json(first.bytes()).unwrap()),
    )
    .await
    .unwrap();
    let stand_in = CloudflareStandIn::with_backend(config(), Arc::new(edge.kv_backend("jwks")));
    let server = stand_in.clone().serve(loopback()).await.unwrap();
    let kv = client(&server, ACCOUNT, TOKEN);
    assert_eq!(kv.read().await.unwrap().as_deref(), Some(first.bytes()));

    let second = document("second");
    kv.publish(&second).await.unwrap();
    let served = reqwest::get(edge.issuer().jwks_uri())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        JwkSet::from_json(&served).unwrap(),
        JwkSet::from_json(second.bytes()).unwrap()
    );
    server.stop().await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_read_from_secrets_manager() {
    let config = MotoServer::shared().sdk_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let id = |name: &str| format!("aws2azure-test/{name}-{}", uuid());
    let create =
        |name: String, value: &str| sm.create_secret().name(name).secret_string(value).send();
    let as_json = id("json");
    create(as_json.clone(), &format!(r#"{{"token": "{TOKEN}"}}"#))
        .await
        .unwrap();
    let bare = id("bare");
    create(bare.clone(), &format!("{TOKEN}\n")).await.unwrap();
    let no_member = id("no-member");
    create(no_member.clone(), r#"{"api_token": "x"}"#)
        .await
        .unwrap();

    for secret in [&as_json, &bare] {
        let token = ApiToken::from_secrets_manager(&sm, secret).await.unwrap();
        assert_eq!(format!("{token:?}"), "ApiToken(redacted)");
        // The token read is the one the API accepts.
        let (stand_in, server) = start().await;
        let kv = CloudflareKv::new(
            CloudflareSettings::new(ACCOUNT, NAMESPACE)
                .unwrap()
                .with_api_base(&api_base(&server))
                .unwrap(),
            token,
        )
        .unwrap();
        kv.publish(&document("first")).await.unwrap();
        assert_eq!(stand_in.stats().writes_accepted, 1);
        server.stop().await;
    }

    let error = ApiToken::from_secrets_manager(&sm, &no_member)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Secret { .. }), "{error:?}");
    assert!(error.to_string().contains("\"token\""), "{error}");
    let missing = id("missing");
    let error = ApiToken::from_secrets_manager(&sm, &missing)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("create it"), "{message}");
}

fn uuid() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
