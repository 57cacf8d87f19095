//! A local Lambda Extensions API (the interface an external extension in
//! `/opt/extensions` talks to), so an extension binary can be started as a
//! process with `AWS_LAMBDA_RUNTIME_API` pointing here, watched while it
//! registers and parks in `next`, and sent INVOKE and SHUTDOWN events.
//!
//! Implements `POST /2020-01-01/extension/register`,
//! `GET /2020-01-01/extension/event/next`, `POST .../init/error` and
//! `POST .../exit/error` with Lambda's answers, including its refusals
//! (403 with `{"errorMessage", "errorType"}`, the error types Lambda's own
//! Runtime API implementation uses). The Logs and Telemetry APIs are not
//! here: the `lambda-extension` crate calls them only for an extension that
//! processes logs or telemetry; such a call gets a 404 and is recorded.
//!
//! It records what it received (registrations, `next` calls per extension,
//! posted errors, refused requests) for tests to assert on, and lets them
//! wait for the moment every extension is parked in its `next` call: the
//! point where Lambda would consider the phase (init or invoke) complete.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::{Error, Server};

const PREFIX: &str = "/2020-01-01/extension";

/// Lambda's limit on extensions per function.
pub const MAX_EXTENSIONS: usize = 10;
/// What registration answers (`functionName`, and the ARN's last part).
pub const FUNCTION_NAME: &str = "aws2azure-function";
pub const FUNCTION_VERSION: &str = "$LATEST";
pub const HANDLER: &str = "bootstrap";
/// Sent as `accountId` to an extension that accepts that feature.
pub const ACCOUNT_ID: &str = "111122223333";
/// Time an extension gets after SHUTDOWN (Lambda's 2 s shutdown phase).
pub const SHUTDOWN_TIME: Duration = Duration::from_millis(2_000);

const NAME_HEADER: &str = "lambda-extension-name";
const ID_HEADER: &str = "lambda-extension-identifier";
const ERROR_TYPE_HEADER: &str = "lambda-extension-function-error-type";
const ACCEPT_FEATURE_HEADER: &str = "lambda-extension-accept-feature";
const EVENT_ID_HEADER: &str = "lambda-extension-event-identifier";

/// Which error an extension posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `/extension/init/error`
    Init,
    /// `/extension/exit/error`
    Exit,
}

/// An error an extension posted.
#[derive(Clone, Debug, PartialEq)]
pub struct PostedError {
    /// The extension's registered name.
    pub extension: String,
    pub kind: ErrorKind,
    /// The `Lambda-Extension-Function-Error-Type` header.
    pub error_type: String,
    /// The body: JSON when it parses, else its text; `None` when empty.
    pub body: Option<Value>,
}

/// One registered extension, as the stand-in saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// `Lambda-Extension-Name`.
    pub name: String,
    /// The `Lambda-Extension-Identifier` it was given.
    pub id: String,
    /// The events it registered for (`INVOKE`, `SHUTDOWN`).
    pub events: Vec<String>,
    /// `Lambda-Extension-Accept-Feature`, when sent.
    pub accept_feature: Option<String>,
    /// How many `next` calls it made (the one in progress included).
    pub next_calls: usize,
    /// Whether it is waiting in `next` now: ready, in Lambda's terms.
    pub parked: bool,
    /// How many events it was sent.
    pub events_received: usize,
}

struct Extension {
    record: Registration,
    id: Uuid,
    failed: bool,
    queue: mpsc::UnboundedSender<Value>,
    inbox: Inbox,
}

#[derive(Default)]
struct Inner {
    extensions: Vec<Extension>,
    errors: Vec<PostedError>,
    refused: Vec<String>,
    /// Lambda closes registration when init ends: here, at the first event.
    registration_closed: bool,
    shut_down: bool,
}

impl Inner {
    fn find(&mut self, id: Uuid) -> Option<&mut Extension> {
        self.extensions.iter_mut().find(|e| e.id == id)
    }
}

