//! The edge's configuration: Worker variables (wrangler.toml `[vars]`) and
//! bindings, parsed and validated once per isolate.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_shared::allowlist::AllowlistMode;
use aws2azure_shared::discovery::{DiscoveryDocument, Issuer};
use aws2azure_shared::echo;
use bytes::Bytes;

use crate::Error;
use crate::key_document::KeyDocument;
use crate::representation::Representation;

/// The issuer URL, byte for byte what Entra's federated credential names.
pub const ISSUER: &str = "ISSUER";
/// `off`, `monitor` (default) or `enforce`.
pub const ALLOWLIST_MODE: &str = "ALLOWLIST_MODE";
/// `Cache-Control: max-age` of the discovery document, in seconds.
pub const DISCOVERY_MAX_AGE: &str = "DISCOVERY_MAX_AGE";
/// `Cache-Control: max-age` of the key set, in seconds.
pub const JWKS_MAX_AGE: &str = "JWKS_MAX_AGE";
/// An inline key document; when set, KV is not read for keys.
pub const KEY_DOCUMENT: &str = "KEY_DOCUMENT";
/// The KV key holding the key document.
pub const KEY_DOCUMENT_KV_KEY: &str = "KEY_DOCUMENT_KV_KEY";
/// The KV key holding the optional allowlist override.
pub const ALLOWLIST_KV_KEY: &str = "ALLOWLIST_KV_KEY";
/// How long an isolate serves its copy before it reads KV again.
pub const KV_REFRESH_SECONDS: &str = "KV_REFRESH_SECONDS";
/// The Workers KV namespace binding (not a variable): key document and
/// allowlist override.
pub const KV_BINDING: &str = "EDGE_KV";

pub const DEFAULT_DISCOVERY_MAX_AGE: u32 = 3600;
pub const DEFAULT_JWKS_MAX_AGE: u32 = 300;
pub const DEFAULT_KEY_DOCUMENT_KV_KEY: &str = "jwks";
pub const DEFAULT_ALLOWLIST_KV_KEY: &str = "allowlist";
/// KV is eventually consistent (a write takes 60 s or more to reach every
/// location, and KV's own per-location cache holds a read for 60 s), so
/// asking it more often than this buys no freshness, only reads.
pub const DEFAULT_KV_REFRESH_SECONDS: u32 = 60;

/// A day: a validator caching keys longer than that would outlive the
/// rotation schedule (keys warm up for 24 h before they sign).
const MAX_MAX_AGE: u32 = 86_400;
const MAX_KV_REFRESH_SECONDS: u32 = 3600;
/// Workers KV's limit on key names.
const MAX_KV_KEY_BYTES: usize = 512;
/// Longest echo of a refused value in a setting's error (the variables are
/// the operator's, but a pasted file must not flood the log line).
const MAX_ECHO: usize = 64;

/// Where the key document comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The `KEY_DOCUMENT` variable, validated at configuration time; keys
    /// change by redeploying.
    Inline(Arc<KeyDocument>),
    /// A key in the `EDGE_KV` namespace, published by the key manager.
    Kv { key: String },
}

/// The validated configuration of one edge.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    issuer: Issuer,
    allowlist_mode: AllowlistMode,
    discovery_max_age: u32,
    jwks_max_age: u32,
    key_source: KeySource,
    allowlist_kv_key: String,
    kv_refresh: Duration,
    discovery: Representation,
}

