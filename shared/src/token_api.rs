//! The token API's wire format: what `GET /token/{profile}` answers, written
//! by the signer and read by the client, so that both sides agree by
//! construction.
//!
//! Fields are declared in alphabetical order, the order the API has always
//! written them in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest `min_validity` (seconds) the token API accepts: Entra's
/// client-credential tokens live 60 to 90 minutes, so asking for more than
/// 55 can never be met.
pub const MAX_MIN_VALIDITY_SECS: u64 = 3300;

/// The answer to a successful request.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    /// Seconds the token stays valid from the answer.
    pub expires_in: u64,
    /// Unix seconds when the token expires.
    pub expires_on: u64,
    pub profile: String,
    pub scope: String,
    pub token_type: String,
}

/// Never shows the token, so a stray `{:?}` cannot leak it.
impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("profile", &self.profile)
            .field("scope", &self.scope)
            .finish()
    }
}

/// The answer to a failed request. Every field is optional on reading: the
/// body may come from API Gateway rather than the signer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDocument {
    /// `AADSTS{code}`, when Entra gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<String>,
    /// Entra's, for a support request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// A machine-readable code, such as `unknown_profile`.
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    /// API Gateway's own refusals (`{"message": ...}`); the signer never
    /// writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let response = TokenResponse {
            access_token: "secret-token-value".into(),
            expires_in: 1,
            expires_on: 2,
            profile: "graph".into(),
            scope: "https://graph.microsoft.com/.default".into(),
            token_type: "Bearer".into(),
        };
        let shown = format!("{response:?}");
        assert!(!shown.contains("secret-token-value"), "{shown}");
    }

    #[test]
    fn error_documents_read_api_gateways_refusals_too() {
        let gateway: ErrorDocument =
            serde_json::from_str(r#"{"message": "Missing Authentication Token"}"#).unwrap();
        assert_eq!(
            gateway.message.as_deref(),
            Some("Missing Authentication Token")
        );
        assert!(gateway.error.is_empty());
        let written = serde_json::to_string(&ErrorDocument {
            error: "unknown_profile".into(),
            error_description: "no profile".into(),
            ..ErrorDocument::default()
        })
        .unwrap();
        assert_eq!(
            written,
            r#"{"error":"unknown_profile","error_description":"no profile"}"#
        );
    }
}
