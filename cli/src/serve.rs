//! `aws2azure serve`: the credential endpoint for Azure SDKs, in front of the
//! token API (or, with `--direct`, of STS and Entra asked from this process).
//! Prints the two `export` lines SDKs need, then serves until interrupted;
//! each request gets one log line on standard error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aws2azure_identity::{
    CachePolicy, Endpoint, EndpointSettings, IdentityHeader, ResourceMap, TokenCache, TokenSource,
};
use aws2azure_shared::clock::SystemClock;

use crate::Error;
use crate::config::CliConfig;
use crate::direct::Direct;
use crate::token::TokenClient;

/// The environment variable a given header secret comes from.
pub const IDENTITY_HEADER_ENV: &str = "IDENTITY_HEADER";

pub struct ServeOptions {
    /// The token API's base URL, stage included; `None` with `direct`.
    pub endpoint: Option<String>,
    /// No broker: tokens from STS and Entra through this process.
    pub direct: bool,
    pub region: Option<String>,
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

pub async fn run(options: ServeOptions) -> Result<(), Error> {
    let config = CliConfig::load(&options.config)?;
    let resources = resource_map(&config)
        .map_err(|e| Error::Usage(format!("{}: {e}", options.config.display())))?;
    let (source, upstream): (Arc<dyn TokenSource>, String) = match &options.endpoint {
        Some(url) if !options.direct => (
            Arc::new(TokenClient::from_env(url, options.region.as_deref()).await?),
            format!("token API {url}"),
        ),
        _ => {
            let aws = crate::direct::aws_config(options.region.clone()).await;
            (
                Arc::new(Direct::new(config.profiles.clone(), &aws).await?),
                "direct: AWS STS and Entra, no broker".to_string(),
            )
        }
    };
    let settings = EndpointSettings {
        allow_remote: options.allow_remote,
        ..EndpointSettings::loopback(options.listen, header_from_env()?)
    };
    let endpoint = start(settings, resources, source).await?;
    let interrupted = crate::signal::interrupted();
    println!("{}", exports(&endpoint));
    eprintln!(
        "aws2azure serve: Azure SDK credential endpoint at {} for {} ({upstream}); Ctrl-C stops it",
        endpoint.identity_endpoint(),
        endpoint.resources().served(),
    );
    Ok(endpoint.serve(interrupted).await?)
}

/// `IDENTITY_HEADER` when the environment sets it (a sidecar shares it with
/// its workload that way), else a random 256-bit secret.
pub fn header_from_env() -> Result<IdentityHeader, Error> {
    Ok(match std::env::var(IDENTITY_HEADER_ENV) {
        Ok(value) => IdentityHeader::parse(IDENTITY_HEADER_ENV, &value),
        Err(_) => IdentityHeader::random(),
    }?)
}

/// The resources a configuration serves: each profile's, plus its
/// `[resources]` table.
pub fn resource_map(config: &CliConfig) -> Result<ResourceMap, aws2azure_identity::Error> {
    ResourceMap::new(&config.profiles, &config.resources)
}

/// Binds the endpoint with tokens from `source` (used by `dev` too).
pub async fn start(
    settings: EndpointSettings,
    resources: ResourceMap,
    source: Arc<dyn TokenSource>,
) -> Result<Endpoint, Error> {
    let cache = TokenCache::new(source, Arc::new(SystemClock), CachePolicy::default());
    Ok(Endpoint::bind(settings, resources, cache).await?)
}

/// The two lines a shell (or an SDK's environment) needs.
pub fn exports(endpoint: &Endpoint) -> String {
    format!(
        "export IDENTITY_ENDPOINT={}\nexport IDENTITY_HEADER={}",
        endpoint.identity_endpoint(),
        endpoint.identity_header()
    )
}
