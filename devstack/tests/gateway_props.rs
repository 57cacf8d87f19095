//! Properties of the local SigV4 gateway's verifier on what a client can
//! send: requests signed by `aws-sigv4` (the signer every AWS SDK uses)
//! verify; any tampering with what was signed is refused; any header,
//! `Authorization` value, date, method or URI, however malformed, gets a
//! refusal rather than a panic, without the secret key or session token in
//! it and without amplifying the input.

#[path = "../../shared/tests/support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws2azure_devstack::gateway::{Principal, PrincipalLookup, canonical_request, verify};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use support::{arb_text, config};

const REGION: &str = "us-east-1";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjSESSIONTOKENVALUE0123456789";

struct Principals;

impl Principals {
    fn all() -> [Principal; 2] {
        [
            Principal {
                access_key_id: "AKIDPERMANENT".into(),
                secret_access_key: SECRET.into(),
                session_token: None,
                arn: "arn:aws:iam::111122223333:user/alice".into(),
                caller: "AIDAEXAMPLE".into(),
                account_id: "111122223333".into(),
            },
            Principal {
                access_key_id: "ASIATEMPORARY".into(),
                secret_access_key: SECRET.into(),
                session_token: Some(SESSION_TOKEN.into()),
                arn: "arn:aws:sts::111122223333:assumed-role/app/i-1".into(),
                caller: "AROAEXAMPLE:i-1".into(),
                account_id: "111122223333".into(),
            },
        ]
    }
}

impl PrincipalLookup for Principals {
    fn principal(&self, access_key_id: &str) -> Option<Principal> {
        Self::all()
            .into_iter()
            .find(|p| p.access_key_id == access_key_id)
    }
    fn region(&self) -> &str {
        REGION
    }
}

/// A request as a client builds it, before signing.
#[derive(Clone, Debug)]
struct Unsigned {
    temporary: bool,
    method: &'static str,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// Seconds before "now" the request was signed (within the skew).
    age: u64,
}

fn arb_unsigned() -> impl Strategy<Value = Unsigned> {
    let segment = prop_oneof![
        3 => "[A-Za-z0-9._-]{1,20}",
        1 => "\\PC{1,12}",
    ];
    let pair = ("[a-z_]{1,12}", prop_oneof!["[A-Za-z0-9]{0,8}", "\\PC{0,8}"]);
    let header = (
        prop::sample::select(vec!["user-agent", "x-custom", "accept", "x-amz-meta-a"]),
        "[ -~]{0,30}",
    )
        .prop_map(|(n, v)| (n.to_string(), v));
    (
        any::<bool>(),
        prop::sample::select(vec!["GET", "POST", "DELETE"]),
        proptest::collection::vec(segment, 1..4),
        proptest::collection::vec(pair, 0..4),
        proptest::collection::vec(header, 0..3),
        0u64..240,
    )
        .prop_map(|(temporary, method, segments, query, headers, age)| {
            let path = segments
                .iter()
                .map(|s| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string())
                .collect::<Vec<_>>()
                .join("/");
            Unsigned {
                temporary,
                method,
                path: format!("/prod/token/{path}"),
                query,
                headers,
                age,
            }
        })
}

