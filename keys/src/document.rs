//! The key document: the public keys of current, next and previous as a JWK
//! Set, the bytes published to Workers KV and served by the edge at `/jwks`.

use aws2azure_shared::jwk::{Jwk, JwkSet, KeyId};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::ring::KeyRing;

/// A validated key document. The same keys in the same states always give
/// the same bytes (and so the same ETag at the edge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDocument {
    bytes: Vec<u8>,
    kids: Vec<KeyId>,
}

impl KeyDocument {
    /// The document the ring should have published: current first, then
    /// next, then previous. Refused if it would be empty (the edge refuses
    /// an empty document) or if the edge's rules would refuse it.
    pub fn for_ring(ring: &KeyRing) -> Result<Self, Error> {
        let keys: Vec<Jwk> = ring
            .published()
            .into_iter()
            .map(|k| k.jwk.clone())
            .collect();
        Self::from_keys(keys)
    }

    /// A document of these keys in this order, validated by the same
    /// `shared` rules the edge applies when it reads KV: at most 100 keys,
    /// RSA ≥ 2048, unique `kid`s, and not empty.
    pub fn from_keys(keys: Vec<Jwk>) -> Result<Self, Error> {
        if keys.is_empty() {
            return Err(Error::EmptyDocument);
        }
        let set = JwkSet::new(keys).map_err(Error::Document)?;
        let bytes = set.to_json().into_bytes();
        // What the edge will do with these bytes, done here first.
        let reread = JwkSet::from_json(&bytes).map_err(Error::Document)?;
        debug_assert_eq!(reread, set);
        let kids = set.keys().iter().map(|k| k.kid().clone()).collect();
        Ok(Self { bytes, kids })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key ids, in document order.
    pub fn kids(&self) -> &[KeyId] {
        &self.kids
    }

    /// A short fingerprint of the bytes, for logs and `status`.
    pub fn version(&self) -> String {
        hex::encode(&Sha256::digest(&self.bytes)[..6])
    }
}
