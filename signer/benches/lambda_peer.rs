//! The broker's Lambda beside the alternative a team would otherwise write: a
//! Python 3 function (`benches/peer/handler.py`) on `awslambdaric`, the
//! runtime interface client of AWS's Python runtime. Both are started by the
//! same local Runtime API against the same moto and serve the same
//! API Gateway event from the same DynamoDB cache item:
//!
//!   cargo bench -p aws2azure-signer --bench lambda_peer
//!
//! - init: exec → first poll of the Runtime API, 10 runs each;
//! - warm invoke: one process each, 1,000 invocations after 50 of warm-up,
//!   timed from the event's hand-out to the posted answer (the broker serves
//!   from memory after its first read of the shared tier; the peer reads
//!   DynamoDB, here moto on loopback, on every call);
//! - peak RSS (`VmHWM`) after the warm loop, and the smallest Lambda memory
//!   size that holds it with headroom.
//!
//! Prints one `figure: ours … peer … ratio …` line per figure, which
//! `scripts/bench` collects.

use std::path::Path;
use std::time::{Duration, Instant};

use aws2azure_devstack::lambda_runtime_api::{Outcome, RuntimeApi};
use aws2azure_devstack::loopback;
use aws2azure_devstack::moto::MotoServer;
use aws2azure_shared::profile::Profiles;
use aws2azure_signer::cache::{CacheKey, SharedCache};
use aws2azure_signer::dynamodb::DynamoDbCache;
use aws2azure_signer::token::{AccessToken, CachedToken};

const PROFILES: &str = r#"{"graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "00000000-1111-2222-3333-444444444444",
    "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"}}"#;
const INIT_RUNS: usize = 10;
const WARM_UP: usize = 50;
const INVOKES: usize = 1000;
const TABLE: &str = "bench-peer";
const KEY: &str = "alias/bench-peer";

/// How one implementation is started.
struct Function {
    name: &'static str,
    program: String,
    args: Vec<String>,
    dir: Option<String>,
}

impl Function {
    fn command(&self, env: &[(String, String)], api: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(env.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", api)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }
}

async fn start(
    function: &Function,
    env: &[(String, String)],
) -> (
    RuntimeApi,
    aws2azure_devstack::Server,
    tokio::process::Child,
    Duration,
) {
    let runtime = RuntimeApi::default();
    let server = runtime.serve(loopback()).await.unwrap();
    let started = Instant::now();
    let mut child = function
        .command(env, &server.addr().to_string())
        .spawn()
        .unwrap();
    let first = loop {
        if let Some(t) = runtime.first_poll() {
            break t;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited during init: {status}", function.name);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    (runtime, server, child, first - started)
}

/// `VmHWM` of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

struct Figures {
    init_median: Duration,
    warm_p50: Duration,
    warm_p99: Duration,
    peak_rss: u64,
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn measure(
    function: &Function,
    env: &[(String, String)],
    event: &serde_json::Value,
) -> Figures {
    // Page cache and Python's bytecode cache, as a warm sandbox has them.
    let (_, _, mut child, _) = start(function, env).await;
    child.kill().await.ok();
    let mut inits = vec![];
    for _ in 0..INIT_RUNS {
        let (_, _, mut child, init) = start(function, env).await;
        inits.push(init);
        child.kill().await.ok();
    }
    inits.sort();

    let (runtime, _server, mut child, _) = start(function, env).await;
    let mut warm = vec![];
    for i in 0..WARM_UP + INVOKES {
        let started = Instant::now();
        let outcome = runtime
            .invoke(event.clone(), Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} did not answer", function.name));
        let took = started.elapsed();
        match outcome {
            Outcome::Response(answer) if answer["statusCode"] == 200 => {}
            other => panic!("{} answered {other:?}", function.name),
        }
        if i >= WARM_UP {
            warm.push(took);
        }
    }
    warm.sort();
    let peak = peak_rss(child.id().unwrap_or_default());
    child.kill().await.ok();
    Figures {
        init_median: inits[inits.len() / 2],
        warm_p50: percentile(&warm, 50),
        warm_p99: percentile(&warm, 99),
        peak_rss: peak,
    }
}

fn line(figure: &str, ours: f64, peer: f64, unit: &str) {
    println!(
        "{figure}: ours {ours:.2} {unit}  peer {peer:.2} {unit}  ratio {:.3}",
        ours / peer
    );
}

/// The smallest Lambda memory size (MB, in 64 MB steps from 128) that holds
/// `rss` with half again as much headroom.
fn memory_size(rss: u64) -> u64 {
    let needed = rss as f64 * 1.5 / 1e6;
    (128..=10_240)
        .step_by(64)
        .find(|mb| *mb as f64 >= needed)
        .unwrap_or(10_240)
}

#[tokio::main]
async fn main() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config().await;
    aws2azure_devstack::moto::create_signing_key(&aws_sdk_kms::Client::new(&config), KEY).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    aws2azure_devstack::moto::create_cache_table(&dynamodb, TABLE).await;
    // The token both serve, as the broker would have stored it.
    let profiles = Profiles::from_json(PROFILES).unwrap();
    let profile = profiles.get("graph").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    DynamoDbCache::new(dynamodb, TABLE)
        .put(
            &CacheKey::for_profile(profile),
            &CachedToken {
                access_token: AccessToken::new(format!("eyJ0eXAiOiJKV1QifQ.bench.{now}")),
                token_type: "Bearer".into(),
                expires_on: now + 3600,
                refresh_on: now + 3000,
            },
        )
        .await
        .unwrap();

    let env: Vec<(String, String)> = [
        ("AWS_LAMBDA_FUNCTION_NAME", "aws2azure-broker"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
        ("AWS2AZURE_ISSUER", "https://issuer.example.com"),
        ("AWS2AZURE_PROFILES", PROFILES),
        ("AWS2AZURE_WARM_ENTRA", "false"),
        ("AWS2AZURE_KMS_KEY", KEY),
        ("AWS2AZURE_CACHE_TABLE", TABLE),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("AWS_ENDPOINT_URL".to_string(), moto.endpoint())])
    .collect();
    let event: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/rest-iam-user.json")).unwrap();

    let python = std::env::var("AWS2AZURE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").to_string()
    });
    assert!(
        Path::new(&python).exists(),
        "no Python at {python}: ./scripts/test installs .venv with awslambdaric and boto3"
    );
    let ours = Function {
        name: "bootstrap",
        program: env!("CARGO_BIN_EXE_bootstrap").into(),
        args: vec![],
        dir: None,
    };
    let peer = Function {
        name: "python peer",
        program: python,
        args: vec!["-m".into(), "awslambdaric".into(), "handler.handler".into()],
        dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer").into()),
    };
    let a = measure(&ours, &env, &event).await;
    let b = measure(&peer, &env, &event).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    line(
        "lambda init median",
        ms(a.init_median),
        ms(b.init_median),
        "ms",
    );
    line(
        "lambda warm invoke p50",
        ms(a.warm_p50),
        ms(b.warm_p50),
        "ms",
    );
    line(
        "lambda warm invoke p99",
        ms(a.warm_p99),
        ms(b.warm_p99),
        "ms",
    );
    line("lambda peak RSS", mib(a.peak_rss), mib(b.peak_rss), "MiB");
    println!(
        "lambda memory size for 1.5x peak RSS: ours {} MB  peer {} MB",
        memory_size(a.peak_rss),
        memory_size(b.peak_rss)
    );
}
