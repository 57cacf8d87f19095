//! Properties of the edge core on input from outside: the key document and
//! allowlist override from KV, the Worker variables, and every request the
//! internet can send (any method, path, `If-None-Match`, `CF-Connecting-IP`).
//!
//! The edge must always answer a well-formed response, never 5xx while it
//! has a key document, never serve a document that failed validation, and
//! keep its log line bounded.

#[path = "../../shared/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws2azure_edge::{
    ALLOWLIST_KV_KEY, ALLOWLIST_MODE, Allowlist, AllowlistMode, AllowlistState, DISCOVERY_MAX_AGE,
    EdgeConfig, EdgeRequest, Error, Fetched, ISSUER, JWKS_MAX_AGE, KEY_DOCUMENT,
    KEY_DOCUMENT_KV_KEY, KV_REFRESH_SECONDS, KeyDocument, KeySource, LastGoodKeys,
    builtin_allowlist, handle, misconfigured, needs_key_document,
};
use aws2azure_shared::allowlist::{AllowlistDocument, Cidr};
use aws2azure_shared::jwk::{Jwk, JwkSet, KeyId};
use http::{StatusCode, header};
use proptest::prelude::*;
use serde_json::Value;
use support::{
    Raw, arb_byte_edit, arb_json, arb_mutation, arb_text, assert_clear_error, config, edit_bytes,
    maybe_huge, mutate,
};

/// Longest log line a request may produce: the record bounds method, path,
/// client and colo to 256 bytes each, and carries a few fixed fields and
/// store events with bounded errors.
const MAX_LOG_LINE: usize = 8192;

fn arb_key_set() -> impl Strategy<Value = JwkSet> {
    let key = (
        proptest::collection::vec(any::<u8>(), 256..=300),
        "[A-Za-z0-9_-]{1,20}",
    )
        .prop_map(|(mut n, kid)| {
            n[0] |= 0x80;
            *n.last_mut().unwrap() |= 1;
            Jwk::from_rsa_components(&n, &[1, 0, 1])
                .unwrap()
                .with_kid(KeyId::new(kid).unwrap())
        });
    proptest::collection::vec(key, 1..=3).prop_map(|keys| {
        let mut unique: Vec<Jwk> = Vec::new();
        for k in keys {
            if !unique.iter().any(|u| u.kid() == k.kid()) {
                unique.push(k);
            }
        }
        JwkSet::new(unique).unwrap()
    })
}

/// A key document as KV may hold it: valid, mutated, damaged or garbage.
fn arb_stored_key_document() -> impl Strategy<Value = Raw> {
    let bytes = prop_oneof![
        2 => arb_key_set().prop_map(|s| s.to_json().into_bytes()),
        3 => (arb_key_set(), proptest::collection::vec(arb_mutation(), 1..4)).prop_map(|(s, m)| {
            mutate(serde_json::from_str(&s.to_json()).unwrap(), &m).to_string().into_bytes()
        }),
        2 => (arb_key_set(), proptest::collection::vec(arb_byte_edit(), 1..3))
            .prop_map(|(s, e)| edit_bytes(s.to_json().into_bytes(), &e)),
        1 => proptest::collection::vec(any::<u8>(), 0..128),
        1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
    ];
    bytes.prop_map(Raw)
}

