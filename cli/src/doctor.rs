//! `aws2azure doctor ISSUER_URL`: checks a deployed issuer the way Entra
//! will use it, and says what to fix.

use std::time::{Duration, Instant};

use aws2azure_shared::discovery::{DiscoveryDocument, Issuer};
use aws2azure_shared::echo;
use aws2azure_shared::jwk::{Jwk, MAX_KEYS, RawJwk};
use serde::Serialize;

use crate::Error;

/// Largest document read from an issuer. A discovery document is under a
/// kilobyte and a key set of 100 keys about 50 KB; anything larger is
/// refused after this much, not read whole into memory.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Longest echo of a served value (a URL, an issuer) in a detail line.
const MAX_URL_ECHO: usize = 200;
/// Longest echo of a served `kid` in a check name.
const MAX_KID_ECHO: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub issuer: String,
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
        });
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// A fixed-width table, one check per line.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = format!("issuer {}\n", self.issuer);
        for c in &self.checks {
            let tag = match c.status {
                Status::Pass => "PASS",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("{tag}  {:<width$}  {}\n", c.name, c.detail));
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if failed == 0 {
            out.push_str("\nEntra can use this issuer. Next: `aws2azure azure PROFILE` prints the federated credential to create.\n");
        } else {
            out.push_str(&format!("\n{failed} check(s) failed: Entra would refuse assertions of this issuer (AADSTS50166/90061/700211). Fix them and run doctor again.\n"));
        }
        out
    }
}

pub struct Options {
    /// Accept plain http on loopback (for `aws2azure dev`).
    pub allow_http: bool,
    /// A key id that must be in the key set.
    pub kid: Option<String>,
    pub timeout: Duration,
}

/// Runs every check it can; later checks are skipped when what they need
/// failed (and say so).
pub async fn check(issuer_url: &str, options: &Options) -> Result<Report, Error> {
    let mut report = Report {
        issuer: issuer_url.to_string(),
        ..Report::default()
    };
    let http = reqwest::Client::builder()
        .timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("aws2azure-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Http(e.to_string()))?;

    let issuer = match Issuer::parse(issuer_url) {
        Ok(i) => i,
        Err(e) => {
            report.add("issuer URL", Status::Fail, e.to_string());
            return Ok(report);
        }
    };
    if !issuer.is_https() && !options.allow_http {
        report.add(
            "issuer URL",
            Status::Fail,
            "plain http: Entra fetches issuers over https only (pass --allow-http to check a local `aws2azure dev` edge)",
        );
        return Ok(report);
    }
    report.add("issuer URL", Status::Pass, issuer.as_str());

    let discovery_url = issuer.discovery_url();
    let Some((body, headers)) =
        fetch(&http, &discovery_url, "discovery document", &mut report).await
    else {
        return Ok(report);
    };
    let discovery = match DiscoveryDocument::from_json(&body) {
        Ok(d) => d,
        Err(e) => {
            report.add("discovery document is JSON", Status::Fail, e.to_string());
            return Ok(report);
        }
    };
    cache_headers(&mut report, "discovery cache headers", &headers);
    if discovery.issuer == issuer.as_str() {
        report.add(
            "issuer matches",
            Status::Pass,
            "discovery `issuer` is byte-identical to the URL",
        );
    } else {
        report.add(
            "issuer matches",
            Status::Fail,
            format!(
                "discovery says {:?}, the URL is {:?}; Entra compares them byte for byte (trailing slash included): set the edge's ISSUER to exactly the URL in the federated credential",
                echo(&discovery.issuer, MAX_URL_ECHO),
                echo(issuer.as_str(), MAX_URL_ECHO)
            ),
        );
    }
    if discovery
        .id_token_signing_alg_values_supported
        .iter()
        .any(|a| a == "RS256")
    {
        report.add(
            "RS256 advertised",
            Status::Pass,
            "id_token_signing_alg_values_supported has RS256",
        );
    } else {
        report.add(
            "RS256 advertised",
            Status::Warn,
            "id_token_signing_alg_values_supported lacks RS256",
        );
    }
    // Any absolute URL will do for the key set (a query is fine); only the
    // scheme matters to Entra.
    let jwks_uri = discovery
        .jwks_uri
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.host().is_some());
    let jwks_ok = match jwks_uri.as_ref().and_then(|u| u.scheme_str()) {
        Some("https") => true,
        Some("http") if options.allow_http => true,
        Some(_) => {
            report.add(
                "jwks_uri",
                Status::Fail,
                format!("{} is not https", echo(&discovery.jwks_uri, MAX_URL_ECHO)),
            );
            false
        }
        None => {
            report.add(
                "jwks_uri",
                Status::Fail,
                format!(
                    "{:?} is not an absolute URL",
                    echo(&discovery.jwks_uri, MAX_URL_ECHO)
                ),
            );
            false
        }
    };
    if !jwks_ok {
        return Ok(report);
    }
    let Some((body, headers)) = fetch(&http, &discovery.jwks_uri, "key set", &mut report).await
    else {
        return Ok(report);
    };
    let jwks: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            report.add(
                "key set is JSON",
                Status::Fail,
                echo(&e.to_string(), MAX_URL_ECHO),
            );
            return Ok(report);
        }
    };
    cache_headers(&mut report, "key set cache headers", &headers);
    let Some(keys) = jwks.get("keys").and_then(|k| k.as_array()) else {
        report.add("keys", Status::Fail, "the key set has no `keys` array");
        return Ok(report);
    };
    if keys.is_empty() {
        report.add("keys", Status::Fail, "the key set is empty: publish the signing key (aws2azure keys export | wrangler kv key put)");
    } else if keys.len() > MAX_KEYS {
        report.add(
            "keys",
            Status::Fail,
            format!("{} keys: Entra reads only the first {MAX_KEYS}", keys.len()),
        );
    } else {
        report.add("keys", Status::Pass, format!("{} key(s)", keys.len()));
    }
    let mut kids = Vec::new();
    let mut rsa_keys = 0;
    // Entra reads the first MAX_KEYS keys only; so does this report.
    for (i, key) in keys.iter().take(MAX_KEYS).enumerate() {
        let raw: RawJwk = serde_json::from_value(key.clone()).unwrap_or_default();
        let label = match &raw.kid {
            Some(kid) => format!("key {}", echo(kid, MAX_KID_ECHO)),
            None => format!("key #{i}"),
        };
        if let Some(kid) = &raw.kid {
            if kids.contains(kid) {
                report.add(
                    label,
                    Status::Fail,
                    "the same kid appears twice: a validator may pick either key",
                );
                continue;
            }
            kids.push(kid.clone());
        }
        let kty = raw.kty.clone().unwrap_or_default();
        match Jwk::try_from(raw) {
            Ok(jwk) => {
                rsa_keys += 1;
                report.add(
                    label,
                    Status::Pass,
                    format!("RSA {} bits, use sig, alg RS256", jwk.bits()),
                )
            }
            // AWS's issuer also publishes ES384 keys: harmless, since Entra
            // verifies federation assertions with RS256 keys only.
            Err(aws2azure_shared::Error::UnsupportedKeyType { .. })
                if matches!(kty.as_str(), "EC" | "OKP") =>
            {
                report.add(
                    label,
                    Status::Warn,
                    format!(
                        "kty {kty}: not usable for Entra, which accepts RS256 assertions only; \
                         other keys must sign them"
                    ),
                )
            }
            Err(e) => report.add(label, Status::Fail, e.to_string()),
        }
    }
    if !keys.is_empty() && rsa_keys == 0 {
        report.add(
            "RS256 keys",
            Status::Fail,
            "no usable RSA key: Entra could verify no assertion from this issuer",
        );
    }
    if let Some(kid) = &options.kid {
        if kids.iter().any(|k| k == kid) {
            report.add("expected kid", Status::Pass, format!("{kid} is published"));
        } else {
            report.add(
                "expected kid",
                Status::Fail,
                format!("{kid} is not in the key set; assertions signed with it would fail with AADSTS700027"),
            );
        }
    }
    Ok(report)
}

