//! The compiled edge Worker (edge/build) in real workerd, over real HTTP:
//! routes and headers, the key document from KV and from the inline
//! variable, the allowlist in every mode, the stores failing under it, and
//! independent JWT validators (PyJWT, node jose) reading what it serves.
//!
//! Needs the built Worker (`./scripts/build-edge`), `npm ci` and, for the
//! PyJWT test, `$AWS2AZURE_PYTHON` (a Python with PyJWT[crypto]);
//! `./scripts/test` provides all three.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws2azure_shared::jwk::{Jwk, JwkSet, KeyId};
use aws2azure_tests::workerd::{EdgeOptions, WorkerdEdge, free_port, repo_root};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

const AUDIENCE: &str = "api://AzureADTokenExchange";
/// Members of the real AzureActiveDirectory tag, and addresses outside it.
const AZURE_V4: &str = "20.190.128.1";
const AZURE_V6: &str = "2603:1006:2000::1";
const AZURE_MAPPED: &str = "::ffff:20.190.128.1";
const OTHER_V4: &str = "8.8.8.8";
const OTHER_V6: &str = "2001:db8::1";
const OTHER_MAPPED: &str = "::ffff:8.8.8.8";

/// An RSA key made by `openssl genrsa`, private half on disk for signers.
struct TestKey {
    _dir: tempfile::TempDir,
    private_pem: PathBuf,
    jwk: Jwk,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestKey {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let private_pem = dir.path().join("key.pem");
        let public_der = dir.path().join("public.der");
        let p = |p: &Path| p.to_str().unwrap().to_string();
        openssl(&["genrsa", "-out", &p(&private_pem), "2048"]);
        openssl(&[
            "rsa",
            "-in",
            &p(&private_pem),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            &p(&public_der),
        ]);
        let jwk = Jwk::from_spki_der(&std::fs::read(&public_der).unwrap()).unwrap();
        Self {
            _dir: dir,
            private_pem,
            jwk,
        }
    }

    fn kid(&self) -> &str {
        self.jwk.kid().as_str()
    }
}

/// Two keys per test process: generating RSA keys is the slow part.
fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| (TestKey::generate(), TestKey::generate()))
}