fn check_key_document(raw: &[u8]) -> Option<KeyDocument> {
    match KeyDocument::parse(raw) {
        Ok(doc) => {
            assert!(!doc.keys().keys().is_empty());
            // What is served is canonical: it parses to the same document.
            let again = KeyDocument::parse(doc.body()).unwrap();
            assert_eq!(again.etag(), doc.etag());
            assert_eq!(&again, &doc);
            Some(doc)
        }
        Err(e) => {
            assert!(matches!(e, Error::KeyDocument(_)), "{e:?}");
            assert_clear_error(&e);
            None
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn key_documents_round_trip(set in arb_key_set()) {
        let doc = KeyDocument::parse(set.to_json().as_bytes()).unwrap();
        prop_assert_eq!(doc.keys(), &set);
        let json = set.to_json();
        prop_assert_eq!(doc.body().as_ref(), json.as_bytes());
    }

    #[test]
    fn stored_key_documents(raw in arb_stored_key_document()) {
        check_key_document(&raw.0);
    }

    /// Whatever KV returns, in any order, the isolate keeps serving the
    /// last document that validated, and logs bounded events.
    #[test]
    fn last_good_keys_survive_any_store_reads(
        reads in proptest::collection::vec(
            prop_oneof![
                4 => arb_stored_key_document().prop_map(|r| Fetched::Found(r.0)),
                1 => Just(()).prop_map(|_| Fetched::Missing),
                1 => arb_text().prop_map(|m| Fetched::Failed(Error::Kv { key: "jwks".into(), message: m })),
            ],
            1..8,
        ),
        copy in proptest::option::of(arb_stored_key_document()),
    ) {
        let mut keys = LastGoodKeys::new(Duration::ZERO);
        let mut last_good: Option<KeyDocument> = None;
        if let Some(Raw(raw)) = copy {
            let good = KeyDocument::parse(&raw).ok();
            let event = keys.restore_copy(Fetched::Found(raw));
            if let Some(e) = event {
                prop_assert!(serde_json::to_string(&e).unwrap().len() < MAX_LOG_LINE);
            }
            last_good = good;
        }
        for (now, read) in reads.into_iter().enumerate() {
            let good = match &read {
                Fetched::Found(raw) => KeyDocument::parse(raw).ok(),
                _ => None,
            };
            let refresh = keys.apply_store_read(now as u64, read);
            for e in &refresh.events {
                let line = serde_json::to_string(e).unwrap();
                prop_assert!(line.len() < MAX_LOG_LINE, "{} bytes", line.len());
            }
            if let Some(good) = good {
                let changed = last_good.as_ref().is_none_or(|l| l.etag() != good.etag());
                prop_assert_eq!(refresh.store_copy, changed);
                last_good = Some(good);
            } else {
                prop_assert!(!refresh.store_copy);
            }
            prop_assert_eq!(keys.current().map(|c| c.etag()), last_good.as_ref().map(|l| l.etag()));
        }
    }
}

// ----------------------------------------------------------- allowlist

fn arb_allowlist_document() -> impl Strategy<Value = Raw> {
    let valid = proptest::collection::vec((any::<[u8; 4]>(), 8u8..=32), 1..8).prop_map(|p| {
        let prefixes: Vec<Cidr> = p
            .iter()
            .map(|(a, l)| {
                format!("{}/{l}", std::net::Ipv4Addr::from(*a))
                    .parse()
                    .unwrap()
            })
            .collect();
        AllowlistDocument {
            source: "ops".into(),
            change_number: Some(1),
            prefixes,
        }
        .to_json_pretty()
    });
    let bytes = prop_oneof![
        2 => valid.clone().prop_map(String::into_bytes),
        3 => (valid.clone(), proptest::collection::vec(arb_mutation(), 1..4)).prop_map(|(d, m)| {
            mutate(serde_json::from_str(&d).unwrap(), &m).to_string().into_bytes()
        }),
        2 => (valid, proptest::collection::vec(arb_byte_edit(), 1..3))
            .prop_map(|(d, e)| edit_bytes(d.into_bytes(), &e)),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    bytes.prop_map(Raw)
}

proptest! {
    #![proptest_config(config(256))]

    /// A bad override never replaces the list in force; every event and the
    /// label (logged on every request) stay bounded.
    #[test]
    fn allowlist_overrides_from_any_store_reads(
        reads in proptest::collection::vec(
            prop_oneof![
                4 => arb_allowlist_document().prop_map(|r| Fetched::Found(r.0)),
                1 => Just(()).prop_map(|_| Fetched::Missing),
                1 => Just(()).prop_map(|_| Fetched::Failed(Error::Kv { key: "allowlist".into(), message: "down".into() })),
            ],
            1..6,
        ),
    ) {
        let mut state = AllowlistState::with_builtin(Duration::ZERO);
        for (now, read) in reads.into_iter().enumerate() {
            let parsed = match &read {
                Fetched::Found(raw) => Some(AllowlistDocument::from_json(raw)),
                Fetched::Missing => None,
                Fetched::Failed(_) => Some(Err(aws2azure_shared::Error::InvalidAllowlist(String::new()))),
            };
            let before = state.current().clone();
            let event = state.apply_store_read(now as u64, read);
            if let Some(e) = &event {
                prop_assert!(serde_json::to_string(e).unwrap().len() < MAX_LOG_LINE);
            }
            prop_assert!(state.label().len() <= 512, "label of {} bytes", state.label().len());
            match parsed {
                Some(Ok(doc)) => {
                    prop_assert_eq!(state.current().as_ref(), &doc.allowlist());
                }
                Some(Err(_)) => prop_assert_eq!(state.current(), &before),
                None => {
                    prop_assert_eq!(state.current(), &builtin_allowlist());
                }
            }
        }
    }
}

// ------------------------------------------------------------- config

const SETTINGS: [&str; 8] = [
    ISSUER,
    ALLOWLIST_MODE,
    DISCOVERY_MAX_AGE,
    JWKS_MAX_AGE,
    KEY_DOCUMENT,
    KEY_DOCUMENT_KV_KEY,
    ALLOWLIST_KV_KEY,
    KV_REFRESH_SECONDS,
];

fn arb_setting_value(name: &'static str) -> BoxedStrategy<String> {
    let valid: BoxedStrategy<String> = match name {
        ISSUER => prop_oneof![
            Just("https://issuer.example.com".to_string()),
            "https://[a-z]{1,10}\\.example(/[a-z]{1,6}){0,2}/?",
            Just("http://127.0.0.1:8787".to_string()),
        ]
        .boxed(),
        ALLOWLIST_MODE => prop::sample::select(vec!["off", "monitor", "enforce"])
            .prop_map(str::to_string)
            .boxed(),
        DISCOVERY_MAX_AGE | JWKS_MAX_AGE => (0u32..=86_400).prop_map(|n| n.to_string()).boxed(),
        KV_REFRESH_SECONDS => (0u32..=3600).prop_map(|n| n.to_string()).boxed(),
        KEY_DOCUMENT => arb_stored_key_document()
            .prop_map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .boxed(),
        _ => "[a-z0-9._-]{1,40}".boxed(),
    };
    prop_oneof![
        3 => valid,
        1 => arb_text(),
        1 => prop::sample::select(vec!["", " ", "-1", "4294967296", "99999999999999999999", "1e3", "0x10", "\u{0}", ".."]).prop_map(str::to_string),
    ]
    .boxed()
}

fn arb_vars() -> impl Strategy<Value = HashMap<&'static str, String>> {
    let per_setting: Vec<_> = SETTINGS
        .iter()
        .map(|&name| {
            let weight = if name == ISSUER { 0.95 } else { 0.5 };
            (
                proptest::option::weighted(weight, arb_setting_value(name)),
                maybe_huge(),
            )
                .prop_map(move |(v, huge)| (name, v.map(|v| huge.map_or(v, |h| h.text()))))
        })
        .collect();
    per_setting.prop_map(|pairs| {
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn edge_config_from_any_variables(vars in arb_vars()) {
        match EdgeConfig::from_vars(|name| vars.get(name).cloned()) {
            Ok(config) => {
                prop_assert_eq!(Some(config.issuer().as_str()), vars.get(ISSUER).map(String::as_str));
                prop_assert!(config.discovery_max_age() <= 86_400);
                prop_assert!(config.jwks_max_age() <= 86_400);
                prop_assert!(config.kv_refresh() <= Duration::from_secs(3600));
                let expected_mode = vars.get(ALLOWLIST_MODE).map_or(AllowlistMode::Monitor, |m| m.parse().unwrap());
                prop_assert_eq!(config.allowlist_mode(), expected_mode);
                match config.key_source() {
                    KeySource::Inline(doc) => {
                        let inline = vars.get(KEY_DOCUMENT).unwrap();
                        prop_assert_eq!(doc.as_ref(), &KeyDocument::parse(inline.as_bytes()).unwrap());
                    }
                    KeySource::Kv { key } => {
                        prop_assert!(!vars.contains_key(KEY_DOCUMENT));
                        prop_assert_ne!(key.as_str(), config.allowlist_kv_key());
                    }
                }
                // The discovery document served names the issuer byte for byte.
                let served: Value = serde_json::from_slice(config.discovery_document()).unwrap();
                prop_assert_eq!(served["issuer"].as_str(), Some(config.issuer().as_str()));
                let cache_url = config.last_good_cache_url();
                prop_assert!(cache_url.parse::<http::Uri>().is_ok(), "{}", cache_url);
            }
            Err(e) => {
                let setting = e.setting();
                prop_assert!(setting.is_some_and(|s| SETTINGS.contains(&s)), "{:?}", e);
                let message = assert_clear_error(&e);
                prop_assert!(message.contains(setting.unwrap()), "{}", message);
                // A misconfigured edge answers 503 to everything, and logs.
                let handled = misconfigured(&e, &EdgeRequest { method: "GET", path: "/jwks", ..EdgeRequest::default() });
                prop_assert_eq!(handled.response.status(), StatusCode::SERVICE_UNAVAILABLE);
                prop_assert!(handled.log.to_json().len() < MAX_LOG_LINE);
            }
        }
    }
}

// ------------------------------------------------------------ requests

fn arb_method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "get", "head", "Get"]).prop_map(str::to_string),
        1 => "[A-Z!#$%&'*+.^_`|~-]{1,12}",
        1 => arb_text(),
    ]
}

