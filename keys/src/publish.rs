//! Where the key document goes so that the edge serves it: Workers KV,
//! through the Cloudflare API ([`crate::cloudflare`]).

use async_trait::async_trait;

use crate::cloudflare::PublishError;
use crate::document::KeyDocument;

#[async_trait]
pub trait Publisher: Send + Sync {
    /// Writes the document; succeeds only once the API accepted it.
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError>;

    /// Where it publishes, for messages (no secret in it).
    fn describe(&self) -> String;
}
