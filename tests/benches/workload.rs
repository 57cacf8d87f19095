//! What a workload sees, beside what it would otherwise run, in one run on
//! loopback against the dev stack built in process (SigV4 gateway, broker,
//! Entra stand-in):
//!
//!   cargo build --release -p aws2azure-cli
//!   cargo bench -p aws2azure-tests --bench workload
//!
//! - `aws2azure token` with a warm on-disk cache, process start to token
//!   printed, beside `awscurl` (PyPI) asking the same endpoint, which is how
//!   a script gets a token without the CLI;
//! - the token API on a cache miss (a fresh assertion, signed and exchanged
//!   at the Entra stand-in) beside a hit (the broker's memory), through
//!   `TokenClient` (SigV4, HTTP, the gateway's signature check).
//!
//! The CLI is `AWS2AZURE_BIN`, else `target/release/aws2azure`. Prints one
//! `figure: ours … peer … ratio …` line per figure, which `scripts/bench`
//! collects.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws2azure_client::TokenClient;
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_devstack::loopback;
use aws2azure_shared::jwk::JwkSet;
use aws2azure_signer::api::handle;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_tests::rig::Federation;

const REGION: &str = "eu-west-1";
const CLI_RUNS: usize = 30;
const AWSCURL_RUNS: usize = 10;
const API_RUNS: usize = 300;
/// The stand-in's tokens live 3000 s, so asking for 3300 s of validity
/// misses every time: each request is a fresh exchange.
const TOKEN_LIFETIME_SECS: u64 = 3000;
const MISS_VALIDITY: u64 = 3300;

fn principal() -> Principal {
    Principal {
        access_key_id: "AKIABENCHWORKLOAD001".into(),
        secret_access_key: "benchSecretKey00000000000000000000000000".into(),
        session_token: None,
        arn: "arn:aws:iam::111122223333:user/bench".into(),
        caller: "AIDABENCHWORKLOAD0001".into(),
        account_id: "111122223333".into(),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Runs `command` `runs` times after one untimed run; each must succeed and
/// print something on standard output.
fn time_process(runs: usize, mut command: impl FnMut() -> Command) -> Vec<Duration> {
    let mut samples = vec![];
    for i in 0..=runs {
        let started = Instant::now();
        let out = command().output().unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i > 0 {
            samples.push(took);
        }
    }
    samples
}

fn line(figure: &str, ours: Duration, peer: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{figure}: ours {:.2} ms  peer {:.2} ms  ratio {:.3}",
        ms(ours),
        ms(peer),
        ours.as_secs_f64() / peer.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let cli = std::env::var("AWS2AZURE_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/aws2azure").to_string()
    });
    assert!(
        std::path::Path::new(&cli).exists(),
        "no CLI at {cli}: cargo build --release -p aws2azure-cli (scripts/bench does)"
    );
    let awscurl = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/awscurl");
    assert!(
        std::path::Path::new(awscurl).exists(),
        "no awscurl at {awscurl}: ./scripts/test installs .venv"
    );

    let signer: Arc<dyn AssertionSigner> = Arc::new(LocalKeySigner::generate().unwrap());
    let keys = JwkSet::new(vec![signer.public_key().await.unwrap()]).unwrap();
    let edge = EdgeServer::start(loopback(), |a| format!("http://{a}"), Some(&keys))
        .await
        .unwrap();
    let issuer = edge.issuer().clone();
    let fed = Federation::trusting_with(issuer.clone(), issuer.as_str(), |c| {
        c.token_lifetime_secs = TOKEN_LIFETIME_SECS;
    })
    .await;
    let broker = fed.broker(signer, None, Duration::from_secs(2));
    let function: gateway::Function = Arc::new(move |request| {
        let broker = broker.clone();
        Box::pin(async move { handle(&broker, &request).await.0 })
    });
    let gateway = gateway::serve(loopback(), REGION, "prod", vec![principal()], function)
        .await
        .unwrap();
    let endpoint = format!("{}/prod", gateway.url());
    let p = principal();
    let client = TokenClient::new(
        &endpoint,
        REGION,
        SharedCredentialsProvider::new(Credentials::new(
            p.access_key_id.clone(),
            p.secret_access_key.clone(),
            None,
            None,
            "bench",
        )),
    )
    .unwrap();

    // The token API: a miss (fresh exchange) beside a hit (memory).
    let mut misses = vec![];
    let mut hits = vec![];
    for _ in 0..API_RUNS {
        let started = Instant::now();
        client.token("graph", MISS_VALIDITY).await.unwrap();
        misses.push(started.elapsed());
        let started = Instant::now();
        client.token("graph", 0).await.unwrap();
        hits.push(started.elapsed());
    }
    let entra_calls = fed.entra.stats().token_requests;
    assert!(
        entra_calls >= API_RUNS as u64,
        "every miss must reach Entra ({entra_calls} calls for {API_RUNS} misses)"
    );
    line(
        "token API hit vs miss p50",
        median(hits.clone()),
        median(misses.clone()),
    );
    line("token API hit vs miss p99", p99(hits), p99(misses));

    // The workload's command line: the CLI with its disk cache, and awscurl.
    let cache = tempfile::tempdir().unwrap();
    let (cli_endpoint, cache_dir) = (endpoint.clone(), cache.path().to_path_buf());
    let env = move |command: &mut Command| {
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", cache_dir.as_os_str())
            .env("AWS_ACCESS_KEY_ID", &p.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &p.secret_access_key)
            .env("AWS_EC2_METADATA_DISABLED", "true");
    };
    let cli_samples = {
        let (env, cli, cache) = (env.clone(), cli.clone(), cache.path().to_path_buf());
        let endpoint = cli_endpoint.clone();
        tokio::task::spawn_blocking(move || {
            time_process(CLI_RUNS, || {
                let mut command = Command::new(&cli);
                command
                    .args([
                        "token",
                        "graph",
                        "--region",
                        REGION,
                        "--endpoint",
                        &endpoint,
                    ])
                    .arg("--cache-dir")
                    .arg(cache.join("tokens"));
                env(&mut command);
                command
            })
        })
        .await
        .unwrap()
    };
    let awscurl_samples = tokio::task::spawn_blocking(move || {
        time_process(AWSCURL_RUNS, || {
            let mut command = Command::new(awscurl);
            command.args([
                "--service",
                "execute-api",
                "--region",
                REGION,
                &format!("{cli_endpoint}/token/graph"),
            ]);
            env(&mut command);
            command
        })
    })
    .await
    .unwrap();
    line(
        "workload token, CLI with warm disk cache vs awscurl, median",
        median(cli_samples),
        median(awscurl_samples),
    );
    drop(edge);
}
