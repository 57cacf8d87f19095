//! A local stand-in for AWS STS's outbound identity federation, which moto
//! lacks: `GetWebIdentityToken` (and the `AssumeRole` that gives a profile
//! its own role first, and `GetCallerIdentity`), over the AWS query protocol
//! the SDKs speak (a SigV4-signed form POST, XML answers and STS's error
//! codes), plus the issuer's discovery document and key set on the same
//! socket, as `https://<id>.tokens.sts.global.api.aws` serves them.
//!
//! Tokens are RS256 JWTs with AWS's claim shape: `iss` (this server's URL),
//! `sub` (the calling role's ARN), `aud`, `iat`, `exp`, `jti`, and the
//! `https://sts.amazonaws.com/` claims (account, region, principal, request
//! tags). Outbound federation can be switched off, and the next calls can be
//! told to fail with any of STS's errors, to test how callers report them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use aws2azure_shared::discovery::{
    CLAIMS_SUPPORTED, DISCOVERY_PATH, DiscoveryDocument, JWKS_ALIAS_PATH,
};
use aws2azure_shared::jwk::{Jwk, JwkSet};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sigv4::{Principal, PrincipalLookup, verify};
use crate::{Error, Server};
use actions::one;

mod actions;
#[cfg(test)]
mod tests;

/// AWS's namespace for the claims it adds.
pub const AWS_CLAIMS: &str = "https://sts.amazonaws.com/";
/// The stand-in's bound on a token's claims (AWS documents a limit without
/// a figure): request tags beyond it are refused with
/// `JWTPayloadSizeExceededException`.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const SERVICE: &str = "sts";

/// Who may call, and what they may assume.
#[derive(Clone, Debug)]
pub struct StsConfig {
    /// The region signatures must be scoped to (a regional endpoint:
    /// `GetWebIdentityToken` is not served by the global one).
    pub region: String,
    /// Long-term callers, each acting as the role or user its `arn` names.
    pub principals: Vec<Principal>,
    /// Roles `AssumeRole` hands out sessions for; the stand-in does not
    /// model trust policies, so any known caller may assume them.
    pub assumable_roles: Vec<String>,
}

/// An STS error the next calls of `GetWebIdentityToken` answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StsFault {
    SessionDurationEscalation,
    JwtPayloadSizeExceeded,
    AccessDenied,
    Throttling,
    ServiceUnavailable,
}

/// What the stand-in has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsStats {
    pub web_identity_token_calls: u64,
    pub tokens_issued: u64,
    pub assume_role_calls: u64,
    /// Refusals by STS error code.
    pub refused: BTreeMap<String, u64>,
    /// The `sub` of every token issued, in order.
    pub subjects: Vec<String>,
}

/// A session `AssumeRole` handed out.
struct Session {
    principal: Principal,
    role_arn: String,
    expires: u64,
}

struct Inner {
    config: StsConfig,
    issuer: String,
    key: KeyPair,
    jwk: Jwk,
    /// An ES384 key, published beside the RSA one as AWS's issuer publishes
    /// both (callers choose the algorithm): relying parties that accept
    /// RS256 only must skip it. The stand-in never signs with it.
    ec_jwk: Value,
    enabled: AtomicBool,
    sessions: Mutex<HashMap<String, Session>>,
    faults: Mutex<Vec<StsFault>>,
    stats: Mutex<StsStats>,
}

/// A running stand-in; clones share it.
#[derive(Clone)]
pub struct StsStandIn {
    inner: Arc<Inner>,
}

/// An STS error answer: status, code, message.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

