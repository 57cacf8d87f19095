//! Wiring `aws2azure keys` to the lifecycle: the ring in KMS, the key
//! document in Workers KV, the public key set behind the issuer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws2azure_keys::cloudflare::{ApiToken, CloudflareKv, CloudflareSettings, PublishError};
use aws2azure_keys::document::KeyDocument;
use aws2azure_keys::kms::KmsKeyStore;
use aws2azure_keys::public::{HttpPublicKeySet, PublicError, PublicKeySet};
use aws2azure_keys::publish::Publisher;
use aws2azure_keys::rotation::{Report, Rotator};
use aws2azure_keys::timings::{DAY, HOUR};
use aws2azure_keys::{Timings, policy, settings};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::JwkSet;

use super::RingArgs;
use super::output;
use crate::{Error, ExitCode};

pub enum Operation {
    Stage,
    Promote { force: bool },
    Retire { force: bool },
    Rotate,
    Publish,
}

/// The timings: the flags (or their variables), else the rotation
/// function's own variables, so that a shell holding the stack's settings
/// times the lifecycle as the schedule does, else the defaults.
fn timings(args: &RingArgs) -> Result<Timings, Error> {
    let stack = |name: &'static str, unit: u64| -> Result<Option<u64>, Error> {
        match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit))
                .map(Some)
                .ok_or_else(|| Error::Usage(format!("{name}: `{v}` is not a whole number"))),
        }
    };
    let defaults = Timings::default();
    let warm_up = match args.warm_up {
        Some(d) => d.as_secs(),
        None => stack(settings::WARM_UP_HOURS, HOUR)?.unwrap_or(defaults.warm_up),
    };
    let period = match args.period {
        Some(d) => d.as_secs(),
        None => stack(settings::ROTATION_PERIOD_DAYS, DAY)?.unwrap_or(defaults.period),
    };
    let previous_retention = match args.retention {
        Some(d) => d.as_secs(),
        None => stack(settings::PREVIOUS_RETENTION_HOURS, HOUR)?.unwrap_or(warm_up),
    };
    Ok(Timings {
        warm_up,
        period,
        previous_retention,
        signer_resolve_interval: args.signer_resolve_interval.as_secs(),
        edge_propagation: args.edge_propagation.as_secs(),
        ..defaults
    })
}

