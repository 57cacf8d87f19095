//! The credential endpoint's cost to an Azure SDK, beside the token API's:
//!
//!   ./scripts/bench-identity            (release build; the endpoint's
//!                                        per-request log lines go to a file)
//!
//! In one run, on loopback, against the dev stack built in process (SigV4
//! gateway, broker with its token in memory, Entra stand-in):
//! - a cached token through the endpoint, `GET $IDENTITY_ENDPOINT?...` as
//!   SDKs send it, over a kept-alive connection and over a new connection
//!   per request;
//! - the same token through the token API (`TokenClient`: SigV4 signing,
//!   HTTP, the gateway's signature check, the broker's cache hit), which is
//!   what every call would cost without the endpoint's cache.
//!
//! Goal (issue 9): a cached token through the endpoint, p99 ≤ 1 ms.
//! Prints p50, p99 and max in microseconds, and exits 1 if the goal is
//! missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws2azure_client::TokenClient;
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_devstack::loopback;
use aws2azure_identity::protocol::{API_VERSION, IDENTITY_HEADER};
use aws2azure_identity::{
    CachePolicy, Endpoint, EndpointSettings, IdentityHeader, ResourceMap, TokenCache,
};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::profile::{ProfileConfig, Profiles};
use aws2azure_signer::api::handle;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_tests::rig::Federation;

const REGION: &str = "eu-west-1";
const ENDPOINT_RUNS: usize = 20_000;
const NEW_CONNECTION_RUNS: usize = 5_000;
const TOKEN_API_RUNS: usize = 2_000;
const GOAL_P99: Duration = Duration::from_millis(1);

fn principal() -> Principal {
    Principal {
        access_key_id: "AKIABENCHIDENTITY001".into(),
        secret_access_key: "benchSecretKey00000000000000000000000000".into(),
        session_token: None,
        arn: "arn:aws:iam::111122223333:user/bench".into(),
        caller: "AIDABENCHIDENTITY0001".into(),
        account_id: "111122223333".into(),
    }
}

struct Figures {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Figures {
    fn at(&self, q: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        self.samples[i]
    }
    fn row(&mut self) -> String {
        self.samples.sort();
        format!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.1} ms |",
            self.name,
            self.samples.len(),
            self.at(0.5).as_secs_f64() * 1e6,
            self.at(0.99).as_secs_f64() * 1e6,
            self.samples.last().unwrap().as_secs_f64() * 1e3,
        )
    }
}

async fn time<F, Fut>(name: &'static str, runs: usize, mut call: F) -> Figures
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..runs / 10 {
        call().await;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed());
    }
    Figures { name, samples }
}

#[tokio::main]
async fn main() {
    let signer: Arc<dyn AssertionSigner> = Arc::new(LocalKeySigner::generate().unwrap());
    let fed = Federation::start(signer.as_ref()).await;
    let broker = fed.broker(signer, None, Duration::from_secs(2));
    let function: gateway::Function = Arc::new(move |request| {
        let broker = broker.clone();
        Box::pin(async move { handle(&broker, &request).await.0 })
    });
    let gateway = gateway::serve(loopback(), REGION, "prod", vec![principal()], function)
        .await
        .unwrap();
    let p = principal();
    let client = TokenClient::new(
        &format!("{}/prod", gateway.url()),
        REGION,
        SharedCredentialsProvider::new(Credentials::new(
            p.access_key_id,
            p.secret_access_key,
            None,
            None,
            "bench",
        )),
    )
    .unwrap();

    // The rig serves several profiles for Graph; the benchmark's SDK asks
    // for Graph alone, as a workload with one app registration does.
    let all = fed.profiles();
    let graph = all.get("graph").unwrap();
    let profiles = Profiles::from_configs(BTreeMap::from([(
        "graph".to_string(),
        ProfileConfig::from(graph),
    )]))
    .unwrap();
    let endpoint = Endpoint::bind(
        EndpointSettings::loopback(loopback(), IdentityHeader::random().unwrap()),
        ResourceMap::new(&profiles, &Default::default()).unwrap(),
        TokenCache::new(
            Arc::new(client.clone()),
            Arc::new(SystemClock),
            CachePolicy::default(),
        ),
    )
    .await
    .unwrap();
    let url = reqwest::Url::parse_with_params(
        &endpoint.identity_endpoint(),
        [
            ("api-version", API_VERSION),
            ("resource", "https://graph.microsoft.com"),
        ],
    )
    .unwrap();
    let header = endpoint.identity_header().to_string();

    let kept = reqwest::Client::new();
    let get = |http: reqwest::Client| {
        let (url, header) = (url.clone(), header.clone());
        async move {
            let response = http
                .get(url)
                .header(IDENTITY_HEADER, header)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
    };
    // The first request fills the endpoint's cache from the token API.
    get(kept.clone()).await;

    let mut endpoint_kept = time(
        "endpoint, cached token, kept-alive connection",
        ENDPOINT_RUNS,
        || get(kept.clone()),
    )
    .await;
    let unpooled = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut endpoint_new = time(
        "endpoint, cached token, new connection per request",
        NEW_CONNECTION_RUNS,
        || get(unpooled.clone()),
    )
    .await;
    let mut token_api = time(
        "token API round trip (SigV4, gateway, broker cache hit)",
        TOKEN_API_RUNS,
        || {
            let client = client.clone();
            async move {
                client.token("graph", 0).await.unwrap();
            }
        },
    )
    .await;

    println!("| path | requests | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: |");
    println!("{}", endpoint_kept.row());
    println!("{}", endpoint_new.row());
    println!("{}", token_api.row());
    let p99 = endpoint_kept.at(0.99).max(endpoint_new.at(0.99));
    let ratio = token_api.at(0.5).as_secs_f64() / endpoint_kept.at(0.5).as_secs_f64();
    println!(
        "\nthe token API round trip costs {ratio:.1}× a cached token through the endpoint (p50)"
    );
    let met = p99 <= GOAL_P99;
    println!(
        "goal: cached token through the endpoint, p99 ≤ 1 ms: {} (worst p99 {:.0} µs)",
        if met { "met" } else { "MISSED" },
        p99.as_secs_f64() * 1e6
    );
    endpoint.shutdown().await.unwrap();
    gateway.stop().await;
    if !met {
        std::process::exit(1);
    }
}
