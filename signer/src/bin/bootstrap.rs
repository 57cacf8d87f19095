//! The Lambda entry point: configuration and clients once at init, then one
//! plain async function per request.

use aws2azure_signer::{api, runtime, settings::SignerConfig};
use lambda_http::{Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    // Like lambda_runtime's default subscriber, but the runtime crates never
    // log the raw event (callers' credentials) whatever the level.
    aws2azure_signer::logging::init();
    let config = match SignerConfig::from_env() {
        Ok(config) => config,
        Err(err) => {
            // One clear line, then a failed init: Lambda reports it and
            // retries init, and no request is ever served half-configured.
            tracing::error!(error = %err, "invalid configuration");
            return Err(err.into());
        }
    };
    let aws = runtime::aws_config().await;
    let broker = match runtime::build_broker(&config, &aws).await {
        Ok(broker) => broker,
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            return Err(err.into());
        }
    };
    lambda_http::run(service_fn(move |req: Request| {
        let broker = broker.clone();
        async move { Ok::<_, std::convert::Infallible>(api::serve(&broker, req).await) }
    }))
    .await
}
