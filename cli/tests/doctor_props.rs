//! Properties of `aws2azure doctor` against what a broken or hostile issuer
//! can serve, from a local server on 127.0.0.1: any discovery document and
//! key set (arbitrary, mutated, truncated, huge, endless) gets a report
//! with a FAIL that says why, never a panic, with bounded memory and
//! bounded lines; a good issuer passes.

#[path = "../../shared/tests/support/mod.rs"]
mod support;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use aws2azure_cli::doctor::{Options, Report, Status, check};
use aws2azure_devstack::Server;
use aws2azure_shared::discovery::{DiscoveryDocument, Issuer};
use aws2azure_shared::jwk::{Jwk, JwkSet, KeyId};
use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use proptest::prelude::*;
use serde_json::Value;
use support::{Raw, arb_byte_edit, arb_json, arb_mutation, config, edit_bytes, maybe_huge, mutate};

/// Longest detail or check name in a report: a message, the fix, and a
/// bounded echo of what was served.
const MAX_DETAIL: usize = 1024;

/// What the issuer serves at one path.
#[derive(Clone, Debug)]
enum Served {
    Json(Raw),
    /// `chunks` × 64 KiB of spaces, streamed without a length.
    Endless {
        chunks: usize,
    },
}

#[derive(Default)]
struct Documents {
    discovery: Option<Served>,
    jwks: Option<Served>,
}

struct Issuer_ {
    runtime: tokio::runtime::Runtime,
    _server: Server,
    base: String,
    documents: Arc<Mutex<Documents>>,
}

fn respond(served: Option<Served>) -> Response {
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .header(header::ETAG, "\"v1\"");
    match served {
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::empty())
            .unwrap(),
        Some(Served::Json(Raw(bytes))) => builder.body(Body::from(bytes)).unwrap(),
        Some(Served::Endless { chunks }) => {
            let chunk = axum::body::Bytes::from(vec![b' '; 1 << 16]);
            let stream = futures_util::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            builder.body(Body::from_stream(stream)).unwrap()
        }
    }
}

