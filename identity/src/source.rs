//! Where tokens come from: the token API (through [`TokenClient`]), or in a
//! unit test, anything that implements [`TokenSource`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws2azure_client::TokenClient;
use aws2azure_shared::profile::ProfileName;

use crate::Error;

/// An Entra access token for one profile.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    /// Unix seconds, as Entra (through the token API) reported it.
    pub expires_on: u64,
}

impl Token {
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_on.saturating_sub(now)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A token for `profile` valid for at least `min_validity` seconds.
    async fn token(&self, profile: &ProfileName, min_validity: u64) -> Result<Token, Error>;

    /// Where fetched tokens come from, as the request log names it.
    fn origin(&self) -> &'static str {
        "token_api"
    }
}

#[async_trait]
impl TokenSource for TokenClient {
    async fn token(&self, profile: &ProfileName, min_validity: u64) -> Result<Token, Error> {
        match TokenClient::token(self, profile.as_str(), min_validity).await {
            Ok(answer) => Ok(Token {
                access_token: answer.access_token,
                expires_on: answer.expires_on,
            }),
            Err(source) => Err(Error::TokenApi {
                profile: profile.to_string(),
                status: match &source {
                    aws2azure_client::Error::Api { status, .. } => Some(*status),
                    _ => None,
                },
                source: Arc::new(source),
            }),
        }
    }
}
