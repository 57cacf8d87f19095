//! The credential endpoint as a Lambda external extension
//! (`/opt/extensions/aws2azure-identity`), on awslabs' `lambda-extension`
//! crate.
//!
//! Lambda starts external extensions before the function's runtime and
//! freezes the whole sandbox between invokes, so:
//! - the endpoint is bound before the extension registers: the function's
//!   init code may already ask it for a token;
//! - refreshes happen on INVOKE ([`Endpoint::refresh_due`], awaited but
//!   bounded by the invoke's deadline), never on a timer alone, which would
//!   not run while frozen;
//! - SHUTDOWN stops the server and ends the process with status 0.
//!
//! A setting that cannot work is reported to Lambda (`/extension/init/error`,
//! after registering, as the API requires) and ends the process with status
//! 2, so the function's init fails with the message in its logs instead of
//! every token request failing later. Log lines are JSON on standard error;
//! none holds a token or the header secret.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws2azure_client::TokenClient;
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::echo;
use aws2azure_shared::profile::Profiles;
use lambda_extension::{Extension, LambdaEvent, NextEvent, service_fn};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cache::{CachePolicy, TokenCache};
use crate::resources::RESOURCES_SETTING;
use crate::{Endpoint, EndpointSettings, Error, ResourceMap};

/// The extension's file name in `/opt/extensions`, and so its name when
/// registering (Lambda checks that the two match).
pub const EXTENSION_NAME: &str = "aws2azure-identity";

pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
pub const TOKEN_API: &str = "AWS2AZURE_ENDPOINT";
pub const PROFILES: &str = "AWS2AZURE_PROFILES";
pub const RESOURCES: &str = "AWS2AZURE_RESOURCES";
pub const REGION: &str = "AWS_REGION";
/// Set by Lambda: where the Extensions API listens (`host:port`).
pub const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";

/// What an INVOKE's refresh leaves of the invoke's time: the function's
/// timeout covers the extension's work too, and running past it would fail
/// the invoke and reset the sandbox.
pub const INVOKE_MARGIN: Duration = Duration::from_millis(500);
/// What the graceful stop leaves of SHUTDOWN's deadline, before Lambda's
/// SIGKILL.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_millis(200);

/// Exit status of a setting or start-up failure.
const SETUP_FAILED: u8 = 2;

/// Everything the extension reads from the function's environment, read
/// and checked once, before anything starts.
#[derive(Debug)]
pub struct ExtensionSettings {
    pub endpoint: EndpointSettings,
    /// The token API's base URL, stage included.
    pub token_api: String,
    /// The token API's region, for SigV4.
    pub region: String,
    pub resources: ResourceMap,
}

impl ExtensionSettings {
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From `lookup` (a variable's value by name), so tests need not touch
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str, fix: &str| {
            get(name).ok_or_else(|| Error::setting(name, "is not set", fix))
        };
        let endpoint = required(
            IDENTITY_ENDPOINT,
            "set it in the function's environment to http://127.0.0.1:PORT/msi/token",
        )?;
        let header = required(
            IDENTITY_HEADER,
            "set it in the function's environment to a random value, e.g. `openssl rand -hex 32`",
        )?;
        let endpoint = EndpointSettings::from_identity_env(&endpoint, &header)?;
        let token_api = token_api(&required(
            TOKEN_API,
            "set it to the token API's URL with its stage (the stack's output), e.g. https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
        )?)?;
        let profiles = Profiles::from_json(&required(
            PROFILES,
            "set it to the JSON the broker's AWS2AZURE_PROFILES holds",
        )?)
        .map_err(|e| {
            Error::setting(
                PROFILES,
                e.to_string(),
                "set it to the JSON the broker's AWS2AZURE_PROFILES holds",
            )
        })?;
        let overrides = match get(RESOURCES) {
            None => BTreeMap::new(),
            Some(json) => serde_json::from_str::<BTreeMap<String, String>>(&json).map_err(|e| {
                Error::setting(
                    RESOURCES,
                    format!("is not a JSON object of strings ({e})"),
                    r#"map each resource to a profile name, e.g. {"https://vault.azure.net": "vault"}"#,
                )
            })?,
        };
        let resources = ResourceMap::new(&profiles, &overrides).map_err(rename_settings)?;
        let region = aws2azure_client::region_from_host(&token_api)
            .or_else(|| get(REGION))
            .ok_or_else(|| {
                Error::setting(
                    REGION,
                    format!("is not set, and {TOKEN_API} names no region"),
                    "set AWS_REGION to the token API's region",
                )
            })?;
        Ok(Self {
            endpoint,
            token_api,
            region,
            resources,
        })
    }
}

