//! Wiring for the Lambda: SDK clients and adapters built once, from the
//! validated configuration, with connections opened during init.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::Error;
use crate::broker::{Assertions, Broker};
use crate::cache::SharedCache;
use crate::dynamodb::DynamoDbCache;
use crate::entra::EntraClient;
use crate::kms::KmsSigner;
use crate::settings::{KeySource, SignerConfig};
use crate::signing::{AssertionSigner, LocalKeySigner};
use crate::sts::{StsWebIdentity, WebIdentitySource};
use aws2azure_shared::clock::{Clock, SystemClock};
use aws2azure_shared::profile::AssertionSource;

/// Loads the AWS configuration (region, credentials, `AWS_ENDPOINT_URL_*`
/// overrides) from the environment.
pub async fn aws_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// How many attempts an SDK client makes and how long each may take.
struct ClientLimits {
    attempts: u32,
    connect: Duration,
    attempt: Duration,
    operation: Duration,
}

impl ClientLimits {
    /// The environment's configuration with these limits.
    fn apply(&self, aws: &SdkConfig) -> SdkConfig {
        aws.to_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(self.attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect)
                    .operation_attempt_timeout(self.attempt)
                    .operation_timeout(self.operation)
                    .build(),
            )
            .build()
    }
}

/// Builds the broker: resolves the KMS key and checks the cache table now
/// (a wrong key or table fails init, loudly; an unavailable service only
/// logs), and with `warm_entra` opens the connections to Entra, so that the
/// first caller does not pay for TLS handshakes.
pub async fn build_broker(config: &SignerConfig, aws: &SdkConfig) -> Result<Broker, Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let started = Instant::now();

    let signer: Arc<dyn AssertionSigner> = match &config.key {
        KeySource::Kms(key_ref) => {
            // KMS throttling (ThrottlingException) is retried here, bounded:
            // 3 attempts with the SDK's jittered backoff.
            let kms = ClientLimits {
                attempts: 3,
                connect: Duration::from_secs(2),
                attempt: Duration::from_secs(3),
                operation: Duration::from_secs(8),
            };
            let signer = KmsSigner::new(
                aws_sdk_kms::Client::new(&kms.apply(aws)),
                key_ref,
                clock.clone(),
            );
            match signer.resolve().await {
                Ok(jwk) => {
                    tracing::info!(kid = %jwk.kid(), key = %key_ref, "KMS signing key resolved")
                }
                // KMS briefly unavailable: start anyway, resolve on first use;
                // the shared tier may still serve tokens meanwhile.
                Err(err @ (Error::KmsUnreachable(_) | Error::KmsThrottled)) => {
                    tracing::warn!(error = %err, key = %key_ref, "KMS unavailable at start-up; resolving the key on first use")
                }
                // A wrong, disabled or forbidden key is a configuration error.
                Err(err) => return Err(err),
            }
            Arc::new(signer)
        }
        KeySource::PemFile(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                Error::config(
                    crate::settings::SIGNING_KEY_FILE,
                    format!("cannot read `{path}`: {e}"),
                )
            })?;
            let signer = LocalKeySigner::from_pem(&pem)?;
            tracing::info!(kid = %signer.jwk().kid(), "local signing key loaded");
            Arc::new(signer)
        }
    };

    // Profiles whose assertions AWS signs: one STS client for the broker's
    // own role and one per role_arn (assumed on first use).
    let sts_profiles: Vec<_> = config
        .profiles
        .iter()
        .filter(|p| p.assertion == AssertionSource::Sts)
        .collect();
    let sts: Option<Arc<dyn WebIdentitySource>> = if sts_profiles.is_empty() {
        None
    } else {
        let limits = ClientLimits {
            attempts: 3,
            connect: Duration::from_secs(2),
            attempt: Duration::from_secs(3),
            operation: Duration::from_secs(8),
        };
        let roles = sts_profiles.iter().filter_map(|p| p.role_arn.clone());
        Some(Arc::new(
            StsWebIdentity::new(&limits.apply(aws), roles, config.sts_duration_secs).await,
        ))
    };

    let shared: Option<Arc<dyn SharedCache>> = match &config.cache_table {
        None => None,
        Some(table) => {
            // The shared tier is an optimisation: fail fast and fall back to
            // the in-process tier rather than hold a caller for long.
            let dynamodb = ClientLimits {
                attempts: 2,
                connect: Duration::from_millis(500),
                attempt: Duration::from_millis(800),
                // The broker's budget for one shared-tier call.
                operation: config.broker.shared_cache_timeout,
            };
            let cache =
                DynamoDbCache::new(aws_sdk_dynamodb::Client::new(&dynamodb.apply(aws)), table);
            match cache.check().await {
                Ok(()) => {}
                // DynamoDB down degrades to the in-process tier; it does not
                // stop instances from starting.
                Err(err @ Error::Cache(_)) => {
                    tracing::warn!(error = %err, "token cache table unavailable at start-up; continuing with the in-process cache")
                }
                Err(err) => return Err(err),
            }
            Some(Arc::new(cache))
        }
    };

    let entra = EntraClient::new(config.entra_attempt_timeout)?;
    if config.warm_entra {
        let authorities: std::collections::BTreeSet<&str> = config
            .profiles
            .iter()
            .map(|p| p.authority.as_str())
            .collect();
        // Together, and briefly: a slow authority must not hold init (Lambda
        // allows 10 s) for a connection that is only an optimisation.
        let warming = futures_util::future::join_all(authorities.iter().map(|a| entra.warm(a)));
        if tokio::time::timeout(Duration::from_secs(2), warming)
            .await
            .is_err()
        {
            tracing::warn!("warming the connections to Entra took over 2 s; going on");
        }
    }
    tracing::info!(
        profiles = config.profiles.len(),
        sts_profiles = sts_profiles.len(),
        shared_cache = config.cache_table.as_deref(),
        init_ms = started.elapsed().as_millis() as u64,
        "broker ready"
    );
    Broker::with_assertions(
        config.profiles.clone(),
        config.broker.clone(),
        Assertions {
            key: Some(signer),
            sts,
        },
        Arc::new(entra),
        shared,
        clock,
    )
}