/// Stands in for a part that is not configured, so that commands that do
/// not need it (`status` needs no Cloudflare token) still run, and those
/// that do fail naming the setting.
struct Unconfigured(&'static str);

#[async_trait]
impl Publisher for Unconfigured {
    async fn publish(&self, _: &KeyDocument) -> Result<(), PublishError> {
        Err(PublishError::NotConfigured(self.0.to_string()))
    }
    fn describe(&self) -> String {
        "nowhere (not configured)".into()
    }
}

#[async_trait]
impl PublicKeySet for Unconfigured {
    async fn fetch(&self) -> Result<JwkSet, PublicError> {
        Err(PublicError::NotConfigured(self.0.to_string()))
    }
    fn describe(&self) -> String {
        "nowhere (no issuer)".into()
    }
}

/// `creates_keys`: the operation may create a key (`stage`, `rotate`), so
/// whether it gets the broker-only key policy matters.
async fn rotator(args: &RingArgs, creates_keys: bool) -> Result<Rotator, Error> {
    let usage = |e: &dyn std::fmt::Display| Error::Usage(e.to_string());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let aws = loader.load().await;
    // Checked before any KMS call: without credentials every call fails
    // with the whole provider chain's story instead of this one line.
    credentials_or_usage(&aws).await?;
    let kms = aws_sdk_kms::Client::new(&aws);
    let key_policy = match (&args.broker_role_arn, &args.rotation_role_arn) {
        (Some(broker), Some(rotation)) => {
            Some(policy::for_roles(broker, rotation).map_err(aws2azure_keys::Error::from)?)
        }
        (None, None) => {
            if creates_keys {
                eprintln!(
                    "warning: a key this command creates gets KMS's default key policy, under \
                     which any principal with kms:Sign in IAM can sign; pass --broker-role-arn \
                     and --rotation-role-arn (the stack's outputs BrokerRoleArn and \
                     RotationRoleArn) to give it the policy that lets only the broker sign"
                );
            }
            None
        }
        _ => {
            return Err(Error::Usage(
                "give both --broker-role-arn and --rotation-role-arn (the key policy names                  both), or neither"
                    .into(),
            ));
        }
    };
    aws2azure_keys::kms::validate_ring(&args.ring)?;
    let store = KmsKeyStore::new(kms, &args.ring, key_policy);

    let publisher: Arc<dyn Publisher> = match (&args.cloudflare_account, &args.cloudflare_namespace)
    {
        (Some(account), Some(namespace)) => {
            let settings = CloudflareSettings::new(account, namespace)?
                .with_api_base(&args.cloudflare_api)?
                .with_kv_key(&args.cloudflare_kv_key)?;
            let token = ApiToken::from_env()?;
            let client = CloudflareKv::new(settings, token).map_err(aws2azure_keys::Error::from)?;
            Arc::new(client)
        }
        _ => Arc::new(Unconfigured(
            "no Cloudflare account and namespace: set AWS2AZURE_CLOUDFLARE_ACCOUNT_ID and \
                 AWS2AZURE_CLOUDFLARE_NAMESPACE_ID (and the API token in \
                 AWS2AZURE_CLOUDFLARE_API_TOKEN or AWS2AZURE_CLOUDFLARE_API_TOKEN_FILE)",
        )),
    };
    let public: Arc<dyn PublicKeySet> = match &args.issuer {
        Some(issuer) => {
            let issuer = Issuer::parse(issuer).map_err(|e| usage(&e))?;
            Arc::new(HttpPublicKeySet::new(issuer, Duration::from_secs(10)).map_err(|e| usage(&e))?)
        }
        None => Arc::new(Unconfigured(
            "no issuer: set --issuer or AWS2AZURE_ISSUER to the edge's public URL",
        )),
    };
    Rotator::new(
        Arc::new(store),
        publisher,
        public,
        Arc::new(SystemClock),
        timings(args)?,
    )
    .map_err(Error::from)
}

async fn credentials_or_usage(aws: &aws_config::SdkConfig) -> Result<(), Error> {
    use aws_credential_types::provider::ProvideCredentials as _;
    let Some(provider) = aws.credentials_provider() else {
        return Err(Error::Credentials(
            "no AWS credentials provider is configured".into(),
        ));
    };
    provider
        .provide_credentials()
        .await
        .map(|_| ())
        .map_err(|e| {
            Error::Credentials(format!(
                "{e}: configure credentials for the ring's account (AWS_PROFILE, `aws sso login`, \
             or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ))
        })
}

pub async fn status(args: &RingArgs) -> Result<ExitCode, Error> {
    let status = rotator(args, false).await?.status().await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "ring": args.ring, "status": status })
        );
    } else {
        print!("{}", output::status_text(&status, &args.ring));
    }
    Ok(ExitCode::Ok)
}

pub async fn export_ring(args: &RingArgs) -> Result<ExitCode, Error> {
    let document = rotator(args, false).await?.document().await?;
    println!("{}", String::from_utf8_lossy(document.bytes()));
    Ok(ExitCode::Ok)
}

pub async fn operate(args: &RingArgs, operation: Operation) -> Result<ExitCode, Error> {
    let creates_keys = matches!(operation, Operation::Stage | Operation::Rotate);
    let rotator = rotator(args, creates_keys).await?;
    let mut report = Report::default();
    let result = match operation {
        Operation::Stage => rotator.stage(&mut report).await,
        Operation::Promote { force } => rotator.promote(force, &mut report).await,
        Operation::Retire { force } => rotator.retire(force, &mut report).await,
        Operation::Rotate => rotator.rotate(&mut report).await,
        Operation::Publish => rotator.publish(&mut report).await,
    };
    let error = result.as_ref().err().map(ToString::to_string);
    if args.json {
        println!("{}", output::report_json(&report, error.as_deref()));
    } else {
        // Risks go to standard error so that they are seen even when the
        // report is piped away.
        for risk in &report.risks {
            eprintln!("RISK (--force): {risk}");
        }
        print!("{}", output::report_text(&report));
    }
    result.map(|()| ExitCode::Ok).map_err(Error::from)
}
