use thiserror::Error;

/// Every way the edge can refuse input or fail to reach its stores.
///
/// Messages name the setting or document that was wrong and, where there is
/// one, the fix. Nothing here is secret (the edge holds only public keys and
/// public URLs), and it stays that way: no message carries a request body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A Worker variable or binding is missing or unusable; every request
    /// fails with 503 until it is fixed.
    #[error("setting `{setting}`: {problem}; {fix}")]
    Setting {
        setting: &'static str,
        problem: String,
        fix: String,
    },

    /// A key document (from KV, the Cache API or the inline variable) failed
    /// validation; it is never served.
    #[error("key document rejected: {0}")]
    KeyDocument(aws2azure_shared::Error),

    /// An allowlist override from KV failed validation; the previous allowlist
    /// stays in force.
    #[error("allowlist document rejected: {0}")]
    AllowlistDocument(aws2azure_shared::Error),

    /// Workers KV answered with an error (not a miss).
    #[error("Workers KV read of `{key}` failed: {message}")]
    Kv { key: String, message: String },

    /// The Cache API refused a read or write of the last good key document.
    #[error("Cache API {operation} failed: {message}")]
    Cache {
        operation: &'static str,
        message: String,
    },
}

impl Error {
    /// The setting an [`Error::Setting`] names, for the structured log.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            Self::Setting { setting, .. } => Some(setting),
            _ => None,
        }
    }

    pub(crate) fn setting_error(
        setting: &'static str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::Setting {
            setting,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
