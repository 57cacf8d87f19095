//! A local stand-in for the part of the Cloudflare v4 API the key manager
//! uses: writing and reading one Workers KV value.
//!
//! `PUT` and `GET /client/v4/accounts/{account}/storage/kv/namespaces/
//! {namespace}/values/{key}` with Cloudflare's answers: the JSON envelope
//! (`{"success": …, "errors": [{"code", "message"}], "messages": [],
//! "result": …}`) for a write and for every error, the raw value for a
//! successful read. The bearer token is checked (401, code 10000), the
//! account (403, code 10000: what Cloudflare answers a token without
//! permission there) and the namespace (404).
//!
//! Values go to a [`KvBackend`]: in memory by default, the native edge's key
//! document ([`crate::edge_server::EdgeServer::kv_backend`]), or anything a
//! test supplies (the workerd edge's KV). The next N requests can be failed
//! with any status ([`Fault`]), and it counts what it did.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Error, Server};

/// The path prefix of the API; a client's base URL is
/// `http://ADDR` followed by it.
pub const API_PREFIX: &str = "/client/v4";
/// Workers KV's limit on a key name.
pub const MAX_KEY_BYTES: usize = 512;

/// The API base URL of a stand-in served by `server`.
pub fn api_base(server: &Server) -> String {
    format!("{}{API_PREFIX}", server.url())
}

/// Where the stand-in keeps values.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), Error>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
}

/// Values in process memory.
#[derive(Default)]
pub struct MemoryKv {
    values: Mutex<HashMap<String, Vec<u8>>>,
}

#[async_trait]
impl KvBackend for MemoryKv {
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), Error> {
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), value);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }
}

/// The one account and namespace the stand-in holds, and the token that
/// may use them.
#[derive(Clone)]
pub struct CloudflareConfig {
    pub api_token: String,
    pub account_id: String,
    pub namespace_id: String,
}

impl std::fmt::Debug for CloudflareConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareConfig")
            .field("api_token", &"redacted")
            .field("account_id", &self.account_id)
            .field("namespace_id", &self.namespace_id)
            .finish()
    }
}

/// A failure to serve instead of the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// This HTTP status with Cloudflare's error envelope (and, for a 429,
    /// `Retry-After` in seconds when given).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
}

/// What the stand-in has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudflareStats {
    /// Writes stored in the backend.
    pub writes_accepted: u64,
    /// Reads answered with a value or "key not found".
    pub reads: u64,
    /// Requests answered with an error (injected faults included).
    pub requests_refused: u64,
    /// Injected faults served.
    pub faults: u64,
}

struct Inner {
    config: CloudflareConfig,
    backend: Arc<dyn KvBackend>,
    faults: Mutex<VecDeque<Fault>>,
    stats: Mutex<CloudflareStats>,
}

/// A handle on the stand-in; clones share it.
#[derive(Clone)]
pub struct CloudflareStandIn {
    state: Arc<Inner>,
}

impl CloudflareStandIn {
    /// With values in memory.
    pub fn new(config: CloudflareConfig) -> Self {
        Self::with_backend(config, Arc::new(MemoryKv::default()))
    }

    pub fn with_backend(config: CloudflareConfig, backend: Arc<dyn KvBackend>) -> Self {
        Self {
            state: Arc::new(Inner {
                config,
                backend,
                faults: Mutex::default(),
                stats: Mutex::default(),
            }),
        }
    }

