use thiserror::Error;

/// Every way the shared rules can refuse input. Messages name what was wrong
/// and, where there is one, the fix; they never contain key material beyond
/// public values, nor tokens or assertions.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("malformed public key: {0}")]
    MalformedKey(String),

    #[error(
        "unsupported key type `{algorithm}`: Entra accepts only RS256 (RSA) assertions for \
         federation; use an RSA key (KMS KeySpec RSA_2048 or larger)"
    )]
    UnsupportedKeyType { algorithm: String },

    #[error("RSA key of {bits} bits is too weak: use at least 2048 bits (KMS KeySpec RSA_2048)")]
    WeakKey { bits: usize },

    #[error("invalid key set: {0}")]
    InvalidKeySet(String),

    #[error("invalid issuer `{issuer}`: {reason}")]
    InvalidIssuer { issuer: String, reason: String },

    #[error("invalid discovery document: {0}")]
    InvalidDiscovery(String),

    #[error("invalid assertion: {0}")]
    InvalidAssertion(String),

    #[error("profile `{profile}`: invalid `{field}`: {reason}")]
    InvalidProfile {
        profile: String,
        field: &'static str,
        reason: String,
    },

    #[error("invalid profile set: {0}")]
    InvalidProfiles(String),

    #[error("invalid CIDR `{input}`: {reason}")]
    InvalidCidr { input: String, reason: String },

    #[error("invalid allowlist mode `{0}`: expected `off`, `monitor` or `enforce`")]
    InvalidAllowlistMode(String),

    #[error("invalid allowlist document: {0}")]
    InvalidAllowlist(String),

    #[error("Service Tags file is not usable: {0}")]
    ServiceTags(String),

    #[error(
        "Service Tags file has no tag named `{tag}` (it has {available} tags; names are \
         case-sensitive, e.g. `AzureActiveDirectory`)"
    )]
    TagNotFound { tag: String, available: usize },
}
