//! Publication to Workers KV through the Cloudflare v4 API.
//!
//! One call does the work: `PUT {api_base}/accounts/{account}/storage/kv/
//! namespaces/{namespace}/values/{key}` with the document as the body and
//! the API token as a bearer header. This is a thin client on the
//! workspace's reqwest rather than the `cloudflare` crate (0.14), because
//! that crate
//! - brings reqwest 0.12, a second HTTP and TLS stack next to the
//!   workspace's 0.13;
//! - does not expose `Retry-After` on a 429, which the rotation needs to say
//!   when to rerun;
//! - panics on an invalid custom base URL, which a local stand-in needs.
//!
//! Transient failures (a 5xx, a 429 asking for at most
//! [`MAX_RETRY_AFTER_WAITED`]) are retried [`MAX_RETRIES`] times with a short
//! backoff; anything else is returned at once, since the key manager is
//! rerun later anyway and a rotation step must not hang.
//!
//! The token never appears in a message: it travels in a header (never in
//! the URL), its `Debug`/`Display` are redacted, and any echo of it in the
//! API's answer is cut out before the answer is quoted.

mod settings;
#[cfg(test)]
mod tests;
mod token;

use std::time::Duration;

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

pub use settings::{
    ACCOUNT_ID, API_BASE, CloudflareSettings, DEFAULT_API_BASE, DEFAULT_KV_KEY, DEFAULT_TIMEOUT,
    KV_KEY, MAX_KV_KEY_BYTES, MAX_TIMEOUT, NAMESPACE_ID, TIMEOUT,
};
pub use token::{API_TOKEN, API_TOKEN_FILE, ApiToken};

pub use crate::publish::PublishError;

use crate::document::KeyDocument;
use crate::publish::Publisher;

/// Retries after the first attempt, for a 5xx or a short 429.
pub const MAX_RETRIES: u32 = 2;
/// The longest `Retry-After` waited for in place; a longer one is returned
/// as [`PublishError::RateLimited`] for the caller to rerun later.
pub const MAX_RETRY_AFTER_WAITED: Duration = Duration::from_secs(2);
/// The wait before the first retry; doubled for the next.
const BACKOFF: Duration = Duration::from_millis(250);
/// Answers are read up to this size (a key document is a few KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest quote of Cloudflare's error message.
const MAX_MESSAGE_CHARS: usize = 200;
/// Cloudflare's error code for a KV read of a key that does not exist.
const KEY_NOT_FOUND: u64 = 10009;

/// What may stay unescaped in a path segment: RFC 3986's unreserved set.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The publisher of the key document to Workers KV.
pub struct CloudflareKv {
    client: reqwest::Client,
    settings: CloudflareSettings,
    authorization: HeaderValue,
    /// Any echo of it in an answer is cut out before quoting.
    token: ApiToken,
    url: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    Write,
    Read,
}

/// A successful answer (or, for a read, Cloudflare's "key not found").
struct Answer {
    status: u16,
    body: Vec<u8>,
}

#[derive(Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

