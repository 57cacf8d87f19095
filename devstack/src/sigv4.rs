//! AWS Signature Version 4 verified the way API Gateway verifies it: the
//! canonical request (normalised, double-encoded path; sorted, strictly
//! encoded query; exactly the headers the client signed), the credential
//! scope (date, region, service), `X-Amz-Date` within 5 minutes, and the
//! `X-Amz-Security-Token` of temporary credentials. Refusals carry API
//! Gateway's messages and `x-amzn-ErrorType`.
//!
//! The HMAC chain comes from `aws-sigv4`; the canonicalisation is written
//! here because the crate signs requests but does not verify them (and a
//! verifier must use the client's own list of signed headers). AWS's own
//! SigV4 test suite runs through it (`tests/sigv4_suite.rs`).

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// API Gateway's tolerance for `X-Amz-Date`.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
const SERVICE: &str = "execute-api";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Characters SigV4 leaves unencoded: A-Z a-z 0-9 - _ . ~
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Someone the gateway knows, with the credentials they sign with.
#[derive(Clone, Debug)]
pub struct Principal {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Present for temporary credentials (assumed roles).
    pub session_token: Option<String>,
    /// `userArn` in the request context.
    pub arn: String,
    /// `caller` in the request context (`AIDA…` or `AROA…:session`).
    pub caller: String,
    pub account_id: String,
}

/// An API Gateway-style refusal.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(
        status: StatusCode,
        error_type: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(error_type: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, error_type, message)
    }
}

/// Checks the request's SigV4 signature; returns who signed it. `path` and
/// `query` are the request target exactly as sent (still percent-encoded).
///
/// The checks run in API Gateway's order, since the first failing one
/// decides the message: the `Authorization` header, who signed, the
/// credential scope, the date, the signed headers, the session token, and
/// last the signature itself.
pub fn verify(
    gateway_principals: &impl PrincipalLookup,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<Principal, Refusal> {
    let region = gateway_principals.region();
    let service = gateway_principals.service();
    let auth = Authorization::parse(headers)?;
    let principal = gateway_principals
        .principal(auth.access_key)
        .ok_or_else(invalid_token)?;
    auth.check_scope(region, service)?;
    let (amz_date, signed_at) = auth.check_date(headers, now)?;
    let signed = auth.check_signed_headers()?;
    check_session_token(&principal, headers)?;

    let canonical =
        canonical_request(method, path, query, headers, &signed, body).ok_or_else(|| {
            Refusal::forbidden(
                "IncompleteSignatureException",
                "A signed header is missing from the request.",
            )
        })?;
    let string_to_sign = string_to_sign(
        amz_date,
        &format!("{}/{region}/{service}/aws4_request", auth.date),
        &canonical,
    );
    let key = aws_sigv4::sign::v4::generate_signing_key(
        &principal.secret_access_key,
        signed_at,
        region,
        service,
    );
    let expected = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(Refusal::forbidden(
            "InvalidSignatureException",
            format!(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n",
                redact_session_token(&canonical)
            ),
        ));
    }
    Ok(principal)
}

/// The `Authorization` header's fields, its credential scope split.
struct Authorization<'a> {
    /// The whole header, as API Gateway quotes it in its messages.
    header: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
}

