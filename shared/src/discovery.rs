//! The issuer and its OpenID Connect discovery document.
//!
//! Entra compares the assertion's `iss` with the federated credential's
//! issuer byte for byte, trailing slash included, and fetches
//! `{issuer without trailing slash}/.well-known/openid-configuration`.
//! So the issuer is kept exactly as configured: one canonical string used for
//! `iss`, for the discovery `issuer`, and to derive every URL below it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::jwk::RS256;
use crate::{Error, echo, json_error};

/// Longest echo of a refused issuer: whole for any real URL, bounded for
/// a hostile one.
const MAX_ISSUER_ECHO: usize = 256;

/// Path of the discovery document below the issuer.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Path of the key set below the issuer.
pub const JWKS_PATH: &str = "/jwks";
/// A conventional alias some tools look for.
pub const JWKS_ALIAS_PATH: &str = "/.well-known/jwks.json";

/// The claims an assertion of this issuer carries.
pub const CLAIMS_SUPPORTED: [&str; 7] = ["sub", "iss", "aud", "exp", "iat", "nbf", "jti"];

/// A validated issuer URL, kept byte for byte as configured.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Issuer {
    url: String,
    /// Byte offset where the path starts (after the authority).
    path_start: usize,
}

impl Issuer {
    /// Accepts `https://host[:port][/path][/]`; plain `http://` only for
    /// loopback hosts (local development and tests), since Entra fetches the
    /// issuer over HTTPS only.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::InvalidIssuer {
            issuer: echo(url, MAX_ISSUER_ECHO),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(fail(
                "it is empty; set it to the public URL of the edge, e.g. https://issuer.example.com",
            ));
        }
        if url.trim() != url || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains whitespace"));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|_| fail("it is not a valid absolute URL"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| fail("it has no host; expected https://host[/path]"))?;
        if authority.as_str().contains('@') {
            return Err(fail("it must not contain user information"));
        }
        if uri.query().is_some() || url.contains('?') || url.contains('#') {
            return Err(fail("it must not contain a query or fragment"));
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback_host(authority.host()) => {}
            Some("http") => {
                return Err(fail(
                    "plain http is allowed only for loopback hosts; Entra fetches issuers over https",
                ));
            }
            _ => return Err(fail("the scheme must be https")),
        }
        let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
        let path_start = url[after_scheme..]
            .find('/')
            .map(|i| after_scheme + i)
            .unwrap_or(url.len());
        let path = &url[path_start..];
        if path.contains("//") {
            return Err(fail("its path contains an empty segment (`//`)"));
        }
        Ok(Self {
            url: url.to_string(),
            path_start,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The issuer without a trailing slash: the base every URL below it is
    /// joined to, so that no `//` appears.
    fn base(&self) -> &str {
        self.url.strip_suffix('/').unwrap_or(&self.url)
    }

    /// The path part of the issuer without a trailing slash (`""` for a bare
    /// host): the prefix the edge serves its routes under.
    pub fn path_prefix(&self) -> &str {
        let path = &self.url[self.path_start..];
        path.strip_suffix('/').unwrap_or(path)
    }

    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base())
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.base())
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl TryFrom<String> for Issuer {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<Issuer> for String {
    fn from(i: Issuer) -> Self {
        i.url
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (brackets allowed): hosts where
/// plain http is acceptable for local development.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The OpenID Provider Metadata Entra reads (OpenID Connect Discovery 1.0,
/// section 3), reduced to what a federation issuer needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryDocument {
    pub issuer: String,
    pub jwks_uri: String,
    pub response_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub claims_supported: Vec<String>,
}

impl DiscoveryDocument {
    pub fn for_issuer(issuer: &Issuer) -> Self {
        Self {
            issuer: issuer.as_str().to_string(),
            jwks_uri: issuer.jwks_uri(),
            response_types_supported: vec!["id_token".into()],
            subject_types_supported: vec!["public".into()],
            id_token_signing_alg_values_supported: vec![RS256.into()],
            claims_supported: CLAIMS_SUPPORTED.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Parses a discovery document as an issuer serves it; members this
    /// project does not read are ignored, as Entra ignores them.
    pub fn from_json(document: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(document).map_err(|e| {
            Error::InvalidDiscovery(format!(
                "expected an OpenID discovery document with issuer, jwks_uri, \
                 response_types_supported, subject_types_supported and \
                 id_token_signing_alg_values_supported ({})",
                json_error(&e)
            ))
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a discovery document always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_issuer_exactly_and_derives_urls_without_double_slashes() {
        let cases = [
            (
                "https://issuer.example.com",
                "",
                "https://issuer.example.com/jwks",
            ),
            (
                "https://issuer.example.com/",
                "",
                "https://issuer.example.com/jwks",
            ),
            (
                "https://e.example.com/tenant-a",
                "/tenant-a",
                "https://e.example.com/tenant-a/jwks",
            ),
            (
                "https://e.example.com/a/b/",
                "/a/b",
                "https://e.example.com/a/b/jwks",
            ),
            ("http://127.0.0.1:8787", "", "http://127.0.0.1:8787/jwks"),
            ("http://[::1]:8787/x", "/x", "http://[::1]:8787/x/jwks"),
            ("http://localhost:1", "", "http://localhost:1/jwks"),
        ];
        for (url, prefix, jwks) in cases {
            let issuer = Issuer::parse(url).unwrap();
            assert_eq!(issuer.as_str(), url);
            assert_eq!(issuer.path_prefix(), prefix, "{url}");
            assert_eq!(issuer.jwks_uri(), jwks);
            assert!(!issuer.discovery_url()["https://".len()..].contains("//"));
            let doc = DiscoveryDocument::for_issuer(&issuer);
            assert_eq!(
                doc.issuer, url,
                "issuer is byte-for-byte the configured one"
            );
            assert_eq!(doc.jwks_uri, jwks);
        }
    }

    #[test]
    fn discovery_document_has_the_fields_entra_reads() {
        let issuer = Issuer::parse("https://issuer.example.com/").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&DiscoveryDocument::for_issuer(&issuer).to_json()).unwrap();
        assert_eq!(v["issuer"], "https://issuer.example.com/");
        assert_eq!(v["jwks_uri"], "https://issuer.example.com/jwks");
        assert_eq!(
            v["response_types_supported"],
            serde_json::json!(["id_token"])
        );
        assert_eq!(v["subject_types_supported"], serde_json::json!(["public"]));
        assert_eq!(
            v["id_token_signing_alg_values_supported"],
            serde_json::json!(["RS256"])
        );
        assert!(
            v["claims_supported"]
                .as_array()
                .unwrap()
                .contains(&"sub".into())
        );
        assert_eq!(
            issuer.discovery_url(),
            "https://issuer.example.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn refuses_unusable_issuers() {
        let cases = [
            ("", "empty"),
            ("issuer.example.com", "scheme must be https"),
            ("ftp://issuer.example.com", "scheme"),
            ("http://issuer.example.com", "loopback"),
            ("https://issuer.example.com?x=1", "query"),
            ("https://issuer.example.com/#f", "query or fragment"),
            ("https://issuer.example.com//a", "empty segment"),
            (" https://issuer.example.com", "whitespace"),
            ("https://user@issuer.example.com", "user information"),
        ];
        for (url, expect) in cases {
            let err = Issuer::parse(url).unwrap_err();
            assert!(err.to_string().contains(expect), "{url}: {err}");
            assert!(
                err.to_string().contains(&format!("`{url}`")),
                "names the value: {err}"
            );
        }
    }
}
