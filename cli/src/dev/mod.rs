//! `aws2azure dev`: the whole federation loop on loopback, nothing to
//! configure. The edge core serves the issuer; the broker signs with a key
//! generated for this run; the Entra-compatible endpoint trusts the local
//! issuer and really validates; a gateway verifies SigV4 like API Gateway.
//! It then fetches one token itself and narrates each step, never printing a
//! token or an assertion whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential, issued_claims};
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_identity::protocol::{API_VERSION, IDENTITY_HEADER};
use aws2azure_identity::{Endpoint, EndpointSettings, ResourceMap};
use aws2azure_shared::assertion::{AUDIENCE, AssertionClaims, ClientAssertion};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use aws2azure_shared::profile::{Profile, ProfileConfig, Profiles};
use aws2azure_signer::api::handle;
use aws2azure_signer::broker::{Broker, BrokerSettings};
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use tokio::sync::mpsc;

use crate::Error;
use crate::token::TokenClient;

mod rotation;

pub const STAGE: &str = "dev";
pub const DEFAULT_PROFILE: &str = "graph";

pub struct DevOptions {
    pub edge: SocketAddr,
    pub gateway: SocketAddr,
    pub entra: SocketAddr,
    /// Address of the credential endpoint for Azure SDKs.
    pub identity: SocketAddr,
    pub region: String,
    /// Profiles from a configuration file; `None`: the default profile.
    pub profiles: Option<Profiles>,
    /// `expires_in` of the stand-in's tokens (Entra's: 3599). Shorter makes
    /// refreshes and cache misses happen within minutes.
    pub token_lifetime_secs: u64,
    /// Stop after the demonstration instead of serving until interrupted.
    pub once: bool,
    /// Rotate the signing key on this period (seconds), with the real state
    /// machine against the in-process key store, while a workload keeps
    /// requesting tokens.
    pub rotate_every: Option<u64>,
}

