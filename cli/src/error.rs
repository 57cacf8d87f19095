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
    #[error(transparent)]
    Client(#[from] aws2azure_client::Error),
    #[error(transparent)]
    Identity(#[from] aws2azure_identity::Error),
    /// `token --direct`: the broker's code in this process failed (STS,
    /// Entra); its error, which names the fix, as it is.
    #[error(transparent)]
    Direct(std::sync::Arc<aws2azure_signer::Error>),
    #[error("AWS credentials: {0}")]
    Credentials(String),
    #[error("HTTP: {0}")]
    Http(String),
    /// A local part of `aws2azure dev` (a server, the generated key, a
    /// profile pointed at the local Entra) failed: its own error, shown as it
    /// is and kept as the cause.
    #[error(transparent)]
    Dev(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub(crate) fn direct(error: aws2azure_signer::Error) -> Self {
        Self::Direct(std::sync::Arc::new(error))
    }

    pub(crate) fn dev(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Dev(Box::new(error))
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Read { .. } | Self::Input { .. } | Self::Usage(_) | Self::Credentials(_) => {
                ExitCode::Usage
            }
            Self::Keys(aws2azure_keys::Error::Config { .. } | aws2azure_keys::Error::Policy(_)) => {
                ExitCode::Usage
            }
            Self::Client(
                aws2azure_client::Error::Usage(_) | aws2azure_client::Error::Credentials(_),
            ) => ExitCode::Usage,
            Self::Identity(
                aws2azure_identity::Error::Setting { .. } | aws2azure_identity::Error::Bind { .. },
            ) => ExitCode::Usage,
            _ => ExitCode::Failed,
        }
    }
}
