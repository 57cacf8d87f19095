//! `aws2azure serve`: the credential endpoint for Azure SDKs, in front of the
//! token API. Prints the two `export` lines SDKs need, then serves until
//! interrupted; each request gets one log line on standard error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aws2azure_identity::{
    CachePolicy, Endpoint, EndpointSettings, IdentityHeader, ResourceMap, TokenCache,
};
use aws2azure_shared::clock::SystemClock;

use crate::Error;
use crate::config::CliConfig;
use crate::token::TokenClient;

/// The environment variable a given header secret comes from.
pub const IDENTITY_HEADER_ENV: &str = "IDENTITY_HEADER";

pub struct ServeOptions {
    /// The token API's base URL, stage included.
    pub endpoint: String,
    pub region: Option<String>,
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

pub async fn run(options: ServeOptions) -> Result<(), Error> {
    let config = CliConfig::load(&options.config)?;
    let resources = resource_map(&config)
        .map_err(|e| Error::Usage(format!("{}: {e}", options.config.display())))?;
    let client = TokenClient::from_env(&options.endpoint, options.region.as_deref()).await?;
    let settings = EndpointSettings {
        allow_remote: options.allow_remote,
        ..EndpointSettings::loopback(options.listen, header_from_env()?)
    };
    let endpoint = start(settings, resources, client).await?;
    println!("{}", exports(&endpoint));
    eprintln!(
        "aws2azure serve: Azure SDK credential endpoint at {} for {} (token API {}); Ctrl-C stops it",
        endpoint.identity_endpoint(),
        endpoint.resources().served(),
        options.endpoint
    );
    Ok(endpoint.serve(crate::signal::interrupted()).await?)
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

/// Binds the endpoint with tokens from `client` (used by `dev` too).
pub async fn start(
    settings: EndpointSettings,
    resources: ResourceMap,
    client: TokenClient,
) -> Result<Endpoint, Error> {
    let cache = TokenCache::new(
        Arc::new(client),
        Arc::new(SystemClock),
        CachePolicy::default(),
    );
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
