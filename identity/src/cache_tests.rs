use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use aws2azure_shared::clock::ManualClock;
use tokio::sync::Notify;

use super::*;

const T0: u64 = 1_800_000_000;

/// Issues tokens living `lifetime` seconds from the clock's now, counting
/// calls; can be told to fail or to hold every call until released.
struct Source {
    clock: ManualClock,
    lifetime: AtomicU64,
    calls: AtomicUsize,
    asked: Mutex<Vec<u64>>,
    failing: std::sync::atomic::AtomicBool,
    gate: Option<Arc<Notify>>,
}

impl Source {
    fn new(clock: &ManualClock, lifetime: u64) -> Self {
        Self {
            clock: clock.clone(),
            lifetime: AtomicU64::new(lifetime),
            calls: AtomicUsize::new(0),
            asked: Mutex::default(),
            failing: Default::default(),
            gate: None,
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl TokenSource for Source {
    async fn token(&self, profile: &ProfileName, min_validity: u64) -> Result<Token, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.asked.lock().unwrap().push(min_validity);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Timeout {
                profile: profile.to_string(),
                secs: 1,
            });
        }
        Ok(Token {
            access_token: format!("token-{n}"),
            expires_on: self.clock.now_unix() + self.lifetime.load(Ordering::SeqCst),
        })
    }
}

fn policy() -> CachePolicy {
    CachePolicy {
        jitter: 0,
        load_timeout: Duration::from_secs(5),
        ..CachePolicy::default()
    }
}

fn graph() -> ProfileName {
    ProfileName::parse("graph").unwrap()
}

fn cache(source: &Arc<Source>, clock: &ManualClock) -> TokenCache {
    TokenCache::new(source.clone(), Arc::new(clock.clone()), policy())
}

#[tokio::test]
async fn a_miss_loads_then_hits_until_refresh_is_due() {
    let clock = ManualClock::at(T0);
    let source = Arc::new(Source::new(&clock, 3600));
    let cache = cache(&source, &clock);

    let (token, origin) = cache.get(&graph()).await.unwrap();
    assert_eq!(
        (token.access_token.as_str(), origin),
        ("token-1", Origin::Fetched("token_api"))
    );
    assert_eq!(
        source.asked.lock().unwrap()[0],
        360,
        "a miss asks for the floor only"
    );

    clock.advance(3600 - 900 - 1);
    let (token, origin) = cache.get(&graph()).await.unwrap();
    assert_eq!(
        (token.access_token.as_str(), origin),
        ("token-1", Origin::Cache)
    );
    assert_eq!(source.calls(), 1);

    // Refresh due: the held token is still handed out while a load runs.
    clock.advance(1);
    let (token, origin) = cache.get(&graph()).await.unwrap();
    assert_eq!(
        (token.access_token.as_str(), origin),
        ("token-1", Origin::Cache)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(source.calls(), 2);
    assert_eq!(
        source.asked.lock().unwrap()[1],
        960,
        "a refresh asks for more life than the held token has"
    );
    let (token, _) = cache.get(&graph()).await.unwrap();
    assert_eq!(token.access_token, "token-2");
}

#[tokio::test]
async fn a_token_under_the_floor_is_never_handed_out() {
    let clock = ManualClock::at(T0);
    let source = Arc::new(Source::new(&clock, 3600));
    let cache = cache(&source, &clock);
    cache.get(&graph()).await.unwrap();
    source.failing.store(true, Ordering::SeqCst);

    // 361 s left: still handed out (the failing refresh runs behind).
    clock.set(T0 + 3600 - 361);
    let (token, _) = cache.get(&graph()).await.unwrap();
    assert_eq!(token.remaining(clock.now_unix()), 361);
    tokio::time::sleep(Duration::from_millis(20)).await;

    // 359 s left: refused rather than handed out.
    clock.set(T0 + 3600 - 359);
    let err = cache.get(&graph()).await.unwrap_err();
    assert_eq!(err.status(), 504, "{err}");

    // A token API that issues short-lived tokens is reported, not served.
    source.failing.store(false, Ordering::SeqCst);
    source.lifetime.store(200, Ordering::SeqCst);
    let err = cache.get(&graph()).await.unwrap_err();
    assert!(
        matches!(*err, Error::ShortLived { remaining: 200, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_load_which_outlives_its_callers() {
    let clock = ManualClock::at(T0);
    let gate = Arc::new(Notify::new());
    let source = Arc::new(Source {
        gate: Some(gate.clone()),
        ..Source::new(&clock, 3600)
    });
    let cache = cache(&source, &clock);

    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&graph()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Every caller gives up; the load must carry on and fill the cache.
    for waiter in &waiters {
        waiter.abort();
    }
    assert_eq!(source.calls(), 1);
    gate.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (token, origin) = cache.get(&graph()).await.unwrap();
    assert_eq!(
        (token.access_token.as_str(), origin),
        ("token-1", Origin::Cache)
    );
    assert_eq!(source.calls(), 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_held_token_and_backs_off() {
    let clock = ManualClock::at(T0);
    let source = Arc::new(Source::new(&clock, 3600));
    let cache = cache(&source, &clock);
    cache.get(&graph()).await.unwrap();
    source.failing.store(true, Ordering::SeqCst);
    clock.advance(3600 - 900);
    for _ in 0..5 {
        let (token, _) = cache.get(&graph()).await.unwrap();
        assert_eq!(token.access_token, "token-1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(source.calls(), 2, "one refresh, then the back-off");
    clock.advance(30);
    cache.get(&graph()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(source.calls(), 3, "tried again after retry_after");
}

#[tokio::test]
async fn refresh_due_refreshes_only_what_is_due_and_waits_for_it() {
    let clock = ManualClock::at(T0);
    let source = Arc::new(Source::new(&clock, 3600));
    let cache = cache(&source, &clock);
    assert_eq!(
        cache.refresh_due().await,
        Refreshed::default(),
        "nothing held"
    );
    cache.get(&graph()).await.unwrap();
    assert_eq!(cache.refresh_due().await, Refreshed::default(), "not due");
    assert_eq!(source.calls(), 1);

    clock.advance(3600 - 900);
    let report = cache.refresh_due().await;
    assert_eq!(
        report,
        Refreshed {
            refreshed: 1,
            failed: 0
        }
    );
    assert_eq!(source.calls(), 2);
    let (token, origin) = cache.get(&graph()).await.unwrap();
    assert_eq!(
        (token.access_token.as_str(), origin),
        ("token-2", Origin::Cache)
    );

    clock.advance(3600 - 900);
    source.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        cache.refresh_due().await,
        Refreshed {
            refreshed: 0,
            failed: 1
        }
    );
}
