//! `aws2azure doctor` against deliberately broken issuers served here, each
//! failure named in its output (and a non-zero exit).

use std::process::Command;

use aws2azure_devstack::{Server, loopback};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aws2azure");

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The modulus of an RSA key `openssl genrsa` makes, base64url.
fn openssl_modulus(bits: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    assert!(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg(bits)
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .strip_prefix("Modulus=")
        .unwrap()
        .to_string();
    b64url(&hex::decode(hex).unwrap())
}

fn json_response(body: Value) -> axum::response::Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Serves one issuer per path prefix, each broken in its own way.
async fn broken_issuers() -> Server {
    let good_n = openssl_modulus("2048");
    let weak_n = openssl_modulus("1024");
    let key = |kid: Option<&str>, n: &str| {
        let mut k = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"});
        if let Some(kid) = kid {
            k["kid"] = json!(kid);
        }
        k
    };
    let ec_key = json!({"kty": "EC", "crv": "P-384", "use": "sig", "alg": "ES384", "kid": "es-1",
        "x": "iA7lWQLzVrKGEFjfGMfMHfTEZ2KnLiKU7JuNT3E7ygsfE7ygsfE7ygsfE7ygsfE7",
        "y": "0Ea8dU0nVqd2ZxdXE7ygsfE7ygsfE7ygsfE7ygsfE7ygsfE7ygsfE7ygsfE7ygsf"});
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let discovery = |case: &str, issuer: String| {
        json!({"issuer": issuer, "jwks_uri": format!("{base}/{case}/jwks"),
               "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
               "id_token_signing_alg_values_supported": ["RS256"]})
    };
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "good",
            discovery("good", format!("{base}/good")),
            json!({"keys": [key(Some("k1"), &good_n)]}),
        ),
        (
            "slash",
            discovery("slash", format!("{base}/slash/")),
            json!({"keys": [key(Some("k1"), &good_n)]}),
        ),
        (
            "nokid",
            discovery("nokid", format!("{base}/nokid")),
            json!({"keys": [key(None, &good_n)]}),
        ),
        (
            "dupkid",
            discovery("dupkid", format!("{base}/dupkid")),
            json!({"keys": [key(Some("k1"), &good_n), key(Some("k1"), &good_n)]}),
        ),
        (
            "weak",
            discovery("weak", format!("{base}/weak")),
            json!({"keys": [key(Some("weak-1"), &weak_n)]}),
        ),
        // AWS's issuer publishes ES384 keys beside its RSA ones.
        (
            "mixed",
            discovery("mixed", format!("{base}/mixed")),
            json!({"keys": [key(Some("k1"), &good_n), ec_key]}),
        ),
        (
            "ec-only",
            discovery("ec-only", format!("{base}/ec-only")),
            json!({"keys": [ec_key]}),
        ),
    ];
    let mut router = Router::new().route(
        "/down/.well-known/openid-configuration",
        get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded") }),
    );
    for (case, disco, jwks) in cases {
        router = router
            .route(
                &format!("/{case}/.well-known/openid-configuration"),
                get(move || async move { json_response(disco) }),
            )
            .route(
                &format!("/{case}/jwks"),
                get(move || async move { json_response(jwks) }),
            );
    }
    Server::from_listener(listener, router, false).unwrap()
}

fn doctor(url: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("doctor")
        .arg(url)
        .arg("--allow-http")
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_issuer_fails_with_the_reason_named() {
    let server = broken_issuers().await;
    let base = server.url();

    let (code, out) = doctor(&format!("{base}/good"), &["--kid", "k1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS  expected kid"), "{out}");
    assert!(
        out.contains("WARN  discovery cache headers") && out.contains("no ETag"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/good"), &["--kid", "k2"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  expected kid") && out.contains("k2 is not in the key set"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/slash"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  issuer matches") && out.contains("trailing slash"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/nokid"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  key #0") && out.contains("no `kid`"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/dupkid"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  key k1") && out.contains("appears twice"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/weak"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  key weak-1") && out.contains("1024 bits is too weak"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/mixed"), &[]);
    assert_eq!(code, 0, "an EC key beside an RSA one is no failure: {out}");
    assert!(
        out.contains("WARN  key es-1") && out.contains("RS256 assertions only"),
        "{out}"
    );
    let (code, out) = doctor(&format!("{base}/ec-only"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  RS256 keys") && out.contains("no usable RSA key"),
        "{out}"
    );

    let (code, out) = doctor(&format!("{base}/down"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  discovery document reachable") && out.contains("HTTP 500"),
        "{out}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, out) = doctor(&format!("http://{closed}"), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL  discovery document reachable"), "{out}");

    let (code, out) = doctor(&format!("{base}/weak"), &["--json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "fail" && c["name"] == "key weak-1")
    );
}

#[test]
fn azure_prints_the_federated_credential() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws2azure.toml");
    std::fs::write(
        &config,
        r#"issuer = "https://issuer.example.com"
[profiles.graph]
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "00000000-1111-2222-3333-444444444444"
scope = "https://graph.microsoft.com/.default"
subject = "aws2azure:graph"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["azure", "graph", "--format", "az", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(
            "az ad app federated-credential create --id 00000000-1111-2222-3333-444444444444"
        ),
        "{text}"
    );
    assert!(
        text.contains(r#""issuer":"https://issuer.example.com""#)
            && text.contains(r#""subject":"aws2azure:graph""#)
    );

    let out = Command::new(BIN)
        .args(["azure", "graph", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("# Bicep")
            && text.contains("Microsoft.Graph/applications/federatedIdentityCredentials@v1.0")
    );
    assert!(
        text.contains("# Terraform")
            && text.contains("azuread_application_federated_identity_credential")
    );

    let out = Command::new(BIN)
        .args(["azure", "nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no profile `nope`")
            && String::from_utf8_lossy(&out.stderr).contains("graph")
    );
}

#[test]
fn keys_export_publishes_the_public_half_of_a_pem_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    assert!(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = Command::new(BIN)
        .args(["keys", "export", "--pem"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set = aws2azure_shared::jwk::JwkSet::from_json(&out.stdout).unwrap();
    assert_eq!(set.keys().len(), 1);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"d\""),
        "no private member"
    );
    // Without --kms-key or --pem: the ring's document, which needs AWS
    // credentials; none here is a setup problem (exit 2), named as such.
    let out = Command::new(BIN)
        .args(["keys", "export"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS credentials"), "{err}");
    assert!(err.lines().count() <= 2, "one short message: {err}");
}
