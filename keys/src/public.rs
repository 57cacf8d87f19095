//! What the world sees: the key set behind the issuer's discovery document,
//! read the way Entra reads it (discovery first, then its `jwks_uri`).
//! "Served publicly" means found there, not merely written to KV.

use std::time::Duration;

use async_trait::async_trait;
use aws2azure_shared::discovery::{DiscoveryDocument, Issuer};
use aws2azure_shared::jwk::JwkSet;
use aws2azure_signer::entra::read_capped;

/// Discovery documents and key sets larger than this are not read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

#[async_trait]
pub trait PublicKeySet: Send + Sync {
    /// The key set the issuer serves right now.
    async fn fetch(&self) -> Result<JwkSet, PublicError>;

    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum PublicError {
    #[error("{0}")]
    NotConfigured(String),
    #[error("{url} is unreachable ({reason}); check the issuer URL and that the edge is deployed")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}; the edge is not serving it (see `aws2azure doctor`)")]
    Status { url: String, status: u16 },
    #[error("{url} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {source}")]
    Invalid {
        url: String,
        #[source]
        source: aws2azure_shared::Error,
    },
    #[error(
        "the discovery document names issuer `{found}`, not `{expected}`: Entra would refuse \
         every assertion"
    )]
    WrongIssuer { expected: String, found: String },
}

/// Reads the issuer's documents over HTTP(S).
pub struct HttpPublicKeySet {
    client: reqwest::Client,
    issuer: Issuer,
}

impl HttpPublicKeySet {
    pub fn new(issuer: Issuer, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, issuer })
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, PublicError> {
        let unreachable = |e: reqwest::Error| PublicError::Unreachable {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        };
        let response = self
            .client
            .get(url)
            // A cached copy would say nothing about what a relying party
            // that fetches now gets.
            .header(reqwest::header::CACHE_CONTROL, "no-cache")
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(PublicError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let (body, whole) = read_capped(response, MAX_DOCUMENT_BYTES)
            .await
            .map_err(unreachable)?;
        if !whole {
            return Err(PublicError::TooLarge {
                url: url.to_string(),
            });
        }
        Ok(body)
    }
}

#[async_trait]
impl PublicKeySet for HttpPublicKeySet {
    async fn fetch(&self) -> Result<JwkSet, PublicError> {
        let url = self.issuer.discovery_url();
        let discovery = DiscoveryDocument::from_json(&self.get(&url).await?)
            .map_err(|source| PublicError::Invalid { url, source })?;
        if discovery.issuer != self.issuer.as_str() {
            return Err(PublicError::WrongIssuer {
                expected: self.issuer.as_str().to_string(),
                found: discovery.issuer,
            });
        }
        let url = discovery.jwks_uri;
        JwkSet::from_json(&self.get(&url).await?)
            .map_err(|source| PublicError::Invalid { url, source })
    }

    fn describe(&self) -> String {
        self.issuer.discovery_url()
    }
}
