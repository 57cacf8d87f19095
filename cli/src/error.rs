use thiserror::Error;

/// Exit codes scripts can rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything worked (for `doctor`: every check passed).
    Ok = 0,
    /// The operation ran and failed: a check failed, a peer refused.
    Failed = 1,
    /// The command line, an input file or the local setup is wrong; nothing
    /// was done.
    Usage = 2,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Input {
        context: String,
        source: aws2azure_shared::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Keys(#[from] aws2azure_keys::Error),
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
    /// The token cache could not be read or written; the command goes on
    /// without it.
    #[error("token cache: {path}: {source}")]
    CacheIo {
        path: String,
        source: std::io::Error,
    },
    /// Something in the token cache is not to be trusted; the command goes
    /// to the API instead.
    #[error("token cache: {path} {problem}; not using it (fix: {fix})")]
    CacheUntrusted {
        path: String,
        problem: String,
        fix: String,
    },
    #[error("{0}")]
    Dev(String),
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Read { .. } | Self::Input { .. } | Self::Usage(_) | Self::Credentials(_) => {
                ExitCode::Usage
            }
            Self::Keys(aws2azure_keys::Error::Config { .. } | aws2azure_keys::Error::Policy(_)) => {
                ExitCode::Usage
            }
            _ => ExitCode::Failed,
        }
    }
}
