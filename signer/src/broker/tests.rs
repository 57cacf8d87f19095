//! The broker's rules with in-memory fakes of its collaborators (this
//! module only; the adapters are tested against moto and the devstack's
//! Entra-compatible endpoint in the `tests` crate).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws2azure_shared::assertion::{AssertionClaims, ClientAssertion};
use aws2azure_shared::clock::{Clock, ManualClock};
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::jwk::Jwk;
use aws2azure_shared::profile::{ProfileName, Profiles};

use super::*;
use crate::cache::{CacheKey, SharedCache};
use crate::entra::{ExchangeRequest, IssuedToken, TokenExchange};
use crate::signing::AssertionSigner;
use crate::token::{AccessToken, CachedToken};

const T0: u64 = 1_800_000_000;

struct FakeSigner {
    calls: AtomicU32,
    inner: crate::signing::LocalKeySigner,
}

#[async_trait]
impl AssertionSigner for FakeSigner {
    async fn public_key(&self) -> Result<Jwk, Error> {
        self.inner.public_key().await
    }
    async fn sign_assertion(&self, claims: &AssertionClaims) -> Result<ClientAssertion, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.sign_assertion(claims).await
    }
}

/// Answers from a script, then succeeds; counts calls.
struct FakeEntra {
    calls: AtomicU32,
    script: Mutex<VecDeque<Error>>,
    lifetime: u64,
    refresh_in: Option<u64>,
    delay: Duration,
    panic_next: std::sync::atomic::AtomicBool,
}

impl FakeEntra {
    fn new(script: Vec<Error>, delay: Duration) -> Self {
        Self {
            calls: AtomicU32::new(0),
            script: Mutex::new(script.into()),
            lifetime: 3599,
            refresh_in: None,
            delay,
            panic_next: Default::default(),
        }
    }
}

#[async_trait]
impl TokenExchange for FakeEntra {
    async fn exchange(&self, _req: &ExchangeRequest<'_>) -> Result<IssuedToken, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a bug in an adapter");
        }
        if let Some(err) = self.script.lock().unwrap().pop_front() {
            return Err(err);
        }
        Ok(IssuedToken {
            access_token: AccessToken::new(format!("token-{n}")),
            token_type: "Bearer".into(),
            expires_in: self.lifetime,
            refresh_in: self.refresh_in,
        })
    }
}

struct Rig {
    broker: Broker,
    clock: ManualClock,
    signer: Arc<FakeSigner>,
    entra: Arc<FakeEntra>,
}

fn rig(script: Vec<Error>, delay: Duration) -> Rig {
    rig_with(FakeEntra::new(script, delay), None)
}

fn rig_with(entra: FakeEntra, shared: Option<Arc<dyn SharedCache>>) -> Rig {
    rig_tuned(entra, shared, |_| {})
}

fn rig_tuned(
    entra: FakeEntra,
    shared: Option<Arc<dyn SharedCache>>,
    tune: impl FnOnce(&mut BrokerSettings),
) -> Rig {
    let profiles = Profiles::from_json(
        r#"{"graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "client_id": "00000000-1111-2222-3333-444444444444",
            "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"}}"#,
    )
    .unwrap();
    let clock = ManualClock::at(T0);
    let signer = Arc::new(FakeSigner {
        calls: AtomicU32::new(0),
        inner: crate::signing::LocalKeySigner::generate().unwrap(),
    });
    let entra = Arc::new(entra);
    let mut settings = BrokerSettings::new(Issuer::parse("https://issuer.example.com").unwrap());
    settings.backoff_base = Duration::from_millis(5);
    settings.backoff_max = Duration::from_millis(20);
    settings.exchange_deadline = Duration::from_secs(2);
    settings.peer_wait = Duration::from_millis(200);
    settings.peer_poll = Duration::from_millis(20);
    settings.shared_cache_timeout = Duration::from_millis(200);
    tune(&mut settings);
    let broker = Broker::new(
        profiles,
        settings,
        signer.clone(),
        entra.clone(),
        shared,
        Arc::new(clock.clone()),
    );
    Rig {
        broker,
        clock,
        signer,
        entra,
    }
}

fn profile(name: &str) -> ProfileName {
    ProfileName::parse(name).unwrap()
}

fn entra_error(status: u16, aadsts: Option<u32>, retry_after: Option<u64>) -> Error {
    Error::Entra {
        status,
        error: "x".into(),
        description: "d".into(),
        aadsts,
        correlation_id: None,
        retry_after: retry_after.map(Duration::from_secs),
    }
}

