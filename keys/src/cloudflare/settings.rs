//! Where the key document is written: account, namespace and key, checked
//! once, before any request.

use std::time::Duration;

use aws2azure_shared::discovery::is_loopback_host;

use crate::Error;

pub const API_BASE: &str = "AWS2AZURE_CLOUDFLARE_API_BASE";
pub const ACCOUNT_ID: &str = "AWS2AZURE_CLOUDFLARE_ACCOUNT_ID";
pub const NAMESPACE_ID: &str = "AWS2AZURE_CLOUDFLARE_NAMESPACE_ID";
pub const KV_KEY: &str = "AWS2AZURE_CLOUDFLARE_KV_KEY";
pub const TIMEOUT: &str = "AWS2AZURE_CLOUDFLARE_TIMEOUT_SECONDS";

pub const DEFAULT_API_BASE: &str = "https://api.cloudflare.com/client/v4";
/// The edge's default `KEY_DOCUMENT_KV_KEY`.
pub const DEFAULT_KV_KEY: &str = "jwks";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longer than any healthy API call; a hung connection must not hold a
/// rotation for minutes.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Workers KV's limit on a key name.
pub const MAX_KV_KEY_BYTES: usize = 512;
/// Cloudflare's ids are 32 hex characters; stand-ins may use readable ids.
const MAX_ID_CHARS: usize = 64;
/// Longest echo of a refused value.
const MAX_ECHO: usize = 80;

/// The validated settings of a [`super::CloudflareKv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudflareSettings {
    api_base: String,
    account_id: String,
    namespace_id: String,
    kv_key: String,
    timeout: Duration,
}

impl CloudflareSettings {
    /// The account and namespace ids (Cloudflare dashboard: Workers KV);
    /// the default API base, key `jwks` and timeout.
    pub fn new(account_id: &str, namespace_id: &str) -> Result<Self, Error> {
        Ok(Self {
            api_base: DEFAULT_API_BASE.to_string(),
            account_id: id(ACCOUNT_ID, "account id", account_id)?,
            namespace_id: id(NAMESPACE_ID, "KV namespace id", namespace_id)?,
            kv_key: DEFAULT_KV_KEY.to_string(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Another API base URL (a local stand-in): `https://…`, or `http://`
    /// for a loopback host only, since the token travels in a header.
    pub fn with_api_base(mut self, api_base: &str) -> Result<Self, Error> {
        self.api_base = self::api_base(api_base)?;
        Ok(self)
    }

    /// The KV key the edge reads (its `KEY_DOCUMENT_KV_KEY`).
    pub fn with_kv_key(mut self, kv_key: &str) -> Result<Self, Error> {
        self.kv_key = self::kv_key(kv_key)?;
        Ok(self)
    }

    /// How long one API call may take, from connecting to the last byte.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(Error::Config {
                setting: TIMEOUT,
                message: format!(
                    "{} s is out of range; give 1 to {} seconds",
                    timeout.as_secs_f64(),
                    MAX_TIMEOUT.as_secs()
                ),
            });
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// From the variables [`ACCOUNT_ID`] and [`NAMESPACE_ID`] (required),
    /// [`API_BASE`], [`KV_KEY`] and [`TIMEOUT`] (optional).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let required = |name: &'static str, what: &str| {
            var(name).ok_or_else(|| Error::Config {
                setting: name,
                message: format!(
                    "it is not set; set it to the Cloudflare {what} that the edge's EDGE_KV \
                     binding uses (wrangler.toml)"
                ),
            })
        };
        let mut settings = Self::new(
            &required(ACCOUNT_ID, "account id")?,
            &required(NAMESPACE_ID, "KV namespace id")?,
        )?;
        if let Some(base) = var(API_BASE) {
            settings = settings.with_api_base(&base)?;
        }
        if let Some(key) = var(KV_KEY) {
            settings = settings.with_kv_key(&key)?;
        }
        if let Some(secs) = var(TIMEOUT) {
            let secs: u64 = secs.trim().parse().map_err(|_| Error::Config {
                setting: TIMEOUT,
                message: format!(
                    "{:?} is not a whole number of seconds; give 1 to {}",
                    echo(&secs),
                    MAX_TIMEOUT.as_secs()
                ),
            })?;
            settings = settings.with_timeout(Duration::from_secs(secs))?;
        }
        Ok(settings)
    }

    /// [`CloudflareSettings::from_vars`] over the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Without a trailing slash.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    pub fn namespace_id(&self) -> &str {
        &self.namespace_id
    }

    pub fn kv_key(&self) -> &str {
        &self.kv_key
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn echo(value: &str) -> String {
    aws2azure_shared::echo(value, MAX_ECHO)
}

fn id(setting: &'static str, what: &str, value: &str) -> Result<String, Error> {
    let ok = !value.is_empty()
        && value.chars().count() <= MAX_ID_CHARS
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        return Ok(value.to_string());
    }
    Err(Error::Config {
        setting,
        message: format!(
            "{:?} is not a Cloudflare {what}; copy the 32 hexadecimal characters from the \
             dashboard (or `wrangler kv namespace list`)",
            echo(value)
        ),
    })
}

fn kv_key(value: &str) -> Result<String, Error> {
    let problem = if value.is_empty() {
        Some("it is empty".to_string())
    } else if value.len() > MAX_KV_KEY_BYTES {
        Some(format!("it is longer than KV's {MAX_KV_KEY_BYTES} bytes"))
    } else if value == "." || value == ".." {
        Some("KV refuses `.` and `..` as key names".to_string())
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Config {
            setting: KV_KEY,
            message: format!(
                "{:?} is not a usable KV key ({problem}); set it to the edge's \
                 KEY_DOCUMENT_KV_KEY (default `{DEFAULT_KV_KEY}`)",
                echo(value)
            ),
        }),
        None => Ok(value.to_string()),
    }
}

fn api_base(value: &str) -> Result<String, Error> {
    let fail = |problem: &str| {
        // A URL with user information may hold a password: not echoed.
        let shown = if value.contains('@') {
            "the value".to_string()
        } else {
            format!("{:?}", echo(value))
        };
        Error::Config {
            setting: API_BASE,
            message: format!(
                "{shown} is not usable: {problem}; unset it for {DEFAULT_API_BASE}, or give a \
                 stand-in's http://127.0.0.1:PORT/client/v4"
            ),
        }
    };
    if value.trim() != value || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("it contains whitespace"));
    }
    let url = reqwest::Url::parse(value).map_err(|_| fail("it is not an absolute URL"))?;
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(fail("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(fail("it must not contain user information"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(fail("it must not contain a query or fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => {
            return Err(fail(
                "plain http is allowed only for a loopback host, since the API token would \
                 cross the network in clear",
            ));
        }
        _ => return Err(fail("the scheme must be https")),
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}