/// The embedded default profile: obviously local values that pass every
/// validation rule.
pub fn default_profiles() -> Profiles {
    let mut raw = std::collections::BTreeMap::new();
    raw.insert(
        DEFAULT_PROFILE.to_string(),
        ProfileConfig {
            tenant_id: "11111111-2222-3333-4444-555555555555".into(),
            client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            scope: "https://graph.microsoft.com/.default".into(),
            subject: "aws2azure:dev:graph".into(),
            authority: None,
            allowed_principals: None,
        },
    );
    Profiles::from_configs(raw).expect("the default profile is valid")
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

/// The first characters of a credential, enough to recognise its kind.
pub fn redacted(secret: &str) -> String {
    format!(
        "{}… (redacted, {} bytes)",
        &secret[..secret.len().min(12)],
        secret.len()
    )
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

/// Runs the loop; returns when interrupted (or after the demo with `once`).
pub async fn run(options: DevOptions) -> Result<(), Error> {
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
            let rotation = rotation::DevRotation::new(signer, &issuer, &edge, every).await?;
            (
                Arc::new(rotation.store.signer(rotation::SIGNER_RESOLVE)),
                Some(rotation),
            )
        }
        None => (Arc::new(signer), None),
    };
    let (minted_tx, mut minted) = mpsc::unbounded_channel();
    let signer: Arc<dyn AssertionSigner> = Arc::new(Narrated {
        inner,
        minted: minted_tx,
    });

    let configured = options.profiles.unwrap_or_else(default_profiles);
    let credentials: Vec<FederatedCredential> = configured
        .iter()
        .map(|p| FederatedCredential {
            tenant_id: p.tenant_id.to_string(),
            client_id: p.client_id.to_string(),
            issuer: issuer.to_string(),
            subject: p.subject.to_string(),
            audience: AUDIENCE.into(),
        })
        .collect();
    let mut entra_config = EntraConfig {
        token_lifetime_secs: options.token_lifetime_secs,
        ..EntraConfig::new(credentials)
    };
    if let Some(rotation) = &rotation {
        // A relying party that keeps the key set for the whole warm-up: K1
        // is what makes that safe.
        entra_config.key_cache_ttl = Duration::from_secs(rotation.timings().warm_up);
        entra_config.refetch_unknown_kid = false;
    }
    let entra = EntraStandIn::new(entra_config);
    let entra_server = entra
        .clone()
        .serve(options.entra)
        .await
        .map_err(Error::dev)?;
    // Every profile talks to the local stand-in: dev never calls real Entra.
    let profiles = local_profiles(&configured, &entra_server.url())?;

    let broker = Broker::new(
        profiles.clone(),
        BrokerSettings {
            assertion_lifetime_secs: if rotation.is_some() {
                rotation::ASSERTION_LIFETIME_SECS
            } else {
                BrokerSettings::new(issuer.clone()).assertion_lifetime_secs
            },
            ..BrokerSettings::new(issuer.clone())
        },
        signer,
        Arc::new(EntraClient::new(Duration::from_secs(5)).map_err(Error::dev)?),
        None,
        Arc::new(SystemClock),
    );
    let principal = local_principal();
    let function_broker = broker.clone();
    let function: gateway::Function = Arc::new(move |request| {
        let broker = function_broker.clone();
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
    });
    let gateway_server = gateway::serve(
        options.gateway,
        &options.region,
        STAGE,
        vec![principal.clone()],
        function,
    )
    .await
    .map_err(Error::dev)?;
    let endpoint = format!("{}/{STAGE}", gateway_server.url());

    let first = profiles.iter().next().expect("at least one profile");
    println!("aws2azure dev: the whole federation loop on loopback, no cloud account.\n");
    println!("  edge (issuer)     {issuer}");
    println!("                    discovery {}", issuer.discovery_url());
    println!(
        "  token API         {endpoint}   (SigV4-verifying gateway, region {})",
        options.region
    );
    println!(
        "  Entra stand-in    {}   (trusts the issuer above; validates like Entra; tokens live {} s)",
        entra_server.url(),
        options.token_lifetime_secs
    );
    println!(
        "  signing key       RSA {} bits, kid {} (generated for this run, in memory only)",
        jwk.bits(),
        jwk.kid()
    );
    for p in profiles.iter() {
        println!(
            "  profile           {}: scope {}, subject {}",
            p.name, p.scope, p.subject
        );
    }
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
        client.clone(),
    )
    .await?;
    println!(
        "  identity endpoint {}   (Azure SDKs' managed identity protocol; resources {})",
        identity.identity_endpoint(),
        identity.resources().served()
    );
    println!(
        "\nLocal credentials of {} (only this gateway accepts them), and the credential endpoint's\nvariables, which Azure SDKs read by themselves:\n",
        principal.arn
    );
    println!("export AWS_ACCESS_KEY_ID={}", principal.access_key_id);
    println!(
        "export AWS_SECRET_ACCESS_KEY={}",
        principal.secret_access_key
    );
    println!(
        "export AWS_SESSION_TOKEN={}",
        principal.session_token.as_deref().unwrap_or_default()
    );
    println!("export AWS_REGION={}", options.region);
    println!("{}", crate::serve::exports(&identity));
    println!("\nFetching one token through the whole loop, as a workload would:");

    let started = Instant::now();
    let token = client.token(first.name.as_str(), 0).await?;
    let first_ms = started.elapsed().as_millis();
    if let Ok((claims, prefix)) = minted.try_recv() {
        println!(
            "  1. assertion minted   iss={} sub={} aud={} lifetime={} s jti={}\n                        {prefix}",
            claims.iss,
            claims.sub,
            claims.aud,
            claims.exp - claims.iat,
            claims.jti
        );
    }
    let stats = entra.stats();
    println!(
        "  2. discovery fetched  the Entra stand-in read {} and the key set over HTTP ({} + {} requests) and validated issuer, subject, audience, kid and signature",
        issuer.discovery_url(),
        stats.discovery_fetches,
        stats.jwks_fetches
    );
    let aud = issued_claims(&token.access_token)
        .and_then(|c| c["aud"].as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "  3. token issued       {} for {aud}, expires in {} s, {} ms end to end\n                        {}",
        token.token_type,
        token.expires_in,
        first_ms,
        redacted(&token.access_token)
    );
    let started = Instant::now();
    let again = client.token(first.name.as_str(), 0).await?;
    let calls = entra.stats().token_requests;
    println!(
        "  4. second call        {} in {} ms (Entra calls so far: {calls})",
        if again.access_token == token.access_token && calls == 1 {
            "served from the cache"
        } else {
            "fetched again"
        },
        started.elapsed().as_millis()
    );
    let resource = first.scope.resource();
    let started = Instant::now();
    let sdk_view = sdk_request(&identity, resource).await;
    println!(
        "  5. as an Azure SDK    GET {}?api-version=2019-08-01&resource={resource}: {sdk_view} in {} ms (Entra calls so far: {})",
        identity.identity_endpoint(),
        started.elapsed().as_millis(),
        entra.stats().token_requests
    );
    println!("\nTry it from another terminal, after the exports above:");
    println!(
        "  cargo run -q -p aws2azure-cli -- token {} --endpoint {endpoint}",
        first.name
    );
    println!(
        "  awscurl --service execute-api --region {} {endpoint}/token/{}",
        options.region, first.name
    );
    println!("  cargo run -q -p aws2azure-cli -- doctor {issuer} --allow-http");
    println!(
        "  curl -s -H \"X-IDENTITY-HEADER: $IDENTITY_HEADER\" \"$IDENTITY_ENDPOINT?api-version=2019-08-01&resource={resource}\""
    );
    println!("  Any Azure SDK program, unchanged; in Python (pip install azure-identity):");
    println!(
        "  python3 -c 'from azure.identity import DefaultAzureCredential as C; t = C().get_token(\"{}\"); print(\"token expires at\", t.expires_on)'",
        first.scope
    );

    if let Some(rotation) = rotation.filter(|_| !options.once) {
        let t = *rotation.timings();
        println!(
            "\nRotating the signing key every {} s (warm-up {} s, previous kept {} s; in production 90 days, 24 h, 24 h).\n\
             The Entra stand-in keeps key sets for {} s and does not refetch on an unknown kid, the worst case.\n\
             A workload asks for a fresh token every 2 s; [keys] lines are rotation steps.",
            t.period, t.warm_up, t.previous_retention, t.warm_up
        );
        println!(
            "Keys are published through the Cloudflare API client to a local stand-in at {}.",
            rotation.cloudflare.url()
        );
        tokio::spawn(Arc::new(rotation).run());
        tokio::spawn(rotation::workload(
            client,
            first.name.to_string(),
            options.token_lifetime_secs,
            entra.clone(),
        ));
    }
    if options.once {
        println!("\nDone (--once).");
    } else {
        let interrupted = crate::signal::interrupted();
        println!("\nRunning; press Ctrl-C to stop.");
        interrupted.await;
        println!("\nStopping.");
    }
    let _ = identity.shutdown().await;
    gateway_server.stop().await;
    entra_server.stop().await;
    edge.stop().await;
    Ok(())
}

/// Asks the credential endpoint for a token as an SDK does, and says how it
/// answered (never the token).
async fn sdk_request(identity: &Endpoint, resource: &str) -> String {
    let url = reqwest::Url::parse_with_params(
        &identity.identity_endpoint(),
        [("api-version", API_VERSION), ("resource", resource)],
    );
    let Ok(url) = url else {
        return "failed (no URL)".into();
    };
    let answer = reqwest::Client::new()
        .get(url)
        .header(IDENTITY_HEADER, identity.identity_header())
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(e) => return format!("failed ({})", e.without_url()),
    };
    let status = response.status();
    match response.json::<serde_json::Value>().await {
        Ok(body) if status.is_success() => format!(
            "200, {} token for client_id {}, expires_on {}",
            body["token_type"].as_str().unwrap_or("?"),
            body["client_id"].as_str().unwrap_or("?"),
            body["expires_on"].as_str().unwrap_or("?")
        ),
        Ok(body) => format!(
            "{status}: {}",
            body["error_description"].as_str().unwrap_or("?")
        ),
        Err(e) => format!("{status}, unreadable answer ({e})"),
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