fn key_set(keys: &[&TestKey]) -> String {
    JwkSet::new(keys.iter().map(|k| k.jwk.clone()).collect())
        .unwrap()
        .to_json()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn request(
    edge: &WorkerdEdge,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http().request(method, edge.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("the edge answers")
}

async fn get(edge: &WorkerdEdge, path: &str) -> reqwest::Response {
    request(edge, Method::GET, path, &[]).await
}

async fn get_from(edge: &WorkerdEdge, path: &str, client: &str) -> reqwest::Response {
    request(edge, Method::GET, path, &[("CF-Connecting-IP", client)]).await
}

fn header_of<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header"))
}

async fn body_json(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A fresh edge at `http://127.0.0.1:PORT{path}` whose issuer names its port.
fn issuer_options(path: &str) -> (String, EdgeOptions) {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}{path}");
    let options = EdgeOptions::new(&issuer, port);
    (issuer, options)
}

#[tokio::test]
async fn serves_discovery_and_key_set_from_kv_below_the_issuer_path() {
    let (key, _) = keys();
    let (issuer, options) = issuer_options("/tenant-a");
    let document = key_set(&[key]);
    let edge = WorkerdEdge::start(
        &options
            .var("JWKS_MAX_AGE", 120)
            .var("DISCOVERY_MAX_AGE", "600")
            .kv("jwks", &document),
    );

    let response = get(&edge, "/tenant-a/.well-known/openid-configuration").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, "content-type"),
        Some("application/json")
    );
    assert_eq!(
        header_of(&response, "cache-control"),
        Some("public, max-age=600")
    );
    assert_eq!(
        header_of(&response, "x-content-type-options"),
        Some("nosniff")
    );
    let etag = header_of(&response, "etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let discovery = body_json(response).await;
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    let log = edge.next_log();
    assert_eq!(log["path"], "/tenant-a/.well-known/openid-configuration");
    assert_eq!(log["status"], 200);
    assert_eq!(log["colo"], "TST");

    let mut etags = Vec::new();
    for path in ["/tenant-a/jwks", "/tenant-a/.well-known/jwks.json"] {
        let response = get(&edge, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header_of(&response, "content-type"),
            Some("application/json")
        );
        assert_eq!(
            header_of(&response, "cache-control"),
            Some("public, max-age=120")
        );
        assert_eq!(
            header_of(&response, "x-content-type-options"),
            Some("nosniff")
        );
        etags.push(header_of(&response, "etag").unwrap().to_string());
        assert_eq!(response.text().await.unwrap(), document, "canonical bytes");
        let log = edge.next_log();
        assert_eq!(log["path"], path);
        assert_eq!(log["status"], 200);
        let version = log["key_version"].as_str().unwrap();
        assert!(etags.last().unwrap().starts_with(&format!("\"{version}")));
    }
    assert_eq!(etags[0], etags[1], "the alias is the same document");
    assert_ne!(etags[0], etag);

    // The routes live only below the issuer's path.
    for path in ["/jwks", "/.well-known/openid-configuration", "/tenant-a"] {
        let response = get(&edge, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(edge.next_log()["status"], 404);
    }
}

#[tokio::test]
async fn conditional_requests_head_405_and_404() {
    let (key, _) = keys();
    let (_, options) = issuer_options("");
    let edge = WorkerdEdge::start(&options.kv("jwks", &key_set(&[key])));

    let full = get(&edge, "/jwks").await;
    let etag = header_of(&full, "etag").unwrap().to_string();
    let length = full.text().await.unwrap().len();
    edge.next_log();

    for if_none_match in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"older\", {etag}"),
        "*".to_string(),
    ] {
        for method in [Method::GET, Method::HEAD] {
            let response = request(
                &edge,
                method.clone(),
                "/jwks",
                &[("If-None-Match", &if_none_match)],
            )
            .await;
            assert_eq!(
                response.status(),
                StatusCode::NOT_MODIFIED,
                "{method} {if_none_match}"
            );
            assert_eq!(header_of(&response, "etag"), Some(etag.as_str()));
            assert_eq!(
                header_of(&response, "cache-control"),
                Some("public, max-age=300")
            );
            assert!(response.bytes().await.unwrap().is_empty());
            assert_eq!(edge.next_log()["status"], 304);
        }
    }
    let stale = request(
        &edge,
        Method::GET,
        "/jwks",
        &[("If-None-Match", "\"older\"")],
    )
    .await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.text().await.unwrap().len(), length);
    edge.next_log();

    for path in ["/jwks", "/.well-known/openid-configuration"] {
        let head = request(&edge, Method::HEAD, path, &[]).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(header_of(&head, "content-type"), Some("application/json"));
        assert!(header_of(&head, "etag").is_some());
        assert!(head.bytes().await.unwrap().is_empty(), "no body on HEAD");
        let log = edge.next_log();
        assert_eq!(
            (log["method"].as_str(), log["status"].as_i64()),
            (Some("HEAD"), Some(200))
        );
    }
    let head = request(&edge, Method::HEAD, "/jwks", &[]).await;
    assert_eq!(
        header_of(&head, "content-length"),
        Some(length.to_string().as_str()),
        "HEAD announces GET's length"
    );
    edge.next_log();

    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for path in [
            "/jwks",
            "/.well-known/jwks.json",
            "/.well-known/openid-configuration",
        ] {
            let response = request(&edge, method.clone(), path, &[]).await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                header_of(&response, header::ALLOW.as_str()),
                Some("GET, HEAD")
            );
            assert_eq!(body_json(response).await["error"], "method_not_allowed");
            let log = edge.next_log();
            assert_eq!(log["method"], method.as_str(), "the raw method is logged");
            assert_eq!(log["status"], 405);
        }
    }

    for path in [
        "/",
        "/jwks/",
        "/JWKS",
        "/jwks.json",
        "/token/x",
        "/.well-known/",
    ] {
        let response = get(&edge, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header_of(&response, "cache-control"), Some("no-store"));
        assert_eq!(body_json(response).await["error"], "not_found");
        assert_eq!(edge.next_log()["path"], path);
    }
    assert_eq!(
        edge.logs().len(),
        1 + 8 + 1 + 2 + 1 + 18 + 6,
        "one line per request"
    );
}

