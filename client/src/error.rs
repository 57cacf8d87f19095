use thiserror::Error;

/// Why a token could not be had from the token API.
#[derive(Debug, Error)]
pub enum Error {
    /// The endpoint or region given is unusable; nothing was sent.
    #[error("{0}")]
    Usage(String),
    #[error("AWS credentials: {0}")]
    Credentials(String),
    #[error("signing the request: {0}")]
    Sign(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the token API refused (HTTP {status}, {error}): {description}{}", aadsts.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default())]
    Api {
        status: u16,
        error: String,
        description: String,
        aadsts: Option<String>,
    },
    /// The token cache could not be read or written; the client goes on
    /// without it.
    #[error("token cache: {path}: {source}")]
    CacheIo {
        path: String,
        source: std::io::Error,
    },
    /// Something in the token cache is not to be trusted; the client goes to
    /// the API instead.
    #[error("token cache: {path} {problem}; not using it (fix: {fix})")]
    CacheUntrusted {
        path: String,
        problem: String,
        fix: String,
    },
}
