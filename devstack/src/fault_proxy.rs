//! A reverse proxy for AWS JSON-protocol services (KMS, DynamoDB) that
//! answers chosen operations with an error, or holds them back, for a number
//! of calls and counts every call by operation. It stands between the SDK
//! and moto, because moto never throttles and is never slow.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::{Error, Server};

/// An AWS error to answer with.
#[derive(Clone, Debug)]
pub struct AwsFault {
    /// `X-Amz-Target` of the operation, e.g. `TrentService.Sign`.
    pub target: String,
    /// e.g. `ThrottlingException`.
    pub error_type: String,
    pub status: u16,
    pub remaining: usize,
}

/// Holds calls back before forwarding them.
#[derive(Clone, Debug)]
struct AwsDelay {
    target: String,
    delay: std::time::Duration,
    remaining: usize,
}

#[derive(Default)]
struct Shared {
    faults: Vec<AwsFault>,
    delays: Vec<AwsDelay>,
    calls: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct FaultProxy {
    upstream: String,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

impl FaultProxy {
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            http: reqwest::Client::new(),
            shared: Arc::default(),
        }
    }

    pub async fn serve(self, addr: SocketAddr) -> Result<Server, Error> {
        let router = Router::new().fallback(forward).with_state(self);
        Server::start(addr, router).await
    }

    /// Answers the next `count` calls of `target` with `error_type`.
    pub fn fail(&self, target: &str, error_type: &str, status: u16, count: usize) {
        self.lock().faults.push(AwsFault {
            target: target.into(),
            error_type: error_type.into(),
            status,
            remaining: count,
        });
    }

    /// Holds the next `count` calls of `target` back for `delay` before
    /// forwarding them.
    pub fn delay(&self, target: &str, delay: std::time::Duration, count: usize) {
        self.lock().delays.push(AwsDelay {
            target: target.into(),
            delay,
            remaining: count,
        });
    }

    /// Drops every hold not used yet.
    pub fn clear_delays(&self) {
        self.lock().delays.clear();
    }

    /// Calls seen for `target` (answered by the proxy or forwarded).
    pub fn calls(&self, target: &str) -> u64 {
        self.lock().calls.get(target).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn forward(
    State(proxy): State<FaultProxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (injected, delay) = {
        let mut shared = proxy.lock();
        *shared.calls.entry(target.clone()).or_default() += 1;
        let injected = shared
            .faults
            .iter_mut()
            .find(|f| f.target == target && f.remaining > 0)
            .map(|f| {
                f.remaining -= 1;
                (f.status, f.error_type.clone())
            });
        let delay = shared
            .delays
            .iter_mut()
            .find(|d| d.target == target && d.remaining > 0)
            .map(|d| {
                d.remaining -= 1;
                d.delay
            });
        (injected, delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, error_type)) = injected {
        let body = serde_json::json!({"__type": error_type, "message": "injected by the devstack fault proxy"});
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            [("content-type", "application/x-amz-json-1.1")],
            body.to_string(),
        )
            .into_response();
    }
    let url = format!(
        "{}{}",
        proxy.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut request = proxy.http.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(upstream) => {
            let status = upstream.status();
            let headers = upstream.headers().clone();
            let bytes = upstream.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
