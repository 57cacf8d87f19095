//! The rotation drill's rig: the signing keys' whole lifecycle on real
//! components, on a compressed schedule. A fresh ring in KMS (moto), the
//! compiled edge Worker in workerd, the Cloudflare API stand-in whose KV is
//! that Worker's KV, the real Cloudflare client publishing to it, the
//! rotator; on the relying side the Entra stand-in trusting the Worker's
//! issuer and the broker signing with `alias/{ring}-current` through KMS.
//! [`observe`] has the loops that run while a drill goes on.

pub mod observe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws2azure_devstack::cloudflare::{
    CloudflareConfig, CloudflareStandIn, KvBackend, MemoryKv, api_base,
};
use aws2azure_devstack::moto::MotoServer;
use aws2azure_devstack::{Server, loopback};
use aws2azure_keys::cloudflare::{ApiToken, CloudflareKv, CloudflareSettings};
use aws2azure_keys::kms::KmsKeyStore;
use aws2azure_keys::public::{HttpPublicKeySet, PublicKeySet};
use aws2azure_keys::rotation::{Action, Report, Rotator};
use aws2azure_keys::{Slot, Timings};
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_signer::broker::Broker;
use aws2azure_signer::kms::KmsSigner;

use crate::aws::unique;
use crate::rig::Federation;
use crate::workerd::{EdgeOptions, WorkerdEdge, free_port};

/// The edge reads KV this often (its `KV_REFRESH_SECONDS`).
pub const KV_REFRESH_SECS: u64 = 1;
/// The Entra stand-in reuses a fetched key set this long and, inside it,
/// refuses a `kid` it does not know instead of fetching again.
pub const ENTRA_KEY_CACHE_SECS: u64 = 3;
/// The broker's signer resolves `alias/{ring}-current` again this often.
pub const SIGNER_RESOLVE_SECS: u64 = 1;
/// The broker's assertions live this long: the least it accepts.
pub const ASSERTION_LIFETIME_SECS: u64 = aws2azure_shared::assertion::MIN_LIFETIME_SECS;
/// The Entra stand-in's token lifetime: far below the `min_validity` the
/// client asks for, so that no request is ever served from the cache.
pub const ENTRA_TOKEN_LIFETIME_SECS: u64 = 120;
/// The rotator's cadence.
pub const TICK: Duration = Duration::from_secs(1);
/// A pause between two client requests, so the drill leaves the machine's
/// two cores to the rest of the stack.
pub const CLIENT_PAUSE: Duration = Duration::from_millis(10);

/// The compressed schedule. K1: a key is served publicly for longer than
/// the Entra stand-in's cache before it signs (twice that, plus the edge's
/// refresh). K2: the previous key stays published for the least
/// [`Timings::validate`] accepts with the broker's real assertion lifetime.
pub fn timings() -> Timings {
    let mut timings = Timings {
        warm_up: 2 * ENTRA_KEY_CACHE_SECS + KV_REFRESH_SECS,
        period: 0,
        previous_retention: 0,
        deletion_window_days: 7,
        assertion_lifetime: ASSERTION_LIFETIME_SECS,
        edge_propagation: KV_REFRESH_SECS,
        signer_resolve_interval: SIGNER_RESOLVE_SECS,
    };
    timings.previous_retention = timings.min_retention();
    // One second more than the retention: the previous key is retired on
    // the tick before its successor's successor is due.
    timings.period = timings.previous_retention + 1;
    timings.validate().expect("the drill's timings are valid");
    timings
}

/// The Cloudflare stand-in's KV: the workerd edge's own namespace (through
/// its control port), with a copy for the stand-in's reads.
pub struct WorkerdKv {
    pub edge: Arc<WorkerdEdge>,
    pub copy: MemoryKv,
}

