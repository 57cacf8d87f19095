//! What the KMS key store's integration tests share: moto, a unique ring
//! per test, reading the ring's aliases straight from KMS, and a fake edge
//! (publisher and public key set in one).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_kms::config::retry::RetryConfig;
use aws2azure_devstack::fault_proxy::FaultProxy;
use aws2azure_devstack::loopback;
use aws2azure_devstack::moto::{MotoServer, sdk_config_for};
use aws2azure_keys::cloudflare::PublishError;
use aws2azure_keys::document::KeyDocument;
use aws2azure_keys::public::{PublicError, PublicKeySet};
use aws2azure_keys::publish::Publisher;
use aws2azure_shared::assertion::AssertionBuilder;
use aws2azure_shared::clock::Clock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use aws2azure_shared::profile::Subject;
use aws2azure_signer::kms::KmsSigner;
use aws2azure_signer::signing::AssertionSigner;
use base64::Engine as _;

pub const T0: u64 = 1_700_000_000;

pub async fn kms() -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&MotoServer::shared().sdk_config().await)
}

/// A KMS client through a fault proxy in front of moto. Without `retries`,
/// an injected throttling or 5xx reaches the caller as it is; errors the
/// SDK never retries (`AccessDeniedException`) reach it either way.
pub async fn proxied_kms(
    retries: bool,
) -> (FaultProxy, aws2azure_devstack::Server, aws_sdk_kms::Client) {
    let proxy = FaultProxy::new(MotoServer::shared().endpoint());
    let server = proxy.clone().serve(loopback()).await.unwrap();
    let config = sdk_config_for(&server.url()).await;
    let mut builder = aws_sdk_kms::config::Builder::from(&config);
    if !retries {
        builder = builder.retry_config(RetryConfig::disabled());
    }
    (
        proxy,
        server,
        aws_sdk_kms::Client::from_conf(builder.build()),
    )
}

/// Every key id of the account in moto (all tests of the binary share it).
pub async fn all_key_ids(kms: &aws_sdk_kms::Client) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut marker = None;
    loop {
        let page = kms
            .list_keys()
            .limit(1000)
            .set_marker(marker.take())
            .send()
            .await
            .unwrap();
        out.extend(
            page.keys()
                .iter()
                .filter_map(|k| k.key_id())
                .map(String::from),
        );
        match page.next_marker() {
            Some(next) if page.truncated() => marker = Some(next.to_string()),
            _ => return out,
        }
    }
}

/// The keys among `candidates` that `KmsKeyStore::create_key` made for
/// `ring`, found by their description: for keys that never joined the ring
/// and so have no alias to find them by.
pub async fn created_for_ring(
    kms: &aws_sdk_kms::Client,
    ring: &str,
    candidates: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let description = format!("aws2azure client assertion signing key (RS256), ring {ring}");
    let mut out = vec![];
    for id in candidates {
        let described = kms.describe_key().key_id(&id).send().await.unwrap();
        if described.key_metadata().and_then(|m| m.description()) == Some(description.as_str()) {
            out.push(id);
        }
    }
    out
}

/// The key's tags: key → value.
pub async fn tags_of(kms: &aws_sdk_kms::Client, key_id: &str) -> BTreeMap<String, String> {
    let out = kms
        .list_resource_tags()
        .key_id(key_id)
        .send()
        .await
        .unwrap();
    assert!(!out.truncated(), "more tags than one page");
    out.tags()
        .iter()
        .map(|t| (t.tag_key().to_string(), t.tag_value().to_string()))
        .collect()
}

