//! Direct mode, for teams that run no broker: the workload's own role asks
//! AWS STS for the assertion (`GetWebIdentityToken`, or first `AssumeRole`
//! into the profile's `role_arn`) and the token is exchanged at Entra from
//! this process, through the broker's own code: the same single flight,
//! retries and deadlines. `aws2azure token --direct` adds the on-disk cache
//! of `token`; `aws2azure serve --direct` puts the credential endpoint in
//! front.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws2azure_identity::{Token, TokenSource};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::{AssertionSource, ProfileConfig, ProfileName, Profiles};
use aws2azure_signer::broker::{Assertions, Broker, BrokerSettings, MinValidity};
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::sts::{DEFAULT_DURATION_SECS, StsWebIdentity};

use crate::Error;
use crate::config::CliConfig;
use crate::token::{DiskCache, TokenResponse};

/// How long one Entra attempt may take (the Lambda's default).
const ENTRA_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker's code for `sts` profiles, with the workload's credentials.
#[derive(Clone)]
pub struct Direct {
    broker: Broker,
}

impl Direct {
    /// For `profiles`, which must all have `assertion = "sts"`.
    pub async fn new(profiles: Profiles, aws: &SdkConfig) -> Result<Self, Error> {
        let keyed: Vec<String> = profiles
            .iter()
            .filter(|p| p.assertion != AssertionSource::Sts)
            .map(|p| p.name.to_string())
            .collect();
        if !keyed.is_empty() {
            return Err(Error::Usage(format!(
                "profile(s) {} have assertion = \"kms\": their assertions are signed by the \
                 broker's key, which only the broker holds; direct mode asks AWS STS instead, for \
                 profiles with assertion = \"sts\" (and role_arn, or subject = the workload's role \
                 ARN)",
                keyed.join(", ")
            )));
        }
        if aws.region().is_none() {
            return Err(Error::Usage(
                "no AWS region: pass --region or set AWS_REGION (GetWebIdentityToken is served \
                 by regional STS endpoints only)"
                    .into(),
            ));
        }
        let roles = profiles.iter().filter_map(|p| p.role_arn.clone());
        let sts = StsWebIdentity::new(aws, roles, DEFAULT_DURATION_SECS).await;
        let broker = Broker::with_assertions(
            profiles,
            // The settings' issuer is the broker's own key's; direct mode
            // has no key (AWS signs, as AWS's issuer), so it is never used.
            BrokerSettings::new(unused_issuer()),
            Assertions {
                key: None,
                sts: Some(Arc::new(sts)),
            },
            Arc::new(EntraClient::new(ENTRA_ATTEMPT_TIMEOUT).map_err(Error::direct)?),
            None,
            Arc::new(SystemClock),
        )
        .map_err(Error::direct)?;
        Ok(Self { broker })
    }

    /// A token for `profile`, fetched or from the in-process cache.
    pub async fn token(
        &self,
        profile: &ProfileName,
        min_validity: MinValidity,
    ) -> Result<TokenResponse, Arc<aws2azure_signer::Error>> {
        let issued = self
            .broker
            .token(profile, min_validity)
            .await
            .map_err(|failed| failed.error)?;
        Ok(issued.response(self.broker.now_unix()))
    }
}

#[async_trait]
impl TokenSource for Direct {
    async fn token(
        &self,
        profile: &ProfileName,
        min_validity: u64,
    ) -> Result<Token, aws2azure_identity::Error> {
        let failed = |source: Arc<aws2azure_signer::Error>| aws2azure_identity::Error::Direct {
            profile: profile.to_string(),
            source,
        };
        let min_validity = MinValidity::new(min_validity).map_err(|e| failed(Arc::new(e)))?;
        let answer = Direct::token(self, profile, min_validity)
            .await
            .map_err(failed)?;
        Ok(Token {
            access_token: answer.access_token,
            expires_on: answer.expires_on,
        })
    }

    fn origin(&self) -> &'static str {
        "direct"
    }
}

/// The AWS configuration of the environment, with `region` if given.
pub async fn aws_config(region: Option<String>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    loader.load().await
}

pub struct DirectOptions<'a> {
    pub config: &'a Path,
    pub profile: &'a str,
    pub min_validity: u64,
    pub region: Option<String>,
    pub cache_dir: Option<PathBuf>,
}

/// `aws2azure token --direct`: the token from the disk cache, or from STS
/// and Entra.
pub async fn token(options: DirectOptions<'_>) -> Result<TokenResponse, Error> {
    let config = CliConfig::load(options.config)?;
    let profile = config.profile(options.profile, options.config)?;
    let min_validity = MinValidity::new(options.min_validity)
        .map_err(|e| Error::Usage(format!("--min-validity: {e}")))?;
    let only = Profiles::from_configs(BTreeMap::from([(
        profile.name.to_string(),
        ProfileConfig::from(profile),
    )]))
    .map_err(|e| Error::Usage(e.to_string()))?;
    let aws = aws_config(options.region).await;
    let direct = Direct::new(only, &aws).await?;
    let credentials = aws
        .credentials_provider()
        .ok_or_else(|| Error::Credentials("no AWS credentials provider is configured".into()))?
        .provide_credentials()
        .await
        .map_err(|e| Error::Credentials(e.to_string()))?;

    // Everything that changes the token is in the origin, so a profile
    // edited under the same name never gets the old token.
    let origin = format!("direct {}", profile.cache_key());
    let cache = DiskCache::open(options.cache_dir.as_deref());
    let name = profile.name.as_str();
    let access_key_id = credentials.access_key_id();
    if let Some(cached) = cache.fresh(&origin, name, access_key_id, min_validity.secs()) {
        return Ok(cached);
    }
    let answer = direct
        .token(&profile.name, min_validity)
        .await
        .map_err(Error::Direct)?;
    cache.store(&origin, name, access_key_id, &answer);
    Ok(answer)
}

fn unused_issuer() -> Issuer {
    Issuer::parse("https://sts.amazonaws.com").expect("a constant https URL parses")
}
