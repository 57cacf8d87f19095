//! The token API at its boundary: an API Gateway REST request in, a JSON
//! response out, plus one audit record per request.
//!
//! `GET /token/{profile}[?min_validity=SECONDS]`. The caller's identity comes
//! only from `requestContext.identity`, which API Gateway fills after it has
//! verified the caller's SigV4 signature (`AWS_IAM` authorization); nothing
//! the caller sends in headers is trusted for it.

use std::time::{Duration, Instant};

use aws2azure_shared::profile::ProfileName;
use http::{HeaderValue, Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::json;

use crate::Error;
use crate::broker::{Broker, Failed, Issued, MAX_MIN_VALIDITY_SECS, Upstream};

/// Longest profile name echoed into a log line or an error.
const ECHO_MAX: usize = 64;

/// Who called, as API Gateway established it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallerIdentity {
    /// `identity.userArn` as given (for an assumed role it includes the
    /// session name).
    pub arn: String,
    /// A stable identity for grouping: the role ARN for assumed roles
    /// (`arn:aws:iam::ACCOUNT:role/NAME`), else the ARN itself.
    pub principal: String,
    /// The role session name, for assumed roles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
}

impl CallerIdentity {
    pub fn from_request(req: &Request) -> Option<Self> {
        let Some(RequestContext::ApiGatewayV1(ctx)) = req.request_context_ref() else {
            return None;
        };
        let identity = &ctx.identity;
        let arn = identity.user_arn.as_deref().filter(|a| !a.is_empty())?;
        let (principal, session) = principal_of(arn);
        Some(Self {
            arn: arn.to_string(),
            principal,
            session,
            account: identity.account_id.clone().filter(|a| !a.is_empty()),
            source_ip: identity.source_ip.clone(),
        })
    }
}

/// `arn:aws:sts::111122223333:assumed-role/app/i-0abc` →
/// (`arn:aws:iam::111122223333:role/app`, `Some("i-0abc")`). Role paths are
/// not part of an assumed-role ARN, so the role ARN is given without one.
pub fn principal_of(arn: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if let [_, partition, "sts", _, account, resource] = parts.as_slice()
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, session)) = rest.split_once('/')
    {
        return (
            format!("arn:{partition}:iam::{account}:role/{role}"),
            Some(session.to_string()),
        );
    }
    (arn.to_string(), None)
}

/// One line per request in the audit log; never a token or an assertion.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerIdentity>,
    /// The requested profile as sent (still encoded, if it was), bounded
    /// and with control characters replaced.
    pub profile: String,
    /// Whether `profile` names a configured profile: only then is it a
    /// metric dimension (anything else is the caller's choice of string).
    #[serde(skip)]
    pub profile_configured: bool,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    pub entra_calls: u32,
    pub entra_ms: u64,
    pub sign_calls: u32,
    pub sign_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub shared_cache_degraded: bool,
    pub duration_ms: u64,
}

impl AuditRecord {
    /// Writes the audit line (through `tracing`, so it follows the Lambda
    /// log format) and the metrics line.
    pub fn emit(&self) {
        let caller = self.caller.as_ref();
        tracing::info!(
            target: "aws2azure::audit",
            request_id = self.request_id.as_deref(),
            caller = caller.map(|c| c.arn.as_str()),
            principal = caller.map(|c| c.principal.as_str()),
            session = caller.and_then(|c| c.session.as_deref()),
            account = caller.and_then(|c| c.account.as_deref()),
            source_ip = caller.and_then(|c| c.source_ip.as_deref()),
            profile = %self.profile,
            status = self.status,
            error = self.error,
            cache = self.cache,
            entra_calls = self.entra_calls,
            entra_ms = self.entra_ms,
            sign_calls = self.sign_calls,
            sign_ms = self.sign_ms,
            aadsts = self.aadsts,
            correlation_id = self.correlation_id.as_deref(),
            shared_cache_degraded = self.shared_cache_degraded,
            duration_ms = self.duration_ms,
            "token request"
        );
    }
}

/// Handles a request and emits its audit and metrics lines.
pub async fn serve(broker: &Broker, req: Request) -> Response<Body> {
    let (response, audit) = handle(broker, &req).await;
    audit.emit();
    println!(
        "{}",
        crate::metrics::emf_line(&audit, crate::metrics::now_millis())
    );
    response
}

