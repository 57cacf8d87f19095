//! Publication to Workers KV through the Cloudflare v4 API.

use std::time::Duration;

/// Why a publication failed. Every message names the cause and the fix and
/// never contains the API token.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "the Cloudflare API refused the token (401: {message}); the token is wrong, expired or \
         revoked: create a new API token with \"Workers KV Storage: Edit\" and store it"
    )]
    Unauthorized { message: String },
    #[error(
        "the Cloudflare API token may not write this namespace (403: {message}); give it \
         \"Workers KV Storage: Edit\" on the account, and check the account and namespace ids"
    )]
    Forbidden { message: String },
    #[error(
        "the Cloudflare API is rate limiting this token (429){}; rerun after that",
        retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default()
    )]
    RateLimited { retry_after: Option<Duration> },
    #[error("the Cloudflare API failed ({status}: {message}); rerun later")]
    Server { status: u16, message: String },
    #[error("the Cloudflare API refused the write ({status}: {message})")]
    Rejected { status: u16, message: String },
    #[error("the Cloudflare API at {url} is unreachable; check the network and the API base URL")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}
