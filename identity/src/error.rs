use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;

/// Everything that can go wrong in the credential endpoint: its settings at
/// start-up, a request it refuses, a token it cannot get. [`Error::status`]
/// and [`Error::code`] map each to the protocol's JSON error at the
/// boundary; no message ever holds a token or the header secret.
#[derive(Debug, Error)]
pub enum Error {
    /// A setting is unusable; the endpoint does not start.
    #[error("{setting}: {problem} (fix: {fix})")]
    Setting {
        setting: &'static str,
        problem: String,
        fix: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the endpoint stopped serving: {0}")]
    Serve(#[source] std::io::Error),

    /// No `X-IDENTITY-HEADER` on the request.
    #[error("the X-IDENTITY-HEADER header is missing: set it to $IDENTITY_HEADER")]
    MissingHeader,
    #[error("the X-IDENTITY-HEADER header does not match $IDENTITY_HEADER")]
    WrongHeader,
    /// The query is malformed: a parameter missing, repeated, too long or
    /// holding control characters.
    #[error("{0}")]
    BadRequest(String),
    #[error("the query string is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("api-version `{given}` is not supported; use api-version={supported}")]
    ApiVersion {
        given: String,
        supported: &'static str,
    },
    #[error("no profile serves resource `{resource}`; served: {served}")]
    UnknownResource { resource: String, served: String },
    #[error(
        "resource `{resource}` is served by several profiles; choose one with client_id ({client_ids}) or mi_res_id (the profile name)"
    )]
    AmbiguousResource {
        resource: String,
        client_ids: String,
    },
    #[error("no profile serving resource `{resource}` has {selector} `{value}`")]
    UnknownIdentity {
        resource: String,
        selector: &'static str,
        value: String,
    },
    #[error(
        "{selector} is not supported: choose an identity with client_id or mi_res_id (the profile name)"
    )]
    UnsupportedSelector { selector: &'static str },
    #[error("{0} is only answered with GET")]
    Method(String),
    #[error("no such path; tokens are served at {0}")]
    NotFound(String),

    /// The token API refused or could not be reached. Shared by every caller
    /// waiting on the same load, hence the `Arc`.
    #[error("the token API did not issue a token for profile `{profile}`")]
    TokenApi {
        profile: String,
        /// The token API's HTTP status when it answered.
        status: Option<u16>,
        #[source]
        source: Arc<aws2azure_client::Error>,
    },
    /// With no broker (`aws2azure serve --direct`): STS or Entra, asked from
    /// this process, did not issue a token. Its error names the fix.
    #[error("no token for profile `{profile}`")]
    Direct {
        profile: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Azure SDKs treat a token with less than five minutes left as expired
    /// and would ask again at once: such a token is never handed out.
    #[error(
        "the token API issued a token for profile `{profile}` with {remaining} s left, less than the {floor} s this endpoint hands out"
    )]
    ShortLived {
        profile: String,
        remaining: u64,
        floor: u64,
    },
    #[error("no token for profile `{profile}` within {secs} s")]
    Timeout { profile: String, secs: u64 },
    /// The load was cancelled (the runtime shutting down).
    #[error("the token load for profile `{0}` was cancelled")]
    Cancelled(String),
}

impl Error {
    pub(crate) fn setting(
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

    /// The HTTP status a request that failed this way is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingHeader | Self::WrongHeader => 401,
            Self::BadRequest(_)
            | Self::ApiVersion { .. }
            | Self::UnknownResource { .. }
            | Self::AmbiguousResource { .. }
            | Self::UnknownIdentity { .. }
            | Self::UnsupportedSelector { .. } => 400,
            Self::TooLong { .. } => 414,
            Self::Method(_) => 405,
            Self::NotFound(_) => 404,
            // IAM refusing the caller is the caller's to fix, and an SDK
            // must not retry it as if the service were down.
            Self::TokenApi {
                status: Some(403), ..
            } => 403,
            Self::TokenApi { .. }
            | Self::Direct { .. }
            | Self::ShortLived { .. }
            | Self::Cancelled(_) => 502,
            Self::Timeout { .. } => 504,
            Self::Setting { .. } | Self::Bind { .. } | Self::Serve(_) => 500,
        }
    }

    /// The `error` field of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader | Self::WrongHeader => "unauthorized",
            Self::BadRequest(_) | Self::TooLong { .. } | Self::ApiVersion { .. } => {
                "invalid_request"
            }
            Self::UnknownResource { .. } => "unknown_resource",
            Self::AmbiguousResource { .. } => "ambiguous_resource",
            Self::UnknownIdentity { .. } | Self::UnsupportedSelector { .. } => "unknown_identity",
            Self::Method(_) => "method_not_allowed",
            Self::NotFound(_) => "not_found",
            Self::TokenApi {
                status: Some(403), ..
            } => "forbidden",
            Self::TokenApi { .. }
            | Self::Direct { .. }
            | Self::ShortLived { .. }
            | Self::Cancelled(_) => "token_unavailable",
            Self::Timeout { .. } => "timeout",
            Self::Setting { .. } | Self::Bind { .. } | Self::Serve(_) => "internal",
        }
    }

    /// The description sent to the client: the message, with the token
    /// API's own words (its refusal says why IAM or Entra said no).
    pub fn description(&self) -> String {
        match self {
            Self::TokenApi { source, .. } => format!("{self}: {source}"),
            Self::Direct { source, .. } => format!("{self}: {source}"),
            _ => self.to_string(),
        }
    }
}