/// Handles a request: the response and its audit record.
pub async fn handle(broker: &Broker, req: &Request) -> (Response<Body>, AuditRecord) {
    let started = Instant::now();
    let mut audit = AuditRecord {
        request_id: match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV1(ctx)) => ctx.request_id.clone(),
            _ => None,
        },
        caller: CallerIdentity::from_request(req),
        ..AuditRecord::default()
    };
    let result = answer(broker, req, &mut audit).await;
    let response = match result {
        Ok(issued) => {
            audit.cache = Some(issued.outcome.as_str());
            audit.upstream(&issued.upstream);
            if let Some(err) = &issued.absorbed_error {
                audit.aadsts = err.aadsts();
            }
            success(&audit.profile, broker, &issued)
        }
        Err(Failed {
            error: err,
            upstream,
        }) => {
            audit.upstream(&upstream);
            let (status, code) = err.api_status();
            if status.is_server_error() {
                // The caller gets a short description; the operator, this.
                tracing::warn!(profile = %audit.profile, status = status.as_u16(), error = %err, "token request failed");
            }
            audit.error = Some(code);
            audit.aadsts = err.aadsts();
            if let Error::Entra { correlation_id, .. } = &err {
                audit.correlation_id = correlation_id.clone();
            }
            failure(status, code, &err)
        }
    };
    audit.status = response.status().as_u16();
    audit.duration_ms = started.elapsed().as_millis() as u64;
    (response, audit)
}

async fn answer(broker: &Broker, req: &Request, audit: &mut AuditRecord) -> Result<Issued, Failed> {
    let segments = profile_segments(req);
    audit.profile = segments
        .first()
        .map(|(_, raw)| echo(raw))
        .unwrap_or_default();
    let Some(principal) = audit.caller.as_ref().map(|c| c.principal.clone()) else {
        return Err(Error::MissingIdentity.into());
    };
    if req.method() != Method::GET {
        return Err(Error::MethodNotAllowed(echo(req.method().as_str())).into());
    }
    let name = profile_name(&segments)?;
    let min_validity = min_validity(req)?;
    // An unknown name is the broker's first check (404).
    if let Some(profile) = broker.profiles().get(name.as_str()) {
        audit.profile_configured = true;
        if !profile.allows(&principal) {
            return Err(Error::CallerNotAllowed {
                profile: name.to_string(),
                principal: echo(&principal),
            }
            .into());
        }
    }
    let deadline = broker.settings().request_deadline;
    match tokio::time::timeout(deadline, broker.token(name.as_str(), min_validity)).await {
        Ok(result) => result,
        Err(_) => Err(Error::DeadlineExceeded(deadline).into()),
    }
}

impl AuditRecord {
    fn upstream(&mut self, upstream: &Upstream) {
        self.entra_calls = upstream.entra_calls;
        self.entra_ms = upstream.entra_ms;
        self.sign_calls = upstream.sign_calls;
        self.sign_ms = upstream.sign_ms;
        self.shared_cache_degraded = upstream.shared_cache_degraded;
    }
}

/// The `{profile}` segment as each field of the event gives it: the last
/// segment of `path` and of `requestContext.path` (API Gateway REST keeps
/// them as the caller sent them, percent-encoding included), then the path
/// parameter (which may be decoded). The first is the raw segment.
fn profile_segments(req: &Request) -> Vec<(&'static str, String)> {
    let token_segment = |path: &str| {
        let (rest, last) = path.rsplit_once('/')?;
        (rest == "/token" || rest.ends_with("/token")).then(|| last.to_string())
    };
    let mut segments = Vec::new();
    if let Some(raw) = token_segment(req.raw_http_path()) {
        segments.push(("path", raw));
    }
    if let Some(RequestContext::ApiGatewayV1(ctx)) = req.request_context_ref()
        && let Some(raw) = ctx.path.as_deref().and_then(token_segment)
    {
        segments.push(("requestContext.path", raw));
    }
    if let Some(param) = req
        .path_parameters_ref()
        .and_then(|params| params.first("profile"))
    {
        segments.push(("pathParameters.profile", param.to_string()));
    }
    segments
}

