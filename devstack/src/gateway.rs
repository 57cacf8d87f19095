//! A local stand-in for API Gateway (REST API, `AWS_IAM` authorization) in
//! front of the token API.
//!
//! It routes `GET /{stage}/token/{profile}`, verifies the caller's SigV4
//! signature ([`crate::sigv4`]), then builds the REST proxy event API
//! Gateway would send (caller identity in `requestContext.identity`, the
//! path as sent) and hands it to the function. Refusals carry API Gateway's
//! messages and `x-amzn-ErrorType`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

pub use crate::sigv4::{
    MAX_SKEW, Principal, PrincipalLookup, Refusal, canonical_request, string_to_sign, verify,
};
use crate::{Error, Server};

/// The function behind the gateway: a REST proxy request in, a response out.
pub type Function = Arc<
    dyn Fn(lambda_http::Request) -> BoxFuture<'static, lambda_http::Response<lambda_http::Body>>
        + Send
        + Sync,
>;

#[derive(Clone)]
struct Gateway {
    principals: Arc<HashMap<String, Principal>>,
    region: String,
    stage: String,
    function: Function,
}

/// Serves `GET /{stage}/token/{profile}` on `addr`.
pub async fn serve(
    addr: SocketAddr,
    region: &str,
    stage: &str,
    principals: Vec<Principal>,
    function: Function,
) -> Result<Server, Error> {
    let gateway = Gateway {
        principals: Arc::new(
            principals
                .into_iter()
                .map(|p| (p.access_key_id.clone(), p))
                .collect(),
        ),
        region: region.to_string(),
        stage: stage.to_string(),
        function,
    };
    let router = Router::new().fallback(handle).with_state(gateway);
    Server::start_with_peers(addr, router).await
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                ("content-type", "application/json"),
                ("x-amzn-errortype", self.error_type),
            ],
            json!({ "message": self.message }).to_string(),
        )
            .into_response()
    }
}

async fn handle(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match admit(
        &gateway,
        &method,
        &uri,
        &headers,
        &body,
        peer,
        SystemTime::now(),
    ) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let response = (gateway.function)(request).await;
    let (parts, body) = response.into_parts();
    let bytes: Vec<u8> = match body {
        lambda_http::Body::Empty => Vec::new(),
        lambda_http::Body::Text(t) => t.into_bytes(),
        lambda_http::Body::Binary(b) => b,
        _ => Vec::new(),
    };
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// What API Gateway does before the function runs: route, verify the
/// signature, build the REST proxy event. Every input is the caller's, so
/// nothing here may panic, whatever the bytes.
fn admit(
    gateway: &Gateway,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
    now: SystemTime,
) -> Result<lambda_http::Request, Refusal> {
    let Some(profile) = route(&gateway.stage, method, uri.path()) else {
        return Err(Refusal::forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let principal = verify(
        gateway,
        method,
        uri.path(),
        uri.query().unwrap_or(""),
        headers,
        body,
        now,
    )?;
    let event = rest_event(gateway, method, uri, headers, &profile, &principal, peer)?;
    lambda_http::request::from_str(&event.to_string()).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            e.to_string(),
        )
    })
}

