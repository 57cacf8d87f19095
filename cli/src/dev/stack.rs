//! The wiring of `aws2azure dev`: every local part started and connected,
//! nothing printed but the gateway's one line per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws2azure_devstack::Server;
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential};
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_devstack::sts::{StsConfig, StsStandIn};
use aws2azure_identity::{Endpoint, EndpointSettings, ResourceMap};
use aws2azure_shared::assertion::{AUDIENCE, AssertionClaims, ClientAssertion};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use aws2azure_shared::profile::{AssertionSource, Profile, ProfileConfig, Profiles};
use aws2azure_signer::api::handle;
use aws2azure_signer::broker::{Assertions, Broker, BrokerSettings};
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_signer::sts::{DEFAULT_DURATION_SECS, StsWebIdentity, WebIdentitySource};
use tokio::sync::mpsc;

use super::rotation::{self, DevRotation};
use super::{DevOptions, STAGE, default_profiles, redacted};
use crate::Error;
use crate::token::TokenClient;

/// Everything `dev` runs, connected: the edge (issuer), the Entra stand-in
/// that trusts it, the broker behind a SigV4 gateway, a token client with
/// the gateway's local credentials, and the credential endpoint in front.
pub(super) struct DevStack {
    pub issuer: Issuer,
    /// The signing key generated for this run.
    pub jwk: Jwk,
    /// The profiles served, each pointed at the Entra stand-in.
    pub profiles: Profiles,
    /// The local credentials the gateway accepts.
    pub principal: Principal,
    /// The token API's base URL (the gateway's stage).
    pub endpoint: String,
    pub client: TokenClient,
    pub entra: EntraStandIn,
    pub entra_url: String,
    /// What the broker signed: the claims and a redacted assertion.
    pub minted: mpsc::UnboundedReceiver<(AssertionClaims, String)>,
    pub rotation: Option<DevRotation>,
    pub identity: Endpoint,
    /// The STS stand-in, when a profile has `assertion = "sts"`.
    pub sts: Option<StsStandIn>,
    edge: EdgeServer,
    sts_server: Option<Server>,
    entra_server: Server,
    gateway_server: Server,
}

impl DevStack {
    pub async fn start(options: &DevOptions) -> Result<Self, Error> {
        let signer = LocalKeySigner::generate().map_err(Error::dev)?;
        let jwk = signer.jwk().clone();
        let keys = JwkSet::new(vec![jwk.clone()]).map_err(Error::dev)?;
        let edge = EdgeServer::start(options.edge, |a| format!("http://{a}"), Some(&keys))
            .await
            .map_err(Error::dev)?;
        let issuer = edge.issuer().clone();

        // With rotation, the broker signs with whatever key the ring's current
        // alias names, re-resolved like the KMS signer does.
        let (inner, rotation): (Arc<dyn AssertionSigner>, _) = match options.rotate_every {
            Some(every) => {
                let rotation = DevRotation::new(signer, &issuer, &edge, every).await?;
                (
                    Arc::new(rotation.store.signer(rotation::SIGNER_RESOLVE)),
                    Some(rotation),
                )
            }
            None => (Arc::new(signer), None),
        };
        let (minted_tx, minted) = mpsc::unbounded_channel();
        let signer: Arc<dyn AssertionSigner> = Arc::new(Narrated {
            inner,
            minted: minted_tx,
        });

        let configured = options.profiles.clone().unwrap_or_else(default_profiles);
        let principal = local_principal();
        let (sts, sts_server, web_identity) = start_sts(&configured, &principal, options).await?;
        let entra = EntraStandIn::new(entra_config(
            &configured,
            &issuer,
            sts.as_ref().map(|s| s.issuer()),
            options.token_lifetime_secs,
            rotation.as_ref(),
        ));
        let entra_server = entra
            .clone()
            .serve(options.entra)
            .await
            .map_err(Error::dev)?;
        let entra_url = entra_server.url();
        // Every profile talks to the local stand-in: dev never calls real Entra.
        let profiles = local_profiles(&configured, &entra_url)?;

        let broker = Broker::with_assertions(
            profiles.clone(),
            BrokerSettings {
                assertion_lifetime_secs: if rotation.is_some() {
                    rotation::ASSERTION_LIFETIME_SECS
                } else {
                    BrokerSettings::new(issuer.clone()).assertion_lifetime_secs
                },
                ..BrokerSettings::new(issuer.clone())
            },
            Assertions {
                key: Some(signer),
                sts: web_identity,
            },
            Arc::new(EntraClient::new(Duration::from_secs(5)).map_err(Error::dev)?),
            None,
            Arc::new(SystemClock),
        )
        .map_err(Error::dev)?;
        let gateway_server = gateway::serve(
            options.gateway,
            &options.region,
            STAGE,
            vec![principal.clone()],
            token_api(broker),
        )
        .await
        .map_err(Error::dev)?;
        let endpoint = format!("{}/{STAGE}", gateway_server.url());

        let client = TokenClient::new(
            &endpoint,
            &options.region,
            SharedCredentialsProvider::new(Credentials::new(
                &principal.access_key_id,
                &principal.secret_access_key,
                principal.session_token.clone(),
                None,
                "aws2azure-dev",
            )),
        )?;
        // The credential endpoint, in front of the token API like `aws2azure
        // serve`, with the same local credentials.
        let identity = crate::serve::start(
            EndpointSettings::loopback(options.identity, crate::serve::header_from_env()?),
            ResourceMap::new(&configured, &BTreeMap::new())?,
            Arc::new(client.clone()),
        )
        .await?;
        Ok(Self {
            issuer,
            jwk,
            profiles,
            principal,
            endpoint,
            client,
            entra,
            entra_url,
            minted,
            rotation,
            identity,
            sts,
            edge,
            sts_server,
            entra_server,
            gateway_server,
        })
    }