/// The profile name, only when every field gives it byte for byte as a
/// valid name. IAM evaluates the path as sent, so `gr%61ph` is not `graph`:
/// a policy denying `…/GET/token/graph` must not be bypassed by encoding,
/// whichever field API Gateway decodes.
fn profile_name(segments: &[(&'static str, String)]) -> Result<ProfileName, Error> {
    let Some((_, raw)) = segments.first() else {
        return Err(Error::InvalidRequest(
            "the path must be /token/{profile}".into(),
        ));
    };
    let encoded = || {
        Error::InvalidRequest(format!(
            "the profile in the path must be written exactly as it is named, without \
             percent-encoding: `{}` is encoded (IAM policies match the path as sent, so \
             encoded names are refused)",
            echo(raw)
        ))
    };
    if let Some((field, other)) = segments.iter().find(|(_, s)| s != raw) {
        if raw.contains('%') {
            return Err(encoded());
        }
        return Err(Error::InvalidRequest(format!(
            "the profile segment `{}` does not match the request's {field} `{}`",
            echo(raw),
            echo(other)
        )));
    }
    if raw.contains('%') {
        return Err(encoded());
    }
    ProfileName::parse(raw).map_err(|e| Error::InvalidRequest(e.to_string()))
}

fn min_validity(req: &Request) -> Result<u64, Error> {
    let Some(params) = req.query_string_parameters_ref() else {
        return Ok(0);
    };
    let mut value = None;
    for (name, v) in params.iter() {
        if name != "min_validity" {
            return Err(Error::InvalidRequest(format!(
                "unknown query parameter `{}`: the only one is min_validity",
                echo(name)
            )));
        }
        if value.replace(v).is_some() {
            return Err(Error::InvalidRequest("min_validity is given twice".into()));
        }
    }
    match value {
        None => Ok(0),
        Some(v) => v.parse::<u64>().ok().filter(|s| *s <= MAX_MIN_VALIDITY_SECS).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "min_validity must be a whole number of seconds from 0 to {MAX_MIN_VALIDITY_SECS}, \
                 not `{}`",
                echo(v)
            ))
        }),
    }
}

fn echo(input: &str) -> String {
    aws2azure_shared::echo(input, ECHO_MAX)
}

fn success(profile: &str, broker: &Broker, issued: &Issued) -> Response<Body> {
    let now = broker.now_unix();
    let scope = broker
        .profiles()
        .get(profile)
        .map(|p| p.scope.as_str())
        .unwrap_or_default();
    let body = json!({
        "access_token": issued.token.access_token.expose(),
        "token_type": issued.token.token_type,
        "expires_in": issued.token.expires_on.saturating_sub(now),
        "expires_on": issued.token.expires_on,
        "profile": profile,
        "scope": scope,
    });
    json_response(StatusCode::OK, &body)
}

fn failure(status: StatusCode, code: &'static str, err: &Error) -> Response<Body> {
    let mut body = json!({ "error": code, "error_description": err.public_description() });
    if let Some(aadsts) = err.aadsts() {
        body["aadsts"] = json!(format!("AADSTS{aadsts}"));
    }
    if let Error::Entra {
        correlation_id: Some(id),
        ..
    } = err
    {
        body["correlation_id"] = json!(id);
    }
    let mut response = json_response(status, &body);
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        let wait = err.retry_after().unwrap_or(match err {
            Error::KmsThrottled | Error::PeerBusy => Duration::from_secs(1),
            _ => Duration::from_secs(5),
        });
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .header("x-content-type-options", "nosniff")
        .body(Body::Text(body.to_string()))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assumed_roles_reduce_to_their_role() {
        assert_eq!(
            principal_of("arn:aws:sts::111122223333:assumed-role/app-role/i-0abc123"),
            (
                "arn:aws:iam::111122223333:role/app-role".to_string(),
                Some("i-0abc123".to_string())
            )
        );
        assert_eq!(
            principal_of("arn:aws-us-gov:sts::111122223333:assumed-role/r/botocore-session-1"),
            (
                "arn:aws-us-gov:iam::111122223333:role/r".to_string(),
                Some("botocore-session-1".to_string())
            )
        );
        assert_eq!(
            principal_of("arn:aws:iam::111122223333:user/alice"),
            ("arn:aws:iam::111122223333:user/alice".to_string(), None)
        );
        assert_eq!(principal_of("garbage"), ("garbage".to_string(), None));
    }

    #[test]
    fn echo_is_bounded_and_printable() {
        let e = echo(&"\u{0}a".repeat(10_000));
        assert!(e.chars().count() <= ECHO_MAX + 1);
        assert!(!e.contains('\u{0}'));
    }
}
