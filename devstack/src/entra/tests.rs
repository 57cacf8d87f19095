//! The stand-in's key cache against a real edge over sockets: with
//! `refetch_unknown_kid` on, a rotated-in key is picked up at once; off, it
//! is refused until the cached key set expires.

use std::time::Duration;

use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use aws2azure_shared::assertion::{AssertionBuilder, JWT_BEARER, JwsHeader, SigningInput};
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use aws2azure_shared::profile::Subject;
use serde_json::Value;

use super::*;
use crate::edge_server::EdgeServer;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "00000000-1111-2222-3333-444444444444";
const SUBJECT: &str = "aws2azure:test";

struct Key {
    pair: KeyPair,
    jwk: Jwk,
}

impl Key {
    fn generate() -> Self {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let jwk = Jwk::from_pkcs1_der(pair.public_key().as_ref()).unwrap();
        Self { pair, jwk }
    }

    fn assertion(&self, issuer: &Issuer) -> String {
        let subject = Subject::parse(SUBJECT).unwrap();
        let claims = AssertionBuilder::new(issuer, &subject)
            .build(now_unix(), &uuid::Uuid::new_v4().to_string())
            .unwrap();
        let input = SigningInput::new(&JwsHeader::rs256(self.jwk.kid().clone()), &claims).unwrap();
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        input.into_assertion(&signature).expose().to_string()
    }
}

struct Rig {
    edge: EdgeServer,
    entra: EntraStandIn,
    server: Server,
    http: reqwest::Client,
    old: Key,
    new: Key,
}

impl Rig {
    async fn start(refetch_unknown_kid: bool, key_cache_ttl: Duration) -> Self {
        let (old, new) = (Key::generate(), Key::generate());
        let edge = EdgeServer::start(
            crate::loopback(),
            |a| format!("http://{a}"),
            Some(&JwkSet::new(vec![old.jwk.clone()]).unwrap()),
        )
        .await
        .unwrap();
        let entra = EntraStandIn::new(EntraConfig {
            key_cache_ttl,
            refetch_unknown_kid,
            ..EntraConfig::new(vec![FederatedCredential {
                tenant_id: TENANT.into(),
                client_id: CLIENT.into(),
                issuer: edge.issuer().as_str().to_string(),
                subject: SUBJECT.into(),
                audience: AUDIENCE.into(),
            }])
        });
        let server = entra.clone().serve(crate::loopback()).await.unwrap();
        Self {
            edge,
            entra,
            server,
            http: reqwest::Client::new(),
            old,
            new,
        }
    }

    /// The edge now publishes both keys, as after `keys stage`.
    fn stage_new_key(&self) {
        let both = JwkSet::new(vec![self.old.jwk.clone(), self.new.jwk.clone()]).unwrap();
        self.edge.set_keys(Some(&both));
    }

    async fn exchange(&self, key: &Key) -> (u16, Value) {
        let assertion = key.assertion(self.edge.issuer());
        let response = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.server.url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("scope", "api://resource/.default"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn stop(self) {
        self.server.stop().await;
        self.edge.stop().await;
    }
}

#[tokio::test]
async fn an_unknown_kid_is_fetched_again_by_default() {
    assert!(EntraConfig::new(vec![]).refetch_unknown_kid);
    let rig = Rig::start(true, Duration::from_secs(300)).await;
    assert_eq!(rig.exchange(&rig.old).await.0, 200);
    assert_eq!(rig.entra.stats().jwks_fetches, 1);

    rig.stage_new_key();
    let (status, body) = rig.exchange(&rig.new).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rig.entra.stats().jwks_fetches, 2, "one refetch");
    assert_eq!(rig.exchange(&rig.new).await.0, 200);
    assert_eq!(rig.entra.stats().jwks_fetches, 2, "then the cache");
    rig.stop().await;
}

#[tokio::test]
async fn without_refetch_an_unknown_kid_is_refused_until_the_cache_expires() {
    let ttl = Duration::from_millis(1500);
    let rig = Rig::start(false, ttl).await;
    // The key set is cached between these two instants.
    let before = std::time::Instant::now();
    assert_eq!(rig.exchange(&rig.old).await.0, 200);
    let after = std::time::Instant::now();

    rig.stage_new_key();
    for _ in 0..2 {
        let (status, body) = rig.exchange(&rig.new).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_codes"][0], 700027);
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.contains(&format!("No key with kid '{}'", rig.new.jwk.kid().as_str())),
            "{description}"
        );
    }
    assert!(
        before.elapsed() < ttl,
        "the refusals must fall inside the TTL for this test to mean anything"
    );
    assert_eq!(
        rig.entra.stats().jwks_fetches,
        1,
        "no refetch inside the TTL"
    );
    assert_eq!(rig.entra.stats().refused.get(&700027), Some(&2));
    assert_eq!(
        rig.exchange(&rig.old).await.0,
        200,
        "the cached key still works"
    );

    tokio::time::sleep(ttl.saturating_sub(after.elapsed()) + Duration::from_millis(50)).await;
    let (status, body) = rig.exchange(&rig.new).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rig.entra.stats().jwks_fetches,
        2,
        "fetched once the TTL ran out"
    );
    rig.stop().await;
}
