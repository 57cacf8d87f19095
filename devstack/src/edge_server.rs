//! The edge core (crate `aws2azure-edge`, the same code the Worker runs) on
//! a local HTTP server: the issuer's discovery document and key set for
//! `aws2azure dev` and for tests that do not need workerd.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use aws2azure_edge::{Allowlist, EdgeConfig, EdgeRequest, KeyDocument, handle};
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::JwkSet;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;

use crate::cloudflare::KvBackend;
use crate::{Error, Server};

/// A running local edge; the key set it serves can be replaced.
pub struct EdgeServer {
    server: Server,
    issuer: Issuer,
    keys: Arc<RwLock<Option<KeyDocument>>>,
}

#[derive(Clone)]
struct Shared {
    config: Arc<EdgeConfig>,
    allowlist: Arc<Allowlist>,
    keys: Arc<RwLock<Option<KeyDocument>>>,
}

impl EdgeServer {
    /// Binds `addr`, then configures the edge with the issuer `issuer_for`
    /// derives from the bound address (so port 0 works), serving `keys`.
    /// The allowlist is off: loopback clients are not Azure AD.
    pub async fn start(
        addr: SocketAddr,
        issuer_for: impl FnOnce(SocketAddr) -> String,
        keys: Option<&JwkSet>,
    ) -> Result<Self, Error> {
        let (listener, bound) = crate::bind(addr).await?;
        let issuer_url = issuer_for(bound);
        let config = EdgeConfig::from_vars(|name| match name {
            aws2azure_edge::ISSUER => Some(issuer_url.clone()),
            aws2azure_edge::ALLOWLIST_MODE => Some("off".to_string()),
            _ => None,
        })
        .map_err(|e| Error::Edge(e.to_string()))?;
        let issuer = config.issuer().clone();
        let keys = Arc::new(RwLock::new(keys.cloned().map(KeyDocument::from_key_set)));
        let shared = Shared {
            config: Arc::new(config),
            allowlist: aws2azure_edge::builtin_allowlist(),
            keys: keys.clone(),
        };
        let router = Router::new().fallback(serve).with_state(shared);
        let server = Server::from_listener(listener, router, true)?;
        Ok(Self {
            server,
            issuer,
            keys,
        })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Publishes another key set (`None`: no key document at all).
    pub fn set_keys(&self, keys: Option<&JwkSet>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) =
            keys.cloned().map(KeyDocument::from_key_set);
    }

    /// Publishes a key document as written to KV: its bytes are validated
    /// by the edge's own [`KeyDocument::parse`] (refused: the edge keeps
    /// serving what it had, as the deployed edge keeps its last good copy).
    pub fn set_key_document(&self, bytes: &[u8]) -> Result<(), Error> {
        set_document(&self.keys, bytes)
    }

    /// A Workers KV for the Cloudflare API stand-in in which writing `key`
    /// (the edge's `KEY_DOCUMENT_KV_KEY`) replaces the document this edge
    /// serves, so `aws2azure dev` publishes the way production does.
    pub fn kv_backend(&self, key: &str) -> EdgeKv {
        EdgeKv {
            keys: self.keys.clone(),
            document_key: key.to_string(),
            values: Mutex::default(),
        }
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn set_document(keys: &RwLock<Option<KeyDocument>>, bytes: &[u8]) -> Result<(), Error> {
    let document = KeyDocument::parse(bytes).map_err(|e| Error::Edge(e.to_string()))?;
    *keys.write().unwrap_or_else(|p| p.into_inner()) = Some(document);
    Ok(())
}

/// See [`EdgeServer::kv_backend`]. Like Workers KV, it stores any value;
/// like the edge, it serves only a document that passes validation and
/// otherwise keeps the one it had.
pub struct EdgeKv {
    keys: Arc<RwLock<Option<KeyDocument>>>,
    document_key: String,
    values: Mutex<HashMap<String, Vec<u8>>>,
}

#[async_trait]
impl KvBackend for EdgeKv {
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), Error> {
        if key == self.document_key
            && let Err(e) = set_document(&self.keys, &value)
        {
            tracing::warn!(error = %e, "the edge keeps its key document: the one written is refused");
        }
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), value);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        if let Some(value) = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(Some(value.clone()));
        }
        // Before any write, the document the edge was started with.
        if key == self.document_key {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            return Ok(keys.as_ref().map(|d| d.body().to_vec()));
        }
        Ok(None)
    }
}

async fn serve(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let keys = shared
        .keys
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let peer = peer.ip().to_string();
    // Repeated If-None-Match lines are one list (RFC 9110 section 5.3).
    let if_none_match: Vec<&str> = request
        .headers()
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let if_none_match = if_none_match.join(", ");
    let mut edge_request = EdgeRequest::from_http(&request).with_client_address(Some(&peer));
    if !if_none_match.is_empty() {
        edge_request.if_none_match = Some(&if_none_match);
    }
    let handled = handle(
        &shared.config,
        &shared.allowlist,
        keys.as_ref(),
        &edge_request,
    );
    tracing::debug!(target: "aws2azure::edge", "{}", handled.log.to_json());
    let (parts, body) = handled.response.into_parts();
    Response::from_parts(parts, Body::from(body))
}