impl Rig {
    async fn token(&self, name: &str, min_validity: u64) -> Result<Issued, Arc<Error>> {
        let min_validity = MinValidity::new(min_validity).map_err(Arc::new)?;
        self.broker
            .token(&profile(name), min_validity)
            .await
            .map_err(|f| f.error)
    }
    fn entra_calls(&self) -> u32 {
        self.entra.calls.load(Ordering::SeqCst)
    }
    fn sign_calls(&self) -> u32 {
        self.signer.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn hits_never_call_kms_or_entra() {
    let r = rig(vec![], Duration::ZERO);
    let first = r.token("graph", 0).await.unwrap();
    assert_eq!(first.outcome, CacheOutcome::Miss);
    for _ in 0..100 {
        let again = r.token("graph", 0).await.unwrap();
        assert_eq!(again.outcome, CacheOutcome::Hit);
        assert_eq!(again.token, first.token);
    }
    assert_eq!((r.sign_calls(), r.entra_calls()), (1, 1));
    assert!(matches!(
        r.token("nope", 0).await.err().as_deref(),
        Some(Error::UnknownProfile(_))
    ));
}

#[tokio::test]
async fn refreshes_ahead_with_a_jittered_margin() {
    let r = rig(vec![], Duration::ZERO);
    let first = r.token("graph", 0).await.unwrap();
    let refresh_on = first.token.refresh_on;
    // Margin 300 s, jitter at most a fifth of it.
    assert!(
        (T0 + 3599 - 360..=T0 + 3599 - 300).contains(&refresh_on),
        "{refresh_on}"
    );
    r.clock.set(refresh_on - 1);
    assert_eq!(
        r.token("graph", 0).await.unwrap().outcome,
        CacheOutcome::Hit
    );
    r.clock.set(refresh_on);
    let refreshed = r.token("graph", 0).await.unwrap();
    assert_eq!(refreshed.outcome, CacheOutcome::Refreshed);
    assert_ne!(refreshed.token, first.token);
    assert_eq!(r.entra_calls(), 2);
}

#[tokio::test]
async fn a_failed_refresh_serves_the_still_valid_token() {
    let r = rig(vec![], Duration::ZERO);
    let first = r.token("graph", 0).await.unwrap();
    r.entra
        .script
        .lock()
        .unwrap()
        .push_back(entra_error(400, Some(700213), None));
    r.clock.set(first.token.refresh_on + 10);
    let served = r.token("graph", 0).await.unwrap();
    assert_eq!(served.outcome, CacheOutcome::Stale);
    assert_eq!(served.token, first.token);
    assert_eq!(
        served.absorbed_error.as_ref().and_then(|e| e.aadsts()),
        Some(700213)
    );
    // Once the old token no longer satisfies the caller, the error shows.
    r.entra
        .script
        .lock()
        .unwrap()
        .push_back(entra_error(400, Some(700213), None));
    let err = r
        .token("graph", first.token.remaining(r.clock.now_unix()) + 1)
        .await
        .unwrap_err();
    assert_eq!(err.aadsts(), Some(700213));
}

#[tokio::test]
async fn min_validity_forces_a_fresh_token() {
    let r = rig(vec![], Duration::ZERO);
    r.token("graph", 0).await.unwrap();
    r.clock.advance(3000); // 599 s left, refresh due
    let issued = r.token("graph", 1000).await.unwrap();
    assert_eq!(
        issued.outcome,
        CacheOutcome::Miss,
        "the cached token cannot serve 1000 s"
    );
    assert!(issued.token.remaining(r.clock.now_unix()) >= 1000);
    assert!(matches!(
        r.token("graph", MAX_MIN_VALIDITY_SECS + 1)
            .await
            .err()
            .as_deref(),
        Some(Error::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn concurrent_misses_share_one_sign_and_one_exchange() {
    let r = rig(vec![], Duration::from_millis(50));
    let calls: Vec<_> = (0..1000).map(|_| r.token("graph", 0)).collect();
    let results = futures_util::future::join_all(calls).await;
    let tokens: std::collections::HashSet<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap().token.access_token.expose().to_string())
        .collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!((r.sign_calls(), r.entra_calls()), (1, 1));
    let coalesced = results
        .iter()
        .filter(|r| r.as_ref().unwrap().outcome == CacheOutcome::Coalesced)
        .count();
    assert_eq!(coalesced, 999);
}

#[tokio::test]
async fn a_failed_flight_fails_every_waiter_once() {
    let r = rig(
        vec![entra_error(401, Some(700213), None)],
        Duration::from_millis(20),
    );
    let results = futures_util::future::join_all((0..50).map(|_| r.token("graph", 0))).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err().aadsts() == Some(700213))
    );
    assert_eq!(r.entra_calls(), 1, "one failed exchange, shared; not 50");
    // The failure is not cached: the next request tries again.
    assert_eq!(
        r.token("graph", 0).await.unwrap().outcome,
        CacheOutcome::Miss
    );
}

#[tokio::test]
async fn retries_what_can_succeed_with_a_fresh_assertion_each_time() {
    let r = rig(
        vec![
            entra_error(429, None, Some(0)),
            entra_error(503, None, None),
            entra_error(400, Some(70021), None),
        ],
        Duration::ZERO,
    );
    let issued = r.token("graph", 0).await.unwrap();
    assert_eq!(issued.upstream.entra_calls, 4);
    assert_eq!((r.sign_calls(), r.entra_calls()), (4, 4));
}

#[tokio::test]
async fn never_retries_configuration_errors() {
    for code in crate::CONFIGURATION_AADSTS {
        let r = rig(vec![entra_error(401, Some(code), None)], Duration::ZERO);
        let err = r.token("graph", 0).await.unwrap_err();
        assert_eq!(err.aadsts(), Some(code));
        assert_eq!(err.api_status().0, http::StatusCode::BAD_GATEWAY);
        assert_eq!(r.entra_calls(), 1, "AADSTS{code} must not be retried");
    }
}

#[tokio::test]
async fn gives_up_after_max_attempts_or_when_retry_after_exceeds_the_deadline() {
    let r = rig(
        (0..10).map(|_| entra_error(503, None, None)).collect(),
        Duration::ZERO,
    );
    let err = r.token("graph", 0).await.unwrap_err();
    assert_eq!(err.api_status().0, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.entra_calls(), 4);

    let r = rig(vec![entra_error(429, None, Some(60))], Duration::ZERO);
    let started = Instant::now();
    let err = r.token("graph", 0).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "does not sleep past the deadline"
    );
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(60)),
        "passed on to the caller"
    );
    assert_eq!(r.entra_calls(), 1);
}

