//! The token exchange at Entra: OAuth 2.0 client credentials with a JWT
//! client assertion (RFC 7523), v2.0 endpoint.

use std::time::Duration;

use async_trait::async_trait;
use aws2azure_shared::assertion::{ClientAssertion, JWT_BEARER};
use serde::Deserialize;

use crate::Error;
use crate::token::AccessToken;

/// One token request.
#[derive(Debug)]
pub struct ExchangeRequest<'a> {
    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub token_endpoint: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub assertion: &'a ClientAssertion,
}

/// What Entra issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub access_token: AccessToken,
    pub token_type: String,
    pub expires_in: u64,
    /// When Entra suggests refreshing (present on some responses).
    pub refresh_in: Option<u64>,
}

#[async_trait]
pub trait TokenExchange: Send + Sync + 'static {
    async fn exchange(&self, request: &ExchangeRequest<'_>) -> Result<IssuedToken, Error>;
}

/// Entra over HTTPS (reqwest + rustls).
#[derive(Clone, Debug)]
pub struct EntraClient {
    http: reqwest::Client,
    attempt_timeout: Duration,
}

impl EntraClient {
    /// `attempt_timeout` bounds one HTTP exchange; the broker bounds the
    /// retries around it.
    pub fn new(attempt_timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(attempt_timeout)
            .connect_timeout(attempt_timeout.min(Duration::from_secs(3)))
            .user_agent(concat!("aws2azure/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(270))
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        Ok(Self {
            http,
            attempt_timeout,
        })
    }

    /// Opens a connection to the authority ahead of the first request, so
    /// the TLS handshake is paid during Lambda init, not by a caller.
    pub async fn warm(&self, authority: &str) {
        let started = std::time::Instant::now();
        match self.http.head(authority).send().await {
            Ok(_) => tracing::debug!(
                authority,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "connection to Entra warmed"
            ),
            Err(e) => {
                tracing::warn!(authority, error = %e, "could not warm the connection to Entra")
            }
        }
    }
}

#[async_trait]
impl TokenExchange for EntraClient {
    async fn exchange(&self, request: &ExchangeRequest<'_>) -> Result<IssuedToken, Error> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", request.client_id),
            ("scope", request.scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", request.assertion.expose()),
        ];
        let response = self
            .http
            .post(request.token_endpoint)
            .header(http::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let (body, complete) = read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| self.transport_error(e))?;
        if (200..300).contains(&status) {
            if !complete {
                return Err(Error::EntraResponse(format!(
                    "success response is larger than {MAX_RESPONSE_BYTES} bytes: not a token document"
                )));
            }
            parse_success(&body)
        } else {
            // A cut error page still tells the status and Retry-After.
            Err(parse_error(status, &body, retry_after))
        }
    }
}

/// The body, up to `max` bytes; `false` when there was more (which is then
/// neither read nor kept). Also used by `aws2azure doctor` for the
/// documents it fetches.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Ok((Vec::new(), false));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

impl EntraClient {
    fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::EntraTimeout(self.attempt_timeout)
        } else {
            // reqwest's message names the URL (no secret in it) and the cause.
            Error::EntraUnreachable(e.without_url().to_string())
        }
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    #[serde(default = "bearer")]
    token_type: String,
    #[serde(deserialize_with = "number_or_string")]
    expires_in: u64,
    #[serde(default, deserialize_with = "opt_number_or_string")]
    refresh_in: Option<u64>,
}

fn bearer() -> String {
    "Bearer".into()
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
    #[serde(default)]
    correlation_id: Option<String>,
}

/// Parses Entra's success document.
pub fn parse_success(body: &[u8]) -> Result<IssuedToken, Error> {
    let parsed: SuccessBody = serde_json::from_slice(body).map_err(|e| {
        Error::EntraResponse(format!(
            "success response is not a token document ({})",
            without_values(&e)
        ))
    })?;
    if parsed.access_token.is_empty() || parsed.expires_in == 0 {
        return Err(Error::EntraResponse(
            "success response has an empty token or no lifetime".into(),
        ));
    }
    let expires_in = parsed.expires_in.min(MAX_TOKEN_LIFETIME_SECS);
    Ok(IssuedToken {
        access_token: AccessToken::new(parsed.access_token),
        token_type: parsed.token_type,
        expires_in,
        // A refresh hint of 0 or beyond expiry means nothing useful.
        refresh_in: parsed.refresh_in.filter(|r| *r > 0 && *r < expires_in),
    })
}

/// Parses Entra's error document (or whatever a proxy answered instead).
pub fn parse_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let aadsts = parsed
        .error_codes
        .first()
        .copied()
        .or_else(|| aadsts_in(&parsed.error_description));
    // Entra appends trace and correlation ids and a timestamp on further
    // lines; the first line is the message.
    let first_line = parsed
        .error_description
        .lines()
        .next()
        .unwrap_or_default()
        .trim();
    let description = if first_line.is_empty() {
        format!("HTTP {status} without an Entra error document")
    } else {
        truncate(first_line, 500)
    };
    Error::Entra {
        status,
        error: if parsed.error.is_empty() {
            "http_error".into()
        } else {
            truncate(&parsed.error, 64)
        },
        description,
        aadsts,
        correlation_id: parsed.correlation_id.map(|c| truncate(&c, 64)),
        retry_after,
    }
}