impl EdgeConfig {
    /// Reads every setting through `var` (the Worker's `env`, or any map),
    /// applies defaults, and validates. The first unusable setting is
    /// reported by name with its fix.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let issuer = match var(ISSUER) {
            None => {
                return Err(Error::setting_error(
                    ISSUER,
                    "it is not set",
                    "set it in wrangler.toml [vars] to the edge's public URL, exactly as the \
                     federated credential in Entra names it, e.g. ISSUER = \"https://issuer.example.com\"",
                ));
            }
            Some(text) => Issuer::parse(&text).map_err(|e| {
                Error::setting_error(
                    ISSUER,
                    e.to_string(),
                    "set it to https://host[/path], the URL Entra fetches the discovery document below",
                )
            })?,
        };
        let allowlist_mode = match var(ALLOWLIST_MODE) {
            None => AllowlistMode::default(),
            Some(text) => text.parse().map_err(|_| {
                Error::setting_error(
                    ALLOWLIST_MODE,
                    format!("{:?} is not a mode", echo(&text, MAX_ECHO)),
                    "set `off`, `monitor` or `enforce` (lowercase), or remove it for `monitor`",
                )
            })?,
        };
        let discovery_max_age = seconds(
            &var,
            DISCOVERY_MAX_AGE,
            DEFAULT_DISCOVERY_MAX_AGE,
            MAX_MAX_AGE,
        )?;
        let jwks_max_age = seconds(&var, JWKS_MAX_AGE, DEFAULT_JWKS_MAX_AGE, MAX_MAX_AGE)?;
        let kv_refresh = seconds(
            &var,
            KV_REFRESH_SECONDS,
            DEFAULT_KV_REFRESH_SECONDS,
            MAX_KV_REFRESH_SECONDS,
        )?;
        let key_source = match var(KEY_DOCUMENT) {
            Some(text) => {
                if text.trim().is_empty() {
                    return Err(Error::setting_error(
                        KEY_DOCUMENT,
                        "it is empty",
                        format!(
                            "remove it to read the key document from the `{KV_BINDING}` KV \
                             namespace, or set it to a JWK Set ({{\"keys\": [...]}})"
                        ),
                    ));
                }
                let doc = KeyDocument::parse(text.as_bytes()).map_err(|e| {
                    Error::setting_error(
                        KEY_DOCUMENT,
                        e.to_string(),
                        "set it to the JWK Set `aws2azure keys export` writes, or remove it to \
                         read the key document from KV",
                    )
                })?;
                KeySource::Inline(Arc::new(doc))
            }
            None => KeySource::Kv {
                key: kv_key(&var, KEY_DOCUMENT_KV_KEY, DEFAULT_KEY_DOCUMENT_KV_KEY)?,
            },
        };
        let allowlist_kv_key = kv_key(&var, ALLOWLIST_KV_KEY, DEFAULT_ALLOWLIST_KV_KEY)?;
        if let KeySource::Kv { key } = &key_source
            && *key == allowlist_kv_key
        {
            return Err(Error::setting_error(
                ALLOWLIST_KV_KEY,
                format!("it names the same KV key as {KEY_DOCUMENT_KV_KEY} ({key:?})"),
                "give the allowlist override its own key",
            ));
        }
        let discovery = Representation::new(Bytes::from(
            DiscoveryDocument::for_issuer(&issuer).to_json(),
        ));
        Ok(Self {
            issuer,
            allowlist_mode,
            discovery_max_age,
            jwks_max_age,
            key_source,
            allowlist_kv_key,
            kv_refresh: Duration::from_secs(kv_refresh.into()),
            discovery,
        })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn allowlist_mode(&self) -> AllowlistMode {
        self.allowlist_mode
    }

    pub fn discovery_max_age(&self) -> u32 {
        self.discovery_max_age
    }

    pub fn jwks_max_age(&self) -> u32 {
        self.jwks_max_age
    }

    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    pub fn allowlist_kv_key(&self) -> &str {
        &self.allowlist_kv_key
    }

    /// How long a copy read from KV is served before KV is read again.
    pub fn kv_refresh(&self) -> Duration {
        self.kv_refresh
    }

    /// The discovery document as served.
    pub fn discovery_document(&self) -> &Bytes {
        self.discovery.body()
    }

    pub(crate) fn discovery(&self) -> &Representation {
        &self.discovery
    }

    /// The Cache API key of the last good key document: below the issuer's
    /// own origin (the zone the Worker runs in), on a path no route serves.
    pub fn last_good_cache_url(&self) -> String {
        let kv_key = match &self.key_source {
            KeySource::Kv { key } => key.as_str(),
            KeySource::Inline(_) => "inline",
        };
        let mut url = format!("{}/last-good?kv-key=", self.issuer.jwks_uri());
        for byte in kv_key.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                url.push(char::from(byte));
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
        url
    }
}

