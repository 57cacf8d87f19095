//! A token request validated the way Entra validates it, one concern per
//! step and in Entra's order (the first failing check decides the AADSTS
//! code): the form, the app registration, the assertion's header and
//! unverified issuer, the federated credentials of that issuer, the
//! signature and time range against the issuer's key set, and last the
//! credential's audience and subject.

use std::collections::HashMap;

use aws2azure_shared::assertion::JWT_BEARER;
use axum::http::StatusCode;
use jsonwebtoken::Header;
use serde_json::Value;

use super::{EntraStandIn, FederatedCredential, Refusal, b64url_json, now_unix, refuse};

/// The form fields of a client-credentials request with an assertion.
struct TokenRequest<'a> {
    client_id: &'a str,
    scope: &'a str,
    assertion: &'a str,
}

/// The assertion as read before its signature is checked.
struct Unverified {
    header: Header,
    claims: Value,
}

impl Unverified {
    fn issuer(&self) -> Result<&str, Refusal> {
        self.claims["iss"].as_str().ok_or_else(malformed)
    }
}

impl EntraStandIn {
    pub(super) async fn validate(
        &self,
        tenant: &str,
        form: &HashMap<String, String>,
    ) -> Result<Value, Refusal> {
        let request = read_form(form)?;
        let app = self.app(tenant, request.client_id)?;
        let unverified = read_assertion(request.assertion)?;
        let iss = unverified.issuer()?;
        let by_issuer = credentials_of_issuer(&app, iss)?;
        let kid = unverified.header.kid.clone().ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. The token has no 'kid' header.",
            )
        })?;
        let claims = self
            .verified_claims(request.assertion, iss, &kid, &unverified.claims)
            .await?;
        let sub = matching_subject(&by_issuer, &claims)?;
        Ok(self.issue(tenant, request.client_id, request.scope, sub, &kid))
    }

    /// The credentials of the app `client_id` in `tenant`.
    fn app(&self, tenant: &str, client_id: &str) -> Result<Vec<&FederatedCredential>, Refusal> {
        let app: Vec<&FederatedCredential> = self
            .state
            .config
            .credentials
            .iter()
            .filter(|c| c.tenant_id == tenant && c.client_id == client_id)
            .collect();
        if app.is_empty() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                ),
            ));
        }
        Ok(app)
    }

    /// The assertion's claims once its signature and time range hold
    /// against the issuer's key set.
    async fn verified_claims(
        &self,
        assertion: &str,
        iss: &str,
        kid: &str,
        unverified: &Value,
    ) -> Result<Value, Refusal> {
        let jwks = self.key_set(iss, kid).await?;
        let key = jwks.find(kid).ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                format!("Client assertion failed signature validation. No key with kid '{kid}' was found in the issuer's key set."),
            )
        })?;
        let decoding =
            jsonwebtoken::DecodingKey::from_rsa_raw_components(key.modulus(), key.exponent());
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.leeway = self.state.config.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        match jsonwebtoken::decode::<Value>(assertion, &decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                let now = now_unix();
                Err(match e.kind() {
                    ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => refuse(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        700024,
                        format!(
                            "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {}, expiry time of assertion {}.",
                            unverified["nbf"], unverified["exp"]
                        ),
                    ),
                    ErrorKind::InvalidSignature => refuse(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        700027,
                        "Client assertion failed signature validation.",
                    ),
                    _ => malformed(),
                })
            }
        }
    }
}

/// The grant type, client, scope and assertion of the form.
fn read_form(form: &HashMap<String, String>) -> Result<TokenRequest<'_>, Refusal> {
    let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let missing = |name: &str| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let grant_type = param("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = param("client_id").ok_or_else(|| missing("client_id"))?;
    let scope = param("scope").ok_or_else(|| missing("scope"))?;
    if scope.split_whitespace().count() != 1 || !scope.ends_with("/.default") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let assertion = param("client_assertion").ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    })?;
    if param("client_assertion_type") != Some(JWT_BEARER) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            format!("Invalid client_assertion_type: expected {JWT_BEARER}."),
        ));
    }
    Ok(TokenRequest {
        client_id,
        scope,
        assertion,
    })
}

fn malformed() -> Refusal {
    refuse(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        50027,
        "JWT token is invalid or malformed.",
    )
}

/// The header (RS256 only) and the claims, not yet verified.
fn read_assertion(assertion: &str) -> Result<Unverified, Refusal> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            5002738,
            format!(
                "Invalid JWT token. '{:?}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256'.",
                header.alg
            ),
        ));
    }
    let claims = assertion
        .split('.')
        .nth(1)
        .and_then(b64url_json)
        .ok_or_else(malformed)?;
    Ok(Unverified { header, claims })
}

/// The app's credentials for the assertion's issuer (matched exactly).
fn credentials_of_issuer<'a>(
    app: &[&'a FederatedCredential],
    iss: &str,
) -> Result<Vec<&'a FederatedCredential>, Refusal> {
    let by_issuer: Vec<&FederatedCredential> =
        app.iter().copied().filter(|c| c.issuer == iss).collect();
    if by_issuer.is_empty() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please note that the matching is done using a case-sensitive comparison. Check the federated identity credentials configured on the app."
            ),
        ));
    }
    Ok(by_issuer)
}

/// The verified subject, if a credential of the issuer names it with one of
/// the assertion's audiences.
fn matching_subject<'c>(
    by_issuer: &[&FederatedCredential],
    claims: &'c Value,
) -> Result<&'c str, Refusal> {
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let by_audience: Vec<&FederatedCredential> = by_issuer
        .iter()
        .copied()
        .filter(|c| audiences.contains(&c.audience.as_str()))
        .collect();
    if by_audience.is_empty() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                audiences.join(",")
            ),
        ));
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    if !by_audience.iter().any(|c| c.subject == sub) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Please note that the matching is done using a case-sensitive comparison. Check the federated identity credentials configured on the app."
            ),
        ));
    }
    Ok(sub)
}
