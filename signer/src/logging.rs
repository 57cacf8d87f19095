//! The Lambda's log subscriber: the level from Lambda's advanced logging
//! controls (`AWS_LAMBDA_LOG_LEVEL`, `RUST_LOG` directives), the format from
//! `AWS_LAMBDA_LOG_FORMAT`, like `lambda_runtime`'s default subscriber, with
//! one difference: the Lambda runtime crates never log below INFO, whatever
//! the configured level. At DEBUG and TRACE they write the raw invocation
//! event, which holds the caller's `Authorization` header and
//! `X-Amz-Security-Token`: an operator turning on TRACE to chase a bug must
//! not put callers' credentials into CloudWatch Logs.

use std::str::FromStr;

use tracing::Subscriber;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

/// The crates that see raw invocation events.
pub const RUNTIME_CRATES: [&str; 3] =
    ["lambda_runtime", "lambda_runtime_api_client", "lambda_http"];

/// What the environment says about logging.
#[derive(Clone, Debug, Default)]
pub struct LogSettings {
    /// `AWS_LAMBDA_LOG_LEVEL` (default INFO).
    pub level: Option<String>,
    /// `RUST_LOG` directives, applied over the level.
    pub directives: Option<String>,
    /// `AWS_LAMBDA_LOG_FORMAT`: `JSON` or text.
    pub format: Option<String>,
}

impl LogSettings {
    pub fn from_env() -> Self {
        Self {
            level: std::env::var("AWS_LAMBDA_LOG_LEVEL").ok(),
            directives: std::env::var("RUST_LOG").ok(),
            format: std::env::var("AWS_LAMBDA_LOG_FORMAT").ok(),
        }
    }

    fn json(&self) -> bool {
        self.format
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case("json"))
    }
}

/// The subscriber for `settings`, writing to `writer`.
pub fn subscriber<W>(settings: &LogSettings, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let level = settings
        .level
        .as_deref()
        .and_then(|l| tracing::Level::from_str(l).ok())
        .unwrap_or(tracing::Level::INFO);
    let configured = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(level).into())
        .parse_lossy(settings.directives.as_deref().unwrap_or_default());
    // Both filters must pass: a `RUST_LOG=lambda_runtime=trace` cannot lift
    // the cap either.
    let capped = RUNTIME_CRATES
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
            t.with_target(*c, LevelFilter::INFO)
        });
    let filter = configured.and(capped);
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_writer(writer);
    let layer = if settings.json() {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    Registry::default().with(layer)
}

/// Installs the subscriber for the environment as the global default.
pub fn init() {
    let subscriber = subscriber(&LogSettings::from_env(), std::io::stdout);
    // Only fails when a subscriber is already set (tests): keep that one.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(settings: &LogSettings, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = subscriber(settings, move || writer.clone());
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    fn emit_all() {
        tracing::trace!(target: "lambda_runtime", "raw event Authorization: AWS4-HMAC-SHA256 secret");
        tracing::debug!(target: "lambda_runtime_api_client", "X-Amz-Security-Token: secret");
        tracing::trace!(target: "lambda_http::request", "headers secret");
        tracing::info!(target: "lambda_runtime", "runtime info");
        tracing::trace!(target: "aws2azure_signer::broker", "our trace");
    }

    #[test]
    fn runtime_crates_never_log_below_info() {
        for settings in [
            LogSettings {
                level: Some("TRACE".into()),
                ..LogSettings::default()
            },
            LogSettings {
                level: Some("trace".into()),
                directives: Some("lambda_runtime=trace,lambda_http=trace,trace".into()),
                format: Some("JSON".into()),
            },
        ] {
            let out = logged(&settings, emit_all);
            assert!(!out.contains("secret"), "{settings:?}: {out}");
            assert!(out.contains("runtime info"), "{out}");
            assert!(
                out.contains("our trace"),
                "our own TRACE still shows: {out}"
            );
        }
    }

    #[test]
    fn level_and_format_follow_lambdas_controls() {
        let out = logged(&LogSettings::default(), emit_all);
        assert!(
            out.contains("runtime info") && !out.contains("our trace"),
            "{out}"
        );
        let out = logged(
            &LogSettings {
                format: Some("json".into()),
                ..LogSettings::default()
            },
            || tracing::info!(target: "aws2azure::audit", profile = "graph", "token request"),
        );
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["fields"]["profile"], "graph", "{out}");
    }
}
