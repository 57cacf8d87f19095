//! The HTTP surface of the core, rule by rule: routes, methods, headers,
//! conditional requests, the allowlist and every failure answer.

use std::collections::HashMap;

use aws2azure_shared::allowlist::AllowlistDocument;
use aws2azure_shared::discovery::{DiscoveryDocument, Issuer};
use http::{StatusCode, header};

use crate::test_keys::{key_set_json, other_key_set_json};
use crate::*;

fn config(vars: &[(&str, &str)]) -> EdgeConfig {
    let vars: HashMap<&str, &str> = vars.iter().copied().collect();
    EdgeConfig::from_vars(|name| vars.get(name).map(|v| v.to_string())).unwrap()
}

fn root_config() -> EdgeConfig {
    config(&[
        (ISSUER, "https://issuer.example.com"),
        (DISCOVERY_MAX_AGE, "1800"),
        (JWKS_MAX_AGE, "120"),
        (ALLOWLIST_MODE, "off"),
    ])
}

fn keys() -> KeyDocument {
    KeyDocument::parse(key_set_json().as_bytes()).unwrap()
}

fn get(path: &str) -> EdgeRequest<'_> {
    EdgeRequest {
        method: "GET",
        path,
        client_address: Some("20.190.128.1"),
        ..EdgeRequest::default()
    }
}

fn send(config: &EdgeConfig, request: EdgeRequest<'_>) -> Handled {
    handle(config, &builtin_allowlist(), Some(&keys()), &request)
}

fn header(handled: &Handled, name: header::HeaderName) -> Option<&str> {
    handled
        .response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
}

fn json(handled: &Handled) -> serde_json::Value {
    serde_json::from_slice(handled.response.body()).unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            String::from_utf8_lossy(handled.response.body())
        )
    })
}

/// Every 200 and 304 of a document carries these.
fn assert_document_headers(handled: &Handled, etag: &str, max_age: u32) {
    assert_eq!(header(handled, header::ETAG), Some(etag));
    assert_eq!(
        header(handled, header::CACHE_CONTROL),
        Some(format!("public, max-age={max_age}").as_str())
    );
    assert_eq!(
        header(handled, header::X_CONTENT_TYPE_OPTIONS),
        Some("nosniff")
    );
}