/// The stand-in; clones share one state.
#[derive(Clone)]
pub struct ExtensionsApi {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every change, so waiters re-check without polling.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for ExtensionsApi {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changed: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl ExtensionsApi {
    /// Serves the API on `addr`; `AWS_LAMBDA_RUNTIME_API` is then the
    /// server's address (`127.0.0.1:PORT`, no scheme).
    pub async fn serve(&self, addr: SocketAddr) -> Result<Server, Error> {
        let router = Router::new()
            .route(&format!("{PREFIX}/register"), post(register))
            .route(&format!("{PREFIX}/event/next"), get(next))
            .route(&format!("{PREFIX}/init/error"), post(init_error))
            .route(&format!("{PREFIX}/exit/error"), post(exit_error))
            .fallback(unknown)
            .method_not_allowed_fallback(wrong_method)
            .with_state(self.clone());
        Server::start(addr, router).await
    }

    /// The registered extensions, in registration order.
    pub fn registered(&self) -> Vec<Registration> {
        self.lock()
            .extensions
            .iter()
            .map(|e| e.record.clone())
            .collect()
    }

    /// The errors extensions posted, in order.
    pub fn errors(&self) -> Vec<PostedError> {
        self.lock().errors.clone()
    }

    /// Every request refused, as `METHOD PATH -> STATUS TYPE`.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// Waits until at least one extension registered and every registered
    /// extension made `count` or more `next` calls and is parked in the
    /// last one: with `count` 1 its init is done, with `count` N + 1 it has
    /// finished handling the N-th event.
    pub async fn wait_for_next(&self, count: usize, timeout: Duration) -> Result<(), Error> {
        self.wait_until(
            timeout,
            &format!("every extension parked in next call {count}"),
            |i| {
                !i.extensions.is_empty()
                    && i.extensions
                        .iter()
                        .all(|e| e.record.next_calls >= count && e.record.parked)
            },
        )
        .await
    }

    /// Waits until `count` errors were posted.
    pub async fn wait_for_errors(&self, count: usize, timeout: Duration) -> Result<(), Error> {
        self.wait_until(timeout, &format!("{count} posted errors"), |i| {
            i.errors.len() >= count
        })
        .await
    }

    /// Sends an INVOKE to every extension registered for it, with
    /// `time_left` until its deadline; returns the request id.
    pub fn push_invoke(&self, time_left: Duration) -> Result<String, Error> {
        let request_id = Uuid::new_v4().to_string();
        let trace = Uuid::new_v4().simple().to_string();
        let event = json!({
            "eventType": "INVOKE",
            "deadlineMs": deadline_ms(time_left),
            "requestId": request_id,
            "invokedFunctionArn":
                format!("arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{FUNCTION_NAME}"),
            "tracing": {
                "type": "X-Amzn-Trace-Id",
                "value": format!(
                    "Root=1-{:08x}-{};Parent={};Sampled=0",
                    epoch_ms() / 1000,
                    &trace[..24],
                    &trace[16..32]
                ),
            },
        });
        self.push("INVOKE", event)?;
        Ok(request_id)
    }

    /// Sends SHUTDOWN (reason `spindown`, Lambda's 2 s to finish) to every
    /// extension registered for it; nothing can be sent after it.
    pub fn push_shutdown(&self) -> Result<(), Error> {
        let event = json!({
            "eventType": "SHUTDOWN",
            "shutdownReason": "spindown",
            "deadlineMs": deadline_ms(SHUTDOWN_TIME),
        });
        self.push("SHUTDOWN", event)?;
        self.lock().shut_down = true;
        Ok(())
    }

