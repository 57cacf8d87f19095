//! The rotation function's configuration, read and checked once at init:
//! every message names the variable and the fix.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;

use crate::cloudflare::{ApiToken, CloudflareKv, CloudflareSettings};
use crate::kms::KmsKeyStore;
use crate::public::HttpPublicKeySet;
use crate::rotation::Rotator;
use crate::timings::{DAY, HOUR};
use crate::{Error, Timings, policy};

pub const KEY_RING: &str = "AWS2AZURE_KEY_RING";
pub const ISSUER: &str = "AWS2AZURE_ISSUER";
pub const BROKER_ROLE_ARN: &str = "AWS2AZURE_BROKER_ROLE_ARN";
pub const ROTATION_ROLE_ARN: &str = "AWS2AZURE_ROTATION_ROLE_ARN";
pub const CLOUDFLARE_API_TOKEN_SECRET: &str = "AWS2AZURE_CLOUDFLARE_API_TOKEN_SECRET";
pub const WARM_UP_HOURS: &str = "AWS2AZURE_WARM_UP_HOURS";
pub const ROTATION_PERIOD_DAYS: &str = "AWS2AZURE_ROTATION_PERIOD_DAYS";
pub const PREVIOUS_RETENTION_HOURS: &str = "AWS2AZURE_PREVIOUS_RETENTION_HOURS";

#[derive(Clone, Debug)]
pub struct RotationSettings {
    pub ring: String,
    pub issuer: Issuer,
    /// The key policy every created key gets (only the broker signs).
    pub key_policy: String,
    pub cloudflare: CloudflareSettings,
    /// Secrets Manager secret id (ARN or name) of the Cloudflare API token;
    /// `None`: `AWS2AZURE_CLOUDFLARE_API_TOKEN(_FILE)` (local runs).
    pub token_secret: Option<String>,
    pub timings: Timings,
}

fn config(setting: &'static str, message: impl Into<String>) -> Error {
    Error::Config {
        setting,
        message: message.into(),
    }
}

fn required(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    what: &str,
) -> Result<String, Error> {
    get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| config(name, format!("not set: give {what}")))
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    max: u64,
) -> Result<u64, Error> {
    match get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| config(name, format!("`{v}` is not a whole number from 1 to {max}"))),
    }
}

impl RotationSettings {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let ring = required(&get, KEY_RING, "the ring's alias prefix (the stack name)")?;
        crate::kms::validate_ring(&ring)?;
        let issuer = Issuer::parse(&required(&get, ISSUER, "the edge's public URL")?)
            .map_err(|e| config(ISSUER, e.to_string()))?;
        let key_policy = policy::for_roles(
            &required(&get, BROKER_ROLE_ARN, "the broker role's ARN")?,
            &required(&get, ROTATION_ROLE_ARN, "the rotation role's ARN")?,
        )?;
        let cloudflare = CloudflareSettings::from_vars(&get)?;
        let warm_up = number(&get, WARM_UP_HOURS, 24, 24 * 30)? * HOUR;
        let timings = Timings {
            warm_up,
            period: number(&get, ROTATION_PERIOD_DAYS, 90, 3650)? * DAY,
            previous_retention: number(&get, PREVIOUS_RETENTION_HOURS, warm_up / HOUR, 24 * 365)?
                * HOUR,
            ..Timings::default()
        };
        timings.validate()?;
        Ok(Self {
            ring,
            issuer,
            key_policy,
            cloudflare,
            token_secret: get(CLOUDFLARE_API_TOKEN_SECRET).filter(|v| !v.trim().is_empty()),
            timings,
        })
    }

    /// The clients: KMS and Secrets Manager from `aws`, the Cloudflare API,
    /// the issuer's public key set.
    pub async fn rotator(&self, aws: &aws_config::SdkConfig) -> Result<Rotator, Error> {
        let token = match &self.token_secret {
            Some(secret) => {
                let client = aws_sdk_secretsmanager::Client::new(aws);
                ApiToken::from_secrets_manager(&client, secret).await?
            }
            None => ApiToken::from_env()?,
        };
        let publisher = CloudflareKv::new(self.cloudflare.clone(), token)?;
        let store = KmsKeyStore::new(
            aws_sdk_kms::Client::new(aws),
            &self.ring,
            Some(self.key_policy.clone()),
        );
        let public = HttpPublicKeySet::new(self.issuer.clone(), Duration::from_secs(10))
            .map_err(|e| config(ISSUER, e.to_string()))?;
        Rotator::new(
            Arc::new(store),
            Arc::new(publisher),
            Arc::new(public),
            Arc::new(SystemClock),
            self.timings,
        )
    }
}
