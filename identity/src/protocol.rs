//! The App Service managed-identity protocol (api-version 2019-08-01), as
//! Azure SDKs speak it: parsing a request's query into a [`TokenRequest`],
//! the answer ([`TokenAnswer`]) and the error document ([`ErrorBody`]).
//!
//! Pure: no I/O, so every hostile query is a unit test.

use serde::Serialize;

use crate::Error;

/// The only version spoken. Azure SDKs send it for App Service.
pub const API_VERSION: &str = "2019-08-01";

/// The header carrying the secret (`IDENTITY_HEADER`).
pub const IDENTITY_HEADER: &str = "x-identity-header";

/// Longest query accepted. An SDK's query is a resource URI and a GUID or
/// two; anything near this is not a client of ours.
pub const MAX_QUERY_LEN: usize = 4096;

/// Longest resource accepted (Entra's application ID URIs are at most 120
/// characters; the margin is for paths).
const MAX_RESOURCE_LEN: usize = 512;

/// How a request names the identity it wants when several serve a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `client_id`: the app registration's Application (client) ID.
    ClientId(String),
    /// `mi_res_id`: for aws2azure, the profile's name.
    ResourceId(String),
    /// `object_id` / `principal_id`: Azure object ids, which aws2azure
    /// profiles do not carry.
    Unsupported(&'static str),
}

/// A parsed, valid request for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// What the SDK asked for: a scope without `/.default`.
    pub resource: String,
    pub selector: Option<Selector>,
}

impl TokenRequest {
    /// Parses the raw (still percent-encoded) query string.
    pub fn from_query(query: Option<&str>) -> Result<Self, Error> {
        let query = query.unwrap_or_default();
        if query.len() > MAX_QUERY_LEN {
            return Err(Error::TooLong { max: MAX_QUERY_LEN });
        }
        let mut api_version = None;
        let mut resource = None;
        let mut selector: Option<(&'static str, Selector)> = None;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "api-version" => &mut api_version,
                "resource" => &mut resource,
                "client_id" | "mi_res_id" | "object_id" | "principal_id" => {
                    let (name, made) = selector_of(&name, &value)?;
                    if let Some((first, _)) = selector.replace((name, made)) {
                        return Err(Error::BadRequest(if first == name {
                            format!("{name} is given more than once")
                        } else {
                            format!("{first} and {name} are both given; choose one identity")
                        }));
                    }
                    continue;
                }
                // Clients add parameters of their own (a newer MSAL sends a
                // hash of the token it wants replaced); they change nothing
                // here, but a hostile one must not reach a log line either.
                _ => {
                    check_printable("a query parameter", &name)?;
                    check_printable("a query parameter", &value)?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(Error::BadRequest(format!("{name} is given more than once")));
            }
            check_printable(&name, &value)?;
            *slot = Some(value.into_owned());
        }
        match api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(given) => {
                return Err(Error::ApiVersion {
                    given: aws2azure_shared::echo(given, 40),
                    supported: API_VERSION,
                });
            }
            None => {
                return Err(Error::BadRequest(format!(
                    "api-version is missing; use api-version={API_VERSION}"
                )));
            }
        }
        let resource = resource.filter(|r| !r.is_empty()).ok_or_else(|| {
            Error::BadRequest(
                "resource is missing: name the resource, e.g. resource=https://graph.microsoft.com"
                    .into(),
            )
        })?;
        if resource.chars().count() > MAX_RESOURCE_LEN {
            return Err(Error::BadRequest(format!(
                "resource is longer than {MAX_RESOURCE_LEN} characters"
            )));
        }
        if resource.contains(char::is_whitespace) {
            return Err(Error::BadRequest(
                "resource must not contain whitespace: name one resource".into(),
            ));
        }
        Ok(Self {
            resource,
            selector: selector.map(|(_, s)| s),
        })
    }
}

fn selector_of(name: &str, value: &str) -> Result<(&'static str, Selector), Error> {
    let (name, selector): (&'static str, fn(String) -> Selector) = match name {
        "client_id" => ("client_id", Selector::ClientId),
        "mi_res_id" => ("mi_res_id", Selector::ResourceId),
        "object_id" => ("object_id", |_| Selector::Unsupported("object_id")),
        _ => ("principal_id", |_| Selector::Unsupported("principal_id")),
    };
    check_printable(name, value)?;
    if value.is_empty() || value.len() > MAX_RESOURCE_LEN {
        return Err(Error::BadRequest(format!(
            "{name} must be 1 to {MAX_RESOURCE_LEN} characters"
        )));
    }
    Ok((name, selector(value.to_string())))
}

/// Control characters (decoded from `%00`, `%0A`, ...) would let a query
/// forge log lines or headers downstream: refused, and never echoed.
fn check_printable(name: &str, value: &str) -> Result<(), Error> {
    if value.chars().any(char::is_control) {
        return Err(Error::BadRequest(format!(
            "{} holds control characters",
            printable_name(name)
        )));
    }
    Ok(())
}

fn printable_name(name: &str) -> String {
    aws2azure_shared::echo(name, 40)
}

/// The 200 answer. `expires_on` is epoch seconds in a string, as App
/// Service sends it and as the SDKs parse it.
#[derive(Serialize)]
pub struct TokenAnswer<'a> {
    pub access_token: &'a str,
    pub expires_on: String,
    pub resource: &'a str,
    pub token_type: &'a str,
    pub client_id: &'a str,
}

impl std::fmt::Debug for TokenAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("resource", &self.resource)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Every refusal's body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub error_description: String,
}

impl From<&Error> for ErrorBody {
    fn from(error: &Error) -> Self {
        Self {
            error: error.code(),
            error_description: error.description(),
        }
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