fn assert_error(handled: &Handled, status: StatusCode, error: &str) {
    assert_eq!(handled.response.status(), status);
    assert_eq!(json(handled)["error"], error);
    assert!(
        json(handled)["error_description"].is_string(),
        "explains itself"
    );
    assert_eq!(
        header(handled, header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(header(handled, header::CACHE_CONTROL), Some("no-store"));
    assert_eq!(
        header(handled, header::X_CONTENT_TYPE_OPTIONS),
        Some("nosniff")
    );
    assert_eq!(handled.log.status, status.as_u16());
}

#[test]
fn serves_the_discovery_document_entra_reads() {
    let config = root_config();
    let handled = send(&config, get("/.well-known/openid-configuration"));
    assert_eq!(handled.response.status(), StatusCode::OK);
    let doc: DiscoveryDocument = serde_json::from_slice(handled.response.body()).unwrap();
    assert_eq!(
        doc,
        DiscoveryDocument::for_issuer(&Issuer::parse("https://issuer.example.com").unwrap())
    );
    let etag = header(&handled, header::ETAG).unwrap().to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong");
    assert_document_headers(&handled, &etag, 1800);
    assert_eq!(
        header(&handled, header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(
        header(&handled, header::CONTENT_LENGTH),
        Some(handled.response.body().len().to_string().as_str())
    );
    assert_eq!(handled.log.status, 200);
    assert_eq!(handled.log.path, "/.well-known/openid-configuration");
}

#[test]
fn serves_the_key_set_at_jwks_and_its_alias() {
    let config = root_config();
    let keys = keys();
    for path in ["/jwks", "/.well-known/jwks.json"] {
        let handled = send(&config, get(path));
        assert_eq!(handled.response.status(), StatusCode::OK, "{path}");
        assert_eq!(handled.response.body(), keys.body());
        let v = json(&handled);
        let key = &v["keys"][0];
        for member in ["kty", "use", "alg", "kid", "n", "e"] {
            assert!(key[member].is_string(), "{member} in {key}");
        }
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_document_headers(&handled, keys.etag(), 120);
        assert_eq!(
            header(&handled, header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(handled.log.key_version.as_deref(), Some(keys.version()));
    }
}

#[test]
fn routes_live_below_the_issuers_path() {
    for issuer in [
        "https://e.example.com/tenant-a",
        "https://e.example.com/tenant-a/",
    ] {
        let config = config(&[(ISSUER, issuer), (ALLOWLIST_MODE, "off")]);
        for path in [
            "/tenant-a/.well-known/openid-configuration",
            "/tenant-a/jwks",
            "/tenant-a/.well-known/jwks.json",
        ] {
            assert_eq!(send(&config, get(path)).response.status(), 200, "{path}");
        }
        let doc = json(&send(
            &config,
            get("/tenant-a/.well-known/openid-configuration"),
        ));
        assert_eq!(doc["issuer"], issuer, "byte for byte, slash included");
        assert_eq!(doc["jwks_uri"], "https://e.example.com/tenant-a/jwks");
        for path in [
            "/.well-known/openid-configuration",
            "/jwks",
            "/tenant-a",
            "/tenant-a/",
            "/tenant-ab/jwks",
            "/tenant-a//jwks",
            "/TENANT-A/jwks",
        ] {
            assert_error(
                &send(&config, get(path)),
                StatusCode::NOT_FOUND,
                "not_found",
            );
        }
    }
}

#[test]
fn everything_else_is_404() {
    let config = root_config();
    for path in [
        "/",
        "",
        "/jwks/",
        "/JWKS",
        "/jwks.json",
        "/.well-known/openid-configuration/",
        "/.well-known/",
        "//jwks",
        "/%6Awks",
        "/jwks/../jwks",
        "/favicon.ico",
    ] {
        let handled = send(&config, get(path));
        assert_error(&handled, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(handled.log.path, path);
    }
    // Unknown paths are 404 whatever the method: 405 is for known routes.
    let post = EdgeRequest {
        method: "POST",
        ..get("/token")
    };
    assert_error(&send(&config, post), StatusCode::NOT_FOUND, "not_found");
}

#[test]
fn the_query_string_does_not_change_the_route() {
    let config = root_config();
    let request = http::Request::get("https://issuer.example.com/jwks?cache-buster=1")
        .body(())
        .unwrap();
    let handled = send(&config, EdgeRequest::from_http(&request));
    assert_eq!(handled.response.status(), 200);
    assert_eq!(handled.log.path, "/jwks");
}

#[test]
fn other_methods_get_405_with_allow() {
    let config = root_config();
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get", "head",
    ] {
        for path in [
            "/jwks",
            "/.well-known/jwks.json",
            "/.well-known/openid-configuration",
        ] {
            let handled = send(
                &config,
                EdgeRequest {
                    method,
                    ..get(path)
                },
            );
            assert_error(
                &handled,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            );
            assert_eq!(
                header(&handled, header::ALLOW),
                Some("GET, HEAD"),
                "{method} {path}"
            );
            assert_eq!(handled.log.method, method);
        }
    }
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let config = root_config();
    for path in ["/jwks", "/.well-known/openid-configuration"] {
        let got = send(&config, get(path));
        let head = send(
            &config,
            EdgeRequest {
                method: "HEAD",
                ..get(path)
            },
        );
        assert_eq!(head.response.status(), 200);
        assert!(head.response.body().is_empty(), "{path}");
        assert_eq!(
            head.response.headers(),
            got.response.headers(),
            "same headers, Content-Length included"
        );
        assert_eq!(head.log.method, "HEAD");
    }
    // Error answers to HEAD have no body either.
    let missing = send(
        &config,
        EdgeRequest {
            method: "HEAD",
            ..get("/nowhere")
        },
    );
    assert_eq!(missing.response.status(), 404);
    assert!(missing.response.body().is_empty());
}

#[test]
fn if_none_match_gives_304_for_the_current_version_only() {
    let config = root_config();
    let keys = keys();
    let discovery = send(&config, get("/.well-known/openid-configuration"));
    let discovery_etag = header(&discovery, header::ETAG).unwrap().to_string();
    let other = "\"an-older-version\"";
    let cases = [
        ("/jwks", keys.etag().to_string(), 120),
        ("/.well-known/jwks.json", format!("W/{}", keys.etag()), 120),
        ("/jwks", format!("{other}, {}", keys.etag()), 120),
        ("/jwks", "*".to_string(), 120),
        (
            "/.well-known/openid-configuration",
            discovery_etag.clone(),
            1800,
        ),
    ];
    for (path, if_none_match, max_age) in &cases {
        for method in ["GET", "HEAD"] {
            let handled = send(
                &config,
                EdgeRequest {
                    method,
                    if_none_match: Some(if_none_match),
                    ..get(path)
                },
            );
            assert_eq!(
                handled.response.status(),
                StatusCode::NOT_MODIFIED,
                "{method} {path} {if_none_match}"
            );
            assert!(handled.response.body().is_empty());
            let etag = if path.contains("openid") {
                &discovery_etag
            } else {
                keys.etag()
            };
            assert_document_headers(&handled, etag, *max_age);
            assert_eq!(handled.log.status, 304);
        }
    }
    for if_none_match in [other, "", "garbage", discovery_etag.as_str()] {
        let handled = send(
            &config,
            EdgeRequest {
                if_none_match: Some(if_none_match),
                ..get("/jwks")
            },
        );
        assert_eq!(handled.response.status(), 200, "{if_none_match}");
        assert_eq!(handled.response.body(), keys.body());
    }
}

#[test]
fn a_rotated_key_set_has_a_new_etag_and_old_tags_no_longer_match() {
    let config = root_config();
    let old = keys();
    let new = KeyDocument::parse(other_key_set_json().as_bytes()).unwrap();
    let handled = handle(
        &config,
        &Allowlist::default(),
        Some(&new),
        &EdgeRequest {
            if_none_match: Some(old.etag()),
            ..get("/jwks")
        },
    );
    assert_eq!(handled.response.status(), 200);
    assert_eq!(header(&handled, header::ETAG), Some(new.etag()));
    assert_eq!(json(&handled)["keys"].as_array().unwrap().len(), 2);
    assert_eq!(handled.log.key_version.as_deref(), Some(new.version()));
}

#[test]
fn no_key_document_at_all_is_503_with_retry_after_for_the_key_set_only() {
    let config = root_config();
    let none = |request| handle(&config, &Allowlist::default(), None, &request);
    for path in ["/jwks", "/.well-known/jwks.json"] {
        let handled = none(get(path));
        assert_error(
            &handled,
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
        );
        assert_eq!(header(&handled, header::RETRY_AFTER), Some("30"));
        assert_eq!(handled.log.key_version, None);
        let head = none(EdgeRequest {
            method: "HEAD",
            ..get(path)
        });
        assert_eq!(head.response.status(), 503);
        assert!(head.response.body().is_empty());
        assert_eq!(header(&head, header::RETRY_AFTER), Some("30"));
    }
    let discovery = none(get("/.well-known/openid-configuration"));
    assert_eq!(discovery.response.status(), 200, "discovery needs no keys");
}

fn enforcing() -> EdgeConfig {
    config(&[
        (ISSUER, "https://issuer.example.com"),
        (ALLOWLIST_MODE, "enforce"),
    ])
}

fn from(config: &EdgeConfig, client: Option<&str>, path: &str) -> Handled {
    send(
        config,
        EdgeRequest {
            client_address: client,
            colo: Some("FRA"),
            ..get(path)
        },
    )
}

/// Real members of the AzureActiveDirectory tag, in every spelling.
const INSIDE: [&str; 4] = [
    "20.190.128.1",
    "2603:1006:2000::1",
    "::ffff:20.190.128.1",
    "::FFFF:13.64.151.161",
];
const OUTSIDE: [&str; 4] = ["8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8", "127.0.0.1"];
const UNPARSABLE: [&str; 5] = [
    "",
    "garbage",
    "20.190.128.1, 8.8.8.8",
    "20.190.128.1:443",
    "[::1]",
];

#[test]
fn the_shipped_list_holds_the_inside_addresses_only() {
    let list = builtin_allowlist();
    for a in INSIDE {
        assert!(list.contains(a.parse().unwrap()), "{a}");
    }
    for a in OUTSIDE {
        assert!(!list.contains(a.parse().unwrap()), "{a}");
    }
}

#[test]
fn enforce_answers_403_outside_the_list_on_every_path_and_method() {
    let config = enforcing();
    for client in INSIDE {
        let handled = from(&config, Some(client), "/jwks");
        assert_eq!(handled.response.status(), 200, "{client}");
        assert_eq!(handled.log.decision, Some("allow"));
        assert_eq!(handled.log.client.as_deref(), Some(client));
    }
    let denied = OUTSIDE
        .iter()
        .chain(&UNPARSABLE)
        .map(|c| Some(*c))
        .chain([None]);
    for client in denied {
        for path in [
            "/jwks",
            "/.well-known/openid-configuration",
            "/anything-else",
        ] {
            let handled = from(&config, client, path);
            assert_error(&handled, StatusCode::FORBIDDEN, "forbidden");
            assert_eq!(handled.log.decision, Some("deny"), "{client:?}");
            assert_eq!(handled.log.allowlist_mode, Some("enforce"));
            assert_eq!(handled.log.client.as_deref(), client);
            assert_eq!(handled.log.colo.as_deref(), Some("FRA"));
        }
        let post = send(
            &config,
            EdgeRequest {
                method: "POST",
                client_address: client,
                ..get("/jwks")
            },
        );
        assert_eq!(post.response.status(), 403, "denied before 405");
        let head = send(
            &config,
            EdgeRequest {
                method: "HEAD",
                client_address: client,
                ..get("/jwks")
            },
        );
        assert_eq!(head.response.status(), 403);
        assert!(head.response.body().is_empty());
    }
}

#[test]
fn monitor_serves_everyone_and_logs_what_enforce_would_deny() {
    let config = config(&[(ISSUER, "https://issuer.example.com")]);
    assert_eq!(config.allowlist_mode(), AllowlistMode::Monitor, "default");
    for client in INSIDE {
        let handled = from(&config, Some(client), "/jwks");
        assert_eq!(handled.response.status(), 200);
        assert_eq!(handled.log.decision, Some("allow"));
    }
    let outside = OUTSIDE
        .iter()
        .chain(&UNPARSABLE)
        .map(|c| Some(*c))
        .chain([None]);
    for client in outside {
        let handled = from(&config, client, "/jwks");
        assert_eq!(handled.response.status(), 200, "{client:?}");
        assert_eq!(handled.log.decision, Some("monitor-deny"), "{client:?}");
        assert_eq!(handled.log.allowlist_mode, Some("monitor"));
        assert_eq!(handled.log.client.as_deref(), client);
    }
}

#[test]
fn off_judges_nobody() {
    let config = root_config();
    for client in OUTSIDE
        .iter()
        .chain(&UNPARSABLE)
        .map(|c| Some(*c))
        .chain([None])
    {
        let handled = from(&config, client, "/jwks");
        assert_eq!(handled.response.status(), 200);
        assert_eq!(handled.log.decision, Some("allow"));
        assert_eq!(handled.log.allowlist_mode, Some("off"));
    }
}

#[test]
fn x_forwarded_for_is_never_the_client_address() {
    let config = enforcing();
    // A client outside the list claims an Azure AD address.
    let request = http::Request::get("/jwks")
        .header("X-Forwarded-For", "20.190.128.1")
        .header("CF-Connecting-IP", "20.190.128.1")
        .header("True-Client-IP", "20.190.128.1")
        .body(())
        .unwrap();
    // Without an address the shell vouches for, no header counts.
    let handled = send(&config, EdgeRequest::from_http(&request));
    assert_eq!(handled.response.status(), 403);
    assert_eq!(handled.log.client, None);
    // The address the shell passes is the only one judged.
    let handled = send(
        &config,
        EdgeRequest::from_http(&request).with_client_address(Some("8.8.8.8")),
    );
    assert_eq!(handled.response.status(), 403);
    assert_eq!(handled.log.client.as_deref(), Some("8.8.8.8"));
}

#[test]
fn an_override_allowlist_is_what_is_judged() {
    let config = enforcing();
    let doc =
        AllowlistDocument::from_json(br#"{"source":"lab","prefixes":["192.0.2.0/24"]}"#).unwrap();
    let list = doc.allowlist();
    let judge = |client| {
        handle(
            &config,
            &list,
            Some(&keys()),
            &EdgeRequest {
                client_address: Some(client),
                ..get("/jwks")
            },
        )
        .response
        .status()
    };
    assert_eq!(judge("192.0.2.7"), 200);
    assert_eq!(judge("20.190.128.1"), 403, "the built-in list is replaced");
}

#[test]
fn needs_key_document_only_for_allowed_reads_of_the_key_set() {
    let config = enforcing();
    let list = builtin_allowlist();
    let needs = |request: EdgeRequest<'_>| needs_key_document(&config, &list, &request);
    assert!(needs(get("/jwks")));
    assert!(needs(get("/.well-known/jwks.json")));
    assert!(needs(EdgeRequest {
        method: "HEAD",
        ..get("/jwks")
    }));
    assert!(!needs(get("/.well-known/openid-configuration")));
    assert!(!needs(get("/elsewhere")));
    assert!(!needs(EdgeRequest {
        method: "POST",
        ..get("/jwks")
    }));
    assert!(!needs(EdgeRequest {
        client_address: Some("8.8.8.8"),
        ..get("/jwks")
    }));
}

#[test]
fn a_misconfigured_edge_answers_503_and_logs_the_setting() {
    let err = EdgeConfig::from_vars(|name| (name == JWKS_MAX_AGE).then(|| "x".into())).unwrap_err();
    assert_eq!(err.setting(), Some(ISSUER));
    for path in ["/jwks", "/.well-known/openid-configuration", "/x"] {
        let handled = misconfigured(
            &err,
            &EdgeRequest {
                colo: Some("AMS"),
                ..get(path)
            },
        );
        assert_error(&handled, StatusCode::SERVICE_UNAVAILABLE, "misconfigured");
        let body = String::from_utf8_lossy(handled.response.body()).to_string();
        assert!(body.len() < 200, "small: {body}");
        assert_eq!(handled.log.setting, Some(ISSUER));
        assert!(
            handled
                .log
                .error
                .as_deref()
                .unwrap()
                .contains("setting `ISSUER`"),
            "{:?}",
            handled.log
        );
        assert_eq!(handled.log.decision, None);
        let line: serde_json::Value = serde_json::from_str(&handled.log.to_json()).unwrap();
        assert_eq!(line["setting"], "ISSUER");
        assert_eq!(line["status"], 503);
        assert_eq!(line["colo"], "AMS");
    }
    let head = misconfigured(
        &err,
        &EdgeRequest {
            method: "HEAD",
            ..get("/jwks")
        },
    );
    assert!(head.response.body().is_empty());
}

#[test]
fn the_log_record_names_everything_the_issue_asks_for() {
    let config = config(&[(ISSUER, "https://issuer.example.com")]);
    let keys = keys();
    let handled = handle(
        &config,
        &builtin_allowlist(),
        Some(&keys),
        &EdgeRequest {
            client_address: Some("2001:db8::7"),
            colo: Some("SIN"),
            ..get("/jwks")
        },
    )
    .with_events([Event::new(EventKind::KeyDocumentMissing)]);
    let line = handled.log.to_json();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["path"], "/jwks");
    assert_eq!(v["status"], 200);
    assert_eq!(v["decision"], "monitor-deny");
    assert_eq!(v["client"], "2001:db8::7");
    assert_eq!(v["colo"], "SIN");
    assert_eq!(v["key_version"], keys.version());
    assert_eq!(v["events"][0]["event"], "key_document_missing");
}

#[test]
fn the_path_of_a_worker_request_url() {
    for (url, path) in [
        ("https://issuer.example.com/jwks", "/jwks"),
        ("https://issuer.example.com/jwks?x=1", "/jwks"),
        ("https://issuer.example.com/a/b#frag", "/a/b"),
        ("https://issuer.example.com", "/"),
        ("https://issuer.example.com?q", "/"),
        ("https://issuer.example.com#f", "/"),
        (
            "http://127.0.0.1:8787/.well-known/jwks.json",
            "/.well-known/jwks.json",
        ),
        ("http://[::1]:8787/%6Awks?a=/b", "/%6Awks"),
        ("https://issuer.example.com//jwks", "//jwks"),
    ] {
        assert_eq!(EdgeRequest::path_of_url(url), path, "{url}");
    }
}