/// serde's message without the values it quotes: "invalid type: string
/// \"…\"" would otherwise carry whatever string stood where a document was
/// expected, a token included. Field names and the position stay.
fn without_values(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let shown = match (message.find('"'), message.rfind('"')) {
        (Some(start), Some(end)) if start < end => {
            format!("{}\"…\"{}", &message[..start], &message[end + 1..])
        }
        _ => message,
    };
    truncate(&shown, 300)
}

fn aadsts_in(text: &str) -> Option<u32> {
    let at = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

/// Largest token endpoint answer read. Entra's are a few kilobytes (a token
/// for an app with many roles stays far below this); anything larger is not
/// a token document, and is not held in memory.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Longest `Retry-After` taken at its word; anything longer (or absurd) is
/// treated as this, which already exceeds every deadline of the broker.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest token lifetime believed: Entra's tokens live at most a day.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 86_400;

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3),
/// at most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        // More seconds than a u64 holds is still a (very long) wait.
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => MAX_RETRY_AFTER,
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        N(u64),
        S(String),
    }
    match Either::deserialize(d)? {
        Either::N(n) => Ok(n),
        Either::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn opt_number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number_or_string(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success_in_both_number_styles() {
        let t = parse_success(br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0"}"#).unwrap();
        assert_eq!(t.expires_in, 3599);
        assert_eq!(t.access_token.expose(), "eyJ0");
        assert_eq!(t.refresh_in, None);
        let t = parse_success(br#"{"token_type":"Bearer","expires_in":"3599","refresh_in":"1799","access_token":"x"}"#).unwrap();
        assert_eq!((t.expires_in, t.refresh_in), (3599, Some(1799)));
        let absurd = parse_success(
            br#"{"expires_in":18446744073709551615,"refresh_in":0,"access_token":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            (absurd.expires_in, absurd.refresh_in),
            (MAX_TOKEN_LIFETIME_SECS, None)
        );
        for bad in [
            &br#"{"expires_in":1}"#[..],
            br#"{"access_token":"","expires_in":1}"#,
            b"<html>",
        ] {
            let err = parse_success(bad).unwrap_err();
            assert!(matches!(err, Error::EntraResponse(_)), "{err:?}");
        }
        let err =
            parse_success(br#"{"access_token":"SECRETVALUE","expires_in":"soon"}"#).unwrap_err();
        assert!(!err.to_string().contains("SECRETVALUE"), "{err}");
    }

    #[test]
    fn parses_entra_errors_and_their_codes() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject 'x'.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026","error_codes":[700213],"correlation_id":"c-1"}"#;
        let err = parse_error(401, body, None);
        assert_eq!(err.aadsts(), Some(700213));
        assert!(!err.is_retryable());
        match &err {
            Error::Entra {
                description,
                correlation_id,
                ..
            } => {
                assert!(description.starts_with("AADSTS700213: No matching"));
                assert!(!description.contains("Trace ID"));
                assert_eq!(correlation_id.as_deref(), Some("c-1"));
            }
            other => panic!("{other:?}"),
        }
        let coded_in_text = parse_error(400, br#"{"error":"invalid_request","error_description":"AADSTS70021: No matching federated identity record found."}"#, None);
        assert_eq!(coded_in_text.aadsts(), Some(70021));
        assert!(coded_in_text.is_retryable());

        let html = parse_error(503, b"<html>down</html>", Some(Duration::from_secs(7)));
        assert!(html.is_retryable());
        assert_eq!(html.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(html.api_status().0, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(parse_error(429, b"", None).is_retryable());
        assert!(
            !parse_error(
                400,
                br#"{"error":"invalid_scope","error_codes":[70011]}"#,
                None
            )
            .is_retryable()
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(MAX_RETRY_AFTER)
        );
    }
}
