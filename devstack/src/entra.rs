//! An Entra-compatible token endpoint that really federates.
//!
//! `POST /{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`
//! and a JWT client assertion is validated the way Entra validates it:
//! the assertion's issuer must match a federated credential of the app
//! exactly; the issuer's discovery document and key set are fetched over
//! HTTP (and cached, like a relying party); the `kid` must be in the key
//! set, the RS256 signature must verify, `exp`/`nbf` must hold, and the
//! audience and subject must match the credential exactly (case-sensitive).
//! Answers use Entra's JSON shapes and AADSTS codes.
//!
//! For tests it can be told to fail the next N calls (429 with
//! `Retry-After`, 5xx, a delay, AADSTS70021), or every call during a window
//! of time (an outage), and it counts what it did.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws2azure_shared::assertion::AUDIENCE;
use aws2azure_shared::discovery::{DISCOVERY_PATH, DiscoveryDocument};
use aws2azure_shared::jwk::JwkSet;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Error, Server};

mod faults;
#[cfg(test)]
mod tests;
mod validate;

pub use faults::{Fault, MAX_FAULT_WINDOW};
use faults::{Faults, add_faults};

/// One federated identity credential of an app registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedCredential {
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_audience() -> String {
    AUDIENCE.to_string()
}

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct EntraConfig {
    pub credentials: Vec<FederatedCredential>,
    /// `expires_in` of issued tokens (Entra: 3599 for most resources).
    pub token_lifetime_secs: u64,
    /// `refresh_in` to include in responses, if any.
    pub refresh_in_secs: Option<u64>,
    /// How long fetched discovery documents and key sets are reused.
    pub key_cache_ttl: Duration,
    /// Whether an assertion whose `kid` is not in the cached key set makes
    /// the stand-in fetch the key set again at once (true, the default:
    /// what well-behaved relying parties do when keys rotate). With false
    /// it acts like the worst relying party: inside `key_cache_ttl` it
    /// never refetches and refuses the assertion (AADSTS700027), which is
    /// what the rotation's warm-up period exists for.
    pub refetch_unknown_kid: bool,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl EntraConfig {
    pub fn new(credentials: Vec<FederatedCredential>) -> Self {
        Self {
            credentials,
            token_lifetime_secs: 3599,
            refresh_in_secs: None,
            key_cache_ttl: Duration::from_secs(300),
            refetch_unknown_kid: true,
            leeway_secs: 60,
        }
    }
}

/// What the stand-in has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntraStats {
    /// Token requests received (faulted ones included).
    pub token_requests: u64,
    /// Tokens issued.
    pub issued: u64,
    /// Refusals by AADSTS code.
    pub refused: BTreeMap<u32, u64>,
    /// Injected faults served.
    pub faults: u64,
    pub discovery_fetches: u64,
    pub jwks_fetches: u64,
}

struct MetadataEntry {
    jwks: JwkSet,
    fetched: Instant,
}

struct StateInner {
    config: EntraConfig,
    faults: Faults,
    stats: Mutex<EntraStats>,
    metadata: tokio::sync::Mutex<HashMap<String, MetadataEntry>>,
    http: reqwest::Client,
}

/// A handle on a running stand-in; clones share it.
#[derive(Clone)]
pub struct EntraStandIn {
    state: Arc<StateInner>,
}

impl EntraStandIn {
    pub fn new(config: EntraConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a default reqwest client builds");
        Self {
            state: Arc::new(StateInner {
                config,
                faults: Faults::default(),
                stats: Mutex::new(EntraStats::default()),
                metadata: tokio::sync::Mutex::new(HashMap::new()),
                http,
            }),
        }
    }

    /// Serves on `addr` (port 0 picks a free one) until the server is dropped.
    pub async fn serve(self, addr: SocketAddr) -> Result<Server, Error> {
        Server::start(addr, self.router()).await
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/_devstack/faults", post(add_faults))
            .route("/_devstack/stats", get(stats))
            .with_state(self.clone())
    }

    /// Queues `fault` for each of the next `count` token requests.
    pub fn inject(&self, fault: Fault, count: usize) {
        self.state.faults.push(fault, count);
    }

    /// Applies `fault` to every token request for `duration` (at most
    /// [`MAX_FAULT_WINDOW`]), replacing a window still open: an outage of
    /// Entra rather than a number of failed calls. Queued faults
    /// ([`EntraStandIn::inject`]) go first.
    pub fn inject_for(&self, fault: Fault, duration: Duration) {
        self.state.faults.open_window(fault, duration);
    }