#[tokio::test]
async fn serves_an_inline_key_document_without_any_kv() {
    let (key, next) = keys();
    let document = key_set(&[key, next]);
    let as_table: Value = serde_json::from_str(&document).unwrap();
    // As a string, and as a TOML table (which wrangler passes as an object).
    for inline in [Value::String(document.clone()), as_table] {
        let (_, options) = issuer_options("");
        let edge = WorkerdEdge::start(&options.without_kv_binding().var("KEY_DOCUMENT", inline));
        let response = get(&edge, "/jwks").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), document);
        let log = edge.next_log();
        assert_eq!(log["status"], 200);
        assert!(log["key_version"].is_string());
        assert!(log.get("events").is_none(), "no store was read: {log}");
        let response = get(&edge, "/.well-known/openid-configuration").await;
        assert_eq!(response.status(), StatusCode::OK);
        edge.next_log();
    }
}

/// Status and logged decision for `client`, spoofing X-Forwarded-For with an
/// Azure address every time: it must never count.
async fn judge(edge: &WorkerdEdge, client: &str) -> (StatusCode, Value) {
    let response = request(
        edge,
        Method::GET,
        "/jwks",
        &[
            ("CF-Connecting-IP", client),
            ("X-Forwarded-For", AZURE_V4),
            ("True-Client-IP", AZURE_V4),
        ],
    )
    .await;
    let status = response.status();
    let log = edge.next_log();
    assert_eq!(
        log["client"], client,
        "CF-Connecting-IP is the address judged"
    );
    (status, log)
}

async fn allowlist_edge(mode: &str) -> WorkerdEdge {
    let (key, _) = keys();
    let (_, options) = issuer_options("");
    WorkerdEdge::start(
        &options
            .var("ALLOWLIST_MODE", mode)
            .var("KV_REFRESH_SECONDS", 0)
            .kv("jwks", &key_set(&[key])),
    )
}

#[tokio::test]
async fn allowlist_enforce_admits_azure_ad_only_whatever_x_forwarded_for_says() {
    let edge = allowlist_edge("enforce").await;
    for client in [AZURE_V4, AZURE_V6, AZURE_MAPPED] {
        let (status, log) = judge(&edge, client).await;
        assert_eq!(status, StatusCode::OK, "{client}");
        assert_eq!(log["decision"], "allow");
        assert_eq!(log["allowlist_mode"], "enforce");
        assert_eq!(log["allowlist"], "builtin:AzureActiveDirectory#24");
    }
    for client in [
        OTHER_V4,
        OTHER_V6,
        OTHER_MAPPED,
        "not-an-address",
        "20.190.128.1, 8.8.8.8",
    ] {
        let (status, log) = judge(&edge, client).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{client}");
        assert_eq!(log["decision"], "deny");
        assert_eq!(log["status"], 403);
    }
    let denied = get_from(&edge, "/.well-known/openid-configuration", OTHER_V4).await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(header_of(&denied, "content-type"), Some("application/json"));
    let body = denied.text().await.unwrap();
    assert!(body.len() < 200, "small: {body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "forbidden"
    );
    edge.next_log();
}