static ISSUER: LazyLock<Issuer_> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let documents = Arc::new(Mutex::new(Documents::default()));
    let state = documents.clone();
    let server = runtime.block_on(async move {
        let router = Router::new().fallback(move |uri: Uri| {
            let state = state.clone();
            async move {
                let docs = state.lock().unwrap();
                match uri.path() {
                    "/.well-known/openid-configuration" => respond(docs.discovery.clone()),
                    "/jwks" => respond(docs.jwks.clone()),
                    _ => respond(None),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::from_listener(listener, router, false).unwrap()
    });
    Issuer_ {
        base: server.url(),
        runtime,
        _server: server,
        documents,
    }
});

/// Runs doctor against the local issuer serving `discovery` and `jwks`.
fn doctor(discovery: Served, jwks: Served, timeout: Duration) -> Report {
    // One issuer for every test of this file: one check at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let issuer = &*ISSUER;
    *issuer.documents.lock().unwrap() = Documents {
        discovery: Some(discovery),
        jwks: Some(jwks),
    };
    let options = Options {
        allow_http: true,
        kid: Some("k0".into()),
        timeout,
    };
    issuer
        .runtime
        .block_on(check(&issuer.base, &options))
        .expect("doctor runs")
}

fn good_discovery() -> Value {
    let issuer = Issuer::parse(&ISSUER.base).unwrap();
    serde_json::from_str(&DiscoveryDocument::for_issuer(&issuer).to_json()).unwrap()
}

/// Keeps the doctor on this machine: a mutated `jwks_uri` naming another
/// host becomes an unused loopback port (refused at once), so no property
/// case ever resolves or connects to a name outside.
fn stay_local(mut doc: Value) -> Value {
    fn fix(v: &mut Value) {
        match v {
            Value::String(s) => {
                let host = s
                    .parse::<Uri>()
                    .ok()
                    .and_then(|u| u.host().map(str::to_string));
                if host.is_some_and(|h| h != "127.0.0.1") {
                    *s = "http://127.0.0.1:9/jwks".into();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(fix),
            Value::Object(o) => o.values_mut().for_each(fix),
            _ => {}
        }
    }
    fix(&mut doc);
    doc
}

/// A valid key set with the key `k0` the checks expect.
fn good_key_set() -> Served {
    let n: Vec<u8> = std::iter::once(0xc1).chain([7u8; 254]).chain([3]).collect();
    let key = Jwk::from_rsa_components(&n, &[1, 0, 1])
        .unwrap()
        .with_kid(KeyId::new("k0").unwrap());
    Served::Json(Raw(JwkSet::new(vec![key]).unwrap().to_json().into_bytes()))
}

fn arb_key_set() -> impl Strategy<Value = JwkSet> {
    let key = proptest::collection::vec(any::<u8>(), 256..=260).prop_map(|mut n| {
        n[0] |= 0x80;
        *n.last_mut().unwrap() |= 1;
        Jwk::from_rsa_components(&n, &[1, 0, 1]).unwrap()
    });
    proptest::collection::vec(key, 1..=3).prop_map(|keys| {
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| k.with_kid(KeyId::new(format!("k{i}")).unwrap()))
            .collect();
        JwkSet::new(keys).unwrap()
    })
}

/// A document as a broken issuer might serve it.
fn arb_served(valid: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Served> {
    let valid = valid.boxed();
    prop_oneof![
        3 => (valid.clone(), proptest::collection::vec(arb_mutation(), 1..4))
            .prop_map(|(d, m)| Served::Json(Raw(stay_local(mutate(d, &m)).to_string().into_bytes()))),
        2 => (valid, proptest::collection::vec(arb_byte_edit(), 1..3))
            .prop_map(|(d, e)| Served::Json(Raw(edit_bytes(d.to_string().into_bytes(), &e)))),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| Served::Json(Raw(b))),
        1 => arb_json().prop_map(|v| Served::Json(Raw(stay_local(v).to_string().into_bytes()))),
    ]
}

fn check_report(report: &Report) {
    assert!(!report.checks.is_empty());
    for c in &report.checks {
        assert!(!c.detail.is_empty(), "{}: no detail", c.name);
        assert!(
            c.detail.len() <= MAX_DETAIL && c.name.len() <= MAX_DETAIL,
            "{} / {} bytes: {}…",
            c.name.len(),
            c.detail.len(),
            c.detail.chars().take(200).collect::<String>()
        );
    }
    // Entra reads at most 100 keys; the report lists no more than that.
    assert!(report.checks.len() < 130, "{} checks", report.checks.len());
    let table = report.table();
    assert!(table.len() < 200 * 1024, "table of {} bytes", table.len());
    assert_eq!(
        report.passed(),
        report.checks.iter().all(|c| c.status != Status::Fail)
    );
    serde_json::to_string(report).unwrap();
}

// Each case is a whole doctor run over HTTP (about 30 ms in a debug
// build, most of it building the HTTPS client), hence fewer cases than the
// pure parsers get; those parsers have their own properties in shared.
proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn a_good_issuer_passes(set in arb_key_set()) {
        let discovery = Served::Json(Raw(good_discovery().to_string().into_bytes()));
        let jwks = Served::Json(Raw(set.to_json().into_bytes()));
        let report = doctor(discovery, jwks, Duration::from_secs(5));
        check_report(&report);
        prop_assert!(report.passed(), "{}", report.table());
        for key in set.keys() {
            let row = format!("key {}", key.kid());
            prop_assert!(report.checks.iter().any(|c| c.name == row && c.status == Status::Pass));
        }
    }

}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn a_broken_discovery_document_fails_clearly(
        served in arb_served(Just(()).prop_map(|_| good_discovery())),
        huge in maybe_huge(),
    ) {
        let served = match (served, huge) {
            (_, Some(h)) => {
                let mut doc = good_discovery();
                doc["issuer"] = Value::String(h.text());
                Served::Json(Raw(doc.to_string().into_bytes()))
            }
            (s, None) => s,
        };
        let report = doctor(served.clone(), good_key_set(), Duration::from_secs(5));
        check_report(&report);
        // Unless it still names this issuer, the report fails and says why.
        if let Served::Json(Raw(bytes)) = &served {
            let names_the_issuer = DiscoveryDocument::from_json(bytes).is_ok_and(|d| d.issuer == ISSUER.base);
            if !names_the_issuer {
                prop_assert!(!report.passed(), "{}", report.table());
            }
        }
    }

    #[test]
    fn a_broken_key_set_fails_clearly(
        served in arb_served(arb_key_set().prop_map(|s| serde_json::from_str::<Value>(&s.to_json()).unwrap())),
    ) {
        let discovery = Served::Json(Raw(good_discovery().to_string().into_bytes()));
        let report = doctor(discovery, served.clone(), Duration::from_secs(5));
        check_report(&report);
        if let Served::Json(Raw(bytes)) = &served
            && JwkSet::from_json(bytes).map_or(true, |s| s.keys().is_empty() || s.find("k0").is_none())
        {
            prop_assert!(!report.passed(), "{}", report.table());
        }
    }

}

proptest! {
    #![proptest_config(config(16))]

    /// Many keys, long kids: the report stays bounded.
    #[test]
    fn many_keys_and_long_kids(count in 90usize..400, kid_len in 1usize..3000) {
        let key = serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB"});
        let keys: Vec<Value> = (0..count)
            .map(|i| {
                let mut k = key.clone();
                k["kid"] = Value::String(format!("{i}{}", "x".repeat(kid_len)));
                k
            })
            .collect();
        let jwks = Served::Json(Raw(serde_json::json!({ "keys": keys }).to_string().into_bytes()));
        let discovery = Served::Json(Raw(good_discovery().to_string().into_bytes()));
        let report = doctor(discovery, jwks, Duration::from_secs(10));
        check_report(&report);
        prop_assert!(!report.passed());
    }
}

/// A 50 MB document, with its length declared or streamed without one, is
/// refused by the size cap after the first megabyte, not read whole and not
/// waited out to the timeout.
#[test]
fn a_huge_document_is_refused_by_a_size_cap() {
    let fifty_mb = 50 << 20;
    let cases = [
        (
            Served::Json(Raw(vec![b' '; fifty_mb])),
            "discovery document",
        ),
        (Served::Endless { chunks: 800 }, "discovery document"),
    ];
    for (served, what) in cases {
        let started = Instant::now();
        let jwks = Served::Json(Raw(b"{}".to_vec()));
        let report = doctor(served, jwks, Duration::from_secs(30));
        let elapsed = started.elapsed();
        check_report(&report);
        assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
        let failed = report
            .checks
            .iter()
            .find(|c| c.status == Status::Fail)
            .unwrap_or_else(|| panic!("no FAIL: {}", report.table()));
        assert!(failed.name.starts_with(what), "{}", report.table());
        assert!(failed.detail.contains("larger than"), "{}", report.table());
    }
    // The key set too.
    let discovery = Served::Json(Raw(good_discovery().to_string().into_bytes()));
    let report = doctor(
        discovery,
        Served::Endless { chunks: 800 },
        Duration::from_secs(30),
    );
    let failed = report
        .checks
        .iter()
        .find(|c| c.status == Status::Fail)
        .unwrap();
    assert!(failed.name.starts_with("key set"), "{}", report.table());
    assert!(failed.detail.contains("larger than"), "{}", report.table());
}