/// Signs with aws-sigv4 as an SDK would: the headers and URI the gateway
/// then sees.
fn signed(request: &Unsigned, now: SystemTime) -> (Method, Uri, HeaderMap) {
    let principal = &Principals::all()[usize::from(request.temporary)];
    let query: Vec<String> = request
        .query
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect();
    let url = if query.is_empty() {
        format!("https://api.example.com{}", request.path)
    } else {
        format!(
            "https://api.example.com{}?{}",
            request.path,
            query.join("&")
        )
    };
    let credentials = Credentials::new(
        &principal.access_key_id,
        &principal.secret_access_key,
        principal.session_token.clone(),
        None,
        "props",
    );
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("execute-api")
        .time(now - Duration::from_secs(request.age))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut headers: Vec<(&str, &str)> = vec![("host", "api.example.com")];
    headers.extend(
        request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    let signable = SignableRequest::new(
        request.method,
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut http_request = http::Request::builder().method(request.method).uri(&url);
    for (n, v) in &headers {
        http_request = http_request.header(*n, *v);
    }
    let mut http_request = http_request.body(()).unwrap();
    instructions.apply_to_request_http1x(&mut http_request);
    let (parts, ()) = http_request.into_parts();
    // The gateway sees the origin-form URI of the request line.
    let uri: Uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap();
    (parts.method, uri, parts.headers)
}

/// Every refusal: 403 or 400, a message, no credential, no amplification.
fn check_refusal(
    result: &Result<Principal, aws2azure_devstack::gateway::Refusal>,
    uri: &Uri,
    headers: &HeaderMap,
) {
    let Err(refusal) = result else {
        return;
    };
    assert!(
        [StatusCode::FORBIDDEN, StatusCode::BAD_REQUEST].contains(&refusal.status),
        "{:?}",
        refusal.status
    );
    assert!(!refusal.message.is_empty() && !refusal.error_type.is_empty());
    assert!(!refusal.message.contains(SECRET), "the secret key leaked");
    assert!(
        !refusal.message.contains(SESSION_TOKEN),
        "the session token leaked: {}",
        refusal.message
    );
    let input: usize = uri.to_string().len()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>();
    assert!(
        refusal.message.len() <= 4 * input + 2048,
        "a refusal of {} bytes for {input} bytes of request",
        refusal.message.len()
    );
}

/// One change to a signed request.
#[derive(Clone, Debug)]
enum Tamper {
    Header(String, Vec<u8>),
    Remove(usize),
    Authorization(String),
    AuthorizationBytes(Vec<u8>),
    Date(String),
    Method(String),
    Uri(String),
    Body(Vec<u8>),
}

fn arb_tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        2 => (
            prop_oneof![
                prop::sample::select(vec!["host", "x-amz-date", "x-amz-security-token", "user-agent", "x-custom", "authorization", "x-amz-content-sha256"]).prop_map(str::to_string),
                "[a-z-]{1,20}",
            ],
            proptest::collection::vec(any::<u8>(), 0..40),
        ).prop_map(|(n, v)| Tamper::Header(n, v)),
        1 => any::<usize>().prop_map(Tamper::Remove),
        3 => prop_oneof![
            "AWS4-HMAC-SHA256 [ -~]{0,200}",
            "AWS4-HMAC-SHA256 Credential=(AKIDPERMANENT|ASIATEMPORARY|X)(/[0-9a-z_-]{0,12}){0,7}, SignedHeaders=[a-z;-]{0,40}, Signature=[0-9a-f]{0,70}",
            "AWS4-HMAC-SHA256 Credential=AKIDPERMANENT/2[0-9]{7}/us-east-1/execute-api/aws4_request, SignedHeaders=(host|host;x-amz-date|x-amz-date;host|;|host;host|host;x-amz-date;x-amz-date|HOST), Signature=[0-9a-f]{64}",
            arb_text(),
        ].prop_map(Tamper::Authorization),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Tamper::AuthorizationBytes),
        2 => prop_oneof![
            "[0-9]{8}T[0-9]{6}Z",
            "(0000|9999|1970|2026|[+-][0-9]{4,6})[0-9]{4}T[0-9]{6}Z",
            "[ -~]{0,20}",
        ].prop_map(Tamper::Date),
        1 => "[A-Z]{1,8}".prop_map(Tamper::Method),
        2 => prop_oneof![
            "(/[a-zA-Z0-9%._~-]{0,10}){0,6}(\\?[a-zA-Z0-9%=&+._~-]{0,20})?",
            "/prod/token/(\\.\\.|\\.|%2F|%2E|%00|%ZZ|%|//){1,4}[a-z]{0,5}",
        ].prop_map(Tamper::Uri),
        1 => proptest::collection::vec(any::<u8>(), 1..20).prop_map(Tamper::Body),
    ]
}