/// A ring name no other test (or earlier run against the same moto) uses.
pub fn unique_ring(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The ring's aliases as KMS lists them: name without `alias/{ring}-` →
/// target key id.
pub async fn aliases(kms: &aws_sdk_kms::Client, ring: &str) -> BTreeMap<String, String> {
    let prefix = format!("alias/{ring}-");
    let listed = kms.list_aliases().limit(100).send().await.unwrap();
    assert!(!listed.truncated(), "more aliases than one page in moto");
    listed
        .aliases()
        .iter()
        .filter_map(|a| {
            let name = a.alias_name()?.strip_prefix(&prefix)?;
            Some((name.to_string(), a.target_key_id()?.to_string()))
        })
        .collect()
}

/// What the ring's aliases should be: these state aliases, and one member
/// alias per key.
pub fn expected_aliases(slots: &[(&str, &str)], members: &[&str]) -> BTreeMap<String, String> {
    slots
        .iter()
        .map(|(s, k)| (s.to_string(), k.to_string()))
        .chain(members.iter().map(|k| (format!("key-{k}"), k.to_string())))
        .collect()
}

/// The kid of the key's public key, read from KMS independently of the
/// store.
pub async fn kid_of(kms: &aws_sdk_kms::Client, key_id: &str) -> String {
    let out = kms.get_public_key().key_id(key_id).send().await.unwrap();
    Jwk::from_spki_der(out.public_key().unwrap().as_ref())
        .unwrap()
        .thumbprint()
}

pub async fn key_state(kms: &aws_sdk_kms::Client, key_id: &str) -> aws_sdk_kms::types::KeyState {
    let out = kms.describe_key().key_id(key_id).send().await.unwrap();
    out.key_metadata().unwrap().key_state().unwrap().clone()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// Signs as the broker does, with `KmsSigner` on `alias/{ring}-current`;
/// checks the signature against `jwk` and returns the header's kid.
pub async fn broker_signs_with(
    kms: &aws_sdk_kms::Client,
    ring: &str,
    clock: Arc<dyn Clock>,
    jwk: &Jwk,
) -> String {
    let signer = KmsSigner::new(kms.clone(), format!("alias/{ring}-current"), clock.clone());
    let issuer = Issuer::parse("https://issuer.example.com/").unwrap();
    let subject = Subject::parse("aws2azure:graph").unwrap();
    let claims = AssertionBuilder::new(&issuer, &subject)
        .build(clock.now_unix(), "jti")
        .unwrap();
    let assertion = signer.sign_assertion(&claims).await.unwrap();
    let (input, signature) = assertion.expose().rsplit_once('.').unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&b64(input.split('.').next().unwrap())).unwrap();
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: jwk.modulus(),
        e: jwk.exponent(),
    }
    .verify(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        input.as_bytes(),
        &b64(signature),
    )
    .expect("the broker's signature verifies with the key the store reports");
    header["kid"].as_str().unwrap().to_string()
}

/// Workers KV and the edge in one: records every document published and
/// serves the last one as the issuer's public key set. `log` receives
/// `publish <kids>` lines, to check the order against the store's calls.
pub struct FakeEdge {
    pub published: Mutex<Vec<Vec<String>>>,
    written: Mutex<Option<Vec<u8>>>,
    served: Mutex<Option<Vec<u8>>>,
    /// Serves a document only once `propagate` is called, like KV and the
    /// edge's caches, which lag behind the API.
    lagging: bool,
    pub log: Option<Arc<Mutex<Vec<String>>>>,
}

impl FakeEdge {
    /// Serves what was published at once.
    pub fn new(log: Option<Arc<Mutex<Vec<String>>>>) -> Arc<Self> {
        Self::build(log, false)
    }

    /// Serves what was published once told to.
    pub fn lagging() -> Arc<Self> {
        Self::build(None, true)
    }

    fn build(log: Option<Arc<Mutex<Vec<String>>>>, lagging: bool) -> Arc<Self> {
        Arc::new(Self {
            published: Mutex::default(),
            written: Mutex::default(),
            served: Mutex::default(),
            lagging,
            log,
        })
    }

    /// The last published document reaches the public key set.
    pub fn propagate(&self) {
        *self.served.lock().unwrap() = self.written.lock().unwrap().clone();
    }

    /// The kids the public key set lists now.
    pub fn served(&self) -> Vec<String> {
        self.served
            .lock()
            .unwrap()
            .as_deref()
            .map(|b| {
                JwkSet::from_json(b)
                    .unwrap()
                    .keys()
                    .iter()
                    .map(|k| k.kid().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn last_published(&self) -> Vec<String> {
        self.published
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Publisher for FakeEdge {
    async fn publish(&self, document: &KeyDocument) -> Result<(), PublishError> {
        let kids: Vec<String> = document.kids().iter().map(ToString::to_string).collect();
        if let Some(log) = &self.log {
            log.lock()
                .unwrap()
                .push(format!("publish {}", kids.join(",")));
        }
        self.published.lock().unwrap().push(kids);
        *self.written.lock().unwrap() = Some(document.bytes().to_vec());
        if !self.lagging {
            self.propagate();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "the test's fake edge".into()
    }
}

#[async_trait]
impl PublicKeySet for FakeEdge {
    async fn fetch(&self) -> Result<JwkSet, PublicError> {
        match self.served.lock().unwrap().as_deref() {
            Some(bytes) => Ok(JwkSet::from_json(bytes).expect("a published document parses")),
            None => Err(PublicError::Status {
                url: "https://issuer.example.com/jwks".into(),
                status: 404,
            }),
        }
    }

    fn describe(&self) -> String {
        "the test's fake edge".into()
    }
}
