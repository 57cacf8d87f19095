use thiserror::Error;

/// Exit codes scripts can rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything worked (for `doctor`: every check passed).
    Ok = 0,
    /// The operation ran and failed: a check failed, a peer refused.
    Failed = 1,
    /// The command line or an input file is wrong; nothing was done.
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
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Read { .. } | Self::Input { .. } => ExitCode::Usage,
            Self::Write { .. } => ExitCode::Failed,
        }
    }
}