fn arb_path(prefix: &'static str) -> impl Strategy<Value = String> {
    let route = prop::sample::select(vec![
        "/.well-known/openid-configuration",
        "/jwks",
        "/.well-known/jwks.json",
        "/",
        "",
    ]);
    prop_oneof![
        4 => route.clone().prop_map(move |r| format!("{prefix}{r}")),
        2 => (route, arb_text(), any::<bool>()).prop_map(move |(r, t, before)| {
            if before { format!("{prefix}{t}{r}") } else { format!("{prefix}{r}{t}") }
        }),
        1 => arb_text(),
        1 => "(/[.%a-zA-Z0-9_-]{0,10}){0,6}",
    ]
}

fn arb_if_none_match(etags: Vec<String>) -> impl Strategy<Value = Option<String>> {
    let known = prop::sample::select(etags);
    proptest::option::of(prop_oneof![
        2 => known.clone(),
        1 => known.prop_map(|t| format!("W/{t}")),
        1 => Just("*".to_string()),
        1 => "(W/)?\"[A-Za-z0-9_-]{0,50}\"( *, *(W/)?\"[A-Za-z0-9_-]{0,50}\"){0,3}",
        2 => arb_text(),
    ])
}

fn arb_client() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        2 => any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        1 => any::<u128>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
        2 => prop::sample::select(vec!["20.190.128.1", "::ffff:20.190.128.1", "2603:1006:2000::1", " 20.190.128.1 ", "20.190.128.1, 8.8.8.8", "unknown", ""]).prop_map(str::to_string),
        1 => arb_text(),
    ])
}