fn seconds(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u32,
    max: u32,
) -> Result<u32, Error> {
    let Some(text) = var(name) else {
        return Ok(default);
    };
    let fix =
        || format!("set a whole number of seconds from 0 to {max}, or remove it for {default}");
    let value: u32 = text.trim().parse().map_err(|_| {
        Error::setting_error(
            name,
            format!(
                "{:?} is not a whole number of seconds",
                echo(&text, MAX_ECHO)
            ),
            fix(),
        )
    })?;
    if value > max {
        return Err(Error::setting_error(
            name,
            format!("{value} is more than {max}"),
            fix(),
        ));
    }
    Ok(value)
}

fn kv_key(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<String, Error> {
    let Some(key) = var(name) else {
        return Ok(default.to_string());
    };
    let problem = if key.is_empty() {
        Some("it is empty".to_string())
    } else if key.len() > MAX_KV_KEY_BYTES {
        Some(format!("it is longer than KV's {MAX_KV_KEY_BYTES} bytes"))
    } else if key == "." || key == ".." || key.chars().any(char::is_control) {
        Some(format!(
            "{:?} is not a usable KV key name",
            echo(&key, MAX_ECHO)
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::setting_error(
            name,
            problem,
            format!("set a printable KV key name, or remove it for {default:?}"),
        )),
        None => Ok(key),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::test_keys::key_set_json;

    fn config(vars: &[(&str, &str)]) -> Result<EdgeConfig, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EdgeConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn only_the_issuer_is_required() {
        let c = config(&[(ISSUER, "https://issuer.example.com/tenant")]).unwrap();
        assert_eq!(c.issuer().as_str(), "https://issuer.example.com/tenant");
        assert_eq!(c.allowlist_mode(), AllowlistMode::Monitor);
        assert_eq!(c.discovery_max_age(), DEFAULT_DISCOVERY_MAX_AGE);
        assert_eq!(c.jwks_max_age(), DEFAULT_JWKS_MAX_AGE);
        assert_eq!(c.kv_refresh(), Duration::from_secs(60));
        assert_eq!(c.key_source(), &KeySource::Kv { key: "jwks".into() });
        assert_eq!(c.allowlist_kv_key(), "allowlist");
        let doc: serde_json::Value = serde_json::from_slice(c.discovery_document()).unwrap();
        assert_eq!(doc["issuer"], "https://issuer.example.com/tenant");
        assert_eq!(doc["jwks_uri"], "https://issuer.example.com/tenant/jwks");
        assert_eq!(
            c.last_good_cache_url(),
            "https://issuer.example.com/tenant/jwks/last-good?kv-key=jwks"
        );
    }

    #[test]
    fn every_setting_is_read() {
        let c = config(&[
            (ISSUER, "https://issuer.example.com"),
            (ALLOWLIST_MODE, "enforce"),
            (DISCOVERY_MAX_AGE, "0"),
            (JWKS_MAX_AGE, " 86400 "),
            (KV_REFRESH_SECONDS, "0"),
            (KEY_DOCUMENT_KV_KEY, "issuer/jwks v2"),
            (ALLOWLIST_KV_KEY, "issuer/allowlist"),
        ])
        .unwrap();
        assert_eq!(c.allowlist_mode(), AllowlistMode::Enforce);
        assert_eq!(c.discovery_max_age(), 0);
        assert_eq!(c.jwks_max_age(), 86_400);
        assert_eq!(c.kv_refresh(), Duration::ZERO);
        assert_eq!(
            c.key_source(),
            &KeySource::Kv {
                key: "issuer/jwks v2".into()
            }
        );
        assert_eq!(c.allowlist_kv_key(), "issuer/allowlist");
        assert!(
            c.last_good_cache_url()
                .ends_with("/jwks/last-good?kv-key=issuer%2Fjwks%20v2"),
            "{}",
            c.last_good_cache_url()
        );
    }

    #[test]
    fn an_inline_key_document_is_validated_once() {
        let c = config(&[
            (ISSUER, "https://issuer.example.com"),
            (KEY_DOCUMENT, &key_set_json()),
        ])
        .unwrap();
        let KeySource::Inline(doc) = c.key_source() else {
            panic!("inline source expected");
        };
        assert_eq!(doc.body().as_ref(), key_set_json().as_bytes());
    }

    #[test]
    fn bad_settings_name_the_setting_and_the_fix() {
        let issuer = (ISSUER, "https://issuer.example.com");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (&[], ISSUER, "it is not set"),
            (&[(ISSUER, "http://issuer.example.com")], ISSUER, "loopback"),
            (&[(ISSUER, "")], ISSUER, "empty"),
            (
                &[issuer, (ALLOWLIST_MODE, "Enforce")],
                ALLOWLIST_MODE,
                "\"Enforce\" is not a mode",
            ),
            (
                &[issuer, (ALLOWLIST_MODE, "")],
                ALLOWLIST_MODE,
                "is not a mode",
            ),
            (
                &[issuer, (JWKS_MAX_AGE, "5m")],
                JWKS_MAX_AGE,
                "not a whole number",
            ),
            (
                &[issuer, (JWKS_MAX_AGE, "-1")],
                JWKS_MAX_AGE,
                "not a whole number",
            ),
            (
                &[issuer, (JWKS_MAX_AGE, "300.5")],
                JWKS_MAX_AGE,
                "not a whole number",
            ),
            (
                &[issuer, (DISCOVERY_MAX_AGE, "86401")],
                DISCOVERY_MAX_AGE,
                "more than 86400",
            ),
            (
                &[issuer, (KV_REFRESH_SECONDS, "3601")],
                KV_REFRESH_SECONDS,
                "more than 3600",
            ),
            (&[issuer, (KEY_DOCUMENT, " ")], KEY_DOCUMENT, "it is empty"),
            (
                &[issuer, (KEY_DOCUMENT, "{\"keys\":[{\"kty\":\"RSA\"}]}")],
                KEY_DOCUMENT,
                "no `kid`",
            ),
            (
                &[issuer, (KEY_DOCUMENT, "not json")],
                KEY_DOCUMENT,
                "not a JWK Set",
            ),
            (
                &[issuer, (KEY_DOCUMENT_KV_KEY, "")],
                KEY_DOCUMENT_KV_KEY,
                "empty",
            ),
            (
                &[issuer, (KEY_DOCUMENT_KV_KEY, "..")],
                KEY_DOCUMENT_KV_KEY,
                "not a usable KV key",
            ),
            (
                &[issuer, (ALLOWLIST_KV_KEY, "jwks")],
                ALLOWLIST_KV_KEY,
                "same KV key",
            ),
        ];
        for (vars, setting, problem) in cases {
            let err = config(vars).unwrap_err();
            assert_eq!(err.setting(), Some(*setting), "{vars:?}: {err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("setting `{setting}`: ")),
                "{text}"
            );
            assert!(text.contains(problem), "{vars:?}: {text}");
            assert!(
                ["set ", "remove it", "give "]
                    .iter()
                    .any(|fix| text.contains(fix)),
                "names a fix: {text}"
            );
        }
        let long = "k".repeat(513);
        let err = config(&[issuer, (ALLOWLIST_KV_KEY, &long)]).unwrap_err();
        assert!(err.to_string().contains("512 bytes"), "{err}");
    }

    /// Found by tests/core_props.rs: a refused value was echoed whole into
    /// the error, which the edge logs on every request while misconfigured.
    #[test]
    fn refused_values_are_echoed_bounded() {
        let issuer = (ISSUER, "https://issuer.example.com");
        let huge = "9x".repeat(50_000);
        let control = "\u{1b}[31m".repeat(100);
        for setting in [ALLOWLIST_MODE, JWKS_MAX_AGE, KEY_DOCUMENT_KV_KEY] {
            for value in [huge.as_str(), control.as_str()] {
                let err = config(&[issuer, (setting, value)]).unwrap_err();
                let text = err.to_string();
                assert!(text.len() < 600, "{setting}: {} bytes", text.len());
                assert!(!text.contains('\u{1b}'), "{text}");
            }
        }
        let err = config(&[(ISSUER, &format!("ftp://{huge}"))]).unwrap_err();
        assert!(err.to_string().len() < 800, "{err}");
    }
}