/// The token API's URL: https, or http on loopback (the devstack's).
fn token_api(value: &str) -> Result<String, Error> {
    let fix = "use the token API's https URL with its stage, e.g. https://abc123.execute-api.eu-west-1.amazonaws.com/prod";
    let shown = echo(value, 200);
    let url = url::Url::parse(value)
        .map_err(|e| Error::setting(TOKEN_API, format!("`{shown}` is not a URL ({e})"), fix))?;
    let plain_http_on_loopback = url.scheme() == "http"
        && url
            .host_str()
            .is_some_and(aws2azure_shared::discovery::is_loopback_host);
    if url.scheme() != "https" && !plain_http_on_loopback {
        return Err(Error::setting(
            TOKEN_API,
            format!("`{shown}` is not https"),
            fix,
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(Error::setting(
            TOKEN_API,
            format!("`{shown}` carries more than a base URL"),
            fix,
        ));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// [`ResourceMap::new`] names its settings as the CLI's configuration file
/// does; here they are environment variables.
fn rename_settings(error: Error) -> Error {
    match error {
        Error::Setting {
            setting,
            problem,
            fix,
        } => Error::Setting {
            setting: match setting {
                RESOURCES_SETTING => RESOURCES,
                "profiles" => PROFILES,
                other => other,
            },
            problem,
            fix,
        },
        other => other,
    }
}

/// Runs the extension until SHUTDOWN; the process's exit status.
pub async fn run() -> ExitCode {
    let api = match std::env::var(RUNTIME_API) {
        Ok(api) if api.parse::<http::uri::Authority>().is_ok() => api,
        // The Extensions API client would panic without it; and with no API
        // there is nobody to report to but the log.
        _ => {
            log(
                "extension_failed",
                json!({"error": format!(
                    "{RUNTIME_API} is not a host:port (fix: run this as a Lambda extension, in /opt/extensions; locally, use `aws2azure serve`)"
                )}),
            );
            return ExitCode::from(SETUP_FAILED);
        }
    };
    let name = extension_name();
    match start().await {
        Ok(endpoint) => serve(&name, endpoint).await,
        Err(error) => {
            report_init_error(&api, &name, &error).await;
            ExitCode::from(SETUP_FAILED)
        }
    }
}

/// The name to register under: this file's name, as Lambda expects.
fn extension_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg| {
            std::path::Path::new(&arg)
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| EXTENSION_NAME.to_string())
}

/// Settings, the token API's client and the bound endpoint.
async fn start() -> Result<Endpoint, Error> {
    let settings = ExtensionSettings::from_env()?;
    let client = TokenClient::from_env(&settings.token_api, Some(&settings.region))
        .await
        .map_err(|e| {
            Error::setting(
                TOKEN_API,
                e.to_string(),
                "give the function's role credentials and the token API's https URL",
            )
        })?;
    let cache = TokenCache::new(
        Arc::new(client),
        Arc::new(SystemClock),
        CachePolicy::default(),
    );
    let endpoint = Endpoint::bind(settings.endpoint, settings.resources, cache).await?;
    log(
        "extension_listening",
        json!({
            "endpoint": endpoint.identity_endpoint(),
            "resources": endpoint.resources().served(),
        }),
    );
    Ok(endpoint)
}

/// Registers, answers INVOKEs with a bounded refresh, and on SHUTDOWN
/// stops the endpoint.
async fn serve(name: &str, endpoint: Endpoint) -> ExitCode {
    // The SHUTDOWN's deadline (epoch ms), once it came.
    let (shutdown_tx, mut shutdown_rx) = watch::channel(None::<u64>);
    let processor = service_fn({
        let endpoint = endpoint.clone();
        move |event: LambdaEvent| {
            let endpoint = endpoint.clone();
            let shutdown_tx = shutdown_tx.clone();
            async move {
                match event.next {
                    NextEvent::Invoke(invoke) => refresh(&endpoint, invoke.deadline_ms).await,
                    NextEvent::Shutdown(shutdown) => {
                        log(
                            "extension_shutdown",
                            json!({"reason": echo(&shutdown.shutdown_reason, 32)}),
                        );
                        let _ = shutdown_tx.send(Some(shutdown.deadline_ms));
                    }
                }
                // A failed refresh is not the extension's failure: the held
                // tokens still serve, and a request retries the load.
                Ok::<(), Infallible>(())
            }
        }
    });
    let registered = match Extension::new()
        .with_extension_name(name)
        .with_events(&["INVOKE", "SHUTDOWN"])
        .with_events_processor(processor)
        .register()
        .await
    {
        Ok(registered) => registered,
        Err(source) => {
            log(
                "extension_failed",
                json!({"error": format!("registering with the Extensions API: {source}")}),
            );
            let _ = endpoint.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    log("extension_registered", json!({"name": echo(name, 64)}));

    // The crate's loop asks for the next event after SHUTDOWN too (Lambda
    // would end the process): the SHUTDOWN ends it here instead.
    let deadline_ms = tokio::select! {
        ran = registered.run() => {
            let error = match ran {
                Ok(()) => "the Extensions API loop ended".to_string(),
                Err(source) => format!("the Extensions API loop failed: {source}"),
            };
            log("extension_failed", json!({"error": error}));
            let _ = endpoint.shutdown().await;
            return ExitCode::FAILURE;
        }
        deadline = shutdown_rx.wait_for(Option::is_some) => {
            deadline.ok().and_then(|d| *d).unwrap_or(0)
        }
    };
    let budget = time_left(deadline_ms, SHUTDOWN_MARGIN);
    match tokio::time::timeout(budget, endpoint.shutdown()).await {
        Ok(Ok(())) => log("extension_stopped", json!({})),
        Ok(Err(error)) => log("extension_stopped", json!({"error": error.to_string()})),
        Err(_) => log(
            "extension_stopped",
            json!({"error": format!("answers in flight cut off after {} ms", budget.as_millis())}),
        ),
    }
    ExitCode::SUCCESS
}

/// Refreshes the tokens whose refresh is due, within the invoke's deadline
/// less [`INVOKE_MARGIN`]; loads still running then finish on a later thaw.
async fn refresh(endpoint: &Endpoint, deadline_ms: u64) {
    let budget = time_left(deadline_ms, INVOKE_MARGIN);
    if budget.is_zero() {
        log(
            "refresh_skipped",
            json!({"reason": "no time left before the invoke's deadline"}),
        );
        return;
    }
    let started = std::time::Instant::now();
    match tokio::time::timeout(budget, endpoint.refresh_due()).await {
        Ok(report) if report.refreshed + report.failed == 0 => {}
        Ok(report) => log(
            "refresh",
            json!({
                "refreshed": report.refreshed,
                "failed": report.failed,
                "millis": started.elapsed().as_millis(),
            }),
        ),
        Err(_) => log(
            "refresh",
            json!({"error": "cut off at the invoke's deadline", "millis": budget.as_millis()}),
        ),
    }
}

/// Time until `deadline_ms` (Unix milliseconds), less `margin`.
fn time_left(deadline_ms: u64, margin: Duration) -> Duration {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(margin)
}

/// The Extensions API wants an init error from a registered extension:
/// register, post it, and let the caller exit.
async fn report_init_error(api: &str, name: &str, error: &Error) {
    let error_type = match error {
        Error::Setting { .. } => "Extension.InvalidSetting",
        Error::Bind { .. } => "Extension.BindFailed",
        _ => "Extension.InitFailed",
    };
    log(
        "extension_failed",
        json!({"error": error.to_string(), "error_type": error_type}),
    );
    let registered = Extension::new()
        .with_extension_name(name)
        .with_events(&["INVOKE", "SHUTDOWN"])
        .register()
        .await;
    let id = match registered {
        Ok(registered) => registered.extension_id,
        Err(source) => {
            log(
                "init_error_not_reported",
                json!({"error": format!("registering with the Extensions API: {source}")}),
            );
            return;
        }
    };
    let body = json!({
        "errorMessage": error.to_string(),
        "errorType": error_type,
        "stackTrace": [],
    });
    let posted = reqwest::Client::new()
        .post(format!("http://{api}/2020-01-01/extension/init/error"))
        .header("Lambda-Extension-Identifier", id)
        .header("Lambda-Extension-Function-Error-Type", error_type)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match posted {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => log(
            "init_error_not_reported",
            json!({"error": format!("the Extensions API answered {}", response.status())}),
        ),
        Err(e) => log(
            "init_error_not_reported",
            json!({"error": format!("the Extensions API: {e}")}),
        ),
    }
}

/// One JSON line on standard error.
fn log(event: &str, fields: Value) {
    eprintln!("{}", log_line(event, fields));
}

/// `event` first, as in the endpoint's request lines.
fn log_line(event: &str, fields: Value) -> String {
    let mut line = format!("{{\"event\":{}", Value::from(event));
    if let Value::Object(fields) = fields {
        for (key, value) in fields {
            line.push_str(&format!(",{}:{value}", Value::from(key)));
        }
    }
    line.push('}');
    line
}

#[cfg(test)]
#[path = "extension_tests.rs"]
mod tests;