fn edge_config(issuer: &str, mode: &str) -> EdgeConfig {
    let vars: HashMap<&str, String> = [
        (ISSUER, issuer.to_string()),
        (ALLOWLIST_MODE, mode.to_string()),
        (DISCOVERY_MAX_AGE, "1800".to_string()),
        (JWKS_MAX_AGE, "120".to_string()),
    ]
    .into();
    EdgeConfig::from_vars(|name| vars.get(name).cloned()).unwrap()
}

/// What every answer of the edge must be, whatever was asked.
fn check_response(
    config: &EdgeConfig,
    allowlist: &Allowlist,
    keys: Option<&KeyDocument>,
    request: &EdgeRequest<'_>,
) -> StatusCode {
    let handled = handle(config, allowlist, keys, request);
    let response = &handled.response;
    let status = response.status();
    let head = request.method == "HEAD";
    let allowed = [200, 304, 403, 404, 405];
    if keys.is_some() {
        assert!(
            allowed.contains(&status.as_u16()),
            "{status} with keys for {request:?}"
        );
    } else {
        assert!(
            allowed.contains(&status.as_u16()) || status == 503,
            "{status}"
        );
        if status == 503 {
            assert!(request.path.ends_with("jwks") || request.path.ends_with("jwks.json"));
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
    }
    assert_eq!(handled.log.status, status.as_u16());
    let line = handled.log.to_json();
    assert!(
        line.len() < MAX_LOG_LINE,
        "log line of {} bytes",
        line.len()
    );
    assert!(!line.contains('\n'));
    let headers = response.headers();
    assert_eq!(
        headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(),
        "nosniff"
    );
    if status != StatusCode::NOT_MODIFIED {
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let length: usize = headers[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if head {
            assert!(response.body().is_empty(), "HEAD has no body");
        } else {
            assert_eq!(length, response.body().len());
        }
    } else {
        assert!(response.body().is_empty());
        assert!(headers.contains_key(header::ETAG));
    }
    if status.is_client_error() && !head {
        let body: Value = serde_json::from_slice(response.body()).expect("errors are JSON");
        assert!(body["error"].is_string() && body["error_description"].is_string());
    }
    if status == StatusCode::OK {
        assert!(headers.contains_key(header::ETAG) && headers.contains_key(header::CACHE_CONTROL));
        if !head {
            let body = response.body();
            let served_keys = keys.is_some_and(|k| k.body() == body);
            assert!(
                served_keys || body == config.discovery_document(),
                "only the two documents"
            );
        }
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert_eq!(headers.get(header::ALLOW).unwrap(), "GET, HEAD");
    }
    // The shell reads KV for exactly the requests that may serve the keys.
    let reads = needs_key_document(config, allowlist, request);
    if reads {
        assert!(matches!(request.method, "GET" | "HEAD"));
    }
    if status == StatusCode::OK
        && keys.is_some_and(|k| response.headers()[header::ETAG] == k.etag())
    {
        assert!(reads);
    }
    status
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn every_request_gets_a_well_formed_answer(
        issuer in prop::sample::select(vec!["https://issuer.example.com", "https://e.example.com/tenant-a/", "http://127.0.0.1:8787/a/b"]),
        mode in prop::sample::select(vec!["off", "monitor", "enforce"]),
        set in arb_key_set(),
        method in arb_method(),
        path_seed in any::<prop::sample::Index>(),
        paths in (arb_path(""), arb_path("/tenant-a"), arb_path("/a/b")),
        client in arb_client(),
        colo in proptest::option::of(arb_text()),
        huge in maybe_huge(),
        inm_seed in arb_if_none_match(vec!["\"x\"".to_string()]),
        keys_present in prop::bool::weighted(0.9),
    ) {
        let config = edge_config(issuer, mode);
        let keys = KeyDocument::parse(set.to_json().as_bytes()).unwrap();
        let mut path = [paths.0, paths.1, paths.2][path_seed.index(3)].clone();
        if let Some(h) = huge {
            path.push_str(&h.text());
        }
        // Conditional requests with the real ETags, mangled or not.
        let if_none_match = inm_seed.map(|v| match v.as_str() {
            "\"x\"" => keys.etag().to_string(),
            "W/\"x\"" => format!("W/{}", keys.etag()),
            _ => v,
        });
        let request = EdgeRequest {
            method: &method,
            path: &path,
            if_none_match: if_none_match.as_deref(),
            client_address: client.as_deref(),
            colo: colo.as_deref(),
        };
        let keys = keys_present.then_some(&keys);
        check_response(&config, &builtin_allowlist(), keys, &request);
    }

    /// Requests built as the Worker gets them: a URL (its path taken with
    /// `path_of_url`) and `http` headers.
    #[test]
    fn requests_from_urls_and_http_headers(
        url in prop_oneof![
            "https://issuer\\.example\\.com(/[a-z.%-]{0,12}){0,3}(\\?[a-z=&]{0,10})?(#[a-z]{0,5})?",
            arb_text(),
        ],
        if_none_match in proptest::collection::vec(any::<u8>(), 0..40),
        method in "[A-Z]{1,8}",
    ) {
        let path = EdgeRequest::path_of_url(&url);
        prop_assert!(url.contains(path) || path == "/");
        let config = edge_config("https://issuer.example.com", "monitor");
        let keys = KeyDocument::parse(JwkSet::new(vec![]).unwrap().to_json().as_bytes()).err();
        prop_assert!(keys.is_some(), "an empty key set is never served");
        let mut builder = http::Request::builder().method(method.as_str()).uri("/");
        if let Ok(value) = http::HeaderValue::from_bytes(&if_none_match) {
            builder = builder.header(header::IF_NONE_MATCH, value);
        }
        let http_request = builder.body(()).unwrap();
        let request = EdgeRequest { path, ..EdgeRequest::from_http(&http_request) }
            .with_client_address(Some("20.190.128.1"));
        check_response(&config, &builtin_allowlist(), None, &request);
    }
}

/// Every known route answers 200 to GET when keys exist and the client is
/// allowed: the properties above did not make the edge refuse real reads.
#[test]
fn the_real_routes_still_serve() {
    let config = edge_config("https://e.example.com/tenant-a/", "enforce");
    let n: Vec<u8> = std::iter::once(0xc1).chain([7u8; 254]).chain([3]).collect();
    let set = JwkSet::new(vec![Jwk::from_rsa_components(&n, &[1, 0, 1]).unwrap()]).unwrap();
    let keys = KeyDocument::parse(set.to_json().as_bytes()).unwrap();
    for path in [
        "/tenant-a/.well-known/openid-configuration",
        "/tenant-a/jwks",
        "/tenant-a/.well-known/jwks.json",
    ] {
        let request = EdgeRequest {
            method: "GET",
            path,
            client_address: Some("20.190.128.1"),
            ..EdgeRequest::default()
        };
        assert_eq!(
            check_response(&config, &builtin_allowlist(), Some(&keys), &request),
            StatusCode::OK
        );
    }
}