    /// Serves on `addr` (port 0 picks a free one) until the server is dropped.
    pub async fn serve(self, addr: SocketAddr) -> Result<Server, Error> {
        Server::start(addr, self.router()).await
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/client/v4/accounts/{account}/storage/kv/namespaces/{namespace}/values/{key}",
                put(write).get(read),
            )
            .fallback(no_route)
            .with_state(self.clone())
    }

    /// Fails each of the next `count` API requests with `fault`, before the
    /// token is even checked.
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(std::iter::repeat_n(fault, count));
    }

    pub fn stats(&self) -> CloudflareStats {
        self.state
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The value stored under `key`, read from the backend directly.
    pub async fn value(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.state.backend.get(key).await
    }

    fn count(&self, f: impl FnOnce(&mut CloudflareStats)) {
        f(&mut self.state.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn next_fault(&self) -> Option<Fault> {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// The checks every request passes, in Cloudflare's order: fault,
    /// token, account, namespace, key. `Some`: the answer to a request
    /// refused.
    fn refusal(
        &self,
        headers: &HeaderMap,
        account: &str,
        namespace: &str,
        key: &str,
    ) -> Option<Response> {
        if let Some(Fault::Status {
            status,
            retry_after,
        }) = self.next_fault()
        {
            self.count(|s| {
                s.faults += 1;
                s.requests_refused += 1;
            });
            return Some(fault_response(status, retry_after));
        }
        let refuse = |status: StatusCode, code: u32, message: &str| {
            self.count(|s| s.requests_refused += 1);
            failure(status, code, message)
        };
        let config = &self.state.config;
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if token != Some(config.api_token.as_str()) {
            return Some(refuse(
                StatusCode::UNAUTHORIZED,
                10000,
                "Authentication error",
            ));
        }
        if account != config.account_id {
            return Some(refuse(StatusCode::FORBIDDEN, 10000, "Authentication error"));
        }
        if namespace != config.namespace_id {
            return Some(refuse(StatusCode::NOT_FOUND, 10013, "namespace not found"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Some(refuse(
                StatusCode::URI_TOO_LONG,
                10019,
                &format!(
                    "UTF-8 encoded length of {} exceeds key length limit of {MAX_KEY_BYTES}.",
                    key.len()
                ),
            ));
        }
        if key == "." || key == ".." {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                10019,
                "Illegal key name: `.` and `..` are not allowed.",
            ));
        }
        None
    }
}

/// Cloudflare's answer envelope.
fn envelope(success: bool, errors: serde_json::Value) -> serde_json::Value {
    json!({"success": success, "errors": errors, "messages": [], "result": null})
}

fn failure(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(envelope(false, json!([{"code": code, "message": message}]))),
    )
        .into_response()
}

fn fault_response(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, message) = match status.as_u16() {
        401 | 403 => (10000, "Authentication error"),
        429 => (
            971,
            "Please wait and consider throttling your request speed",
        ),
        500..=599 => (10001, "Internal server error"),
        _ => (10002, "Injected failure"),
    };
    let mut response = failure(status, code, message);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn backend_failed(stand_in: &CloudflareStandIn, e: &Error) -> Response {
    tracing::error!(error = %e, "Cloudflare stand-in: KV backend failed");
    stand_in.count(|s| s.requests_refused += 1);
    failure(StatusCode::INTERNAL_SERVER_ERROR, 10001, &e.to_string())
}

async fn write(
    State(stand_in): State<CloudflareStandIn>,
    Path((account, namespace, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = stand_in.refusal(&headers, &account, &namespace, &key) {
        return refused;
    }
    // The real API parses a multipart body (value and metadata); the key
    // manager sends the raw value, and a multipart body stored as is would
    // hide a client that changed.
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    if multipart {
        stand_in.count(|s| s.requests_refused += 1);
        return failure(
            StatusCode::BAD_REQUEST,
            10002,
            "this stand-in takes the raw value as the body, not multipart",
        );
    }
    match stand_in.state.backend.put(&key, body.to_vec()).await {
        Ok(()) => {
            stand_in.count(|s| s.writes_accepted += 1);
            (StatusCode::OK, axum::Json(envelope(true, json!([])))).into_response()
        }
        Err(e) => backend_failed(&stand_in, &e),
    }
}

async fn read(
    State(stand_in): State<CloudflareStandIn>,
    Path((account, namespace, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = stand_in.refusal(&headers, &account, &namespace, &key) {
        return refused;
    }
    match stand_in.state.backend.get(&key).await {
        Ok(value) => {
            stand_in.count(|s| s.reads += 1);
            match value {
                Some(value) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    value,
                )
                    .into_response(),
                None => failure(StatusCode::NOT_FOUND, 10009, "get: 'key not found'"),
            }
        }
        Err(e) => backend_failed(&stand_in, &e),
    }
}

async fn no_route(State(stand_in): State<CloudflareStandIn>) -> Response {
    stand_in.count(|s| s.requests_refused += 1);
    failure(StatusCode::NOT_FOUND, 7000, "No route for that URI")
}
