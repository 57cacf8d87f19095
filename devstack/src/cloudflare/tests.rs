//! The stand-in over a real socket, spoken to as plain HTTP: Cloudflare's
//! envelopes and codes, its checks in order, faults, counters, and the
//! native edge as the backend.

use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use serde_json::Value;

use super::*;
use crate::edge_server::EdgeServer;

const TOKEN: &str = "test-token-0123456789";
const ACCOUNT: &str = "test-account";
const NAMESPACE: &str = "test-namespace";

fn config() -> CloudflareConfig {
    CloudflareConfig {
        api_token: TOKEN.into(),
        account_id: ACCOUNT.into(),
        namespace_id: NAMESPACE.into(),
    }
}

fn value_url(server: &Server, account: &str, namespace: &str, key: &str) -> String {
    format!(
        "{}/accounts/{account}/storage/kv/namespaces/{namespace}/values/{key}",
        api_base(server)
    )
}

async fn put(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value, Option<String>) {
    let mut request = http.put(url).body(body.to_vec());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    (status, response.json().await.unwrap(), retry_after)
}

async fn raw_put(server: &Server, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 1\r\nConnection: close\r\n\r\nx"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

fn first_error(body: &Value) -> (u64, String) {
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["messages"], serde_json::json!([]), "{body}");
    let error = &body["errors"][0];
    (
        error["code"].as_u64().unwrap(),
        error["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn writes_and_reads_with_cloudflares_envelope() {
    let stand_in = CloudflareStandIn::new(config());
    let server = stand_in.clone().serve(crate::loopback()).await.unwrap();
    let http = reqwest::Client::new();
    // A key with a slash and a space travels percent-encoded, one segment.
    let url = value_url(&server, ACCOUNT, NAMESPACE, "dir%2Fthe%20key");

    let missing = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(first_error(&body).0, 10009);

    let (status, body, _) = put(&http, &url, Some(TOKEN), b"\x00value\xff").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"success": true, "errors": [], "messages": [], "result": null})
    );
    assert_eq!(
        stand_in.value("dir/the key").await.unwrap().as_deref(),
        Some(&b"\x00value\xff"[..])
    );
    let read = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"\x00value\xff");

    assert_eq!(
        stand_in.stats(),
        CloudflareStats {
            writes_accepted: 1,
            reads: 2,
            requests_refused: 0,
            faults: 0,
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn refuses_a_bad_token_account_namespace_or_key() {
    let stand_in = CloudflareStandIn::new(config());
    let server = stand_in.clone().serve(crate::loopback()).await.unwrap();
    let http = reqwest::Client::new();
    let good = value_url(&server, ACCOUNT, NAMESPACE, "jwks");

    for token in [None, Some("wrong"), Some(&TOKEN[1..])] {
        let (status, body, _) = put(&http, &good, token, b"x").await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(first_error(&body), (10000, "Authentication error".into()));
    }
    let (status, body, _) = put(
        &http,
        &value_url(&server, "other-account", NAMESPACE, "jwks"),
        Some(TOKEN),
        b"x",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(first_error(&body).0, 10000);
    let (status, body, _) = put(
        &http,
        &value_url(&server, ACCOUNT, "other-namespace", "jwks"),
        Some(TOKEN),
        b"x",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(first_error(&body).0, 10013);
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let (status, _, _) = put(
        &http,
        &value_url(&server, ACCOUNT, NAMESPACE, &long),
        Some(TOKEN),
        b"x",
    )
    .await;
    assert_eq!(status, 414);
    // A URL library removes `..` even percent-encoded, so this one is
    // written by hand.
    let dots = raw_put(
        &server,
        &format!("/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces/{NAMESPACE}/values/%2E%2E"),
    )
    .await;
    assert!(dots.starts_with("HTTP/1.1 400 "), "{dots}");
    let multipart = http
        .put(&good)
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .body("--x--")
        .send()
        .await
        .unwrap();
    assert_eq!(multipart.status(), 400);
    let elsewhere = http
        .get(format!("{}/user/tokens/verify", api_base(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);

    let stats = stand_in.stats();
    assert_eq!(stats.requests_refused, 9);
    assert_eq!(stats.writes_accepted, 0);
    assert_eq!(stand_in.value("jwks").await.unwrap(), None);
    server.stop().await;
}

#[tokio::test]
async fn injected_faults_come_first_then_the_api_answers_again() {
    let stand_in = CloudflareStandIn::new(config());
    let server = stand_in.clone().serve(crate::loopback()).await.unwrap();
    let http = reqwest::Client::new();
    let url = value_url(&server, ACCOUNT, NAMESPACE, "jwks");

    stand_in.fail_next(
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(7),
        },
    );
    stand_in.fail_next(
        2,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let (status, body, retry_after) = put(&http, &url, Some(TOKEN), b"x").await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("7")));
    assert_eq!(first_error(&body).0, 971);
    for _ in 0..2 {
        let (status, body, retry_after) = put(&http, &url, Some(TOKEN), b"x").await;
        assert_eq!((status, retry_after), (503, None));
        assert_eq!(first_error(&body).0, 10001);
    }
    assert_eq!(
        stand_in.value("jwks").await.unwrap(),
        None,
        "nothing written"
    );
    let (status, _, _) = put(&http, &url, Some(TOKEN), b"x").await;
    assert_eq!(status, 200);
    let stats = stand_in.stats();
    assert_eq!((stats.faults, stats.requests_refused), (3, 3));
    assert_eq!(stats.writes_accepted, 1);
    server.stop().await;
}

fn key_set() -> JwkSet {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    JwkSet::new(vec![
        Jwk::from_pkcs1_der(pair.public_key().as_ref()).unwrap(),
    ])
    .unwrap()
}

#[tokio::test]
async fn the_native_edge_serves_what_is_written_to_its_kv_key() {
    let (first, second) = (key_set(), key_set());
    let edge = EdgeServer::start(crate::loopback(), |a| format!("http://{a}"), Some(&first))
        .await
        .unwrap();
    let stand_in = CloudflareStandIn::with_backend(config(), Arc::new(edge.kv_backend("jwks")));
    let server = stand_in.clone().serve(crate::loopback()).await.unwrap();
    let http = reqwest::Client::new();
    let served = || async {
        let body = http
            .get(edge.issuer().jwks_uri())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        JwkSet::from_json(&body).unwrap()
    };
    let url = value_url(&server, ACCOUNT, NAMESPACE, "jwks");

    // Before any write, KV holds the document the edge started with.
    let before = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(
        JwkSet::from_json(&before.bytes().await.unwrap()).unwrap(),
        first
    );

    let (status, _, _) = put(&http, &url, Some(TOKEN), second.to_json().as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(served().await, second);

    // KV takes anything; the edge keeps its last good document.
    let (status, _, _) = put(&http, &url, Some(TOKEN), b"{\"keys\": 7}").await;
    assert_eq!(status, 200);
    assert_eq!(served().await, second);
    assert_eq!(
        stand_in.value("jwks").await.unwrap().as_deref(),
        Some(&b"{\"keys\": 7}"[..])
    );
    // Other keys are stored, not served.
    let (status, _, _) = put(
        &http,
        &value_url(&server, ACCOUNT, NAMESPACE, "allowlist"),
        Some(TOKEN),
        first.to_json().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served().await, second);

    let refused = edge.set_key_document(b"{\"keys\": []}").unwrap_err();
    assert!(refused.to_string().contains("no keys"), "{refused}");
    edge.set_key_document(first.to_json().as_bytes()).unwrap();
    assert_eq!(served().await, first);

    server.stop().await;
    edge.stop().await;
}
