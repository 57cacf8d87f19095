//! Properties of what the broker reads from Entra's token endpoint (or from
//! whatever answers in its place): the success document, error documents,
//! `Retry-After`, and whole HTTP answers served from a local socket to the
//! real `EntraClient`. Nothing panics, every refusal is a typed error with a
//! bounded message that never carries the token, the reading is bounded in
//! memory, and a valid document round-trips.

#[path = "../../shared/tests/support/mod.rs"]
mod support;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use aws2azure_shared::assertion::{ClientAssertion, JwsHeader, SigningInput};
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::KeyId;
use aws2azure_shared::profile::Subject;
use aws2azure_signer::Error;
use aws2azure_signer::entra::{
    EntraClient, ExchangeRequest, MAX_RESPONSE_BYTES, MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME_SECS,
    TokenExchange, parse_error, parse_retry_after, parse_success,
};
use http::StatusCode;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{
    Raw, arb_byte_edit, arb_json, arb_mutation, arb_text, assert_clear_error, config, edit_bytes,
    maybe_huge, mutate,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A token value nobody would write by accident, to look for in messages.
fn arb_secret() -> impl Strategy<Value = String> {
    "SECRET[A-Za-z0-9]{24}"
}

fn arb_success(secret: String) -> impl Strategy<Value = Value> {
    (
        1u64..=100_000,
        any::<bool>(),
        proptest::option::of(0u64..100_000),
        proptest::option::of(prop::sample::select(vec!["Bearer", "bearer", "pop"])),
    )
        .prop_map(move |(expires, as_text, refresh, token_type)| {
            let number = |n: u64| if as_text { json!(n.to_string()) } else { json!(n) };
            let mut doc = json!({"access_token": secret, "expires_in": number(expires), "ext_expires_in": expires});
            if let Some(r) = refresh {
                doc["refresh_in"] = number(r);
            }
            if let Some(t) = token_type {
                doc["token_type"] = json!(t);
            }
            doc
        })
}

fn arb_error_document() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["invalid_client", "invalid_request", "temporarily_unavailable", "invalid_scope"]),
        prop::sample::select(vec![70021u32, 50166, 90061, 700211, 700212, 700213, 7000215, 0]),
        arb_text(),
        "[a-f0-9-]{0,36}",
    )
        .prop_map(|(error, code, text, correlation)| {
            json!({"error": error, "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: t\r\nCorrelation ID: {correlation}"),
                   "error_codes": [code], "timestamp": "2026-01-01 00:00:00Z", "trace_id": "t", "correlation_id": correlation})
        })
}

fn check_success_parse(body: &[u8], secret: &str) {
    match parse_success(body) {
        Ok(token) => {
            assert!(!token.access_token.expose().is_empty());
            assert!((1..=MAX_TOKEN_LIFETIME_SECS).contains(&token.expires_in));
            assert!(
                token
                    .refresh_in
                    .is_none_or(|r| r > 0 && r < token.expires_in)
            );
        }
        Err(e) => {
            assert!(matches!(e, Error::EntraResponse(_)), "{e:?}");
            let message = assert_clear_error(&e);
            assert!(
                !message.contains(&secret[..16]),
                "the token leaked: {message}"
            );
            assert_eq!(e.api_status().0, StatusCode::BAD_GATEWAY);
        }
    }
}

