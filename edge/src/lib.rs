//! The aws2azure edge: the issuer's OpenID discovery document and key set,
//! served to Entra ID from a Cloudflare Worker.
//!
//! Entra fetches both from the public internet before it accepts a client
//! assertion; if the edge fails, every token exchange fails. So the edge is
//! small, never panics on input, and never answers 5xx while it has any good
//! copy of the key document.
//!
//! # Shape
//!
//! A target-independent core (this crate, on every target) and a thin
//! Worker shell (a `fetch` export, compiled only for `wasm32`) that does
//! the I/O: Worker variables, Workers KV, the Cache API, `CF-Connecting-IP`,
//! `request.cf.colo`, and one `console.log` line per request.
//!
//! # The core's API (stable; the devstack serves it locally)
//!
//! ```
//! use aws2azure_edge::{EdgeConfig, EdgeRequest, KeyDocument, builtin_allowlist, handle};
//! # let jwks = r#"{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB"}]}"#;
//! // Once: configuration (errors name the setting and its fix) and keys.
//! let config = EdgeConfig::from_vars(|name| match name {
//!     "ISSUER" => Some("http://127.0.0.1:8787".to_string()),
//!     "ALLOWLIST_MODE" => Some("off".to_string()),
//!     _ => None,
//! })?;
//! let keys = KeyDocument::parse(jwks.as_bytes())?;
//! let allowlist = builtin_allowlist();
//!
//! // Per request: plain data in, an `http::Response<Bytes>` and a log record out.
//! let http_request = http::Request::get("/jwks").body(()).unwrap();
//! let request = EdgeRequest::from_http(&http_request).with_client_address(Some("127.0.0.1"));
//! let handled = handle(&config, &allowlist, Some(&keys), &request);
//! assert_eq!(handled.response.status(), 200);
//! assert_eq!(handled.response.body(), keys.body());
//! println!("{}", handled.log.to_json());
//! # Ok::<(), aws2azure_edge::Error>(())
//! ```
//!
//! - [`EdgeConfig::from_vars`] reads the settings of docs/edge.md through a
//!   lookup function and validates them once.
//! - [`KeyDocument::parse`] validates a published JWK Set and keeps its
//!   canonical bytes, strong ETag and short version id.
//! - [`handle`] answers one [`EdgeRequest`]; [`misconfigured`] is the answer
//!   while the configuration is unusable.
//! - [`LastGoodKeys`] and [`AllowlistState`] hold what an isolate serves and
//!   decide, from what the stores returned ([`Fetched`]), whether to replace
//!   it, and from the time the shell passes in, when to read the stores
//!   again: the resilience rules, without I/O.

mod allowlist;
mod config;
mod error;
mod handler;
mod key_document;
mod log;
mod refresh;
mod representation;
#[cfg(test)]
mod test_keys;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "wasm32")]
mod worker_shell;

pub use allowlist::{AllowlistState, builtin_allowlist, builtin_document};
pub use aws2azure_shared::allowlist::{Allowlist, AllowlistMode, Decision};
pub use config::{
    ALLOWLIST_KV_KEY, ALLOWLIST_MODE, DEFAULT_ALLOWLIST_KV_KEY, DEFAULT_DISCOVERY_MAX_AGE,
    DEFAULT_JWKS_MAX_AGE, DEFAULT_KEY_DOCUMENT_KV_KEY, DEFAULT_KV_REFRESH_SECONDS,
    DISCOVERY_MAX_AGE, EdgeConfig, ISSUER, JWKS_MAX_AGE, KEY_DOCUMENT, KEY_DOCUMENT_KV_KEY,
    KV_BINDING, KV_REFRESH_SECONDS, KeySource,
};
pub use error::Error;
pub use handler::{
    EdgeRequest, Handled, RETRY_AFTER_SECONDS, handle, misconfigured, needs_key_document,
};
pub use key_document::{
    Fetched, KeyDocument, KeyRefresh, LastGoodKeys, NO_DOCUMENT_RETRY_FIRST, NO_DOCUMENT_RETRY_MAX,
};
pub use log::{Event, EventKind, LogRecord};
