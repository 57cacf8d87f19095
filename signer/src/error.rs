use std::time::Duration;

use http::StatusCode;
use thiserror::Error;

/// AADSTS codes that can succeed when tried again: a federated credential
/// created moments ago (70021), and Entra failing to fetch the issuer's
/// discovery document or key set (50166, 90061).
pub const RETRYABLE_AADSTS: [u32; 3] = [70021, 50166, 90061];
/// Issuer, audience and subject mismatches: configuration errors that no
/// retry fixes.
pub const CONFIGURATION_AADSTS: [u32; 3] = [700211, 700212, 700213];

/// Every failure of the broker. One load's failure is shared by every
/// request waiting on it (single flight) behind an `Arc`.
///
/// No variant ever holds an access token or a client assertion.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("no profile named `{0}` is configured")]
    UnknownProfile(String),

    #[error("{0}")]
    InvalidRequest(String),

    #[error("method {0} is not supported: use GET /token/{{profile}}")]
    MethodNotAllowed(String),

    #[error(
        "the request carries no IAM caller identity; every method of the token API must use \
         AWS_IAM authorization"
    )]
    MissingIdentity,

    /// The profile lists its allowed principals and the caller is not one.
    #[error(
        "caller `{principal}` is not among the allowed_principals of profile `{profile}`; \
         the operator grants it in the profile's configuration"
    )]
    CallerNotAllowed { profile: String, principal: String },

    /// Entra answered with an error document.
    #[error("Entra refused the token request (HTTP {status}): {description}")]
    Entra {
        status: u16,
        error: String,
        description: String,
        aadsts: Option<u32>,
        correlation_id: Option<String>,
        retry_after: Option<Duration>,
    },

    #[error("Entra could not be reached: {0}")]
    EntraUnreachable(String),

    #[error("Entra did not answer within {0:?}")]
    EntraTimeout(Duration),

    #[error("Entra's answer could not be read: {0}")]
    EntraResponse(String),

    #[error("KMS throttled the Sign request (the account's RSA Sign quota is shared)")]
    KmsThrottled,

    #[error("KMS refused: {code}: {message}")]
    Kms { code: String, message: String },

    #[error("KMS could not be reached: {0}")]
    KmsUnreachable(String),

    #[error("the local signing key is not usable: {0}")]
    LocalKey(String),

    /// STS refused to sign an assertion (`GetWebIdentityToken`) or to let
    /// the broker assume a profile's role (`AssumeRole`). Never retried:
    /// each of these needs the operator.
    #[error("STS refused {operation}: {code}: {message}{}", sts_fix(.code))]
    Sts {
        operation: &'static str,
        code: String,
        message: String,
    },

    #[error("STS could not be reached: {0}")]
    StsUnreachable(String),

    /// STS signed for another role than the profile's federated credential
    /// names: Entra would refuse it (AADSTS700213).
    #[error(
        "STS signed the assertion for `{signed}`, but profile `{profile}` expects the subject \
         `{expected}`: set the profile's role_arn (or subject) to the role that signs, or run \
         the broker as that role"
    )]
    StsSubject {
        profile: String,
        expected: String,
        signed: String,
    },

    /// A profile asks for an assertion source this broker was not given.
    #[error(
        "profile `{profile}` uses assertion = \"{source_name}\", which this broker was not set up for"
    )]
    NoAssertionSource {
        profile: String,
        source_name: &'static str,
    },

    #[error("token cache: {0}")]
    Cache(String),

    #[error("another instance is fetching this token from Entra right now; retry in a moment")]
    PeerBusy,

    #[error("the request did not complete within {0:?}")]
    DeadlineExceeded(Duration),

    #[error("internal error: {0}")]
    Internal(String),

    /// The HTTPS client for Entra could not be set up (its TLS backend):
    /// nothing an operator's setting changes.
    #[error("the HTTPS client for Entra could not be built: {0}")]
    HttpClient(String),

    #[error("setting `{setting}`: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },

    #[error(transparent)]
    Shared(#[from] aws2azure_shared::Error),
}