    fn push(&self, kind: &str, event: Value) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.shut_down {
            return Err(Error::ExtensionsApi(format!(
                "cannot send {kind}: the environment was shut down already"
            )));
        }
        let mut sent = 0;
        for ext in inner.extensions.iter_mut() {
            if !ext.failed && ext.record.events.iter().any(|e| e == kind) {
                // The receiver lives as long as `ext`: a send cannot fail.
                let _ = ext.queue.send(event.clone());
                sent += 1;
            }
        }
        if sent == 0 {
            return Err(Error::ExtensionsApi(format!(
                "cannot send {kind}: no extension is registered for it"
            )));
        }
        inner.registration_closed = true;
        Ok(())
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Inner) -> bool,
    ) -> Result<(), Error> {
        // Subscribed before the first check, so no change is missed.
        let mut changes = self.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if done(&self.lock()) {
                    return;
                }
                // The sender lives in `self`: `changed` cannot fail here.
                let _ = changes.changed().await;
            }
        })
        .await;
        waited.map_err(|_| {
            Error::ExtensionsApi(format!(
                "no {what} within {timeout:?}; registered: {:?}; errors: {:?}; refused: {:?}",
                self.registered(),
                self.errors(),
                self.refused()
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn deadline_ms(time_left: Duration) -> u64 {
    epoch_ms().saturating_add(time_left.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Why Lambda refuses a request: a 403 with its `errorType`.
struct Refusal {
    error_type: &'static str,
    message: String,
}

fn refusal(error_type: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        error_type,
        message: message.into(),
    }
}

/// The answer to a request: `answer` or, refused, Lambda's 403 (recorded).
fn respond(
    api: &ExtensionsApi,
    method: &Method,
    uri: &Uri,
    answer: Result<Response, Refusal>,
) -> Response {
    let refusal = match answer {
        Ok(response) => return response,
        Err(refusal) => refusal,
    };
    api.lock().refused.push(format!(
        "{method} {} -> 403 {}",
        uri.path(),
        refusal.error_type
    ));
    api.touch();
    let body = json!({ "errorMessage": refusal.message, "errorType": refusal.error_type });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    events: Vec<String>,
}

async fn register(
    State(api): State<ExtensionsApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = enrol(&api, &headers, &body);
    respond(&api, &method, &uri, answer)
}

fn enrol(api: &ExtensionsApi, headers: &HeaderMap, body: &Bytes) -> Result<Response, Refusal> {
    let name = header_str(headers, NAME_HEADER).unwrap_or_default();
    if name.is_empty() {
        return Err(refusal(
            "Extension.InvalidExtensionName",
            "Empty extension name",
        ));
    }
    let body: RegisterBody =
        serde_json::from_slice(body).map_err(|e| refusal("InvalidRequestFormat", e.to_string()))?;
    if let Some(bad) = body
        .events
        .iter()
        .find(|e| !matches!(e.as_str(), "INVOKE" | "SHUTDOWN"))
    {
        return Err(refusal(
            "Extension.InvalidEventType",
            format!("{bad}: invalid event type"),
        ));
    }
    let id = Uuid::new_v4();
    let accept_feature = header_str(headers, ACCEPT_FEATURE_HEADER).map(str::to_string);
    {
        let mut inner = api.lock();
        if inner.registration_closed {
            return Err(refusal(
                "Extension.RegistrationClosed",
                "Extension registration closed already",
            ));
        }
        if inner.extensions.iter().any(|e| e.record.name == name) {
            return Err(refusal(
                "Extension.InvalidExtensionState",
                "Extension with this name already registered",
            ));
        }
        if inner.extensions.len() >= MAX_EXTENSIONS {
            return Err(refusal(
                "Extension.TooManyExtensions",
                format!("Extension limit ({MAX_EXTENSIONS}) reached"),
            ));
        }
        let (queue, inbox) = mpsc::unbounded_channel();
        inner.extensions.push(Extension {
            record: Registration {
                name: name.to_string(),
                id: id.to_string(),
                events: body.events,
                accept_feature: accept_feature.clone(),
                next_calls: 0,
                parked: false,
                events_received: 0,
            },
            id,
            failed: false,
            queue,
            inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
        });
    }
    api.touch();

    let mut answer = json!({
        "functionName": FUNCTION_NAME,
        "functionVersion": FUNCTION_VERSION,
        "handler": HANDLER,
    });
    let wants_account = accept_feature
        .as_deref()
        .is_some_and(|f| f.split(',').any(|f| f.trim() == "accountId"));
    if wants_account {
        answer["accountId"] = json!(ACCOUNT_ID);
    }
    let mut response = (StatusCode::OK, axum::Json(answer)).into_response();
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(ID_HEADER, value);
    }
    Ok(response)
}

/// The caller's identifier, or Lambda's refusal of the header.
fn identify(headers: &HeaderMap) -> Result<Uuid, Refusal> {
    let raw = headers.get(ID_HEADER).ok_or_else(|| {
        refusal(
            "Extension.MissingExtensionIdentifier",
            "Missing Lambda-Extension-Identifier header",
        )
    })?;
    raw.to_str()
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            refusal(
                "Extension.InvalidExtensionIdentifier",
                "Invalid Lambda-Extension-Identifier",
            )
        })
}

type Inbox = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>>;

/// Counts a `next` call and marks its caller parked; its inbox.
fn park(api: &ExtensionsApi, headers: &HeaderMap) -> Result<(Uuid, Inbox), Refusal> {
    let id = identify(headers)?;
    let mut inner = api.lock();
    let ext = inner.find(id).ok_or_else(|| {
        refusal(
            "Extension.UnknownExtensionIdentifier",
            format!("Unknown extension {id}"),
        )
    })?;
    if ext.failed || ext.record.parked {
        let from = if ext.failed { "Error" } else { "Ready" };
        return Err(refusal(
            "Extension.InvalidExtensionState",
            format!("State transition from {from} to Ready failed for extension {id}"),
        ));
    }
    ext.record.next_calls += 1;
    ext.record.parked = true;
    Ok((id, Arc::clone(&ext.inbox)))
}

/// Keeps the extension marked parked for as long as its `next` call waits,
/// also when the caller goes away mid-wait (the handler is then dropped).
struct Parked {
    api: ExtensionsApi,
    id: Uuid,
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(ext) = self.api.lock().find(self.id) {
            ext.record.parked = false;
        }
        self.api.touch();
    }
}

async fn next(
    State(api): State<ExtensionsApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (id, inbox) = match park(&api, &headers) {
        Ok(parked) => parked,
        Err(refused) => return respond(&api, &method, &uri, Err(refused)),
    };
    let parked = Parked {
        api: api.clone(),
        id,
    };
    api.touch();

    // After SHUTDOWN nothing more arrives: the call waits until the process
    // ends, as it would on Lambda before the environment is removed.
    let event = inbox.lock().await.recv().await;
    let Some(event) = event else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Some(ext) = api.lock().find(id) {
        ext.record.events_received += 1;
    }
    drop(parked);

    let mut response = (StatusCode::OK, axum::Json(event)).into_response();
    if let Ok(value) = HeaderValue::from_str(&Uuid::new_v4().to_string()) {
        response.headers_mut().insert(EVENT_ID_HEADER, value);
    }
    response
}

async fn init_error(
    State(api): State<ExtensionsApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = post_error(&api, ErrorKind::Init, &headers, &body);
    respond(&api, &method, &uri, answer)
}

async fn exit_error(
    State(api): State<ExtensionsApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = post_error(&api, ErrorKind::Exit, &headers, &body);
    respond(&api, &method, &uri, answer)
}

fn post_error(
    api: &ExtensionsApi,
    kind: ErrorKind,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Refusal> {
    let id = identify(headers)?;
    let error_type = header_str(headers, ERROR_TYPE_HEADER)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            refusal(
                "Extension.MissingHeader",
                "Lambda-Extension-Function-Error-Type not found",
            )
        })?;
    {
        let mut inner = api.lock();
        let ext = inner.find(id).ok_or_else(|| {
            refusal(
                "Extension.UnknownExtensionIdentifier",
                "Unknown Lambda-Extension-Identifier",
            )
        })?;
        if ext.failed {
            return Err(refusal(
                "Extension.InvalidExtensionState",
                format!("State transition from Error to Error failed for extension {id}"),
            ));
        }
        // Lambda accepts no further call from an extension that reported one.
        ext.failed = true;
        let posted = PostedError {
            extension: ext.record.name.clone(),
            kind,
            error_type: error_type.to_string(),
            body: json_or_text(body),
        };
        inner.errors.push(posted);
    }
    api.touch();
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response())
}

async fn unknown(State(api): State<ExtensionsApi>, method: Method, uri: Uri) -> Response {
    api.lock()
        .refused
        .push(format!("{method} {} -> 404", uri.path()));
    api.touch();
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

async fn wrong_method(State(api): State<ExtensionsApi>, method: Method, uri: Uri) -> Response {
    api.lock()
        .refused
        .push(format!("{method} {} -> 405", uri.path()));
    api.touch();
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_or_text(body: &Bytes) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
    )
}
