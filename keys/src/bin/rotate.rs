//! The scheduled rotation (an EventBridge schedule invokes it hourly):
//! configuration and clients once at init, then `rotate` per invocation,
//! with one metrics line per run for the alarms.

use aws2azure_keys::metrics::emf_line;
use aws2azure_keys::rotation::Report;
use aws2azure_keys::settings::RotationSettings;
use lambda_runtime::{LambdaEvent, service_fn};
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
        let result = rotator.rotate(&mut report).await;
        let status = rotator.status().await.ok();
        println!(
            "{}",
            emf_line(ring, result.is_ok(), status.as_ref(), now_ms())
        );
        match result {
            Ok(()) => Ok(json!({ "report": report })),
            Err(err) => {
                tracing::error!(error = %err, done = ?report.actions, "rotation failed");
                Err(lambda_runtime::Error::from(err))
            }
        }
    }))
    .await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