fn check_error_parse(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    let e = parse_error(status, body, retry_after);
    let Error::Entra {
        status: s,
        error,
        description,
        correlation_id,
        retry_after: r,
        ..
    } = &e
    else {
        panic!("not an Entra error: {e:?}");
    };
    assert_eq!(*s, status);
    assert_eq!(*r, retry_after);
    assert!(!error.is_empty() && error.chars().count() <= 65);
    assert!(!description.is_empty() && description.chars().count() <= 501);
    assert!(!description.contains('\n'));
    assert!(
        correlation_id
            .as_ref()
            .is_none_or(|c| c.chars().count() <= 65)
    );
    assert_clear_error(&e);
    let (api, _) = e.api_status();
    assert!(
        [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE].contains(&api),
        "{api}"
    );
    if status == 429 || status >= 500 {
        assert!(e.is_retryable() || e.aadsts().is_some_and(|c| (700211..=700213).contains(&c)));
    }
    e
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn success_documents_round_trip(
        (secret, doc) in arb_secret().prop_flat_map(|s| (Just(s.clone()), arb_success(s))),
    ) {
        let token = parse_success(doc.to_string().as_bytes()).unwrap();
        prop_assert_eq!(token.access_token.expose(), secret.as_str());
        let number = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
        prop_assert_eq!(token.expires_in, number(&doc["expires_in"]).unwrap().min(MAX_TOKEN_LIFETIME_SECS));
        prop_assert_eq!(token.token_type.as_str(), doc["token_type"].as_str().unwrap_or("Bearer"));
    }

    #[test]
    fn success_documents_mutated(
        (secret, doc) in arb_secret().prop_flat_map(|s| (Just(s.clone()), arb_success(s))),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        edits in proptest::collection::vec(arb_byte_edit(), 1..3),
    ) {
        check_success_parse(mutate(doc.clone(), &mutations).to_string().as_bytes(), &secret);
        check_success_parse(&edit_bytes(doc.to_string().into_bytes(), &edits), &secret);
        // The token where a document, a number or a list was expected.
        for misplaced in [json!(secret), json!({"access_token": {"value": secret}}), json!({"access_token": "x", "expires_in": secret}), json!({"access_token": "x", "expires_in": 1, "refresh_in": [secret]})] {
            check_success_parse(misplaced.to_string().as_bytes(), &secret);
        }
    }

    #[test]
    fn success_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..256), doc in arb_json()) {
        check_success_parse(&bytes, "SECRET-not-in-these-inputs-at-all");
        check_success_parse(doc.to_string().as_bytes(), "SECRET-not-in-these-inputs-at-all");
    }

    #[test]
    fn error_documents(
        status in prop_oneof![Just(400u16), Just(401), Just(429), Just(500), Just(503), 300u16..600],
        doc in arb_error_document(),
        mutations in proptest::collection::vec(arb_mutation(), 0..4),
        edits in proptest::collection::vec(arb_byte_edit(), 0..2),
        wait in proptest::option::of(0u64..5000),
    ) {
        let retry_after = wait.map(Duration::from_secs);
        let e = check_error_parse(status, doc.to_string().as_bytes(), retry_after);
        prop_assert_eq!(e.aadsts(), doc["error_codes"][0].as_u64().map(|c| c as u32));
        let body = edit_bytes(mutate(doc, &mutations).to_string().into_bytes(), &edits);
        check_error_parse(status, &body, retry_after);
    }

    #[test]
    fn error_arbitrary_input(status in 0u16..1000, bytes in proptest::collection::vec(any::<u8>(), 0..256), doc in arb_json(), huge in maybe_huge()) {
        check_error_parse(status, &bytes, None);
        check_error_parse(status, doc.to_string().as_bytes(), None);
        if let Some(h) = huge {
            let text = h.text();
            check_error_parse(status, json!({"error": text, "error_description": text, "correlation_id": text}).to_string().as_bytes(), None);
        }
    }

    #[test]
    fn retry_after_is_bounded(value in prop_oneof![
        "[0-9]{1,30}",
        " ?[0-9]{1,6} ?",
        arb_text(),
        (0i64..4_000_000_000).prop_map(|s| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64))),
        "[+-][0-9]{1,5}",
    ]) {
        let parsed = parse_retry_after(&value);
        prop_assert!(parsed.is_none_or(|d| d <= MAX_RETRY_AFTER));
        let trimmed = value.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            // Any number of seconds is honoured up to the cap, however large.
            let expected = trimmed.parse::<u64>().map_or(MAX_RETRY_AFTER, |s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            prop_assert_eq!(parsed, Some(expected));
        }
    }
}

/// Found by `retry_after_is_bounded`: delay-seconds beyond `u64` were
/// ignored (`None`) instead of being capped like any other long wait.
#[test]
fn a_huge_retry_after_is_capped_not_ignored() {
    assert_eq!(
        parse_retry_after("99999999999999999999999"),
        Some(MAX_RETRY_AFTER)
    );
}