/// GETs a document of at most [`MAX_DOCUMENT_BYTES`]; reports why not.
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    report: &mut Report,
) -> Option<(Vec<u8>, reqwest::header::HeaderMap)> {
    let started = Instant::now();
    let shown = echo(url, MAX_URL_ECHO);
    let response = match http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            unreachable(report, what, &shown, e);
            return None;
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    if !status.is_success() {
        report.add(
            format!("{what} reachable"),
            Status::Fail,
            format!("GET {shown}: HTTP {}{}", status.as_u16(), if status.is_redirection() { " (Entra does not follow redirects to the discovery document: serve it directly)" } else { "" }),
        );
        return None;
    }
    let too_large = || {
        format!(
            "GET {shown}: larger than {MAX_DOCUMENT_BYTES} bytes, not read further; a {what} is a few kilobytes"
        )
    };
    let body = match aws2azure_signer::entra::read_capped(response, MAX_DOCUMENT_BYTES).await {
        Ok((body, true)) => body,
        Ok((_, false)) => {
            report.add(format!("{what} size"), Status::Fail, too_large());
            return None;
        }
        Err(e) => {
            unreachable(report, what, &shown, e);
            return None;
        }
    };
    report.add(
        format!("{what} reachable"),
        Status::Pass,
        format!("GET {shown}: 200 in {} ms", started.elapsed().as_millis()),
    );
    Some((body, headers))
}

/// A document that could not be fetched (the connection, or the body).
fn unreachable(report: &mut Report, what: &str, shown: &str, error: reqwest::Error) {
    report.add(
        format!("{what} reachable"),
        Status::Fail,
        format!(
            "GET {shown}: {}",
            echo(&error.without_url().to_string(), MAX_URL_ECHO)
        ),
    );
}

fn cache_headers(report: &mut Report, name: &str, headers: &reqwest::header::HeaderMap) {
    let cache_control = headers.get("cache-control").and_then(|v| v.to_str().ok());
    let max_age = cache_control.and_then(|cc| {
        cc.split(',')
            .filter_map(|d| d.trim().strip_prefix("max-age="))
            .find_map(|v| v.parse::<u64>().ok())
    });
    let etag = headers.get("etag").is_some();
    match (max_age, etag) {
        (Some(age), true) => report.add(
            name,
            Status::Pass,
            format!("Cache-Control max-age={age}, ETag present"),
        ),
        (Some(age), false) => report.add(
            name,
            Status::Warn,
            format!("Cache-Control max-age={age}, no ETag"),
        ),
        (None, _) => report.add(
            name,
            Status::Warn,
            "no Cache-Control max-age: every validator refetch reaches the origin",
        ),
    }
}
