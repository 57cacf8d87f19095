//! One broker instance in its own process, for the cross-process stampede
//! test: KMS and DynamoDB in moto, Entra at the given authority. Waits until
//! `START_AT_MS` (Unix ms) so that every worker fires at once, sends
//! `REQUESTS` concurrent requests for one profile, and prints the outcomes.
//!
//! Usage: stampede_worker MOTO_URL TABLE KMS_ALIAS ISSUER AUTHORITY REQUESTS START_AT_MS

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws2azure_devstack::moto::sdk_config_for;
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::ProfileName;
use aws2azure_signer::broker::{Broker, BrokerSettings, MinValidity};
use aws2azure_signer::dynamodb::DynamoDbCache;
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::kms::KmsSigner;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [moto, table, alias, issuer, authority, requests, start_at] = args.as_slice() else {
        eprintln!(
            "usage: stampede_worker MOTO_URL TABLE KMS_ALIAS ISSUER AUTHORITY REQUESTS START_AT_MS"
        );
        std::process::exit(2);
    };
    let config = sdk_config_for(moto).await;
    let signer = Arc::new(KmsSigner::new(
        aws_sdk_kms::Client::new(&config),
        alias,
        Arc::new(SystemClock),
    ));
    signer.resolve().await.expect("KMS key resolves");
    let broker = Broker::new(
        aws2azure_tests::rig::profiles(authority),
        BrokerSettings::new(Issuer::parse(issuer).unwrap()),
        signer,
        Arc::new(EntraClient::new(Duration::from_secs(5)).unwrap()),
        Some(Arc::new(DynamoDbCache::new(
            aws_sdk_dynamodb::Client::new(&config),
            table,
        ))),
        Arc::new(SystemClock),
    );
    let start_at: u64 = start_at.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(start_at.saturating_sub(now))).await;

    let n: usize = requests.parse().unwrap();
    let graph = ProfileName::parse("graph").unwrap();
    let results = futures_util::future::join_all(
        (0..n).map(|_| broker.token(&graph, MinValidity::default())),
    )
    .await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut tokens = std::collections::BTreeSet::new();
    for r in results {
        match r {
            Ok(issued) => {
                *outcomes
                    .entry(issued.outcome.as_str().to_string())
                    .or_default() += 1;
                tokens.insert(issued.token.access_token.expose().to_string());
            }
            Err(f) => *outcomes.entry(format!("error: {}", f.error)).or_default() += 1,
        }
    }
    // Digests, not tokens: enough to tell whether the processes agree.
    let digest: Vec<String> = tokens
        .iter()
        .map(|t| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes())))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "outcomes": outcomes, "token_digests": digest })
    );
}