fn tamper(
    t: &Tamper,
    method: &mut Method,
    uri: &mut Uri,
    headers: &mut HeaderMap,
    body: &mut Vec<u8>,
) {
    match t {
        Tamper::Header(name, value) => {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.insert(n, v);
            }
        }
        Tamper::Remove(i) => {
            let names: Vec<HeaderName> = headers.keys().cloned().collect();
            if !names.is_empty() {
                headers.remove(&names[i % names.len()]);
            }
        }
        Tamper::Authorization(text) => {
            if let Ok(v) = HeaderValue::from_str(text) {
                headers.insert("authorization", v);
            }
        }
        Tamper::AuthorizationBytes(bytes) => {
            if let Ok(v) = HeaderValue::from_bytes(bytes) {
                headers.insert("authorization", v);
            }
        }
        Tamper::Date(text) => {
            if let Ok(v) = HeaderValue::from_str(text) {
                headers.insert("x-amz-date", v);
            }
        }
        Tamper::Method(m) => {
            if let Ok(m) = Method::from_bytes(m.as_bytes()) {
                *method = m;
            }
        }
        Tamper::Uri(text) => {
            if let Ok(u) = text.parse() {
                *uri = u;
            }
        }
        Tamper::Body(b) => *body = b.clone(),
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// What aws-sigv4 signs, the gateway accepts as that principal.
    #[test]
    fn sdk_signed_requests_verify(request in arb_unsigned()) {
        let now = SystemTime::now();
        let (method, uri, headers) = signed(&request, now);
        let result = verify(&Principals, &method, uri.path(), uri.query().unwrap_or(""), &headers, b"", now);
        check_refusal(&result, &uri, &headers);
        let principal = result.map_err(|r| format!("{}: {}", r.error_type, r.message));
        let principal = principal.map_err(TestCaseError::fail)?;
        prop_assert_eq!(principal.access_key_id, Principals::all()[usize::from(request.temporary)].access_key_id.clone());
    }

    /// Tampered requests are refused (unless the change leaves the
    /// canonical request as it was), and nothing panics.
    #[test]
    fn tampered_requests_are_refused(
        request in arb_unsigned(),
        tampers in proptest::collection::vec(arb_tamper(), 1..4),
    ) {
        let now = SystemTime::now();
        let (mut method, mut uri, mut headers) = signed(&request, now);
        let mut body = Vec::new();
        let signed_headers: Vec<String> = headers["authorization"]
            .to_str()
            .unwrap()
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .split(';')
            .map(str::to_string)
            .collect();
        let signed_refs: Vec<&str> = signed_headers.iter().map(String::as_str).collect();
        let original = canonical_request(&method, uri.path(), uri.query().unwrap_or(""), &headers, &signed_refs, &body);
        let (original_auth, original_token) = (headers["authorization"].clone(), headers.get("x-amz-security-token").cloned());
        for t in &tampers {
            tamper(t, &mut method, &mut uri, &mut headers, &mut body);
        }
        let result = verify(&Principals, &method, uri.path(), uri.query().unwrap_or(""), &headers, &body, now);
        check_refusal(&result, &uri, &headers);
        let token = headers.get("x-amz-security-token");
        let unchanged = headers.get("authorization") == Some(&original_auth)
            && token == original_token.as_ref()
            && canonical_request(&method, uri.path(), uri.query().unwrap_or(""), &headers, &signed_refs, &body) == original;
        if !unchanged {
            prop_assert!(result.is_err(), "a tampered request verified: {:?}", tampers);
        }
        // The canonical form is total: any request has one or names a
        // missing header.
        let _ = canonical_request(&method, uri.path(), uri.query().unwrap_or(""), &headers, &["host", "x-amz-date", "nonexistent", "UPPER", ""], &body);
    }
}

/// A request signed at the edge of the skew window, and just outside it.
#[test]
fn the_skew_window_is_five_minutes_either_way() {
    let request = Unsigned {
        temporary: false,
        method: "GET",
        path: "/prod/token/graph".into(),
        query: vec![("min_validity".into(), "300".into())],
        headers: vec![],
        age: 0,
    };
    let signed_at = SystemTime::now();
    let (method, uri, headers) = signed(&request, signed_at);
    for (offset, ok) in [(-299i64, true), (299, true), (-301, false), (301, false)] {
        let now = if offset < 0 {
            signed_at - Duration::from_secs(offset.unsigned_abs())
        } else {
            signed_at + Duration::from_secs(offset as u64)
        };
        let result = verify(
            &Principals,
            &method,
            uri.path(),
            uri.query().unwrap_or(""),
            &headers,
            b"",
            now,
        );
        assert_eq!(result.is_ok(), ok, "{offset}: {result:?}");
    }
}

/// Found by `tampered_requests_are_refused`: permanent credentials, a
/// correctly signed request, and an unsigned `X-Amz-Security-Token` whose
/// value is not visible ASCII (`\x80`) verify, because `verify` reads the
/// header with `to_str().ok()` and so saw no token; API Gateway refuses any
/// security token it cannot validate.
#[test]
fn a_token_that_is_not_text_is_refused() {
    let request = Unsigned {
        temporary: false,
        method: "GET",
        path: "/prod/token/graph".into(),
        query: vec![],
        headers: vec![],
        age: 0,
    };
    let now = SystemTime::now();
    let (method, uri, mut headers) = signed(&request, now);
    let verifies = |headers: &_| {
        verify(
            &Principals,
            &method,
            uri.path(),
            uri.query().unwrap_or(""),
            headers,
            b"",
            now,
        )
        .is_ok()
    };
    assert!(verifies(&headers));
    headers.insert(
        "x-amz-security-token",
        HeaderValue::from_bytes(b"\x80").unwrap(),
    );
    assert!(!verifies(&headers));
}