#[async_trait]
impl KvBackend for WorkerdKv {
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), aws2azure_devstack::Error> {
        let text = String::from_utf8(value.clone())
            .map_err(|_| aws2azure_devstack::Error::Kv("the value is not UTF-8".into()))?;
        self.edge
            .try_put_kv(key, &text)
            .await
            .map_err(aws2azure_devstack::Error::Kv)?;
        self.copy.put(key, value).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, aws2azure_devstack::Error> {
        self.copy.get(key).await
    }
}

pub const ACCOUNT: &str = "drill-account";
pub const NAMESPACE: &str = "drill-namespace";

pub fn publisher(api_base: &str, token: &str) -> Arc<CloudflareKv> {
    let settings = CloudflareSettings::new(ACCOUNT, NAMESPACE)
        .and_then(|s| s.with_api_base(api_base))
        .and_then(|s| s.with_timeout(Duration::from_secs(5)))
        .expect("valid Cloudflare settings");
    let token = ApiToken::new(token, "drill").expect("a valid token");
    Arc::new(CloudflareKv::new(settings, token).expect("the Cloudflare client builds"))
}

pub fn rotator(
    store: &Arc<KmsKeyStore>,
    public: &Arc<HttpPublicKeySet>,
    api_base: &str,
    token: &str,
    timings: Timings,
) -> Rotator {
    Rotator::new(
        store.clone(),
        publisher(api_base, token),
        public.clone(),
        Arc::new(SystemClock),
        timings,
    )
    .expect("valid timings")
}

/// The key manager's world: a fresh ring in moto KMS, the workerd edge,
/// the Cloudflare stand-in writing into the edge's KV, and the rotator.
pub struct Rig {
    pub started: Instant,
    pub kms: aws_sdk_kms::Client,
    pub ring: String,
    pub issuer: String,
    pub edge: Arc<WorkerdEdge>,
    pub cloudflare: CloudflareStandIn,
    // Serves for as long as the rig lives.
    _cloudflare_server: Server,
    pub api_token: String,
    pub store: Arc<KmsKeyStore>,
    pub public: Arc<HttpPublicKeySet>,
    pub rotator: Arc<Rotator>,
    pub timings: Timings,
    http: reqwest::Client,
}

impl Rig {
    pub async fn start(name: &str, timings: Timings) -> Self {
        let started = Instant::now();
        let kms = aws_sdk_kms::Client::new(&MotoServer::shared().sdk_config().await);
        let ring = unique(name);
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let options = EdgeOptions::new(&issuer, port).var("KV_REFRESH_SECONDS", KV_REFRESH_SECS);
        let edge = Arc::new(
            tokio::task::spawn_blocking(move || WorkerdEdge::start(&options))
                .await
                .unwrap(),
        );
        let api_token = format!("drill-token-{}", uuid::Uuid::new_v4().simple());
        let cloudflare = CloudflareStandIn::with_backend(
            CloudflareConfig {
                api_token: api_token.clone(),
                account_id: ACCOUNT.into(),
                namespace_id: NAMESPACE.into(),
            },
            Arc::new(WorkerdKv {
                edge: edge.clone(),
                copy: MemoryKv::default(),
            }),
        );
        let cloudflare_server = cloudflare.clone().serve(loopback()).await.unwrap();
        let public = Arc::new(
            HttpPublicKeySet::new(Issuer::parse(&issuer).unwrap(), Duration::from_secs(5)).unwrap(),
        );
        let store = Arc::new(KmsKeyStore::new(kms.clone(), &ring, None));
        let rotator = Arc::new(rotator(
            &store,
            &public,
            &api_base(&cloudflare_server),
            &api_token,
            timings,
        ));
        Self {
            started,
            kms,
            ring,
            issuer,
            edge,
            cloudflare,
            _cloudflare_server: cloudflare_server,
            api_token,
            store,
            public,
            rotator,
            timings,
            http: reqwest::Client::new(),
        }
    }

    /// A rotator on this ring whose publisher talks to `api_base`.
    pub fn rotator_publishing_to(&self, api_base: &str) -> Rotator {
        rotator(
            &self.store,
            &self.public,
            api_base,
            &self.api_token,
            self.timings,
        )
    }

    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn alias(&self, slot: Slot) -> String {
        format!("alias/{}-{}", self.ring, slot.suffix())
    }