/// `/{stage}/token/{profile}` with GET: the raw (still encoded) segment.
fn route(stage: &str, method: &Method, path: &str) -> Option<String> {
    let rest = path
        .strip_prefix('/')?
        .strip_prefix(stage)?
        .strip_prefix("/token/")?;
    (method == Method::GET && !rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
}

impl PrincipalLookup for Gateway {
    fn principal(&self, access_key_id: &str) -> Option<Principal> {
        self.principals.get(access_key_id).cloned()
    }
    fn region(&self) -> &str {
        &self.region
    }
}

/// The REST proxy event API Gateway sends for this request. As in real
/// REST events, `path` and `requestContext.path` keep the caller's
/// percent-encoding; the `profile` path parameter is given decoded, the
/// less forgiving of the forms a function must be ready for.
/// `X-Forwarded-For` and `X-Forwarded-Proto` are the gateway's own, as API
/// Gateway sets them.
fn rest_event(
    gateway: &Gateway,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw_profile: &str,
    principal: &Principal,
    peer: SocketAddr,
) -> Result<Value, Refusal> {
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let decode_query = |s: &str| decode(&s.replace('+', " "));
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    let path = format!("/token/{raw_profile}");
    if let Some(host) = host {
        check_host(host, &path)?;
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(chain) => format!("{chain}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    let mut multi: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, value) in headers {
        if matches!(name.as_str(), "x-forwarded-for" | "x-forwarded-proto") {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        multi.entry(name.to_string()).or_default().push(value);
    }
    multi.insert("x-forwarded-for".into(), vec![forwarded_for]);
    multi.insert("x-forwarded-proto".into(), vec!["http".into()]);
    let single: serde_json::Map<String, Value> = multi
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.last())))
        .collect();
    let mut multi_query: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        multi_query
            .entry(decode_query(k))
            .or_default()
            .push(decode_query(v));
    }
    let query: serde_json::Map<String, Value> = multi_query
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.last())))
        .collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(json!({
        "resource": "/token/{profile}",
        "path": path,
        "httpMethod": method.as_str(),
        "headers": single,
        "multiValueHeaders": multi,
        "queryStringParameters": if query.is_empty() { Value::Null } else { Value::Object(query) },
        "multiValueQueryStringParameters": if multi_query.is_empty() { Value::Null } else { json!(multi_query) },
        "pathParameters": { "profile": decode(raw_profile) },
        "stageVariables": null,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": "/token/{profile}",
            "httpMethod": method.as_str(),
            "path": format!("/{}{path}", gateway.stage),
            "accountId": principal.account_id,
            "protocol": "HTTP/1.1",
            "stage": gateway.stage,
            "requestTimeEpoch": now.as_millis() as u64,
            "requestId": uuid::Uuid::new_v4().to_string(),
            "identity": {
                "accountId": principal.account_id,
                "caller": principal.caller,
                "sourceIp": peer.ip().to_string(),
                "accessKey": principal.access_key_id,
                "userArn": principal.arn,
                "userAgent": headers.get("user-agent").and_then(|v| v.to_str().ok()),
                "user": principal.caller,
            },
            "domainName": host,
            "apiId": "local",
        },
        "body": null,
        "isBase64Encoded": false,
    }))
}

