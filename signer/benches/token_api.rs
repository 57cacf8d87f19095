//! Latency of the token API in process, as a rerunnable benchmark:
//!
//!   cargo bench -p aws2azure-signer --bench token_api
//!
//! - warm cache hit: the whole handler (API Gateway REST event → JSON
//!   response, audit record included) when the token is in memory;
//! - cache-miss overhead: the same with an empty cache, with signer and
//!   exchange stubs that answer at once, so what is measured is the broker's
//!   own work around the upstream calls (assertion claims, single flight,
//!   cache writes, response), not KMS or Entra.
//!
//! Goals (issue 4): hit p99 ≤ 1 ms, miss overhead ≤ 2 ms. Prints p50, p99,
//! max in microseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws2azure_shared::assertion::{AssertionClaims, ClientAssertion, JwsHeader, SigningInput};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::Jwk;
use aws2azure_shared::profile::Profiles;
use aws2azure_signer::Error;
use aws2azure_signer::api::handle;
use aws2azure_signer::broker::{Broker, BrokerSettings, CacheOutcome};
use aws2azure_signer::entra::{ExchangeRequest, IssuedToken, TokenExchange};
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_signer::token::AccessToken;

const EVENT: &str = include_str!("../tests/fixtures/rest-iam-user.json");
const PROFILES: &str = r#"{"graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "00000000-1111-2222-3333-444444444444",
    "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"}}"#;

/// Signs nothing: returns a fixed signature over the real signing input.
struct InstantSigner(Jwk);

#[async_trait]
impl AssertionSigner for InstantSigner {
    async fn public_key(&self) -> Result<Jwk, Error> {
        Ok(self.0.clone())
    }
    async fn sign_assertion(&self, claims: &AssertionClaims) -> Result<ClientAssertion, Error> {
        let input = SigningInput::new(&JwsHeader::rs256(self.0.kid().clone()), claims)?;
        Ok(input.into_assertion(&[0u8; 256]))
    }
}

struct InstantEntra;

#[async_trait]
impl TokenExchange for InstantEntra {
    async fn exchange(&self, _: &ExchangeRequest<'_>) -> Result<IssuedToken, Error> {
        Ok(IssuedToken {
            access_token: AccessToken::new(
                "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJiZW5jaCJ9.c2ln".repeat(20),
            ),
            token_type: "Bearer".into(),
            expires_in: 3599,
            refresh_in: None,
        })
    }
}

fn broker(jwk: &Jwk) -> Broker {
    Broker::new(
        Profiles::from_json(PROFILES).unwrap(),
        BrokerSettings::new(Issuer::parse("https://issuer.example.com").unwrap()),
        Arc::new(InstantSigner(jwk.clone())),
        Arc::new(InstantEntra),
        None,
        Arc::new(SystemClock),
    )
}

fn report(name: &str, mut samples: Vec<Duration>, goal_us: u128) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_micros();
    let p99 = at(0.99);
    println!(
        "{name:<28} n={:<6} p50={:>5} us  p99={:>5} us  max={:>6} us  goal p99<={goal_us} us: {}",
        samples.len(),
        at(0.50),
        p99,
        samples.last().unwrap().as_micros(),
        if p99 <= goal_us { "met" } else { "NOT met" }
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jwk = LocalKeySigner::generate().unwrap().jwk().clone();
    const N: usize = 20_000;

    // Warm cache hit through the whole handler.
    let warm = broker(&jwk);
    let requests: Vec<_> = (0..N + 1)
        .map(|_| lambda_http::request::from_str(EVENT).unwrap())
        .collect();
    let mut samples = Vec::with_capacity(N);
    runtime.block_on(async {
        let mut requests = requests.into_iter();
        let (first, _) = handle(&warm, &requests.next().unwrap()).await;
        assert_eq!(first.status(), 200);
        for req in requests {
            let t = Instant::now();
            let (response, audit) = handle(&warm, &req).await;
            samples.push(t.elapsed());
            assert_eq!(audit.cache, Some(CacheOutcome::Hit));
            std::hint::black_box(response);
        }
    });
    report("handler, warm cache hit", samples, 1_000);

    // Cache miss: a fresh broker per request, upstream answering at once.
    let brokers: Vec<_> = (0..N / 4).map(|_| broker(&jwk)).collect();
    let requests: Vec<_> = (0..N / 4)
        .map(|_| lambda_http::request::from_str(EVENT).unwrap())
        .collect();
    let mut samples = Vec::with_capacity(N / 4);
    runtime.block_on(async {
        for (b, req) in brokers.iter().zip(&requests) {
            let t = Instant::now();
            let (response, audit) = handle(b, req).await;
            samples.push(t.elapsed());
            assert_eq!(audit.cache, Some(CacheOutcome::Miss));
            std::hint::black_box(response);
        }
    });
    report("handler, miss overhead", samples, 2_000);
}