impl<'a> Authorization<'a> {
    fn parse(headers: &'a HeaderMap) -> Result<Self, Refusal> {
        let header = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Refusal::forbidden(
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token",
                )
            })?;
        let fields = header
            .strip_prefix(ALGORITHM)
            .filter(|rest| rest.starts_with(' '))
            .ok_or_else(|| {
                Refusal::forbidden(
                    "IncompleteSignatureException",
                    format!("Only {ALGORITHM} is supported for the Authorization header."),
                )
            })?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in fields.split(',') {
            let (name, value) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
            match name {
                "Credential" => credential = Some(value),
                "SignedHeaders" => signed_headers = Some(value),
                "Signature" => signature = Some(value),
                _ => {}
            }
        }
        let missing = |what: &str| incomplete(header, what);
        let credential = credential.ok_or_else(|| missing("Credential"))?;
        let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
        let signature = signature.ok_or_else(|| missing("Signature"))?;

        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key, date, region, service, terminator] = scope.as_slice() else {
            return Err(Refusal::forbidden(
                "IncompleteSignatureException",
                format!(
                    "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
                ),
            ));
        };
        Ok(Self {
            header,
            signed_headers,
            signature,
            access_key,
            date,
            region,
            service,
            terminator,
        })
    }

    /// The credential is scoped to this gateway's region and service.
    fn check_scope(&self, region: &str, service: &str) -> Result<(), Refusal> {
        if self.region != region {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!(
                    "Credential should be scoped to a valid region, not '{}'. ",
                    self.region
                ),
            ));
        }
        if self.service != service {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!("Credential should be scoped to correct service: '{service}'. "),
            ));
        }
        if self.terminator != "aws4_request" {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!(
                    "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'. ",
                    self.terminator
                ),
            ));
        }
        Ok(())
    }

    /// `X-Amz-Date`: well formed, the scope's day, and within [`MAX_SKEW`]
    /// of `now`. Returns it as sent and as a time.
    fn check_date(
        &self,
        headers: &'a HeaderMap,
        now: SystemTime,
    ) -> Result<(&'a str, SystemTime), Refusal> {
        let amz_date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| incomplete(self.header, "X-Amz-Date"))?;
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            Refusal::forbidden(
                "IncompleteSignatureException",
                format!("Date must be in ISO-8601 'basic format'. Got '{amz_date}'."),
            )
        })?;
        if amz_date.get(..8) != Some(self.date) {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!(
                    "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                    self.date,
                    &amz_date[..8.min(amz_date.len())]
                ),
            ));
        }
        if signed_at + MAX_SKEW < now {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!(
                    "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
                    format_amz_date(now - MAX_SKEW),
                    format_amz_date(now)
                ),
            ));
        }
        if signed_at > now + MAX_SKEW {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!(
                    "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
                    format_amz_date(now + MAX_SKEW),
                    format_amz_date(now)
                ),
            ));
        }
        Ok((amz_date, signed_at))
    }

    /// The signed header names: lowercase, sorted, unique, `host` among them.
    fn check_signed_headers(&self) -> Result<Vec<&'a str>, Refusal> {
        let signed: Vec<&str> = self.signed_headers.split(';').collect();
        if signed.windows(2).any(|w| w[0] >= w[1])
            || signed
                .iter()
                .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
        {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                format!(
                    "SignedHeaders must be lowercase, sorted and unique, got '{}'",
                    self.signed_headers
                ),
            ));
        }
        if !signed.contains(&"host") {
            return Err(Refusal::forbidden(
                "InvalidSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            ));
        }
        Ok(signed)
    }
}

fn incomplete(authorization: &str, what: &str) -> Refusal {
    Refusal::forbidden(
        "IncompleteSignatureException",
        format!("Authorization header requires '{what}' parameter. Authorization={authorization}"),
    )
}

