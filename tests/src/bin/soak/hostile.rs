//! What hostile callers send, and the one answer each must get: the API
//! refuses with a clear client error (API Gateway's 403s, the signer's
//! 400/404), never a 5xx, never a token, whatever Entra is doing.

use std::time::Duration;

use crate::load::{Answer, Target, error_summary};

/// How a hostile request is signed.
pub enum Signing {
    Valid,
    Unsigned,
    WrongSecret,
    UnknownKey,
    NoSessionToken,
    /// Signed this long ago (API Gateway allows 5 minutes either way).
    SignedAgo(Duration),
    /// Signed this long in the future.
    SignedAhead(Duration),
    Region(&'static str),
    Service(&'static str),
    /// Signed for another path and query than the one sent.
    SignedFor(String),
}

pub struct Request {
    pub method: &'static str,
    /// Path and query, sent byte for byte.
    pub path: String,
    pub signing: Signing,
}

/// The answer a case must get.
pub enum Expect {
    /// From the token API: status and `error`.
    Api(u16, &'static str),
    /// From the gateway: status and `x-amzn-ErrorType`.
    Gateway(u16, &'static str),
    /// From the HTTP server itself, before any of our code.
    Http(u16),
}

pub struct Case {
    pub name: &'static str,
    pub build: fn(&Target) -> Request,
    pub expect: Expect,
}

fn any_profile(t: &Target) -> &str {
    &t.profiles[fastrand::usize(..t.profiles.len())].name
}

fn get(t: &Target, segment: &str, query: &str) -> Request {
    signed("GET", format!("{}/token/{segment}{query}", t.stage_path))
}

fn signed(method: &'static str, path: String) -> Request {
    Request {
        method,
        path,
        signing: Signing::Valid,
    }
}

fn with(mut request: Request, signing: Signing) -> Request {
    request.signing = signing;
    request
}

fn valid(t: &Target) -> Request {
    get(t, any_profile(t), "?min_validity=0")
}

fn method(t: &Target, method: &'static str) -> Request {
    signed(method, format!("{}/token/{}", t.stage_path, any_profile(t)))
}

const BAD_REQUEST: Expect = Expect::Api(400, "invalid_request");
const UNKNOWN: Expect = Expect::Api(404, "unknown_profile");
const NO_ROUTE: Expect = Expect::Gateway(403, "MissingAuthenticationTokenException");
const BAD_SIGNATURE: Expect = Expect::Gateway(403, "InvalidSignatureException");
const BAD_TOKEN: Expect = Expect::Gateway(403, "UnrecognizedClientException");

macro_rules! case {
    ($name:literal, $build:expr, $expect:expr) => {
        Case {
            name: $name,
            build: $build,
            expect: $expect,
        }
    };
}

pub static CASES: &[Case] = &[
    // Profiles: unknown, or not a profile name at all.
    case!(
        "unknown_profile",
        |t| get(t, &format!("nope-{}", fastrand::u16(..)), ""),
        UNKNOWN
    ),
    case!(
        "wrong_case",
        |t| get(t, &any_profile(t).to_uppercase(), ""),
        UNKNOWN
    ),
    case!(
        "dots_inside",
        |t| get(t, &format!("{}..", any_profile(t)), ""),
        UNKNOWN
    ),
    case!(
        "encoded_slash",
        |t| get(t, &format!("{}%2Fx", any_profile(t)), ""),
        BAD_REQUEST
    ),
    case!("encoded_dot_dot", |t| get(t, "%2E%2E", ""), BAD_REQUEST),
    case!(
        "encoded_nul",
        |t| get(t, &format!("{}%00", any_profile(t)), ""),
        BAD_REQUEST
    ),
    case!(
        "encoded_controls",
        |t| get(t, "soak%01%1B%5B31m%7F", ""),
        BAD_REQUEST
    ),
    case!(
        "encoded_crlf",
        |t| get(t, "soak%0D%0Ax-injected:%201", ""),
        BAD_REQUEST
    ),
    case!(
        "encoded_unicode",
        |t| get(t, "s%C3%B8ak-00", ""),
        BAD_REQUEST
    ),
    case!("invalid_utf8", |t| get(t, "soak%FF%FE", ""), BAD_REQUEST),
    case!(
        "double_encoded",
        |t| get(t, &format!("{}%2500", any_profile(t)), ""),
        BAD_REQUEST
    ),
    case!(
        "name_65_chars",
        |t| get(t, &"a".repeat(65), ""),
        BAD_REQUEST
    ),
    case!(
        "name_10_kb",
        |t| get(t, &"a".repeat(10_000), ""),
        BAD_REQUEST
    ),
    case!(
        "raw_control_byte",
        |t| Request {
            method: "GET",
            path: format!("{}/token/so\u{1}ak", t.stage_path),
            signing: Signing::Unsigned,
        },
        Expect::Http(400)
    ),
    // min_validity and the query.
    case!(
        "min_validity_negative",
        |t| get(t, any_profile(t), "?min_validity=-1"),
        BAD_REQUEST
    ),
    case!(
        "min_validity_3301",
        |t| get(t, any_profile(t), "?min_validity=3301"),
        BAD_REQUEST
    ),
    case!(
        "min_validity_text",
        |t| get(t, any_profile(t), "?min_validity=abc"),
        BAD_REQUEST
    ),
    case!(
        "min_validity_fraction",
        |t| get(t, any_profile(t), "?min_validity=1.5"),
        BAD_REQUEST
    ),
    case!(
        "min_validity_empty",
        |t| get(t, any_profile(t), "?min_validity="),
        BAD_REQUEST
    ),
    case!(
        "min_validity_twice",
        |t| get(t, any_profile(t), "?min_validity=1&min_validity=2"),
        BAD_REQUEST
    ),
    case!(
        "unknown_parameter",
        |t| get(
            t,
            any_profile(t),
            "?min_validity=0&scope=https%3A%2F%2Fevil.example%2F.default"
        ),
        BAD_REQUEST
    ),
    // Methods and paths the API does not have.
    case!("method_post", |t| method(t, "POST"), NO_ROUTE),
    case!("method_put", |t| method(t, "PUT"), NO_ROUTE),
    case!("method_delete", |t| method(t, "DELETE"), NO_ROUTE),
    case!("method_patch", |t| method(t, "PATCH"), NO_ROUTE),
    case!("method_options", |t| method(t, "OPTIONS"), NO_ROUTE),
    case!("method_head", |t| method(t, "HEAD"), NO_ROUTE),
    case!(
        "empty_profile",
        |t| signed("GET", format!("{}/token/", t.stage_path)),
        NO_ROUTE
    ),
    case!(
        "nested_path",
        |t| signed(
            "GET",
            format!("{}/token/{}/x", t.stage_path, any_profile(t))
        ),
        NO_ROUTE
    ),
    case!(
        "wrong_stage",
        |t| signed("GET", format!("/prod/token/{}", any_profile(t))),
        NO_ROUTE
    ),
    // Signatures.
    case!("unsigned", |t| with(valid(t), Signing::Unsigned), NO_ROUTE),
    case!(
        "wrong_secret",
        |t| with(valid(t), Signing::WrongSecret),
        BAD_SIGNATURE
    ),
    case!(
        "unknown_access_key",
        |t| with(valid(t), Signing::UnknownKey),
        BAD_TOKEN
    ),
    case!(
        "no_session_token",
        |t| with(valid(t), Signing::NoSessionToken),
        BAD_TOKEN
    ),
    case!(
        "signed_6_min_ago",
        |t| with(valid(t), Signing::SignedAgo(Duration::from_secs(360))),
        BAD_SIGNATURE
    ),
    case!(
        "signed_6_min_ahead",
        |t| with(valid(t), Signing::SignedAhead(Duration::from_secs(360))),
        BAD_SIGNATURE
    ),
    case!(
        "wrong_region",
        |t| with(valid(t), Signing::Region("eu-west-1")),
        BAD_SIGNATURE
    ),
    case!(
        "wrong_service",
        |t| with(valid(t), Signing::Service("s3")),
        BAD_SIGNATURE
    ),
    case!(
        "profile_swapped",
        |t| {
            // Signed for one profile, sent for another.
            let signed_for = any_profile(t);
            let sent = match t.profiles.iter().find(|p| p.name != signed_for) {
                Some(other) => other.name.clone(),
                None => format!("{signed_for}x"),
            };
            let signed_for = format!("{}/token/{signed_for}", t.stage_path);
            with(get(t, &sent, ""), Signing::SignedFor(signed_for))
        },
        BAD_SIGNATURE
    ),
    case!(
        "min_validity_swapped",
        |t| {
            let name = any_profile(t);
            let sent = get(t, name, "?min_validity=3000");
            let signed_for = format!("{}/token/{name}?min_validity=0", t.stage_path);
            with(sent, Signing::SignedFor(signed_for))
        },
        BAD_SIGNATURE
    ),
];

pub fn pick() -> &'static Case {
    &CASES[fastrand::usize(..CASES.len())]
}

/// Whether `answer` is the one `expect`ed, and holds nothing token-like.
pub fn check(expect: &Expect, answer: &Answer) -> Result<(), String> {
    if crate::report::has_jwt(&String::from_utf8_lossy(&answer.body)) {
        return Err(format!("{} holding a JWT-shaped string", answer.status));
    }
    let got = || format!("{} {}", answer.status, error_summary(answer));
    match *expect {
        Expect::Api(status, error) => {
            if answer.status != status || answer.json()["error"] != error {
                return Err(format!("expected {status} {error}, got {}", got()));
            }
            if answer.header("cache-control") != Some("no-store") {
                return Err(format!("{status} without Cache-Control: no-store"));
            }
        }
        Expect::Gateway(status, error_type) => {
            if answer.status != status || answer.header("x-amzn-errortype") != Some(error_type) {
                return Err(format!("expected {status} {error_type}, got {}", got()));
            }
        }
        Expect::Http(status) => {
            if answer.status != status {
                return Err(format!("expected {status}, got {}", got()));
            }
        }
    }
    Ok(())
}