    /// The first profile: the one the demonstration uses.
    pub fn first_profile(&self) -> &Profile {
        self.profiles.iter().next().expect("at least one profile")
    }

    /// Rotates the signing key in the background while a workload keeps
    /// asking for tokens.
    pub fn keep_rotating(&self, rotation: DevRotation, token_lifetime_secs: u64) {
        tokio::spawn(Arc::new(rotation).run());
        tokio::spawn(rotation::workload(
            self.client.clone(),
            self.first_profile().name.to_string(),
            token_lifetime_secs,
            self.entra.clone(),
        ));
    }

    pub async fn stop(self) {
        let _ = self.identity.shutdown().await;
        self.gateway_server.stop().await;
        self.entra_server.stop().await;
        if let Some(server) = self.sts_server {
            server.stop().await;
        }
        self.edge.stop().await;
    }
}

/// The STS stand-in and the broker's client of it, when a profile's
/// assertions come from STS: the dev credentials act as the broker's role,
/// and each profile's `role_arn` may be assumed.
async fn start_sts(
    configured: &Profiles,
    principal: &Principal,
    options: &DevOptions,
) -> Result<
    (
        Option<StsStandIn>,
        Option<Server>,
        Option<Arc<dyn WebIdentitySource>>,
    ),
    Error,
> {
    let sts_profiles: Vec<&Profile> = configured
        .iter()
        .filter(|p| p.assertion == AssertionSource::Sts)
        .collect();
    if sts_profiles.is_empty() {
        return Ok((None, None, None));
    }
    let roles: Vec<_> = sts_profiles
        .iter()
        .filter_map(|p| p.role_arn.clone())
        .collect();
    let (sts, server) = StsStandIn::serve(
        StsConfig {
            region: options.region.clone(),
            principals: vec![principal.clone()],
            assumable_roles: roles.iter().map(ToString::to_string).collect(),
        },
        options.sts,
    )
    .await
    .map_err(Error::dev)?;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(options.region.clone()))
        .endpoint_url(sts.issuer())
        .credentials_provider(Credentials::new(
            &principal.access_key_id,
            &principal.secret_access_key,
            principal.session_token.clone(),
            None,
            "aws2azure-dev",
        ))
        .load()
        .await;
    let web_identity = StsWebIdentity::new(&aws, roles, DEFAULT_DURATION_SECS).await;
    Ok((Some(sts), Some(server), Some(Arc::new(web_identity))))
}