impl CloudflareKv {
    pub fn new(settings: CloudflareSettings, token: ApiToken) -> Result<Self, PublishError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout().min(Duration::from_secs(10)))
            // A redirect would be a wrong base URL; following it could carry
            // the write somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PublishError::Client {
                reason: e.to_string(),
                source: Some(e),
            })?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
            .map_err(|_| PublishError::Client {
                reason: "the API token is not a valid header value".into(),
                source: None,
            })?;
        authorization.set_sensitive(true);
        let url = format!(
            "{}/accounts/{}/storage/kv/namespaces/{}/values/{}",
            settings.api_base(),
            settings.account_id(),
            settings.namespace_id(),
            utf8_percent_encode(settings.kv_key(), SEGMENT)
        );
        Ok(Self {
            client,
            settings,
            authorization,
            token,
            url,
        })
    }

    pub fn settings(&self) -> &CloudflareSettings {
        &self.settings
    }

    /// The value published under the key now, `None` if there is none: for
    /// `status` and diagnostics. Workers KV is eventually consistent, so
    /// this may lag a write by up to a minute.
    pub async fn read(&self) -> Result<Option<Vec<u8>>, PublishError> {
        let answer = self.call(Operation::Read, None).await?;
        if answer.status == 404 {
            return Ok(None);
        }
        Ok(Some(answer.body))
    }

    /// One request, retried while the failure is transient and the retries
    /// last.
    async fn call(&self, op: Operation, body: Option<&[u8]>) -> Result<Answer, PublishError> {
        let mut attempt = 0;
        loop {
            let error = match self.once(op, body).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let wait = match retry_wait(&error, attempt) {
                Some(wait) if attempt < MAX_RETRIES => wait,
                _ => {
                    return Err(match error {
                        PublishError::Server {
                            status, message, ..
                        } => PublishError::Server {
                            status,
                            message,
                            attempts: attempt + 1,
                        },
                        other => other,
                    });
                }
            };
            tracing::warn!(
                target: "aws2azure::keys",
                to = %self.describe(),
                error = %error,
                wait_ms = wait.as_millis() as u64,
                "Cloudflare API call failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn once(&self, op: Operation, body: Option<&[u8]>) -> Result<Answer, PublishError> {
        let request = match op {
            Operation::Write => self
                .client
                .put(&self.url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(ACCEPT, "application/json")
                .body(body.unwrap_or_default().to_vec()),
            // A successful read answers the raw value, not JSON.
            Operation::Read => self.client.get(&self.url),
        };
        let response = request
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(aws2azure_signer::entra::parse_retry_after);
        let (body, whole) = aws2azure_signer::entra::read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| self.unreachable(e))?;
        let message = || self.quote(&body);
        match status {
            200..=299 if whole => Ok(Answer { status, body }),
            200..=299 => Err(PublishError::Unexpected {
                url: self.settings.api_base().to_string(),
                status,
                detail: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
            }),
            404 if op == Operation::Read && error_codes(&body).contains(&KEY_NOT_FOUND) => {
                Ok(Answer {
                    status,
                    body: Vec::new(),
                })
            }
            401 => Err(PublishError::Unauthorized { message: message() }),
            403 => Err(PublishError::Forbidden { message: message() }),
            429 => Err(PublishError::RateLimited { retry_after }),
            500..=599 => Err(PublishError::Server {
                status,
                message: message(),
                attempts: 1,
            }),
            // Not Cloudflare's envelope: something else answered, so the
            // ids are not what is wrong.
            400..=499 if serde_json::from_slice::<Envelope>(&body).is_err() => {
                Err(PublishError::Unexpected {
                    url: self.settings.api_base().to_string(),
                    status,
                    detail: message(),
                })
            }
            400..=499 => Err(PublishError::Rejected {
                status,
                message: message(),
            }),
            _ => Err(PublishError::Unexpected {
                url: self.settings.api_base().to_string(),
                status,
                detail: "not an answer the API gives, a redirect for instance".into(),
            }),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> PublishError {
        // The URL holds no secret, but it would crowd out the cause.
        let e = e.without_url();
        let reason = if e.is_timeout() {
            format!("no answer within {} s", self.settings.timeout().as_secs())
        } else {
            transport_reason(&e)
        };
        PublishError::Unreachable {
            url: self.settings.api_base().to_string(),
            reason: self.redact(&reason),
            source: e,
        }
    }

    /// Cloudflare's `errors[]` messages (or the start of a body that is not
    /// its envelope), printable and capped.
    fn quote(&self, body: &[u8]) -> String {
        let text = match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) if !envelope.errors.is_empty() => envelope
                .errors
                .iter()
                .map(|e| match (&e.message, e.code) {
                    (Some(m), Some(c)) => format!("{m} (code {c})"),
                    (Some(m), None) => m.clone(),
                    (None, Some(c)) => format!("code {c}"),
                    (None, None) => "no message".into(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Ok(_) => "no error message in the answer".into(),
            Err(_) if body.is_empty() => "empty answer".into(),
            Err(_) => format!("not Cloudflare's JSON: {}", String::from_utf8_lossy(body)),
        };
        sanitise(&self.redact(&text))
    }

    fn redact(&self, text: &str) -> String {
        text.replace(self.token.secret(), "[redacted]")
    }
}

#[async_trait]
impl Publisher for CloudflareKv {
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError> {
        let answer = self.call(Operation::Write, Some(document.bytes())).await?;
        match serde_json::from_slice::<Envelope>(&answer.body) {
            Ok(envelope) if envelope.success => {
                tracing::info!(
                    target: "aws2azure::keys",
                    to = %self.describe(),
                    version = %document.version(),
                    bytes = document.bytes().len(),
                    "key document written to Workers KV"
                );
                Ok(())
            }
            Ok(_) => Err(PublishError::Rejected {
                status: answer.status,
                message: self.quote(&answer.body),
            }),
            Err(_) => Err(PublishError::Unexpected {
                url: self.settings.api_base().to_string(),
                status: answer.status,
                detail: self.quote(&answer.body),
            }),
        }
    }

    fn describe(&self) -> String {
        format!(
            "Workers KV {}/{}/{} via {}",
            self.settings.account_id(),
            self.settings.namespace_id(),
            self.settings.kv_key(),
            self.settings.api_base()
        )
    }
}

/// How long to wait before retrying after `error`, if it is worth a retry.
fn retry_wait(error: &PublishError, attempt: u32) -> Option<Duration> {
    let backoff = BACKOFF * 2u32.saturating_pow(attempt);
    match error {
        PublishError::Server { .. } => Some(backoff),
        PublishError::RateLimited {
            retry_after: Some(wait),
        } if *wait <= MAX_RETRY_AFTER_WAITED => Some((*wait).max(backoff)),
        _ => None,
    }
}

fn error_codes(body: &[u8]) -> Vec<u64> {
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.errors.iter().filter_map(|m| m.code).collect())
        .unwrap_or_default()
}

/// reqwest's own message says little ("error sending request"); the causes
/// under it say what happened (connection refused, DNS, TLS).
fn transport_reason(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(error) = cause {
        let text = match error.downcast_ref::<reqwest::Error>() {
            Some(e) => e.to_string(),
            None => error.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = error.source();
    }
    sanitise(&parts.join(": "))
}

/// Printable, one line, at most [`MAX_MESSAGE_CHARS`] characters: runs of
/// whitespace and control characters become one space, and the bounding is
/// the shared crate's.
fn sanitise(text: &str) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect();
    aws2azure_shared::echo(&words.join(" "), MAX_MESSAGE_CHARS)
}