#[tokio::test]
async fn short_lived_tokens_refresh_at_half_life() {
    let r = rig(vec![], Duration::ZERO);
    let entra = Arc::new(FakeEntra {
        lifetime: 400,
        ..FakeEntra::new(vec![], Duration::ZERO)
    });
    let broker = Broker::new(
        r.broker.profiles().clone(),
        r.broker.settings().clone(),
        r.signer.clone(),
        entra,
        None,
        Arc::new(r.clock.clone()),
    );
    let t = broker
        .token(&profile("graph"), MinValidity::default())
        .await
        .unwrap()
        .token;
    assert!(
        t.refresh_on > T0 + 150 && t.refresh_on <= T0 + 200,
        "{}",
        t.refresh_on
    );
}

#[tokio::test]
async fn a_retryable_refresh_failure_costs_one_attempt_then_backs_off() {
    let r = rig(vec![], Duration::ZERO);
    let first = r.token("graph", 0).await.unwrap();
    r.clock.set(first.token.refresh_on + 1);
    r.entra
        .script
        .lock()
        .unwrap()
        .extend((0..10).map(|_| entra_error(503, None, Some(120))));
    let started = Instant::now();
    let served = r.token("graph", 0).await.unwrap();
    assert_eq!(served.outcome, CacheOutcome::Stale);
    assert_eq!(served.token, first.token);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no retry loop, no Retry-After sleep"
    );
    assert_eq!(r.entra_calls(), 2, "one refresh attempt");
    // Within Entra's Retry-After (120 s, longer than the 30 s default),
    // the old token serves without asking Entra.
    r.clock.advance(100);
    for _ in 0..20 {
        assert_eq!(
            r.token("graph", 0).await.unwrap().outcome,
            CacheOutcome::Stale
        );
    }
    assert_eq!(r.entra_calls(), 2);
    // After it, the next request tries again; success clears the backoff.
    r.entra.script.lock().unwrap().clear();
    r.clock.advance(30);
    assert_eq!(
        r.token("graph", 0).await.unwrap().outcome,
        CacheOutcome::Refreshed
    );
    assert_eq!(r.entra_calls(), 3);
}

