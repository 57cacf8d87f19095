//! Request in, response and log record out: every rule of the edge's HTTP
//! surface, with no I/O.

use aws2azure_shared::allowlist::{Allowlist, Decision};
use aws2azure_shared::discovery::{DISCOVERY_PATH, JWKS_ALIAS_PATH, JWKS_PATH};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::Error;
use crate::config::EdgeConfig;
use crate::key_document::KeyDocument;
use crate::log::{Event, LogRecord};
use crate::representation::Representation;

/// Seconds a client is asked to wait when the edge has no key document at
/// all: about the time a fresh KV write takes to propagate.
pub const RETRY_AFTER_SECONDS: u32 = 30;

/// What the core needs to know about one request. The shell fills it from
/// its runtime; nothing here is read from anywhere else.
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeRequest<'a> {
    /// The request method, as sent (methods are case-sensitive).
    pub method: &'a str,
    /// The URL path, without query.
    pub path: &'a str,
    /// Every `If-None-Match` value, joined with `, ` if there were several
    /// header lines (the Worker's `Headers` joins them; [`EdgeRequest::from_http`]
    /// takes the first line only, so a native caller joins them itself).
    pub if_none_match: Option<&'a str>,
    /// The client address the allowlist judges. The Worker passes
    /// `CF-Connecting-IP` (set by Cloudflare, never `X-Forwarded-For`, which
    /// any client can write); a local server passes its socket's peer.
    pub client_address: Option<&'a str>,
    /// The Cloudflare data centre (`request.cf.colo`), for the log only.
    pub colo: Option<&'a str>,
}

impl<'a> EdgeRequest<'a> {
    /// Method, path and `If-None-Match` from an `http` request; the caller
    /// adds the client address (and colo) it trusts.
    pub fn from_http<B>(request: &'a http::Request<B>) -> Self {
        Self {
            method: request.method().as_str(),
            path: request.uri().path(),
            if_none_match: request
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok()),
            client_address: None,
            colo: None,
        }
    }

    /// The path of an absolute request URL (`scheme://authority/path?query`),
    /// as a Worker receives it: no decoding, no normalisation, so that what
    /// is routed is exactly what was asked for.
    pub fn path_of_url(url: &str) -> &str {
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let rest = &url[after_scheme..];
        let Some(start) = rest.find(['/', '?', '#']) else {
            return "/";
        };
        let rest = &rest[start..];
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        if end == 0 { "/" } else { &rest[..end] }
    }

    pub fn with_client_address(mut self, address: Option<&'a str>) -> Self {
        self.client_address = address;
        self
    }
}

/// The answer to one request and its log line.
#[derive(Debug)]
pub struct Handled {
    pub response: Response<Bytes>,
    pub log: LogRecord,
}

impl Handled {
    /// Adds what happened to the stores while this request was served, so
    /// that the request's one log line tells the whole story.
    pub fn with_events(mut self, events: impl IntoIterator<Item = Event>) -> Self {
        self.log.events.extend(events);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Discovery,
    KeySet,
}

fn route(config: &EdgeConfig, path: &str) -> Option<Route> {
    let rest = path.strip_prefix(config.issuer().path_prefix())?;
    match rest {
        DISCOVERY_PATH => Some(Route::Discovery),
        JWKS_PATH | JWKS_ALIAS_PATH => Some(Route::KeySet),
        _ => None,
    }
}

/// Whether answering `request` may need the key document: a `GET` or
/// `HEAD` of the key set by a client the allowlist lets through. The shell
/// reads the key document from KV only then, so that neither the discovery
/// document nor stray or refused requests cost a key document read.
pub fn needs_key_document(
    config: &EdgeConfig,
    allowlist: &Allowlist,
    request: &EdgeRequest<'_>,
) -> bool {
    matches!(request.method, "GET" | "HEAD")
        && route(config, request.path) == Some(Route::KeySet)
        && allowlist.decide(config.allowlist_mode(), request.client_address) != Decision::Deny
}

/// Answers one request.
///
/// - The allowlist is judged first: in `enforce` a client outside it gets
///   403 on every path, so that it learns nothing; in `monitor` the
///   would-be denial is only logged.
/// - `GET`/`HEAD` of the discovery document and of the key set (at `/jwks`
///   and `/.well-known/jwks.json`, below the issuer's path): 200 with a
///   strong `ETag` and the configured `Cache-Control`, or 304 when
///   `If-None-Match` matches; `HEAD` carries no body.
/// - Any other method on those paths: 405 with `Allow: GET, HEAD`; any
///   other path: 404.
/// - The key set with no key document at all (`keys` is `None`): 503 with
///   `Retry-After`. The discovery document never depends on the keys.
pub fn handle(
    config: &EdgeConfig,
    allowlist: &Allowlist,
    keys: Option<&KeyDocument>,
    request: &EdgeRequest<'_>,
) -> Handled {
    let mut log = LogRecord::new(
        request.method,
        request.path,
        request.client_address,
        request.colo,
    );
    let mode = config.allowlist_mode();
    let decision = allowlist.decide(mode, request.client_address);
    log.decision = Some(decision.as_str());
    log.allowlist_mode = Some(mode.as_str());
    log.key_version = keys.map(|k| k.version().to_string());
    let head = request.method == "HEAD";

    let response = if decision == Decision::Deny {
        error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the client address is not on this issuer's allowlist",
            head,
        )
    } else {
        match route(config, request.path) {
            None => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "this issuer serves only its discovery document and its key set",
                head,
            ),
            Some(_) if !matches!(request.method, "GET" | "HEAD") => {
                let mut response = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "only GET and HEAD are supported",
                    false,
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
            Some(Route::Discovery) => document_response(
                config.discovery(),
                config.discovery_max_age(),
                request.if_none_match,
                head,
            ),
            Some(Route::KeySet) => match keys {
                Some(keys) => document_response(
                    keys.representation(),
                    config.jwks_max_age(),
                    request.if_none_match,
                    head,
                ),
                None => {
                    let mut response = error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "no key document has been published yet, or none could be read",
                        head,
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
                    response
                }
            },
        }
    };
    log.status = response.status().as_u16();
    Handled { response, log }
}

/// The answer to every request while the configuration is unusable: 503,
/// and a log line naming the setting. Nothing is served, not even the
/// discovery document: a wrong issuer would make Entra reject every
/// assertion with a misleading error, which is worse than a clear outage.
pub fn misconfigured(error: &Error, request: &EdgeRequest<'_>) -> Handled {
    let mut log = LogRecord::new(
        request.method,
        request.path,
        request.client_address,
        request.colo,
    );
    let response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "misconfigured",
        "the edge's configuration is invalid; its log names the setting to fix",
        request.method == "HEAD",
    );
    log.status = response.status().as_u16();
    log.error = Some(error.to_string());
    log.setting = error.setting();
    Handled { response, log }
}

fn document_response(
    doc: &Representation,
    max_age: u32,
    if_none_match: Option<&str>,
    head: bool,
) -> Response<Bytes> {
    let not_modified = if_none_match.is_some_and(|h| doc.matches_if_none_match(h));
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if head {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, doc.body().clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(doc.etag()).expect("a base64url ETag is a valid header value"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={max_age}"))
            .expect("digits are a valid header value"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !not_modified {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // HEAD announces the length GET would send (RFC 9110 section 8.6).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(doc.body().len()));
    }
    response
}

fn error_response(
    status: StatusCode,
    error: &'static str,
    description: &'static str,
    head: bool,
) -> Response<Bytes> {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let length = body.len();
    let mut response = Response::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    // A refusal or an outage must not be cached in front of the edge.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