/// Found by `success_documents_mutated`: a string where the document was
/// expected (a token, say) was quoted whole in the error, which the broker
/// logs.
#[test]
fn a_string_in_place_of_the_document_is_not_echoed() {
    let secret = format!("SECRET{}", "t".repeat(100_000));
    for body in [
        json!(secret),
        json!([secret]),
        json!({"access_token": 1, "token_type": secret}),
    ] {
        let err = parse_success(body.to_string().as_bytes()).unwrap_err();
        let message = assert_clear_error(&err);
        assert!(!message.contains("SECRET"), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
    }
}

// ------------------------------------- whole answers over a real socket

/// One HTTP answer, written raw so that anything can be sent.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    retry_after: Option<Raw>,
    body: Body,
    /// A `Content-Length` that does not match the body.
    wrong_length: Option<usize>,
}

#[derive(Clone, Debug)]
enum Body {
    Bytes(Raw),
    /// Chunked, `chunks` × 64 KiB of `x`, without a length.
    Stream {
        chunks: usize,
    },
}

/// A local token endpoint that answers each request with `answer`.
async fn serve(answer: Arc<Mutex<Answer>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.lock().unwrap().clone();
            tokio::spawn(async move {
                // Read the request head and its form body.
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let mut head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nConnection: close\r\n",
                    answer.status
                )
                .into_bytes();
                if let Some(Raw(value)) = &answer.retry_after {
                    head.extend_from_slice(b"Retry-After: ");
                    head.extend_from_slice(value);
                    head.extend_from_slice(b"\r\n");
                }
                match &answer.body {
                    Body::Bytes(Raw(body)) => {
                        let length = answer.wrong_length.unwrap_or(body.len());
                        head.extend_from_slice(
                            format!("Content-Length: {length}\r\n\r\n").as_bytes(),
                        );
                        let _ = socket.write_all(&head).await;
                        let _ = socket.write_all(body).await;
                    }
                    Body::Stream { chunks } => {
                        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                        let _ = socket.write_all(&head).await;
                        let chunk = [b"10000\r\n".as_slice(), &[b'x'; 0x10000], b"\r\n"].concat();
                        for _ in 0..*chunks {
                            if socket.write_all(&chunk).await.is_err() {
                                return; // the client stopped reading
                            }
                        }
                        let _ = socket.write_all(b"0\r\n\r\n").await;
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

fn assertion() -> ClientAssertion {
    let issuer = Issuer::parse("https://issuer.example.com").unwrap();
    let subject = Subject::parse("aws2azure:props").unwrap();
    let claims = aws2azure_shared::assertion::AssertionBuilder::new(&issuer, &subject)
        .build(1_800_000_000, "jti-1")
        .unwrap();
    let header = JwsHeader::rs256(KeyId::new("kid").unwrap());
    SigningInput::new(&header, &claims)
        .unwrap()
        .into_assertion(&[0u8; 256])
}

struct Endpoint {
    runtime: tokio::runtime::Runtime,
    answer: Arc<Mutex<Answer>>,
    url: String,
    client: EntraClient,
    assertion: ClientAssertion,
}

impl Endpoint {
    fn start(attempt_timeout: Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let answer = Arc::new(Mutex::new(Answer {
            status: 200,
            retry_after: None,
            body: Body::Bytes(Raw(Vec::new())),
            wrong_length: None,
        }));
        let addr = runtime.block_on(serve(answer.clone()));
        Self {
            runtime,
            answer,
            url: format!("http://{addr}/tenant/oauth2/v2.0/token"),
            client: EntraClient::new(attempt_timeout).unwrap(),
            assertion: assertion(),
        }
    }

    fn exchange(&self, answer: Answer) -> Result<aws2azure_signer::entra::IssuedToken, Error> {
        *self.answer.lock().unwrap() = answer;
        let request = ExchangeRequest {
            token_endpoint: &self.url,
            client_id: "00000000-1111-2222-3333-444444444444",
            scope: "https://graph.microsoft.com/.default",
            assertion: &self.assertion,
        };
        self.runtime.block_on(self.client.exchange(&request))
    }
}

fn arb_answer(secret: String) -> impl Strategy<Value = Answer> {
    let body = prop_oneof![
        3 => arb_success(secret.clone()).prop_map(|d| d.to_string().into_bytes()),
        2 => arb_error_document().prop_map(|d| d.to_string().into_bytes()),
        3 => (arb_success(secret), proptest::collection::vec(arb_mutation(), 1..3), proptest::collection::vec(arb_byte_edit(), 0..2))
            .prop_map(|(d, m, e)| edit_bytes(mutate(d, &m).to_string().into_bytes(), &e)),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ];
    let retry_after = proptest::option::of(
        prop_oneof![
            "[0-9]{1,25}".prop_map(String::into_bytes),
            Just(b"Wed, 21 Oct 2099 07:28:00 GMT".to_vec()),
            "[ -~]{0,40}".prop_map(String::into_bytes),
            // Bytes that are not UTF-8 text (obs-text), never CR or LF.
            proptest::collection::vec(0x80u8..=0xff, 1..8),
        ]
        .prop_map(Raw),
    );
    (
        prop_oneof![
            Just(200u16),
            Just(400),
            Just(401),
            Just(429),
            Just(500),
            Just(503),
            200u16..600
        ],
        retry_after,
        body,
        proptest::option::weighted(0.1, 0usize..400),
    )
        .prop_map(|(status, retry_after, body, wrong_length)| Answer {
            status,
            retry_after,
            body: Body::Bytes(Raw(body)),
            wrong_length,
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// Whatever the token endpoint answers, the client returns a token or a
    /// typed, bounded error without the token in it, quickly.
    #[test]
    fn the_client_reads_any_answer(
        (secret, answer) in arb_secret().prop_flat_map(|s| (Just(s.clone()), arb_answer(s))),
    ) {
        static ENDPOINT: LazyLock<Endpoint> = LazyLock::new(|| Endpoint::start(Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let result = ENDPOINT.exchange(answer.clone());
        prop_assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
        let success = (200..300).contains(&answer.status);
        match result {
            Ok(token) => {
                prop_assert!(success);
                prop_assert!(!token.access_token.expose().is_empty());
                prop_assert!(token.expires_in <= MAX_TOKEN_LIFETIME_SECS);
            }
            Err(e) => {
                let message = assert_clear_error(&e);
                prop_assert!(!message.contains(&secret[..16]), "the token leaked: {}", message);
                let (status, _) = e.api_status();
                prop_assert!([502, 503, 504].contains(&status.as_u16()), "{}", status);
                if let Error::Entra { status, retry_after, .. } = &e {
                    prop_assert_eq!(*status, answer.status);
                    let sent = answer.retry_after.as_ref().and_then(|Raw(v)| std::str::from_utf8(v).ok());
                    prop_assert_eq!(*retry_after, sent.and_then(parse_retry_after));
                } else if answer.wrong_length.is_none() {
                    // A well-framed answer is read: only a 2xx can fail to parse.
                    prop_assert!(success, "{:?}", e);
                    prop_assert!(matches!(e, Error::EntraResponse(_)), "{:?}", e);
                }
            }
        }
    }
}

/// A token endpoint (or something in its place) sending an endless or huge
/// body: the client stops at `MAX_RESPONSE_BYTES`, whether the length is
/// declared or not, and long before its timeout.
#[test]
fn a_huge_answer_is_refused_by_a_size_cap_not_read_whole() {
    let endpoint = Endpoint::start(Duration::from_secs(20));
    // 50 MiB, streamed without a length.
    let streamed = |status| Answer {
        status,
        retry_after: None,
        body: Body::Stream { chunks: 800 },
        wrong_length: None,
    };
    // 50 MiB with its length declared up front.
    let declared = |status| Answer {
        status,
        retry_after: Some(Raw(b"7".to_vec())),
        body: Body::Bytes(Raw(vec![b' '; 50 << 20])),
        wrong_length: None,
    };
    for answer in [streamed(200), declared(200)] {
        let started = std::time::Instant::now();
        let err = endpoint.exchange(answer).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let message = assert_clear_error(&err);
        assert!(matches!(err, Error::EntraResponse(_)), "{err:?}");
        assert!(
            message.contains(&MAX_RESPONSE_BYTES.to_string()),
            "{message}"
        );
    }
    // An error status keeps its meaning (retry, Retry-After) with a huge body.
    for answer in [streamed(503), declared(503)] {
        let started = std::time::Instant::now();
        let err = endpoint.exchange(answer).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, Error::Entra { status: 503, .. }), "{err:?}");
        assert!(err.is_retryable());
        assert_clear_error(&err);
    }
}