#[tokio::test]
async fn a_panicking_adapter_fails_one_load_not_the_profile() {
    let r = rig(vec![], Duration::ZERO);
    r.entra.panic_next.store(true, Ordering::SeqCst);
    let err = r.token("graph", 0).await.unwrap_err();
    assert!(matches!(*err, Error::Internal(_)), "{err:?}");
    assert_eq!(err.api_status().0, http::StatusCode::INTERNAL_SERVER_ERROR);
    let issued = r.token("graph", 0).await.unwrap();
    assert_eq!(
        issued.outcome,
        CacheOutcome::Miss,
        "the flight was not poisoned"
    );
}

#[tokio::test]
async fn entra_refresh_in_sets_the_refresh_time() {
    let r = rig_with(
        FakeEntra {
            refresh_in: Some(1800),
            ..FakeEntra::new(vec![], Duration::ZERO)
        },
        None,
    );
    let t = r.token("graph", 0).await.unwrap().token;
    assert!(
        (T0 + 1800 - 360..=T0 + 1800).contains(&t.refresh_on),
        "{}",
        t.refresh_on
    );
}

/// A shared tier in memory, with a lease another instance can hold.
#[derive(Default)]
struct FakeShared {
    tokens: Mutex<HashMap<CacheKey, CachedToken>>,
    lease: Mutex<Option<(String, u64)>>,
    releases: AtomicU32,
    /// A peer's token that lands just as the lease is taken.
    lands_with_lease: Mutex<Option<CachedToken>>,
    /// Every call hangs (a shared tier that accepts connections but never
    /// answers).
    hang: std::sync::atomic::AtomicBool,
}

impl FakeShared {
    async fn maybe_hang(&self) {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl SharedCache for FakeShared {
    async fn get(&self, key: &CacheKey, now: u64) -> Result<Option<CachedToken>, Error> {
        self.maybe_hang().await;
        let tokens = self.tokens.lock().unwrap();
        Ok(tokens.get(key).filter(|t| t.expires_on > now).cloned())
    }
    async fn put(&self, key: &CacheKey, token: &CachedToken) -> Result<(), Error> {
        self.tokens
            .lock()
            .unwrap()
            .insert(key.clone(), token.clone());
        Ok(())
    }
    async fn try_lease(
        &self,
        key: &CacheKey,
        holder: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, Error> {
        self.maybe_hang().await;
        if let Some(token) = self.lands_with_lease.lock().unwrap().take() {
            self.tokens.lock().unwrap().insert(key.clone(), token);
        }
        let mut lease = self.lease.lock().unwrap();
        match &*lease {
            Some((_, held_until)) if *held_until >= now => Ok(false),
            _ => {
                *lease = Some((holder.to_string(), until));
                Ok(true)
            }
        }
    }
    async fn release_lease(&self, _: &CacheKey, holder: &str) -> Result<(), Error> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        let mut lease = self.lease.lock().unwrap();
        if lease.as_ref().is_some_and(|(h, _)| h == holder) {
            *lease = None;
        }
        Ok(())
    }
}

fn shared_rig() -> (Rig, Arc<FakeShared>) {
    let shared = Arc::new(FakeShared::default());
    let r = rig_with(FakeEntra::new(vec![], Duration::ZERO), Some(shared.clone()));
    (r, shared)
}

fn peer_holds_lease(shared: &FakeShared) {
    *shared.lease.lock().unwrap() = Some(("peer".into(), T0 + 1_000_000));
}

#[tokio::test]
async fn a_peer_refreshing_leaves_the_old_shared_token_serving() {
    let (r, shared) = shared_rig();
    let first = r.token("graph", 0).await.unwrap();
    assert_eq!(
        shared.releases.load(Ordering::SeqCst),
        1,
        "lease given back"
    );
    // Another instance (its own memory) when the token is due for
    // refresh and a peer holds the lease: the old token, no Entra call.
    let other = rig_with(FakeEntra::new(vec![], Duration::ZERO), Some(shared.clone()));
    other.clock.set(first.token.refresh_on + 1);
    peer_holds_lease(&shared);
    let served = other.token("graph", 0).await.unwrap();
    assert_eq!(served.outcome, CacheOutcome::Stale);
    assert_eq!(served.token, first.token);
    assert_eq!(other.entra_calls(), 0);
}

#[tokio::test]
async fn a_busy_peer_with_nothing_to_serve_gives_503_not_a_stampede() {
    let (r, shared) = shared_rig();
    peer_holds_lease(&shared);
    let err = r.token("graph", 0).await.unwrap_err();
    assert_eq!(*err, Error::PeerBusy);
    assert_eq!(err.api_status().0, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.entra_calls(), 0);
}

#[tokio::test]
async fn a_peer_that_released_the_lease_without_a_token_is_taken_over() {
    let (r, shared) = shared_rig();
    peer_holds_lease(&shared);
    let releaser = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        *releaser.lease.lock().unwrap() = None;
    });
    let issued = r.token("graph", 0).await.unwrap();
    assert_eq!(issued.outcome, CacheOutcome::Miss);
    assert_eq!(r.entra_calls(), 1);
    assert!(
        shared
            .tokens
            .lock()
            .unwrap()
            .values()
            .any(|t| *t == issued.token)
    );
}