#[tokio::test]
async fn allowlist_monitor_serves_everyone_and_logs_what_enforce_would_deny() {
    let edge = allowlist_edge("monitor").await;
    for client in [AZURE_V4, AZURE_V6, AZURE_MAPPED] {
        let (status, log) = judge(&edge, client).await;
        assert_eq!(status, StatusCode::OK, "{client}");
        assert_eq!(log["decision"], "allow");
    }
    for client in [OTHER_V4, OTHER_V6, OTHER_MAPPED, "not-an-address"] {
        let (status, log) = judge(&edge, client).await;
        assert_eq!(status, StatusCode::OK, "{client}");
        assert_eq!(log["decision"], "monitor-deny", "{client}");
        assert_eq!(log["allowlist_mode"], "monitor");
    }
}

#[tokio::test]
async fn allowlist_off_judges_nobody() {
    let edge = allowlist_edge("off").await;
    for client in [AZURE_V4, OTHER_V4, OTHER_V6, OTHER_MAPPED, "not-an-address"] {
        let (status, log) = judge(&edge, client).await;
        assert_eq!(status, StatusCode::OK, "{client}");
        assert_eq!(log["decision"], "allow");
        assert_eq!(log["allowlist_mode"], "off");
        assert!(log.get("allowlist").is_none(), "no list loaded: {log}");
    }
}

