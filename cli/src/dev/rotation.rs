//! `aws2azure dev --rotate-every SECONDS`: the real rotation state machine
//! against the in-process key store, on a compressed schedule, publishing
//! through the Cloudflare API client to a local Cloudflare API stand-in
//! whose Workers KV is the local edge's, while the broker keeps signing
//! with whatever key is current. A newcomer watches keys move next →
//! current → previous → retired with tokens flowing.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_devstack::Server;
use aws2azure_devstack::cloudflare::{self, CloudflareConfig, CloudflareStandIn};
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_keys::Timings;
use aws2azure_keys::cloudflare::{ApiToken, CloudflareKv, CloudflareSettings};
use aws2azure_keys::memory::{KeyMaterial, MemoryKeyStore};
use aws2azure_keys::public::HttpPublicKeySet;
use aws2azure_keys::rotation::{Report, Rotator};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_signer::signing::LocalKeySigner;

use crate::Error;
use crate::keys::output::action_text;

/// How often the broker's signer re-resolves the current key here (the KMS
/// signer: 300 s).
pub const SIGNER_RESOLVE: Duration = Duration::from_secs(1);
/// The assertion lifetime the dev broker uses while rotating (the least the
/// broker allows), so that K2's retention fits in a short demo.
pub const ASSERTION_LIFETIME_SECS: u64 = aws2azure_shared::assertion::MIN_LIFETIME_SECS;

/// The compressed schedule: a key is current for `every` seconds, warms up
/// for half of it, and stays previous for half of it.
pub fn timings(every: u64) -> Result<Timings, Error> {
    let timings = Timings {
        warm_up: every / 2,
        period: every,
        previous_retention: every / 2,
        assertion_lifetime: ASSERTION_LIFETIME_SECS,
        edge_propagation: 2,
        signer_resolve_interval: SIGNER_RESOLVE.as_secs(),
        ..Timings::default()
    };
    let least = 2 * timings.min_retention();
    if every < least {
        return Err(Error::Usage(format!(
            "--rotate-every {every}: at least {least} seconds, so that the previous key can \
             stay published for an assertion's lifetime ({ASSERTION_LIFETIME_SECS} s) plus \
             the signer's re-resolution and the edge's propagation (K2)"
        )));
    }
    timings.validate()?;
    Ok(timings)
}

pub struct DevRotation {
    pub store: Arc<MemoryKeyStore>,
    rotator: Rotator,
    tick: Duration,
    /// The Cloudflare API stand-in, stopped with the dev stack.
    pub cloudflare: Server,
}

impl DevRotation {
    /// A ring whose current key is `first`, already served by the edge.
    pub async fn new(
        first: LocalKeySigner,
        issuer: &Issuer,
        edge: &EdgeServer,
        every: u64,
    ) -> Result<Self, Error> {
        let timings = timings(every)?;
        // A token for this run only; the stand-in accepts nothing else.
        let token: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(40)
            .collect();
        let config = CloudflareConfig {
            api_token: token.clone(),
            account_id: "dev-account".into(),
            namespace_id: "dev-namespace".into(),
        };
        let stand_in = CloudflareStandIn::with_backend(
            config.clone(),
            Arc::new(edge.kv_backend(aws2azure_keys::cloudflare::DEFAULT_KV_KEY)),
        );
        let cloudflare = stand_in
            .serve(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(Error::dev)?;
        let settings = CloudflareSettings::new(&config.account_id, &config.namespace_id)?
            .with_api_base(&cloudflare::api_base(&cloudflare))?;
        let publisher = CloudflareKv::new(settings, ApiToken::new(&token, "aws2azure dev")?)
            .map_err(aws2azure_keys::Error::from)?;
        let store = Arc::new(MemoryKeyStore::new(KeyMaterial::Generated));
        let clock = Arc::new(SystemClock);
        use aws2azure_shared::clock::Clock as _;
        store.adopt_current(first, clock.now_unix());
        let public =
            HttpPublicKeySet::new(issuer.clone(), Duration::from_secs(5)).map_err(Error::dev)?;
        let rotator = Rotator::new(
            store.clone(),
            Arc::new(publisher),
            Arc::new(public),
            clock,
            timings,
        )?;
        Ok(Self {
            store,
            rotator,
            tick: Duration::from_secs((every / 30).max(1)),
            cloudflare,
        })
    }

    pub fn timings(&self) -> &Timings {
        self.rotator.timings()
    }

    /// Runs `rotate` every tick, narrating each step.
    pub async fn run(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.tick);
        loop {
            interval.tick().await;
            let mut report = Report::default();
            let result = self.rotator.rotate(&mut report).await;
            for action in &report.actions {
                println!("[keys] {}", action_text(action));
            }
            if let Err(e) = result {
                println!("[keys] rotation failed (the next tick retries): {e}");
            }
        }
    }
}

/// A workload that keeps asking for tokens every 2 s, demanding the whole
/// token lifetime so that each request is a fresh exchange (with a token
/// lifetime up to the broker's 3300 s bound), and says how it fares.
pub async fn workload(
    client: crate::token::TokenClient,
    profile: String,
    token_lifetime_secs: u64,
    entra: aws2azure_devstack::entra::EntraStandIn,
) {
    let min_validity = token_lifetime_secs.min(aws2azure_signer::broker::MAX_MIN_VALIDITY_SECS);
    let (mut requests, mut failed) = (0u64, 0u64);
    let mut interval = tokio::time::interval(Duration::from_secs(2));
    loop {
        interval.tick().await;
        requests += 1;
        if let Err(e) = client.token(&profile, min_validity).await {
            failed += 1;
            println!("[tokens] request {requests} FAILED: {e}");
        }
        if requests % 15 == 0 {
            println!(
                "[tokens] {requests} requests, {} Entra exchanges, {failed} failed",
                entra.stats().token_requests
            );
        }
    }
}