/// The stand-in's configuration: one federated credential per profile,
/// trusting the local issuer, or the STS stand-in's for `sts` profiles.
fn entra_config(
    configured: &Profiles,
    issuer: &Issuer,
    sts_issuer: Option<&str>,
    token_lifetime_secs: u64,
    rotation: Option<&DevRotation>,
) -> EntraConfig {
    let credentials: Vec<FederatedCredential> = configured
        .iter()
        .map(|p| FederatedCredential {
            tenant_id: p.tenant_id.to_string(),
            client_id: p.client_id.to_string(),
            issuer: match (p.assertion, sts_issuer) {
                (AssertionSource::Sts, Some(sts)) => sts.to_string(),
                _ => issuer.to_string(),
            },
            subject: p.subject.to_string(),
            audience: AUDIENCE.into(),
        })
        .collect();
    let mut entra_config = EntraConfig {
        token_lifetime_secs,
        ..EntraConfig::new(credentials)
    };
    if let Some(rotation) = rotation {
        // A relying party that keeps the key set for the whole warm-up: K1
        // is what makes that safe.
        entra_config.key_cache_ttl = Duration::from_secs(rotation.timings().warm_up);
        entra_config.refetch_unknown_kid = false;
    }
    entra_config
}

/// The broker's token API as the gateway's function, logging one line per
/// request on stderr.
fn token_api(broker: Broker) -> gateway::Function {
    Arc::new(move |request| {
        let broker = broker.clone();
        Box::pin(async move {
            let (response, audit) = handle(&broker, &request).await;
            eprintln!(
                "[dev] GET /token/{} by {} -> {}{} in {} ms",
                audit.profile,
                audit.caller.as_ref().map(|c| c.arn.as_str()).unwrap_or("?"),
                audit.status,
                audit
                    .cache
                    .map(|c| format!(" ({c})"))
                    .or(audit.error.map(|e| format!(" ({e})")))
                    .unwrap_or_default(),
                audit.duration_ms
            );
            response
        })
    })
}

/// Wraps the signer to tell the console what it signed (claims only).
struct Narrated {
    inner: Arc<dyn AssertionSigner>,
    minted: mpsc::UnboundedSender<(AssertionClaims, String)>,
}

#[async_trait]
impl AssertionSigner for Narrated {
    async fn public_key(&self) -> Result<Jwk, aws2azure_signer::Error> {
        self.inner.public_key().await
    }
    async fn sign_assertion(
        &self,
        claims: &AssertionClaims,
    ) -> Result<ClientAssertion, aws2azure_signer::Error> {
        let assertion = self.inner.sign_assertion(claims).await?;
        let _ = self
            .minted
            .send((claims.clone(), redacted(assertion.expose())));
        Ok(assertion)
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[fastrand::usize(..alphabet.len())] as char)
        .collect()
}

/// Local temporary credentials for an assumed role, accepted by this
/// gateway only.
fn local_principal() -> Principal {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    Principal {
        access_key_id: format!("ASIA{}", random_string(UPPER, 16)),
        secret_access_key: random_string(B64, 40),
        session_token: Some(format!("IQoJb3JpZ2luX2Vj{}", random_string(B64, 120))),
        arn: "arn:aws:sts::000000000000:assumed-role/aws2azure-dev/dev-session".into(),
        caller: format!("AROA{}:dev-session", random_string(UPPER, 17)),
        account_id: "000000000000".into(),
    }
}

fn local_profiles(configured: &Profiles, authority: &str) -> Result<Profiles, Error> {
    let raw = configured
        .iter()
        .map(|p: &Profile| {
            (
                p.name.to_string(),
                ProfileConfig {
                    authority: Some(authority.to_string()),
                    ..ProfileConfig::from(p)
                },
            )
        })
        .collect();
    Profiles::from_configs(raw).map_err(Error::dev)
}