#[tokio::test]
async fn an_allowlist_override_from_kv_replaces_the_builtin_list_until_removed() {
    let edge = allowlist_edge("enforce").await;
    let office =
        r#"{"source":"office","changeNumber":7,"prefixes":["192.0.2.0/24","2001:db8::/32"]}"#;
    edge.put_kv("allowlist", office).await;
    let (status, log) = judge(&edge, "192.0.2.10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["allowlist"], "kv:office#7");
    assert_eq!(log["events"][0]["event"], "allowlist_loaded");
    assert_eq!(judge(&edge, OTHER_V6).await.0, StatusCode::OK);
    assert_eq!(judge(&edge, AZURE_V4).await.0, StatusCode::FORBIDDEN);

    // An invalid override is refused; the last good one stays in force.
    edge.put_kv("allowlist", r#"{"source":"x","prefixes":[]}"#)
        .await;
    let (status, log) = judge(&edge, "192.0.2.10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["events"][0]["event"], "allowlist_rejected");
    assert!(
        log["events"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no prefixes"),
        "{log}"
    );
    assert_eq!(log["allowlist"], "kv:office#7");

    edge.delete_kv("allowlist").await;
    let (status, log) = judge(&edge, AZURE_V4).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["events"][0]["event"], "allowlist_removed");
    assert_eq!(log["allowlist"], "builtin:AzureActiveDirectory#24");
    assert_eq!(judge(&edge, "192.0.2.10").await.0, StatusCode::FORBIDDEN);
}

/// The names of a log line's events, in order.
fn events(log: &Value) -> Vec<String> {
    log["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["event"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn too_many_keys(key: &TestKey) -> String {
    let keys: Vec<Jwk> = (0..101)
        .map(|i| {
            key.jwk
                .clone()
                .with_kid(KeyId::new(format!("k{i}")).unwrap())
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn without_kid(key: &TestKey) -> String {
    let mut doc: Value = serde_json::from_str(&key_set(&[key])).unwrap();
    doc["keys"][0].as_object_mut().unwrap().remove("kid");
    doc.to_string()
}

#[tokio::test]
async fn kv_emptied_or_corrupted_mid_run_never_replaces_the_last_good_document() {
    let (key, next) = keys();
    let good = key_set(&[key]);
    let (_, options) = issuer_options("");
    let edge = WorkerdEdge::start(&options.var("KV_REFRESH_SECONDS", "0").kv("jwks", &good));

    let response = get(&edge, "/jwks").await;
    assert_eq!(response.text().await.unwrap(), good);
    let log = edge.next_log();
    assert_eq!(events(&log), ["key_document_loaded"], "{log}");
    let version = log["key_version"].as_str().unwrap().to_string();

    let broken = [
        ("{\"keys\": [", "key_document_rejected", "not a JWK Set"),
        (&without_kid(key), "key_document_rejected", "no `kid`"),
        (&too_many_keys(key), "key_document_rejected", "101 keys"),
        ("{\"keys\": []}", "key_document_rejected", "no keys"),
    ];
    for (document, event, reason) in broken {
        edge.put_kv("jwks", document).await;
        let response = get(&edge, "/jwks").await;
        assert_eq!(response.status(), StatusCode::OK, "{reason}");
        assert_eq!(response.text().await.unwrap(), good, "{reason}");
        let log = edge.next_log();
        // The isolate's own copy answers: no fallback to the Cache API.
        assert_eq!(events(&log), [event], "{log}");
        assert!(
            log["events"][0]["error"].as_str().unwrap().contains(reason),
            "{log}"
        );
        assert_eq!(log["key_version"], version.as_str());
    }

    edge.delete_kv("jwks").await;
    let response = get(&edge, "/jwks").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), good);
    let log = edge.next_log();
    assert_eq!(events(&log), ["key_document_missing"], "{log}");
    assert_eq!(log["key_version"], version.as_str());

    // A valid rotation is taken at once (refresh interval 0 here).
    let rotated = key_set(&[key, next]);
    edge.put_kv("jwks", &rotated).await;
    let response = get(&edge, "/jwks").await;
    assert_eq!(response.text().await.unwrap(), rotated);
    let log = edge.next_log();
    assert_eq!(log["events"][0]["event"], "key_document_loaded");
    assert_ne!(log["key_version"], version.as_str());
}

#[tokio::test]
async fn a_fresh_isolate_without_kv_serves_the_cache_api_copy() {
    let (key, next) = keys();
    let good = key_set(&[key, next]);
    let (_, options) = issuer_options("");
    let edge = WorkerdEdge::start(&options.var("KV_REFRESH_SECONDS", "0").kv("jwks", &good));
    assert_eq!(get(&edge, "/jwks").await.status(), StatusCode::OK);
    let loaded = edge.next_log();
    assert_eq!(
        events(&loaded),
        ["key_document_loaded"],
        "copy written: {loaded}"
    );

    // KV loses the document, then a fresh isolate starts: it has no copy in
    // memory, only the Cache API's.
    edge.delete_kv("jwks").await;
    edge.reload().await;
    let response = get(&edge, "/jwks").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), good);
    let log = edge.next_log();
    assert_eq!(
        events(&log),
        ["key_document_missing", "key_document_restored"],
        "{log}"
    );
    assert_eq!(log["key_version"], loaded["key_version"]);

    // A corrupted KV document does not displace the restored copy either.
    edge.reload().await;
    edge.put_kv("jwks", &without_kid(key)).await;
    let response = get(&edge, "/jwks").await;
    assert_eq!(response.text().await.unwrap(), good);
    let log = edge.next_log();
    assert_eq!(
        events(&log),
        ["key_document_rejected", "key_document_restored"],
        "{log}"
    );
}

/// The longest wait between two KV reads of an isolate without any key
/// document (the edge's `NO_DOCUMENT_RETRY_MAX`, docs/edge.md).
const NO_DOCUMENT_RETRY_MAX: Duration = Duration::from_secs(10);

/// A request for the key set that must get the no-document answer.
async fn assert_no_document(edge: &WorkerdEdge) {
    let response = get(edge, "/jwks").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header_of(&response, "retry-after"), Some("30"));
    assert_eq!(header_of(&response, "cache-control"), Some("no-store"));
    assert_eq!(
        body_json(response).await["error"],
        "temporarily_unavailable"
    );
}

#[tokio::test]
async fn with_no_copy_anywhere_the_key_set_is_503_and_kv_is_read_every_few_seconds() {
    let (key, _) = keys();
    let (_, options) = issuer_options("");
    // The default refresh interval (60 s): without a copy it must not wait
    // that long, nor read KV on every request.
    let edge = WorkerdEdge::start(&options.count_kv_reads());
    assert_no_document(&edge).await;
    let log = edge.next_log();
    assert_eq!(log["status"], 503);
    assert!(log["key_version"].is_null());
    assert_eq!(events(&log), ["key_document_missing"], "{log}");
    assert_eq!(edge.kv_reads("jwks"), 1);

    let discovery = get(&edge, "/.well-known/openid-configuration").await;
    assert_eq!(
        discovery.status(),
        StatusCode::OK,
        "discovery needs no keys"
    );
    edge.next_log();
    assert_eq!(edge.kv_reads("jwks"), 1, "discovery reads no keys");

    // A burst, one request after another, then all at once (an isolate
    // interleaves them): each used to read KV and the Cache API.
    const BURST: usize = 40;
    let started = Instant::now();
    for _ in 0..BURST / 2 {
        assert_no_document(&edge).await;
        edge.next_log();
    }
    futures_util::future::join_all((0..BURST / 2).map(|_| assert_no_document(&edge))).await;
    for _ in 0..BURST / 2 {
        edge.next_log();
    }
    let elapsed = started.elapsed();
    let reads = edge.kv_reads("jwks") - 1;
    // The first retry comes 1 s after the first read, the next 2 s later:
    // at most one read per second elapsed, whatever the request rate.
    assert!(
        reads <= elapsed.as_secs() as usize + 1 && reads < BURST,
        "{reads} KV reads for {BURST} requests in {elapsed:?}"
    );

    // Published now (Miniflare's KV is consistent at once): served within
    // the longest retry wait, without anyone restarting anything.
    edge.put_kv("jwks", &key_set(&[key])).await;
    let published = Instant::now();
    let reads_before = edge.kv_reads("jwks");
    let log = loop {
        let response = get(&edge, "/jwks").await;
        let status = response.status();
        let log = edge.next_log();
        if status == StatusCode::OK {
            break log;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{log}");
        assert!(
            published.elapsed() < NO_DOCUMENT_RETRY_MAX + Duration::from_secs(3),
            "still 503 {:?} after publishing: {log}",
            published.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events(&log), ["key_document_loaded"], "{log}");
    assert_eq!(
        edge.kv_reads("jwks") - reads_before,
        1,
        "requests waited for the next retry; its read found the document"
    );
    // From now on the refresh interval applies: no read per request.
    let reads = edge.kv_reads("jwks");
    for _ in 0..5 {
        assert_eq!(get(&edge, "/jwks").await.status(), StatusCode::OK);
        edge.next_log();
    }
    assert_eq!(edge.kv_reads("jwks"), reads);
}

#[tokio::test]
async fn a_misconfigured_edge_fails_every_request_and_names_the_setting() {
    let (key, _) = keys();
    let (_, options) = issuer_options("");
    let cases = [
        (options.clone().without_var("ISSUER"), "ISSUER"),
        (options.clone().var("ISSUER", "https://"), "ISSUER"),
        (
            options.clone().var("ALLOWLIST_MODE", "strict"),
            "ALLOWLIST_MODE",
        ),
        (options.clone().var("JWKS_MAX_AGE", -5), "JWKS_MAX_AGE"),
        (options.clone().without_kv_binding(), "EDGE_KV"),
        (
            options.clone().var("KEY_DOCUMENT", without_kid(key)),
            "KEY_DOCUMENT",
        ),
    ];
    for (options, setting) in cases {
        let edge = WorkerdEdge::start(&options);
        for path in ["/jwks", "/.well-known/openid-configuration"] {
            let response = get(&edge, path).await;
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{setting} {path}"
            );
            let body = response.text().await.unwrap();
            assert!(body.len() < 200, "small: {body}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["error"],
                "misconfigured"
            );
            let log = edge.next_log();
            assert_eq!(log["setting"], setting, "{log}");
            assert!(
                log["error"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("setting `{setting}`: ")),
                "{log}"
            );
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client assertion as the signer makes it, signed by PyJWT.
fn pyjwt_sign(key: &TestKey, issuer: &str) -> String {
    let claims = json!({
        "iss": issuer,
        "sub": "aws2azure:test-profile",
        "aud": AUDIENCE,
        "iat": now(),
        "nbf": now() - 30,
        "exp": now() + 300,
        "jti": format!("jti-{}", now()),
    });
    let out = Command::new(python())
        .arg(repo_root().join("tests/edge/pyjwt_check.py"))
        .args(["sign", key.private_pem.to_str().unwrap(), key.kid()])
        .arg(claims.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "PyJWT sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn python() -> String {
    std::env::var("AWS2AZURE_PYTHON").unwrap_or_else(|_| {
        let venv = repo_root().join(".venv/bin/python");
        assert!(
            venv.exists(),
            "set AWS2AZURE_PYTHON to a Python with PyJWT[crypto] (./scripts/test does)"
        );
        venv.to_str().unwrap().to_string()
    })
}

fn verify_with(validator: &str, issuer: &str, token: &str) -> Result<Value, String> {
    let root = repo_root();
    let out = match validator {
        "pyjwt" => Command::new(python())
            .arg(root.join("tests/edge/pyjwt_check.py"))
            .args(["verify", issuer, AUDIENCE, token])
            .output(),
        "jose" => Command::new("node")
            .arg(root.join("tests/edge/jose_check.mjs"))
            .args([issuer, AUDIENCE, token])
            .current_dir(&root)
            .output(),
        other => unreachable!("{other}"),
    }
    .expect("the validator runs");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("the validator prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test]
async fn pyjwt_and_jose_verify_a_token_against_the_running_edge() {
    let (key, unpublished) = keys();
    let (issuer, options) = issuer_options("");
    let edge = WorkerdEdge::start(&options.kv("jwks", &key_set(&[key])));

    let token = pyjwt_sign(key, &issuer);
    let claims = verify_with("pyjwt", &issuer, &token).unwrap_or_else(|e| panic!("PyJWT: {e}"));
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], AUDIENCE);
    let verified = verify_with("jose", &issuer, &token).unwrap_or_else(|e| panic!("jose: {e}"));
    assert_eq!(verified["payload"]["sub"], "aws2azure:test-profile");
    assert_eq!(verified["protectedHeader"]["kid"], key.kid());

    // The validators really check: a key the edge does not publish fails in
    // both, and so does a token whose issuer is not the edge's.
    let forged = pyjwt_sign(unpublished, &issuer);
    let err = verify_with("pyjwt", &issuer, &forged).unwrap_err();
    assert!(err.contains("Unable to find a signing key"), "{err}");
    let err = verify_with("jose", &issuer, &forged).unwrap_err();
    assert!(err.contains("ERR_JWKS_NO_MATCHING_KEY"), "{err}");
    let elsewhere = pyjwt_sign(key, "https://other.example.com");
    let err = verify_with("pyjwt", &issuer, &elsewhere).unwrap_err();
    assert!(err.contains("Invalid issuer"), "{err}");
    let err = verify_with("jose", &issuer, &elsewhere).unwrap_err();
    assert!(
        err.contains("ERR_JWT_CLAIM_VALIDATION_FAILED") && err.contains("claim: 'iss'"),
        "{err}"
    );

    // After a rotation that publishes the second key, its tokens verify.
    edge.put_kv("jwks", &key_set(&[key, unpublished])).await;
    // The default refresh interval is 60 s; a fresh isolate reads KV at once.
    edge.reload().await;
    verify_with("pyjwt", &issuer, &forged).unwrap_or_else(|e| panic!("PyJWT: {e}"));
    verify_with("jose", &issuer, &forged).unwrap_or_else(|e| panic!("jose: {e}"));
}
