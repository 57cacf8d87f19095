use crate::policy::PolicyError;
use crate::public::PublicError;
use crate::publish::PublishError;
use crate::store::StoreError;

/// Every way a key operation can fail or be refused. Each message names the
/// cause and the fix; none holds key material beyond public values, nor the
/// Cloudflare API token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),

    /// Every step publishes before it moves an alias that needs the new
    /// document (a key is pointed at as next only once it is published);
    /// the publications after a promotion or a retirement only reorder or
    /// shrink the document, so the one the edge keeps still lists every key
    /// that may sign.
    #[error(
        "publishing the key document failed: {0}; the edge keeps serving the document it had, \
         which lists every key that may sign; rerun `aws2azure keys rotate` (or wait for the \
         next scheduled run) to publish it"
    )]
    Publish(#[from] PublishError),

    #[error("the signing keys' key policy cannot be written: {0}")]
    Policy(#[from] PolicyError),

    #[error("reading the public key set failed: {0}")]
    Public(#[from] PublicError),

    #[error("the key document would be refused by the edge: {0}")]
    Document(#[source] aws2azure_shared::Error),

    #[error(
        "the key document would be empty: there is no current, next or previous key; run \
         `aws2azure keys stage` first"
    )]
    EmptyDocument,

    /// A guard refused the step; the message says which invariant, why, and
    /// when the step becomes possible.
    #[error("{0}")]
    Refused(String),

    #[error("{setting}: {message}")]
    Config {
        setting: &'static str,
        message: String,
    },

    /// The Cloudflare API token could not be read from AWS Secrets Manager.
    #[error("the Cloudflare API token secret `{secret_id}` in AWS Secrets Manager: {message}")]
    Secret {
        secret_id: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}