fn invalid_token() -> Refusal {
    Refusal::forbidden(
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
}

/// `X-Amz-Security-Token` is sent exactly when the principal's credentials
/// are temporary, and is theirs.
fn check_session_token(principal: &Principal, headers: &HeaderMap) -> Result<(), Refusal> {
    // A token that is not text is a token nobody can validate: refused, as
    // API Gateway does, never taken for no token at all.
    let sent_token = match headers.get("x-amz-security-token").map(|v| v.to_str()) {
        None => None,
        Some(Ok(token)) => Some(token),
        Some(Err(_)) => return Err(invalid_token()),
    };
    match (&principal.session_token, sent_token) {
        (Some(expected), Some(sent)) if expected == sent => Ok(()),
        (None, None) => Ok(()),
        _ => Err(invalid_token()),
    }
}

/// Where `verify` finds principals, the gateway's region and its service.
pub trait PrincipalLookup {
    fn principal(&self, access_key_id: &str) -> Option<Principal>;
    fn region(&self) -> &str;
    /// The service credentials must be scoped to: API Gateway's is
    /// `execute-api` (AWS's SigV4 test suite signs for `service`).
    fn service(&self) -> &str {
        SERVICE
    }
}

/// The canonical request as shown in a refusal: a session token is a
/// credential, so its value is not echoed (API Gateway echoes it; clients
/// print these messages into logs).
fn redact_session_token(canonical: &str) -> String {
    canonical
        .lines()
        .map(|l| {
            if l.starts_with("x-amz-security-token:") {
                "x-amz-security-token:<redacted>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `AWS4-HMAC-SHA256`, the date, the credential scope and the hash of the
/// canonical request: what the signature is the HMAC of.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The SigV4 canonical request for a non-S3 service, from the request as
/// received: `path` and `query` still percent-encoded as sent.
pub fn canonical_request(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    signed: &[&str],
    body: &[u8],
) -> Option<String> {
    let mut canonical_headers = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return None;
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Some(format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        canonical_uri(path),
        canonical_query(query),
        signed.join(";"),
        hex::encode(Sha256::digest(body)),
    ))
}

/// The path as botocore canonicalises it for every service but S3
/// (`quote(remove_dot_segments(path), safe='/~')`): dot segments and empty
/// segments removed, then every byte outside the unreserved set encoded,
/// the path as sent being encoded again (`%72` becomes `%2572`).
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| utf8_percent_encode(s, UNRESERVED).to_string())
            .collect::<Vec<_>>()
            .join("/"),
    );
    if path.len() > 1 && path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (
                utf8_percent_encode(&decode(k), UNRESERVED).to_string(),
                utf8_percent_encode(&decode(v), UNRESERVED).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

const AMZ_DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

pub(crate) fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let parsed = time::PrimitiveDateTime::parse(text, AMZ_DATE).ok()?;
    Some(parsed.assume_utc().into())
}

fn format_amz_date(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(AMZ_DATE)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(Principal);
    impl PrincipalLookup for One {
        fn principal(&self, id: &str) -> Option<Principal> {
            (id == self.0.access_key_id).then(|| self.0.clone())
        }
        fn region(&self) -> &str {
            "us-east-1"
        }
    }

    #[test]
    fn refusals_never_echo_a_session_token() {
        let shown = redact_session_token(
            "GET\n/\n\nhost:h\nx-amz-security-token:IQoJsecret\n\nhost;x-amz-security-token\nabc",
        );
        assert!(!shown.contains("IQoJsecret"));
        assert!(shown.contains("x-amz-security-token:<redacted>"));
    }

    #[test]
    fn canonical_uri_normalises_and_double_encodes() {
        assert_eq!(canonical_uri("/dev/token/graph"), "/dev/token/graph");
        assert_eq!(canonical_uri("/dev/token/a%2Fb"), "/dev/token/a%252Fb");
        // The path as sent is encoded again, an encoded unreserved
        // character included: botocore signs `g%72aph` as `g%2572aph`.
        assert_eq!(canonical_uri("/dev/token/g%72aph"), "/dev/token/g%2572aph");
        assert_eq!(canonical_uri("/dev/token/%7e"), "/dev/token/%257e");
        assert_eq!(canonical_uri("/dev/token/~$"), "/dev/token/~%24");
        assert_eq!(canonical_uri("/dev/token/graph/"), "/dev/token/graph/");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(
            canonical_uri("/dev/./token//x/../graph"),
            "/dev/token/graph"
        );
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("min_validity=300"), "min_validity=300");
    }

    /// The example of the AWS SigV4 documentation ("GET /?Param2=value2&Param1=value1"
    /// to iam, us-east-1, 20150830T123600Z) run through our canonicalisation
    /// and aws-sigv4's key derivation must give the published signature.
    #[test]
    fn matches_the_documented_sigv4_example() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let canonical = canonical_request(
            &Method::GET,
            "/",
            "Param2=value2&Param1=value1",
            &headers,
            &["host", "x-amz-date"],
            b"",
        )
        .unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0"
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            parse_amz_date("20150830T123600Z").unwrap(),
            "us-east-1",
            "service",
        );
        assert_eq!(
            aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes()),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let principal = Principal {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            arn: "arn:aws:iam::111122223333:user/alice".into(),
            caller: "AIDAEXAMPLE".into(),
            account_id: "111122223333".into(),
        };
        let lookup = One(principal);
        let now = parse_amz_date("20261126T210000Z").unwrap();
        let mut headers = HeaderMap::new();
        let check = |headers: &HeaderMap| {
            verify(
                &lookup,
                &Method::GET,
                "/dev/token/graph",
                "",
                headers,
                b"",
                now,
            )
            .unwrap_err()
        };
        assert_eq!(check(&headers).message, "Missing Authentication Token");
        headers.insert("host", "localhost".parse().unwrap());
        headers.insert("x-amz-date", "20261126T205400Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261126/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        assert!(
            check(&headers)
                .message
                .starts_with("Signature expired: 20261126T205400Z"),
            "{}",
            check(&headers).message
        );
        headers.insert("x-amz-date", "20261126T210000Z".parse().unwrap());
        assert!(
            check(&headers)
                .message
                .starts_with("The request signature we calculated does not match")
        );
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=NOPE/20261126/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            check(&headers).message,
            "The security token included in the request is invalid."
        );
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261126/eu-west-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        assert!(
            check(&headers)
                .message
                .contains("valid region, not 'eu-west-1'")
        );
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261126/us-east-1/execute-api/aws4_request, SignedHeaders=x-amz-date;host, Signature=00"
                .parse()
                .unwrap(),
        );
        assert!(check(&headers).message.contains("sorted and unique"));
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2026/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        assert!(check(&headers).message.contains("does not match YYYYMMDD"));
    }
}
