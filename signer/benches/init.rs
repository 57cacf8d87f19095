//! Init time of the Lambda binary: from exec to its first poll of the
//! Runtime API (a local one), as a rerunnable benchmark:
//!
//!   cargo bench -p aws2azure-signer --bench init
//!
//! Two configurations, 20 runs each:
//! - `pem`: a local PEM key, no cache table, Entra warm-up off: the cost of
//!   the binary, its configuration and its clients;
//! - `kms+dynamodb`: the production wiring (aws-config, KMS and DynamoDB
//!   clients built, the KMS key resolved with DescribeKey + GetPublicKey and
//!   the table checked with DescribeTable) against moto on loopback. moto is
//!   a Python server, so its answers are slower than KMS's in region; the
//!   figure is an upper bound of the network-free part.
//!
//! Goal (issue 4): ≤ 30 ms with clients built.

use std::time::{Duration, Instant};

use aws2azure_devstack::lambda_runtime_api::RuntimeApi;
use aws2azure_devstack::loopback;
use aws2azure_devstack::moto::MotoServer;

const PROFILES: &str = r#"{"graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "00000000-1111-2222-3333-444444444444",
    "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"}}"#;

async fn one_run(env: &[(String, String)]) -> Duration {
    let runtime = RuntimeApi::default();
    let server = runtime.serve(loopback()).await.unwrap();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .env_clear()
        .envs(env.iter().cloned())
        .env("AWS_LAMBDA_RUNTIME_API", server.addr().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let first = loop {
        if let Some(t) = runtime.first_poll() {
            break t;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("bootstrap exited during init: {status}");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    child.kill().await.ok();
    first - started
}

fn report(name: &str, mut runs: Vec<Duration>) {
    runs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = runs[runs.len() / 2];
    println!(
        "init {name:<14} runs={} min={:.1} ms  median={:.1} ms  p90={:.1} ms  max={:.1} ms  goal median<=30 ms: {}",
        runs.len(),
        ms(runs[0]),
        ms(median),
        ms(runs[runs.len() * 9 / 10]),
        ms(*runs.last().unwrap()),
        if median <= Duration::from_millis(30) {
            "met"
        } else {
            "NOT met"
        }
    );
}

#[tokio::main]
async fn main() {
    let base = |extra: &[(&str, String)]| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AWS_LAMBDA_FUNCTION_NAME", "aws2azure-broker".to_string()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
            ("AWS2AZURE_ISSUER", "https://issuer.example.com".into()),
            ("AWS2AZURE_PROFILES", PROFILES.into()),
            ("AWS2AZURE_WARM_ENTRA", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };

    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(
        &pem,
        aws2azure_signer::signing::LocalKeySigner::generate()
            .unwrap()
            .to_pkcs8_pem()
            .unwrap(),
    )
    .unwrap();
    let env = base(&[("AWS2AZURE_SIGNING_KEY_FILE", pem.display().to_string())]);
    one_run(&env).await; // page cache
    let mut runs = vec![];
    for _ in 0..20 {
        runs.push(one_run(&env).await);
    }
    report("pem", runs);

    let moto = MotoServer::shared();
    let config = moto.sdk_config().await;
    let kms = aws_sdk_kms::Client::new(&config);
    aws2azure_devstack::moto::create_signing_key(&kms, "alias/bench").await;
    aws2azure_devstack::moto::create_cache_table(&aws_sdk_dynamodb::Client::new(&config), "bench")
        .await;
    let env = base(&[
        ("AWS2AZURE_KMS_KEY", "alias/bench".into()),
        ("AWS2AZURE_CACHE_TABLE", "bench".into()),
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]);
    let mut runs = vec![];
    for _ in 0..20 {
        runs.push(one_run(&env).await);
    }
    report("kms+dynamodb", runs);

    let size = std::fs::metadata(env!("CARGO_BIN_EXE_bootstrap"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "bootstrap binary: {:.1} MB ({size} bytes)",
        size as f64 / 1e6
    );
}