    pub fn stats(&self) -> EntraStats {
        self.state
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets cached discovery documents and key sets.
    pub async fn forget_keys(&self) {
        self.state.metadata.lock().await.clear();
    }

    fn count(&self, f: impl FnOnce(&mut EntraStats)) {
        f(&mut self.state.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

async fn stats(State(entra): State<EntraStandIn>) -> Json<EntraStats> {
    Json(entra.stats())
}

/// An Entra error: code, OAuth error, HTTP status, message.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

fn refuse(
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        error,
        code,
        message: message.into(),
    }
}

/// The key set document with its non-RSA keys left out; anything that is
/// not a key set stays as it is, for the parser to refuse.
fn rsa_keys_only(document: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(document) {
        Ok(Value::Object(mut set)) => {
            if let Some(Value::Array(keys)) = set.get_mut("keys") {
                keys.retain(|k| k.get("kty").and_then(Value::as_str) != Some("EC"));
                keys.retain(|k| k.get("kty").and_then(Value::as_str) != Some("OKP"));
            }
            serde_json::to_vec(&Value::Object(set)).unwrap_or_else(|_| document.to_vec())
        }
        _ => document.to_vec(),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Refusal {
    fn into_response(self, headers: Option<HeaderMap>) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default();
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(extra) = headers {
            response.headers_mut().extend(extra);
        }
        response
    }
}

async fn token(
    State(entra): State<EntraStandIn>,
    Path(tenant): Path<String>,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    entra.count(|s| s.token_requests += 1);
    if let Some(fault) = entra.state.faults.next() {
        entra.count(|s| s.faults += 1);
        match fault {
            Fault::Throttle { retry_after_secs } => {
                let mut headers = HeaderMap::new();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    90055,
                    "The request has been throttled. Retry after the period in the Retry-After header.",
                )
                .into_response(Some(headers));
            }
            Fault::ServerError { status } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return refuse(
                    status,
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred. Please try again.",
                )
                .into_response(None);
            }
            Fault::Delay { millis } => tokio::time::sleep(Duration::from_millis(millis)).await,
            Fault::NotPropagated => {
                entra.count(|s| *s.refused.entry(70021).or_default() += 1);
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    70021,
                    "No matching federated identity record found for presented assertion. Assertion Issuer: '…'.",
                )
                .into_response(None);
            }
        }
    }
    let result = match form {
        Ok(Form(form)) => entra.validate(&tenant, &form).await,
        Err(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        )),
    };
    match result {
        Ok(body) => {
            entra.count(|s| s.issued += 1);
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(refusal) => {
            entra.count(|s| *s.refused.entry(refusal.code).or_default() += 1);
            refusal.into_response(None)
        }
    }
}

fn b64url_json(segment: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl EntraStandIn {
    /// The issuer's key set, from the cache or fetched through discovery.
    /// An unknown `kid` triggers one refetch (keys rotate), unless
    /// [`EntraConfig::refetch_unknown_kid`] is off.
    async fn key_set(&self, iss: &str, kid: &str) -> Result<JwkSet, Refusal> {
        let mut cache = self.state.metadata.lock().await;
        if let Some(entry) = cache.get(iss)
            && entry.fetched.elapsed() < self.state.config.key_cache_ttl
            && (entry.jwks.find(kid).is_some() || !self.state.config.refetch_unknown_kid)
        {
            return Ok(entry.jwks.clone());
        }
        let jwks = self.fetch_metadata(iss).await?;
        cache.insert(
            iss.to_string(),
            MetadataEntry {
                jwks: jwks.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(jwks)
    }

    async fn fetch_metadata(&self, iss: &str) -> Result<JwkSet, Refusal> {
        let discovery_failed = |why: String| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                50166,
                format!("Request to External OIDC endpoint failed. {why}"),
            )
        };
        let discovery_url = format!("{}{DISCOVERY_PATH}", iss.strip_suffix('/').unwrap_or(iss));
        self.count(|s| s.discovery_fetches += 1);
        let doc: DiscoveryDocument = self
            .get_json(&discovery_url)
            .await
            .map_err(|why| discovery_failed(format!("GET {discovery_url}: {why}")))?;
        if doc.issuer != iss {
            return Err(discovery_failed(format!(
                "The issuer '{}' in the discovery document does not match the assertion issuer '{iss}'.",
                doc.issuer
            )));
        }
        self.count(|s| s.jwks_fetches += 1);
        let jwks_bytes = self.get_bytes(&doc.jwks_uri).await.map_err(|why| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                90061,
                format!(
                    "Request to External OIDC endpoint failed. GET {}: {why}",
                    doc.jwks_uri
                ),
            )
        })?;
        // Entra verifies federation assertions with RS256 keys only and
        // skips the others (AWS's issuer also publishes ES384 keys).
        let jwks_bytes = rsa_keys_only(&jwks_bytes);
        JwkSet::from_json(&jwks_bytes).map_err(|e| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                90061,
                format!("Request to External OIDC endpoint failed. The key set at {} is not usable: {e}", doc.jwks_uri),
            )
        })
    }

    async fn get_bytes(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .state
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        Ok(response.bytes().await.map_err(|e| e.to_string())?.to_vec())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let bytes = self.get_bytes(url).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))
    }

    /// A token shaped like Entra's (a JWT whose claims say what was granted)
    /// but signed by nobody: it is only ever handed back to tests. It also
    /// names the `kid` of the key the assertion was validated with
    /// ([`ASSERTION_KID_CLAIM`]), so a test sees which key each exchange
    /// really used.
    fn issue(&self, tenant: &str, client_id: &str, scope: &str, sub: &str, kid: &str) -> Value {
        let now = now_unix();
        let lifetime = self.state.config.token_lifetime_secs;
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = json!({"typ": "JWT", "alg": "none", "kid": "aws2azure-devstack"});
        let claims = json!({
            "aud": resource,
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now, "nbf": now, "exp": now + lifetime,
            "appid": client_id,
            "tid": tenant,
            "sub": sub,
            "idtyp": "app",
            "uti": uuid::Uuid::new_v4().to_string(),
            "ver": "1.0",
            "aws2azure_devstack": true,
            ASSERTION_KID_CLAIM: kid,
        });
        let mut body = json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": format!("{}.{}.", b64(&header), b64(&claims)),
        });
        if let Some(refresh_in) = self.state.config.refresh_in_secs {
            body["refresh_in"] = json!(refresh_in);
        }
        body
    }
}

/// The claim of an issued token naming the `kid` the assertion was
/// validated with (not one of Entra's).
pub const ASSERTION_KID_CLAIM: &str = "aws2azure_devstack_assertion_kid";

/// Decodes the claims of a token this stand-in issued.
pub fn issued_claims(access_token: &str) -> Option<Value> {
    access_token.split('.').nth(1).and_then(b64url_json)
}
