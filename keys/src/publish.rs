//! Where the key document goes so that the edge serves it: Workers KV,
//! through the Cloudflare API ([`crate::cloudflare`]).

use std::time::Duration;

use async_trait::async_trait;

use crate::document::KeyDocument;

#[async_trait]
pub trait Publisher: Send + Sync {
    /// Writes the document; succeeds only once the API accepted it.
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError>;

    /// Where it publishes, for messages (no secret in it).
    fn describe(&self) -> String;
}

/// Why a publication (or a read) failed. Every message names the cause and
/// the fix and never contains the API token.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Nothing to publish to: the message names the settings to give.
    #[error("{0}")]
    NotConfigured(String),
    #[error(
        "the Cloudflare API refused the token (401: {message}); the token is wrong, expired or \
         revoked: create a new API token with \"Workers KV Storage: Edit\" and store it where \
         the key manager reads it (AWS2AZURE_CLOUDFLARE_API_TOKEN_FILE, \
         AWS2AZURE_CLOUDFLARE_API_TOKEN or its Secrets Manager secret)"
    )]
    Unauthorized { message: String },
    #[error(
        "the Cloudflare API token may not use this namespace (403: {message}); give it \
         \"Workers KV Storage: Edit\" on the account, and check the account and namespace ids"
    )]
    Forbidden { message: String },
    #[error(
        "the Cloudflare API is rate limiting this token (429){}; nothing was written: rerun \
         after that",
        retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default()
    )]
    RateLimited { retry_after: Option<Duration> },
    #[error(
        "the Cloudflare API failed ({status}: {message}) after {attempts} attempts; rerun later \
         (https://www.cloudflarestatus.com shows incidents)"
    )]
    Server {
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error(
        "the Cloudflare API refused the request ({status}: {message}); check the account id, \
         the namespace id and the KV key name"
    )]
    Rejected { status: u16, message: String },
    #[error(
        "the answer of {url} is not the Cloudflare API's (HTTP {status}: {detail}); check the \
         API base URL"
    )]
    Unexpected {
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "the Cloudflare API at {url} is unreachable ({reason}); check the network, a proxy, and \
         the API base URL"
    )]
    Unreachable {
        url: String,
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot set up the HTTPS client for the Cloudflare API ({reason}); report this")]
    Client {
        reason: String,
        #[source]
        source: Option<reqwest::Error>,
    },
}