impl StsStandIn {
    /// Serves on `addr` (port 0 picks a free one); the issuer is
    /// `http://ADDR`. Outbound federation starts enabled.
    pub async fn serve(config: StsConfig, addr: SocketAddr) -> Result<(Self, Server), Error> {
        let (listener, bound) = crate::bind(addr).await?;
        let key = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| Error::Sts("RSA key generation failed".into()))?;
        let jwk = Jwk::from_pkcs1_der(key.public_key().as_ref())
            .map_err(|e| Error::Sts(e.to_string()))?;
        let ec_jwk = es384_jwk()?;
        let sts = Self {
            inner: Arc::new(Inner {
                config,
                issuer: format!("http://{bound}"),
                key,
                jwk,
                ec_jwk,
                enabled: AtomicBool::new(true),
                sessions: Mutex::new(HashMap::new()),
                faults: Mutex::new(Vec::new()),
                stats: Mutex::new(StsStats::default()),
            }),
        };
        let server = Server::from_listener(listener, sts.router(), false)?;
        Ok((sts, server))
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/", post(query))
            .route(DISCOVERY_PATH, get(discovery))
            .route(JWKS_ALIAS_PATH, get(jwks))
            .route("/_devstack/federation", post(set_federation))
            .route("/_devstack/faults", post(add_faults))
            .route("/_devstack/stats", get(stats))
            .with_state(self.clone())
    }

    /// The account's issuer, as `GetOutboundWebIdentityFederationInfo`
    /// would name it.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The RSA key set it signs with (the published document also holds an
    /// ES384 key, see [`StsStandIn::jwks_document`]).
    pub fn jwks(&self) -> JwkSet {
        JwkSet::new(vec![self.inner.jwk.clone()]).expect("one RSA key is a valid key set")
    }

    /// The key set document as served: the RSA key and an ES384 key.
    pub fn jwks_document(&self) -> String {
        json!({ "keys": [self.inner.jwk, self.inner.ec_jwk] }).to_string()
    }

    /// `aws iam enable-/disable-outbound-web-identity-federation`.
    pub fn set_federation(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::SeqCst);
    }

    /// The next `count` calls of `GetWebIdentityToken` fail with `fault`.
    pub fn inject(&self, fault: StsFault, count: usize) {
        let mut faults = self.inner.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.extend(std::iter::repeat_n(fault, count));
    }

    pub fn stats(&self) -> StsStats {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count(&self, f: impl FnOnce(&mut StsStats)) {
        f(&mut self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn next_fault(&self) -> Option<StsFault> {
        let mut faults = self.inner.faults.lock().unwrap_or_else(|p| p.into_inner());
        (!faults.is_empty()).then(|| faults.remove(0))
    }

    /// The role (or user) a caller acts as, and when its session ends.
    fn identity_of(&self, principal: &Principal) -> (String, Option<u64>) {
        let sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match sessions.get(&principal.access_key_id) {
            Some(session) => (session.role_arn.clone(), Some(session.expires)),
            None => (role_of(&principal.arn), None),
        }
    }
}

/// `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION` → the role's ARN, as
/// AWS writes it into `sub`; any other ARN (a user's) stays as it is.
fn role_of(arn: &str) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        [_, partition, "sts", _, account, resource] => match resource
            .strip_prefix("assumed-role/")
            .and_then(|r| r.split('/').next())
        {
            Some(role) => format!("arn:{partition}:iam::{account}:role/{role}"),
            None => arn.to_string(),
        },
        _ => arn.to_string(),
    }
}

impl PrincipalLookup for StsStandIn {
    fn principal(&self, access_key_id: &str) -> Option<Principal> {
        let sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get(access_key_id) {
            return Some(session.principal.clone());
        }
        self.inner
            .config
            .principals
            .iter()
            .find(|p| p.access_key_id == access_key_id)
            .cloned()
    }

    fn region(&self) -> &str {
        &self.inner.config.region
    }

    fn service(&self) -> &str {
        SERVICE
    }
}

