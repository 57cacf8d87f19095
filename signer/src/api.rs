//! The token API at its boundary: an API Gateway REST request in, a JSON
//! response out, plus one audit record ([`crate::audit`]) per request.
//!
//! `GET /token/{profile}[?min_validity=SECONDS]`. The caller's identity comes
//! only from `requestContext.identity`, which API Gateway fills after it has
//! verified the caller's SigV4 signature (`AWS_IAM` authorization); nothing
//! the caller sends in headers is trusted for it.

use std::time::{Duration, Instant};

use aws2azure_shared::profile::ProfileName;
use aws2azure_shared::token_api::ErrorDocument;
use http::{HeaderValue, Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

use crate::audit::{AuditRecord, CallerIdentity};
use crate::broker::{Broker, Failed, Issued, MinValidity};
use crate::{Error, echo};

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
            audit.cache = Some(issued.outcome);
            audit.upstream(&issued.upstream);
            if let Some(err) = &issued.absorbed_error {
                audit.aadsts = err.aadsts();
            }
            success(broker, &issued)
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
            if let Error::Entra { correlation_id, .. } = &*err {
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
        audit.assertion = Some(profile.assertion.as_str());
        if !profile.allows(&principal) {
            return Err(Error::CallerNotAllowed {
                profile: name.to_string(),
                principal: echo(&principal),
            }
            .into());
        }
    }
    let deadline = broker.settings().request_deadline;
    match tokio::time::timeout(deadline, broker.token(&name, min_validity)).await {
        Ok(result) => result,
        Err(_) => Err(Error::DeadlineExceeded(deadline).into()),
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

fn min_validity(req: &Request) -> Result<MinValidity, Error> {
    let Some(params) = req.query_string_parameters_ref() else {
        return Ok(MinValidity::default());
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
    value.map_or(Ok(MinValidity::default()), MinValidity::parse)
}

fn success(broker: &Broker, issued: &Issued) -> Response<Body> {
    json_response(StatusCode::OK, &issued.response(broker.now_unix()))
}

fn failure(status: StatusCode, code: &'static str, err: &Error) -> Response<Body> {
    let body = ErrorDocument {
        aadsts: err.aadsts().map(|code| format!("AADSTS{code}")),
        correlation_id: match err {
            Error::Entra { correlation_id, .. } => correlation_id.clone(),
            _ => None,
        },
        error: code.to_string(),
        error_description: err.public_description(),
        message: None,
    };
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

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    // Plain structs of strings and numbers: serializing cannot fail.
    let body = serde_json::to_string(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .header("x-content-type-options", "nosniff")
        .body(Body::Text(body))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ECHO_MAX;

    #[test]
    fn echo_is_bounded_and_printable() {
        let e = echo(&"\u{0}a".repeat(10_000));
        assert!(e.chars().count() <= ECHO_MAX + 1);
        assert!(!e.contains('\u{0}'));
    }
}