    /// Where each state alias points, read from KMS.
    pub async fn aliases(&self) -> BTreeMap<Slot, Option<String>> {
        let mut out = BTreeMap::new();
        for slot in Slot::ALL {
            let target = match self
                .kms
                .describe_key()
                .key_id(self.alias(slot))
                .send()
                .await
            {
                Ok(d) => Some(d.key_metadata().unwrap().key_id().to_string()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_not_found_exception()) =>
                {
                    None
                }
                Err(e) => panic!("DescribeKey {}: {e:?}", self.alias(slot)),
            };
            out.insert(slot, target);
        }
        out
    }

    /// The key's state in KMS, e.g. `Enabled`, `PendingDeletion`.
    pub async fn key_state(&self, key_id: &str) -> String {
        let described = self
            .kms
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeKey {key_id}: {e:?}"));
        let meta = described.key_metadata().unwrap();
        meta.key_state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default()
    }

    /// The key set the edge serves now, as the Worker's bytes.
    pub async fn served_document(&self) -> Vec<u8> {
        let response = self.http.get(self.edge.url("/jwks")).send().await.unwrap();
        assert_eq!(response.status(), 200, "the edge serves a key set");
        response.bytes().await.unwrap().to_vec()
    }

    /// The kids of the public key set; none while the edge has no document
    /// yet (it answers 503 and backs off its KV reads up to 10 s).
    pub async fn public_kids(&self) -> Vec<String> {
        match self.public.fetch().await {
            Ok(set) => set.keys().iter().map(|k| k.kid().to_string()).collect(),
            Err(aws2azure_keys::public::PublicError::Status { status: 503, .. }) => Vec::new(),
            Err(e) => panic!("the public key set does not read: {e}"),
        }
    }

    /// Waits until the public key set is the document the ring should
    /// have published.
    pub async fn converge(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let expected: Vec<String> = self
                .rotator
                .document()
                .await
                .expect("the ring has a document")
                .kids()
                .iter()
                .map(ToString::to_string)
                .collect();
            let public = self.public_kids().await;
            if public == expected {
                let status = self.rotator.status().await.unwrap();
                assert!(status.public_matches, "{status:?}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the public key set {public:?} is not {expected:?} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the public key set lists `kid`.
    pub async fn until_listed(&self, kid: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.public_kids().await.iter().any(|k| k == kid) {
            assert!(
                Instant::now() < deadline,
                "kid {kid} not listed after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The relying side: the Entra stand-in trusting the edge's issuer, caching
/// its key set for `key_cache` without refetching on an unknown `kid`, and
/// the broker signing with the ring's current key through KMS.
pub struct Relying {
    pub fed: Federation,
    pub broker: Broker,
}

pub async fn relying(rig: &Rig, key_cache: Duration) -> Relying {
    let issuer = Issuer::parse(&rig.issuer).unwrap();
    let fed = Federation::trusting_with(issuer, &rig.issuer, |config| {
        config.key_cache_ttl = key_cache;
        config.refetch_unknown_kid = false;
        config.token_lifetime_secs = ENTRA_TOKEN_LIFETIME_SECS;
    })
    .await;
    let signer = KmsSigner::new(
        rig.kms.clone(),
        rig.alias(Slot::Current),
        Arc::new(SystemClock),
    )
    .with_resolve_interval(Duration::from_secs(SIGNER_RESOLVE_SECS));
    let broker = fed.broker_with(Arc::new(signer), None, Duration::from_secs(5), |s| {
        s.assertion_lifetime_secs = ASSERTION_LIFETIME_SECS;
    });
    Relying { fed, broker }
}

pub async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn staged_kid(report: &Report) -> String {
    report
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Staged { kid, .. } => Some(kid.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("nothing staged: {report:?}"))
}
