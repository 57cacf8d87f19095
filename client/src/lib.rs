//! The client AWS workloads use: `GET {endpoint}/token/{profile}` signed
//! with SigV4 (credentials from the standard AWS provider chain), with an
//! optional on-disk cache reused while the token has enough life left.
//!
//! Usable from Rust:
//!
//! ```no_run
//! # async fn f() -> Result<(), aws2azure_client::Error> {
//! let client = aws2azure_client::TokenClient::from_env(
//!     "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod", None).await?;
//! let token = client.token("graph", 300).await?;
//! println!("Bearer {}", token.access_token);
//! # Ok(()) }
//! ```

mod cache;
mod error;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws2azure_shared::discovery::is_loopback_host;
use aws2azure_shared::token_api::ErrorDocument;

/// The token API's answer, as the signer writes it.
pub use aws2azure_shared::token_api::TokenResponse;
use cache::{CacheKey, Folder};
pub use error::Error;

/// The on-disk token cache, with every check `token` makes (see the
/// `cache` module), for tokens from the API and from elsewhere
/// (`aws2azure token --direct`). An entry is for one origin (the API's
/// endpoint, or what else issued it), profile and AWS access key. A folder
/// that cannot be used is reported on standard error and never fails the
/// call: the token then comes from its origin.
pub struct DiskCache {
    folder: Option<Folder>,
}

impl DiskCache {
    /// `None`: no cache, every token from its origin.
    pub fn open(dir: Option<&std::path::Path>) -> Self {
        Self {
            folder: dir.and_then(|dir| Folder::open(dir).map_err(warn).ok()),
        }
    }

    /// The cached token, when it has more than `min_validity` seconds left.
    pub fn fresh(
        &self,
        origin: &str,
        profile: &str,
        access_key_id: &str,
        min_validity: u64,
    ) -> Option<TokenResponse> {
        let key = CacheKey {
            endpoint: origin,
            profile,
            access_key_id,
        };
        match self.folder.as_ref()?.read(&key) {
            Ok(Some(cached)) if cached.expires_on.saturating_sub(now()) > min_validity => {
                Some(TokenResponse {
                    expires_in: cached.expires_on.saturating_sub(now()),
                    ..cached
                })
            }
            Ok(_) => None,
            Err(e) => {
                warn(e);
                None
            }
        }
    }

    /// Stores `token`; a failure is reported, not returned: the token is in
    /// hand, and a read-only home must not fail the call.
    pub fn store(&self, origin: &str, profile: &str, access_key_id: &str, token: &TokenResponse) {
        let key = CacheKey {
            endpoint: origin,
            profile,
            access_key_id,
        };
        if let Some(folder) = &self.folder
            && let Err(e) = folder.write(&key, token)
        {
            eprintln!("warning: {e}; the token is not cached");
        }
    }
}

/// Cheap to clone (the HTTP client and the credentials provider are shared).
#[derive(Clone)]
pub struct TokenClient {
    endpoint: String,
    region: String,
    credentials: SharedCredentialsProvider,
    http: reqwest::Client,
    cache_dir: Option<PathBuf>,
}