async fn query(
    State(sts): State<StsStandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = match verify(
        &sts,
        &method,
        uri.path(),
        uri.query().unwrap_or(""),
        &headers,
        &body,
        SystemTime::now(),
    ) {
        Ok(principal) => principal,
        Err(refusal) => {
            let code = match refusal.error_type {
                "UnrecognizedClientException" => "InvalidClientTokenId",
                "InvalidSignatureException" => "SignatureDoesNotMatch",
                _ => "IncompleteSignature",
            };
            return error_xml(refuse(refusal.status, code, refusal.message));
        }
    };
    let form: HashMap<String, Vec<String>> =
        url::form_urlencoded::parse(&body)
            .into_owned()
            .fold(HashMap::new(), |mut map, (k, v)| {
                map.entry(k).or_default().push(v);
                map
            });
    let action = one(&form, "Action").unwrap_or_default();
    let answer = match action {
        "GetWebIdentityToken" => sts.get_web_identity_token(&principal, &form),
        "AssumeRole" => sts.assume_role(&principal, &form),
        "GetCallerIdentity" => Ok(sts.get_caller_identity(&principal)),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!(
                "Could not find operation {} for version 2011-06-15",
                aws2azure_shared::echo(action, 64)
            ),
        )),
    };
    match answer {
        Ok(xml) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], xml).into_response(),
        Err(refusal) => {
            sts.count(|s| *s.refused.entry(refusal.code.to_string()).or_default() += 1);
            error_xml(refusal)
        }
    }
}

fn error_xml(refusal: Refusal) -> Response {
    let kind = if refusal.status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let body = format!(
        "<ErrorResponse xmlns=\"{NAMESPACE}\"><Error><Type>{kind}</Type><Code>{}</Code>\
         <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        refusal.code,
        xml_escape(&refusal.message),
        uuid::Uuid::new_v4()
    );
    (refusal.status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn discovery(State(sts): State<StsStandIn>) -> Response {
    let issuer = sts.issuer();
    let document = DiscoveryDocument {
        issuer: issuer.to_string(),
        jwks_uri: format!("{issuer}{JWKS_ALIAS_PATH}"),
        response_types_supported: vec!["id_token".into()],
        subject_types_supported: vec!["public".into()],
        id_token_signing_alg_values_supported: vec!["RS256".into(), "ES384".into()],
        claims_supported: CLAIMS_SUPPORTED.iter().map(|c| c.to_string()).collect(),
    };
    json_document(document.to_json())
}

async fn jwks(State(sts): State<StsStandIn>) -> Response {
    json_document(sts.jwks_document())
}

/// A fresh P-384 public key as a JWK.
fn es384_jwk() -> Result<Value, Error> {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
        .map_err(|_| Error::Sts("EC key generation failed".into()))?;
    // SEC 1 uncompressed point: 0x04, then x and y of 48 bytes each.
    let point = key.public_key().as_ref();
    let (x, y) = point
        .get(1..)
        .filter(|xy| xy.len() == 96)
        .map(|xy| xy.split_at(48))
        .ok_or_else(|| Error::Sts("unexpected EC public key encoding".into()))?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Ok(json!({
        "kty": "EC",
        "crv": "P-384",
        "x": b64(x),
        "y": b64(y),
        "use": "sig",
        "alg": "ES384",
        "kid": format!("es384-{}", uuid::Uuid::new_v4().simple()),
    }))
}

fn json_document(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Federation {
    enabled: bool,
}

async fn set_federation(State(sts): State<StsStandIn>, Json(f): Json<Federation>) -> StatusCode {
    sts.set_federation(f.enabled);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Faults {
    fault: StsFault,
    #[serde(default = "one_fault")]
    count: usize,
}

fn one_fault() -> usize {
    1
}

async fn add_faults(State(sts): State<StsStandIn>, Json(f): Json<Faults>) -> StatusCode {
    sts.inject(f.fault, f.count.min(1000));
    StatusCode::NO_CONTENT
}

async fn stats(State(sts): State<StsStandIn>) -> Json<StsStats> {
    Json(sts.stats())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
