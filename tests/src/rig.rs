//! A whole local federation: an edge serving the issuer's discovery document
//! and key set over HTTP (the edge core natively, or the compiled Worker in
//! workerd), the Entra-compatible endpoint trusting that issuer, and a
//! broker whose signer's key the edge publishes.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential};
use aws2azure_devstack::{Server, loopback};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::JwkSet;
use aws2azure_shared::profile::Profiles;
use aws2azure_signer::broker::{Broker, BrokerSettings};
use aws2azure_signer::cache::SharedCache;
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::signing::AssertionSigner;

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT: &str = "00000000-1111-2222-3333-444444444444";
pub const SUBJECT: &str = "aws2azure:graph";
pub const SCOPE: &str = "https://graph.microsoft.com/.default";

pub struct Federation {
    /// The native edge, when this federation started one (the issuer may
    /// also be a Worker in workerd, see [`Federation::trusting`]).
    pub edge: Option<EdgeServer>,
    /// The issuer the broker signs as.
    pub issuer: Issuer,
    pub entra: EntraStandIn,
    pub entra_server: Server,
}

impl Federation {
    /// Starts the edge (issuer `http://127.0.0.1:PORT`) publishing
    /// `signer`'s key, and Entra trusting `(issuer, SUBJECT)` for CLIENT.
    pub async fn start(signer: &dyn AssertionSigner) -> Self {
        let jwk = signer.public_key().await.expect("signer has a key");
        let keys = JwkSet::new(vec![jwk]).unwrap();
        let edge = EdgeServer::start(loopback(), |addr| format!("http://{addr}"), Some(&keys))
            .await
            .unwrap();
        Self::with_edge(edge).await
    }

    pub async fn with_edge(edge: EdgeServer) -> Self {
        let issuer = edge.issuer().as_str().to_string();
        Self::with_issuer(edge, &issuer).await
    }

    /// Entra trusting `trusted` (which need not be the edge's issuer: a
    /// mismatch is how the issuer-mismatch failure is produced).
    pub async fn with_issuer(edge: EdgeServer, trusted: &str) -> Self {
        let issuer = edge.issuer().clone();
        let mut fed = Self::trusting(issuer, trusted).await;
        fed.edge = Some(edge);
        fed
    }

    /// Entra trusting `trusted`, the broker signing as `issuer`, served by
    /// an edge the caller runs (e.g. the Worker in workerd).
    pub async fn trusting(issuer: Issuer, trusted: &str) -> Self {
        Self::trusting_with(issuer, trusted, |_| {}).await
    }

    /// [`Federation::trusting`] with Entra's behaviour changed by `tune`
    /// (its key cache, token lifetime).
    pub async fn trusting_with(
        issuer: Issuer,
        trusted: &str,
        tune: impl FnOnce(&mut EntraConfig),
    ) -> Self {
        let mut config = EntraConfig::new(vec![FederatedCredential {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            issuer: trusted.into(),
            subject: SUBJECT.into(),
            audience: aws2azure_shared::assertion::AUDIENCE.into(),
        }]);
        tune(&mut config);
        let entra = EntraStandIn::new(config);
        let entra_server = entra.clone().serve(loopback()).await.unwrap();
        Self {
            edge: None,
            issuer,
            entra,
            entra_server,
        }
    }

    pub fn authority(&self) -> String {
        self.entra_server.url()
    }

    pub fn profiles(&self) -> Profiles {
        profiles(&self.authority())
    }

    /// A broker for this federation with fast retries, so fault tests run
    /// in seconds.
    pub fn broker(
        &self,
        signer: Arc<dyn AssertionSigner>,
        shared: Option<Arc<dyn SharedCache>>,
        attempt_timeout: Duration,
    ) -> Broker {
        self.broker_with(signer, shared, attempt_timeout, |_| {})
    }

    /// [`Federation::broker`] with settings changed by `tune`.
    pub fn broker_with(
        &self,
        signer: Arc<dyn AssertionSigner>,
        shared: Option<Arc<dyn SharedCache>>,
        attempt_timeout: Duration,
        tune: impl FnOnce(&mut BrokerSettings),
    ) -> Broker {
        let mut settings = BrokerSettings::new(self.issuer.clone());
        settings.backoff_base = Duration::from_millis(20);
        settings.backoff_max = Duration::from_millis(100);
        settings.exchange_deadline = Duration::from_secs(3);
        tune(&mut settings);
        Broker::new(
            self.profiles(),
            settings,
            signer,
            Arc::new(EntraClient::new(attempt_timeout).unwrap()),
            shared,
            Arc::new(SystemClock),
        )
    }
}

/// Profiles: `graph` (trusted), `wrong-subject` (a subject Entra has no
/// credential for), `unknown-app` (a client id Entra does not know).
pub fn profiles(authority: &str) -> Profiles {
    Profiles::from_json(&format!(
        r#"{{
          "graph": {{"tenant_id": "{TENANT}", "client_id": "{CLIENT}", "scope": "{SCOPE}",
                     "subject": "{SUBJECT}", "authority": "{authority}"}},
          "wrong-subject": {{"tenant_id": "{TENANT}", "client_id": "{CLIENT}", "scope": "{SCOPE}",
                     "subject": "aws2azure:Graph", "authority": "{authority}"}},
          "unknown-app": {{"tenant_id": "{TENANT}", "client_id": "99999999-1111-2222-3333-444444444444",
                     "scope": "{SCOPE}", "subject": "{SUBJECT}", "authority": "{authority}"}}
        }}"#
    ))
    .unwrap()
}
