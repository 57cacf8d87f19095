//! The scheduled rotation (an EventBridge schedule invokes it hourly):
//! configuration and clients once at init, then `rotate` per invocation,
//! with one metrics line per run for the alarms.

use aws2azure_keys::metrics::emf_line;
use aws2azure_keys::rotation::Report;
use aws2azure_keys::settings::RotationSettings;
use aws2azure_signer::metrics::now_millis;
use lambda_runtime::{LambdaEvent, service_fn};

/// The longest one run may take: well inside the function's 120 s timeout.
const RUN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);
/// The status read for the metrics after the run.
const STATUS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    aws2azure_signer::logging::init();
    let settings = match RotationSettings::from_env(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!(error = %err, "invalid configuration");
            return Err(err.into());
        }
    };
    let aws = aws2azure_signer::runtime::aws_config().await;
    let rotator = match settings.rotator(&aws).await {
        Ok(rotator) => rotator,
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            return Err(err.into());
        }
    };
    let ring = settings.ring.clone();
    let rotator = &rotator;
    let ring = &ring;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
        let mut report = Report::default();
        // Inside the function's timeout (template.yaml: 120 s), so that a
        // run stuck on a slow API still writes its metrics line and counts
        // as failed; the next scheduled run goes on from what this one did.
        let result = match tokio::time::timeout(RUN_DEADLINE, rotator.rotate(&mut report)).await {
            Ok(result) => result.map_err(lambda_runtime::Error::from),
            Err(_) => Err(format!(
                "the rotation did not finish within {} s (slow KMS, Cloudflare API or edge); \
                 the next run goes on from where it stopped",
                RUN_DEADLINE.as_secs()
            )
            .into()),
        };
        let status = tokio::time::timeout(STATUS_DEADLINE, rotator.status())
            .await
            .ok()
            .and_then(Result::ok);
        println!(
            "{}",
            emf_line(ring, result.is_ok(), status.as_ref(), now_millis())
        );
        match result {
            Ok(()) => Ok(json!({ "report": report })),
            Err(err) => {
                tracing::error!(error = %err, done = ?report.actions, "rotation failed");
                Err(err)
            }
        }
    }))
    .await
}