impl TokenClient {
    /// Credentials and region from the standard AWS chain (environment,
    /// shared config and credentials files, web identity, ECS and EC2
    /// metadata). `region` overrides; otherwise it is read from an API
    /// Gateway host name, else from the AWS configuration.
    pub async fn from_env(endpoint: &str, region: Option<&str>) -> Result<Self, Error> {
        let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let credentials = config.credentials_provider().ok_or_else(|| {
            Error::Credentials("no AWS credentials provider is configured".into())
        })?;
        let region = region
            .map(str::to_string)
            .or_else(|| region_from_host(endpoint))
            .or_else(|| config.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                Error::Usage("cannot tell the API's region: pass --region or set AWS_REGION".into())
            })?;
        Self::new(endpoint, &region, credentials)
    }

    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: SharedCredentialsProvider,
    ) -> Result<Self, Error> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let parsed: http::Uri = endpoint
            .parse()
            .map_err(|_| Error::Usage(format!("--endpoint `{endpoint}` is not a URL")))?;
        match parsed.scheme_str() {
            Some("https") => {}
            Some("http") if parsed.host().is_some_and(is_loopback_host) => {}
            _ => {
                return Err(Error::Usage(format!(
                    "--endpoint `{endpoint}` must be https (http only on loopback, for `aws2azure dev`)"
                )));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("aws2azure-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(Self {
            endpoint,
            region: region.to_string(),
            credentials,
            http,
            cache_dir: None,
        })
    }

    /// Reuses tokens stored in `dir` (created with mode 0700). A folder or
    /// file another user could have written is reported on standard error
    /// and not used: the token then comes from the API.
    pub fn with_cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// A token for `profile` that stays valid for at least `min_validity`
    /// seconds: from the disk cache when possible, else from the API.
    pub async fn token(&self, profile: &str, min_validity: u64) -> Result<TokenResponse, Error> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| Error::Credentials(e.to_string()))?;
        let cache = DiskCache::open(self.cache_dir.as_deref());
        let access_key_id = credentials.access_key_id();
        if let Some(cached) = cache.fresh(&self.endpoint, profile, access_key_id, min_validity) {
            return Ok(cached);
        }
        let fresh = self.request(profile, min_validity, &credentials).await?;
        cache.store(&self.endpoint, profile, access_key_id, &fresh);
        Ok(fresh)
    }

    async fn request(
        &self,
        profile: &str,
        min_validity: u64,
        credentials: &Credentials,
    ) -> Result<TokenResponse, Error> {
        let mut url = format!("{}/token/{}", self.endpoint, encode_segment(profile));
        if min_validity > 0 {
            url.push_str(&format!("?min_validity={min_validity}"));
        }
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Error::Sign(e.to_string()))?
            .into();
        let signable =
            SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
                .map_err(|e| Error::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::Sign(e.to_string()))?
            .into_parts();
        let mut request = http::Request::get(&url)
            .body(())
            .map_err(|e| Error::Sign(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut request);

        let mut builder = self.http.get(&url);
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| Error::Http(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                Error::Http(format!(
                    "the token API answered 200 with an unexpected body ({e})"
                ))
            });
        }
        let err: ErrorDocument = serde_json::from_slice(&body).unwrap_or_default();
        let description = match (&err.message, err.error_description.is_empty()) {
            (Some(message), true) => message.clone(),
            _ => err.error_description.clone(),
        };
        // API Gateway's signature refusals go on with the canonical request,
        // which holds the session token: what is printed stops before it.
        let description = description
            .split("\n\nThe Canonical String")
            .next()
            .unwrap_or_default()
            .to_string();
        Err(Error::Api {
            status: status.as_u16(),
            error: if err.error.is_empty() {
                "refused".into()
            } else {
                err.error
            },
            description,
            aadsts: err.aadsts,
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Profile names are URL-safe by rule; anything else is encoded rather than
/// allowed to change the path, and the API refuses it.
fn encode_segment(segment: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// `abc123.execute-api.eu-west-1.amazonaws.com` → `eu-west-1`.
pub fn region_from_host(endpoint: &str) -> Option<String> {
    let host = endpoint.parse::<http::Uri>().ok()?.host()?.to_string();
    let mut labels = host.split('.');
    labels.next()?;
    (labels.next()? == "execute-api").then(|| labels.next().map(str::to_string))?
}

/// What the cache says when it is not used, on standard error: stdout
/// carries the token.
fn warn(error: Error) {
    eprintln!("warning: {error}");
}

/// The default cache directory: `$XDG_CACHE_HOME/aws2azure` or
/// `~/.cache/aws2azure`. A relative `XDG_CACHE_HOME` is ignored, as the XDG
/// specification says: it would put the cache wherever the command runs.
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn cache_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |dir: OsString| Some(PathBuf::from(dir)).filter(|d| d.is_absolute());
    xdg_cache_home
        .and_then(absolute)
        .or_else(|| home.and_then(absolute).map(|home| home.join(".cache")))
        .map(|dir| dir.join("aws2azure"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_from_api_gateway_hosts() {
        assert_eq!(
            region_from_host("https://a1b2.execute-api.eu-west-1.amazonaws.com/prod").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_from_host("https://a1b2-vpce-1.execute-api.us-east-2.amazonaws.com/prod")
                .as_deref(),
            Some("us-east-2")
        );
        assert_eq!(region_from_host("http://127.0.0.1:9000/dev"), None);
        assert_eq!(region_from_host("https://tokens.example.com"), None);
    }

    #[test]
    fn profile_segments_cannot_change_the_path() {
        assert_eq!(encode_segment("graph"), "graph");
        assert_eq!(encode_segment("../admin"), "..%2Fadmin");
        assert_eq!(encode_segment("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn endpoint_rules() {
        let creds = SharedCredentialsProvider::new(Credentials::new("a", "b", None, None, "t"));
        assert!(
            TokenClient::new(
                "https://x.execute-api.eu-west-1.amazonaws.com/prod",
                "eu-west-1",
                creds.clone()
            )
            .is_ok()
        );
        assert!(TokenClient::new("http://127.0.0.1:1/dev", "us-east-1", creds.clone()).is_ok());
        let err = TokenClient::new("http://tokens.example.com/prod", "us-east-1", creds)
            .err()
            .unwrap();
        assert!(err.to_string().contains("must be https"), "{err}");
    }

    #[test]
    fn the_default_cache_dir_is_absolute_or_none() {
        let dir = |xdg: Option<&str>, home: Option<&str>| {
            cache_dir_from(xdg.map(Into::into), home.map(Into::into))
        };
        assert_eq!(
            dir(Some("/x/cache"), Some("/home/u")),
            Some(PathBuf::from("/x/cache/aws2azure"))
        );
        assert_eq!(
            dir(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/aws2azure"))
        );
        // Relative (or empty) values would put the cache wherever the
        // command runs: ignored.
        assert_eq!(
            dir(Some("cache"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/aws2azure"))
        );
        assert_eq!(dir(Some(""), Some("")), None);
        assert_eq!(dir(None, None), None);
    }
}