/// lambda_http builds the request URI from the event's `Host` header and
/// path with `url` and then `http`, and panics if either refuses it. A Host
/// that is not a plain `host[:port]` both accept is a client mistake:
/// refused here, before the event (a `/`, `\\`, `?` or `@` would also move
/// the URI's path).
fn check_host(host: &str, path: &str) -> Result<(), Refusal> {
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'));
    let usable = plain
        && url::Url::parse(&format!("http://{host}{path}"))
            .is_ok_and(|url| url.as_str().parse::<Uri>().is_ok());
    if usable {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "Invalid Host header",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigv4::parse_amz_date;
    use axum::http::HeaderValue;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20261126T210000Z";

    fn gateway() -> Gateway {
        let principal = Principal {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SECRET.into(),
            session_token: None,
            arn: "arn:aws:iam::111122223333:user/alice".into(),
            caller: "AIDAEXAMPLE".into(),
            account_id: "111122223333".into(),
        };
        Gateway {
            principals: Arc::new(HashMap::from([(
                principal.access_key_id.clone(),
                principal,
            )])),
            region: "us-east-1".into(),
            stage: "dev".into(),
            function: Arc::new(|_| Box::pin(async { unreachable!("not called by admit") })),
        }
    }

    /// Signs `headers` (all of them) for `uri` with the gateway's principal,
    /// whatever their values: a caller with credentials can sign anything.
    fn self_signed(uri: &Uri, mut headers: HeaderMap) -> HeaderMap {
        headers.insert("x-amz-date", HeaderValue::from_static(DATE));
        let mut names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names.dedup();
        let signed: Vec<&str> = names.iter().map(String::as_str).collect();
        let canonical = canonical_request(
            &Method::GET,
            uri.path(),
            uri.query().unwrap_or(""),
            &headers,
            &signed,
            b"",
        )
        .unwrap();
        let sts = string_to_sign(
            DATE,
            "20261126/us-east-1/execute-api/aws4_request",
            &canonical,
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(
            SECRET,
            parse_amz_date(DATE).unwrap(),
            "us-east-1",
            "execute-api",
        );
        let signature = aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes());
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261126/us-east-1/execute-api/aws4_request, SignedHeaders={}, Signature={signature}",
            signed.join(";")
        );
        headers.insert("authorization", authorization.parse().unwrap());
        headers
    }

    fn admit_signed(uri: &str, headers: HeaderMap) -> Result<lambda_http::Request, Refusal> {
        let uri: Uri = uri.parse().unwrap();
        let headers = self_signed(&uri, headers);
        admit(
            &gateway(),
            &Method::GET,
            &uri,
            &headers,
            b"",
            "203.0.113.7:50000".parse().unwrap(),
            parse_amz_date(DATE).unwrap(),
        )
    }

    fn host(value: &str) -> HeaderMap {
        HeaderMap::from_iter([(http::header::HOST, HeaderValue::from_str(value).unwrap())])
    }

    /// The event keeps the path as sent, like API Gateway REST; the
    /// forwarding headers are the gateway's, not the caller's.
    #[test]
    fn events_keep_the_raw_path_and_set_their_own_forwarding_headers() {
        use lambda_http::RequestExt;
        let mut headers = host("localhost:8080");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        let request = admit_signed("/dev/token/gr%61ph?min_validity=300", headers).unwrap();
        assert_eq!(request.raw_http_path(), "/token/gr%61ph");
        let event_path = match request.request_context_ref() {
            Some(lambda_http::request::RequestContext::ApiGatewayV1(ctx)) => ctx.path.clone(),
            _ => None,
        };
        assert_eq!(event_path.as_deref(), Some("/dev/token/gr%61ph"));
        assert_eq!(
            request
                .path_parameters_ref()
                .and_then(|p| p.first("profile")),
            Some("graph")
        );
        assert_eq!(request.uri().scheme_str(), Some("http"));
        assert_eq!(
            request.headers()["x-forwarded-for"],
            "198.51.100.1, 203.0.113.7"
        );
    }

    #[test]
    fn a_host_no_url_can_carry_is_refused_not_a_panic() {
        for bad in [
            "a b",
            "exa mple.com",
            "[zz]",
            "host:99999",
            "a:b:c",
            "999.1.1.1",
            "x\\y",
            "x/y",
            "a?b",
            "u@h",
            "",
        ] {
            let refusal = admit_signed("/dev/token/graph", host(bad)).unwrap_err();
            assert_eq!(
                (refusal.status, refusal.message.as_str()),
                (StatusCode::BAD_REQUEST, "Invalid Host header"),
                "{bad}"
            );
        }
        for good in [
            "localhost",
            "127.0.0.1:4000",
            "[::1]:4000",
            "abc.execute-api.us-east-1.amazonaws.com",
        ] {
            assert!(
                admit_signed("/dev/token/graph", host(good)).is_ok(),
                "{good}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any bytes a header can hold, signed or not, in any of the headers
        /// the gateway reads: a refusal or an event, never a panic.
        #[test]
        fn no_header_bytes_make_the_gateway_panic(
            which in 0usize..7,
            // Every byte an HTTP server hands on in a header value.
            value in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\t'),
                    0x20u8..0x7f,
                    0x80u8..=0xff,
                ],
                0..48,
            ),
            sign in proptest::prelude::any::<bool>(),
        ) {
            let value = HeaderValue::from_bytes(&value).unwrap();
            let name = ["host", "x-forwarded-proto", "x-forwarded-for", "user-agent",
                "authorization", "x-amz-date", "x-amz-security-token"][which];
            let uri: Uri = "/dev/token/graph".parse().unwrap();
            let mut headers = host("localhost");
            headers.insert(http::HeaderName::from_static(name), value.clone());
            let mut headers = if sign { self_signed(&uri, headers) } else { headers };
            // The signing above may have replaced the hostile value: put it back.
            headers.insert(http::HeaderName::from_static(name), value);
            let _ = admit(&gateway(), &Method::GET, &uri, &headers, b"",
                "203.0.113.7:50000".parse().unwrap(), parse_amz_date(DATE).unwrap());
        }
    }
}
