//! A local Lambda Runtime API (the interface a `bootstrap` polls), so the
//! real Lambda binary can be started as a process, timed to its first poll,
//! and sent real events.
//!
//! Implements `GET /2018-06-01/runtime/invocation/next`,
//! `POST .../invocation/{id}/response`, `POST .../invocation/{id}/error` and
//! `POST .../init/error`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Server};

const PREFIX: &str = "/2018-06-01/runtime";

/// What the function answered to one invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Response(Value),
    Error(Value),
}

struct Pending {
    event: Value,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Inner {
    first_poll: Option<Instant>,
    init_error: Option<Value>,
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
}

#[derive(Clone)]
pub struct RuntimeApi {
    inner: Arc<Mutex<Inner>>,
    queue_tx: mpsc::UnboundedSender<Pending>,
    queue_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>>,
}

impl Default for RuntimeApi {
    fn default() -> Self {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::default(),
            queue_tx,
            queue_rx: Arc::new(tokio::sync::Mutex::new(queue_rx)),
        }
    }
}

impl RuntimeApi {
    pub async fn serve(&self, addr: SocketAddr) -> Result<Server, Error> {
        let router = Router::new()
            .route(&format!("{PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{PREFIX}/invocation/{{id}}/response"),
                post(response),
            )
            .route(&format!("{PREFIX}/invocation/{{id}}/error"), post(error))
            .route(&format!("{PREFIX}/init/error"), post(init_error))
            .with_state(self.clone());
        Server::start(addr, router).await
    }

    /// When the function first asked for work: its init is done.
    pub fn first_poll(&self) -> Option<Instant> {
        self.lock().first_poll
    }

    pub fn init_error(&self) -> Option<Value> {
        self.lock().init_error.clone()
    }

    /// Sends `event` to the function and waits for its answer.
    pub async fn invoke(&self, event: Value, timeout: Duration) -> Option<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue_tx.send(Pending { event, reply }).ok()?;
        tokio::time::timeout(timeout, answer).await.ok()?.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn next(State(api): State<RuntimeApi>) -> Response {
    {
        let mut inner = api.lock();
        inner.first_poll.get_or_insert_with(Instant::now);
    }
    let pending = api.queue_rx.lock().await.recv().await;
    let Some(pending) = pending else {
        return StatusCode::GONE.into_response();
    };
    let id = uuid::Uuid::new_v4().to_string();
    api.lock().waiting.insert(id.clone(), pending.reply);
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        + 30_000;
    let mut headers = HeaderMap::new();
    let header = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
    headers.insert("lambda-runtime-aws-request-id", header(&id));
    headers.insert("lambda-runtime-deadline-ms", header(&deadline.to_string()));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:111122223333:function:aws2azure-broker"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-00000000-000000000000000000000000"),
    );
    headers.insert("content-type", header("application/json"));
    (StatusCode::OK, headers, pending.event.to_string()).into_response()
}

fn settle(api: &RuntimeApi, id: &str, outcome: Outcome) -> StatusCode {
    match api.lock().waiting.remove(id) {
        Some(reply) => {
            let _ = reply.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(
    State(api): State<RuntimeApi>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    settle(&api, &id, Outcome::Response(json(&body)))
}

async fn error(State(api): State<RuntimeApi>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    settle(&api, &id, Outcome::Error(json(&body)))
}

async fn init_error(State(api): State<RuntimeApi>, body: Bytes) -> StatusCode {
    api.lock().init_error = Some(json(&body));
    StatusCode::ACCEPTED
}
