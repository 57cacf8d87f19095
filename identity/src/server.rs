//! The HTTP shell: one route, every answer JSON, one log line per request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::cache::{Refreshed, TokenCache};
use crate::protocol::{ErrorBody, IDENTITY_HEADER, TokenAnswer, TokenRequest};
use crate::resources::ResourceMap;
use crate::settings::EndpointSettings;

struct Shared {
    path: String,
    settings: EndpointSettings,
    resources: ResourceMap,
    cache: TokenCache,
}

type ServerTask = JoinHandle<Result<(), Error>>;

/// A running credential endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    state: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Taken by the first `shutdown`, which waits for it.
    task: Arc<tokio::sync::Mutex<Option<ServerTask>>>,
}

impl Endpoint {
    /// Listens on `settings.listen` and starts answering at once (a Lambda
    /// extension must be ready before the function's first invoke).
    pub async fn bind(
        settings: EndpointSettings,
        resources: ResourceMap,
        cache: TokenCache,
    ) -> Result<Self, Error> {
        let addr = settings.listen;
        if !addr.ip().is_loopback() && !settings.allow_remote {
            return Err(Error::setting(
                "listen",
                format!("{addr} is reachable from other hosts"),
                "listen on 127.0.0.1, or allow remote callers explicitly (--allow-remote)",
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let state = Arc::new(Shared {
            path: settings.path.clone(),
            settings,
            resources,
            cache,
        });
        let (stop, mut stopped) = watch::channel(false);
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(Error::Serve)
        });
        Ok(Self {
            state,
            local_addr,
            stop,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The value of `IDENTITY_ENDPOINT` that reaches this endpoint.
    pub fn identity_endpoint(&self) -> String {
        format!("http://{}{}", self.local_addr, self.state.path)
    }

    /// The value of `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> &str {
        self.state.settings.header.expose()
    }

    pub fn resources(&self) -> &ResourceMap {
        &self.state.resources
    }

    /// See [`TokenCache::refresh_due`].
    pub async fn refresh_due(&self) -> Refreshed {
        self.state.cache.refresh_due().await
    }

    /// Serves until `shutdown` completes, then stops gracefully (answers in
    /// flight finish).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        shutdown.await;
        self.shutdown().await
    }

    pub async fn shutdown(&self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        match self.task.lock().await.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// The one log line of a request. Holds no token and no header value;
/// what the caller sent is echoed bounded and without control characters.
#[derive(Serialize)]
struct LogLine<'a> {
    event: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    micros: u128,
}

async fn answer(
    State(state): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let mut line = LogLine {
        event: "identity_request",
        status: 200,
        error: None,
        resource: None,
        profile: None,
        origin: None,
        expires_in: None,
        micros: 0,
    };
    let response = match serve_token(&state, &method, &uri, &headers, &mut line).await {
        Ok(response) => response,
        Err(error) => {
            line.status = error.status();
            line.error = Some(error.code());
            json(error.status(), &ErrorBody::from(&*error))
        }
    };
    line.micros = started.elapsed().as_micros();
    if let Ok(text) = serde_json::to_string(&line) {
        eprintln!("{text}");
    }
    response
}

async fn serve_token<'a>(
    state: &'a Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    line: &mut LogLine<'a>,
) -> Result<Response, Arc<Error>> {
    if uri.path() != state.path {
        return Err(Arc::new(Error::NotFound(state.path.clone())));
    }
    if *method != Method::GET {
        return Err(Arc::new(Error::Method(state.path.clone())));
    }
    let given = headers.get(IDENTITY_HEADER).ok_or(Error::MissingHeader)?;
    if !state.settings.header.matches(given.as_bytes()) {
        return Err(Arc::new(Error::WrongHeader));
    }
    let token_request = TokenRequest::from_query(uri.query())?;
    line.resource = Some(aws2azure_shared::echo(&token_request.resource, 100));
    let served = state.resources.resolve(&token_request)?;
    line.profile = Some(served.profile.as_str());
    let (token, origin) = state.cache.get(&served.profile).await?;
    line.origin = Some(origin.as_str());
    line.expires_in = Some(token.remaining(state.cache.now()));
    Ok(json(
        200,
        &TokenAnswer {
            access_token: &token.access_token,
            expires_on: token.expires_on.to_string(),
            resource: &token_request.resource,
            token_type: "Bearer",
            client_id: &served.client_id,
        },
    ))
}

fn json(status: u16, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A token must not be kept by anything between the SDK and here.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