#[tokio::test]
async fn the_lease_is_released_after_a_failed_fetch() {
    let (r, shared) = shared_rig();
    r.entra
        .script
        .lock()
        .unwrap()
        .push_back(entra_error(401, Some(700213), None));
    assert!(r.token("graph", 0).await.is_err());
    assert_eq!(shared.releases.load(Ordering::SeqCst), 1);
    assert!(
        shared.lease.lock().unwrap().is_none(),
        "others may try at once"
    );
}

#[tokio::test]
async fn a_token_stored_by_a_peer_just_before_the_lease_is_not_fetched_again() {
    let (r, shared) = shared_rig();
    let peer_token = CachedToken {
        access_token: AccessToken::new("peer-token".into()),
        token_type: "Bearer".into(),
        expires_on: T0 + 3599,
        refresh_on: T0 + 3299,
    };
    *shared.lands_with_lease.lock().unwrap() = Some(peer_token.clone());
    let issued = r.token("graph", 0).await.unwrap();
    assert_eq!(issued.token, peer_token);
    assert_eq!(issued.outcome, CacheOutcome::SharedHit);
    assert_eq!((r.sign_calls(), r.entra_calls()), (0, 0));
    assert!(
        shared.lease.lock().unwrap().is_none(),
        "the lease is given back"
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_leaves_the_load_running_for_the_next() {
    let r = rig(vec![], Duration::from_millis(300));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), r.token("graph", 0))
            .await
            .is_err(),
        "the first caller gives up while Entra is still answering"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        r.broker.inner.memory.len(),
        1,
        "the load finished with nobody waiting on it"
    );
    let issued = r.token("graph", 0).await.unwrap();
    assert_eq!(issued.outcome, CacheOutcome::Hit);
    assert_eq!((r.sign_calls(), r.entra_calls()), (1, 1));
    assert!(r.broker.inner.flights.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_request_deadline_bounds_every_inner_wait() {
    let r = rig_tuned(FakeEntra::new(vec![], Duration::from_secs(1)), None, |s| {
        s.exchange_deadline = Duration::from_secs(2);
        s.request_deadline = Duration::from_millis(300);
    });
    let started = Instant::now();
    let err = r.token("graph", 0).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.api_status().0,
        http::StatusCode::GATEWAY_TIMEOUT,
        "{err:?}"
    );
}

#[tokio::test]
async fn a_shared_tier_that_never_answers_costs_one_call_timeout() {
    let shared = Arc::new(FakeShared::default());
    shared.hang.store(true, Ordering::SeqCst);
    let r = rig_with(FakeEntra::new(vec![], Duration::ZERO), Some(shared.clone()));
    let started = Instant::now();
    let issued = r.token("graph", 0).await.unwrap();
    assert_eq!(issued.outcome, CacheOutcome::Miss);
    assert!(issued.upstream.shared_cache_degraded);
    // One 200 ms call timeout for the read; the put is skipped once degraded.
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_caller_with_a_valid_token_waits_no_longer_than_a_refresh_for_a_full_load() {
    let r = rig_tuned(
        FakeEntra::new(vec![], Duration::from_millis(600)),
        None,
        |s| s.refresh_budget = Duration::from_millis(100),
    );
    let first = r.token("graph", 0).await.unwrap();
    r.clock.set(first.token.refresh_on + 1);
    // A demanding caller starts a full load (the old token cannot serve it).
    let broker = r.broker.clone();
    let demanding = tokio::spawn(async move {
        broker
            .token(&profile("graph"), MinValidity::new(1000).unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let steady = r.token("graph", 0).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(steady.outcome, CacheOutcome::Stale);
    assert_eq!(steady.token, first.token);
    let fresh = demanding.await.unwrap().unwrap();
    assert_eq!(fresh.outcome, CacheOutcome::Miss);
    // No backoff: the load filled the cache, the next caller gets it.
    assert_eq!(r.token("graph", 0).await.unwrap().token, fresh.token);
    assert_eq!(r.entra_calls(), 2);
}