/// What fixes an STS refusal, by its code; empty when nothing general can
/// be said.
pub fn sts_fix(code: &str) -> &'static str {
    match code {
        "OutboundWebIdentityFederationDisabledException" => {
            " (outbound identity federation is disabled in this account: enable it with \
             `aws iam enable-outbound-web-identity-federation`)"
        }
        "SessionDurationEscalationException" => {
            " (the assertion would outlive the caller's role session: lower \
             AWS2AZURE_STS_DURATION_SECS, or let the role's sessions last longer)"
        }
        "JWTPayloadSizeExceededException" => {
            " (the role's principal and session tags make the token's claims too large: remove \
             tags from the role or its session)"
        }
        "AccessDenied" | "AccessDeniedException" => {
            " (the broker's role needs sts:GetWebIdentityToken for the audience \
             api://AzureADTokenExchange, and for a profile's role_arn sts:AssumeRole on that role, \
             whose trust policy must name the broker's role)"
        }
        _ => "",
    }
}

impl Error {
    /// The AADSTS code, when Entra gave one.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            Self::Entra { aadsts, .. } => *aadsts,
            _ => None,
        }
    }

    /// Whether trying the Entra exchange again (with a fresh assertion) can
    /// succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Entra { status, aadsts, .. } => {
                if aadsts.is_some_and(|c| CONFIGURATION_AADSTS.contains(&c)) {
                    return false;
                }
                *status == 429
                    || *status >= 500
                    || aadsts.is_some_and(|c| RETRYABLE_AADSTS.contains(&c))
            }
            Self::EntraUnreachable(_) | Self::EntraTimeout(_) => true,
            // KMS calls are retried by the SDK client (bounded); the broker
            // does not retry them again.
            _ => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Entra { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The API's answer to this failure: status, machine-readable code, and
    /// whether the caller should come back later.
    pub fn api_status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownProfile(_) => (StatusCode::NOT_FOUND, "unknown_profile"),
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::MissingIdentity => (StatusCode::FORBIDDEN, "access_denied"),
            Self::CallerNotAllowed { .. } => (StatusCode::FORBIDDEN, "principal_not_allowed"),
            // What could succeed on retry (throttling, outages, a credential
            // still propagating, Entra failing to reach the edge) is a 503
            // with Retry-After, the code passed on; the rest is a refusal.
            Self::Entra { .. } if self.is_retryable() => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable")
            }
            Self::Entra { .. } => (StatusCode::BAD_GATEWAY, "entra_refused"),
            Self::EntraUnreachable(_)
            | Self::KmsUnreachable(_)
            | Self::KmsThrottled
            | Self::PeerBusy => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
            Self::EntraTimeout(_) | Self::DeadlineExceeded(_) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            }
            Self::EntraResponse(_) => (StatusCode::BAD_GATEWAY, "bad_upstream_response"),
            Self::StsUnreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
            Self::Kms { .. }
            | Self::LocalKey(_)
            | Self::Sts { .. }
            | Self::StsSubject { .. }
            | Self::NoAssertionSource { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "signer_unavailable")
            }
            Self::Cache(_)
            | Self::Config { .. }
            | Self::Shared(_)
            | Self::Internal(_)
            | Self::HttpClient(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// What the API tells the caller. Server-side failures name their cause
    /// without the details (key and role ARNs, table names) that only the
    /// operator needs: those are in the function's log.
    pub fn public_description(&self) -> String {
        match self {
            Self::Kms { code, .. } => format!(
                "the signer cannot sign: KMS refused ({code}); the operator will find the details in the function's log"
            ),
            // The fix is the same words for everyone; the message, with its
            // role ARNs, stays in the log.
            Self::Sts { code, .. } => format!(
                "the signer cannot get an assertion: AWS STS refused ({code}){}; the operator \
                 will find the details in the function's log",
                sts_fix(code)
            ),
            Self::LocalKey(_)
            | Self::StsSubject { .. }
            | Self::NoAssertionSource { .. }
            | Self::Cache(_)
            | Self::Config { .. }
            | Self::Shared(_)
            | Self::Internal(_)
            | Self::HttpClient(_) => {
                "the signer failed; the operator will find the details in the function's log".into()
            }
            other => other.to_string(),
        }
    }

    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            setting,
            reason: reason.into(),
        }
    }
}
