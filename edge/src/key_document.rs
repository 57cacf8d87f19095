//! The key document (the issuer's JWK Set) and the last-good copy the edge
//! keeps of it.
//!
//! Entra fetches the key set from the public internet and accepts no other
//! copy, so an edge that answers 5xx, or serves a broken document, fails
//! every token exchange. Hence: a document is served only after it passed
//! [`JwkSet`] validation, and a store that fails, misses or holds garbage
//! never replaces a good copy.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_shared::Error as SharedError;
use aws2azure_shared::jwk::JwkSet;
use bytes::Bytes;

use crate::Error;
use crate::log::{Event, EventKind};
use crate::refresh::{RefreshClock, millis};
use crate::representation::Representation;

/// A validated key set, in the canonical form the edge serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDocument {
    keys: JwkSet,
    representation: Representation,
}

impl KeyDocument {
    /// Parses and validates a published key document (`{"keys": [...]}`):
    /// at most 100 keys, each RSA ≥ 2048 bits with a unique `kid`,
    /// `use: sig`, `alg: RS256`. What is served is the canonical
    /// re-serialisation, so members the edge does not vouch for are dropped.
    ///
    /// A set with no keys is refused too: it is always a publishing mistake,
    /// and serving it would fail every exchange just like an outage.
    pub fn parse(document: &[u8]) -> Result<Self, Error> {
        let keys = JwkSet::from_json(document).map_err(Error::KeyDocument)?;
        if keys.keys().is_empty() {
            return Err(Error::KeyDocument(SharedError::InvalidKeySet(
                "it has no keys; publish at least the current signing key".into(),
            )));
        }
        Ok(Self::from_key_set(keys))
    }

    /// A document from a key set that is already validated. Unlike
    /// [`Self::parse`] it accepts an empty set: local tools (the devstack)
    /// serve exactly what they are given, e.g. to show what `doctor` says
    /// about an issuer with no keys.
    pub fn from_key_set(keys: JwkSet) -> Self {
        let representation = Representation::new(Bytes::from(keys.to_json()));
        Self {
            keys,
            representation,
        }
    }

    pub fn keys(&self) -> &JwkSet {
        &self.keys
    }

    /// The bytes served at `/jwks`.
    pub fn body(&self) -> &Bytes {
        self.representation.body()
    }

    /// The strong entity tag of [`Self::body`], quotes included.
    pub fn etag(&self) -> &str {
        self.representation.etag()
    }

    /// A short id of this document for logs: the start of its ETag.
    pub fn version(&self) -> &str {
        self.representation.version()
    }

    pub(crate) fn representation(&self) -> &Representation {
        &self.representation
    }
}

/// What one read of a store (KV, the Cache API) returned.
#[derive(Debug)]
pub enum Fetched {
    Found(Vec<u8>),
    Missing,
    Failed(Error),
}

/// What the shell must do after [`LastGoodKeys::apply_store_read`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyRefresh {
    /// Things to put in the request's log record.
    pub events: Vec<Event>,
    /// A new version came in: write it to the Cache API so that fresh
    /// isolates have a copy if KV is unavailable to them.
    pub store_copy: bool,
}

/// How long an isolate with no key document at all waits after a read that
/// left it without one: this, doubled after each further such read, up to
/// [`NO_DOCUMENT_RETRY_MAX`], and never longer than the refresh interval.
pub const NO_DOCUMENT_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two reads while there is no key document: how
/// late, at most, a freshly published first document is picked up (on top
/// of KV's own propagation).
pub const NO_DOCUMENT_RETRY_MAX: Duration = Duration::from_secs(10);

/// The key document an isolate serves, and when it last asked KV.
///
/// Sans I/O: the shell reads the store when [`Self::claim_read`] says so
/// and hands the result to [`Self::apply_store_read`]; this type decides
/// what is served and when the store is read. The same logic therefore runs
/// in native tests and in workerd.
#[derive(Debug)]
pub struct LastGoodKeys {
    current: Option<Arc<KeyDocument>>,
    /// The store bytes `current` came from: an unchanged document costs a
    /// byte comparison, not a parse, on every refresh.
    current_raw: Vec<u8>,
    clock: RefreshClock,
    /// Store reads in a row that left the isolate without any document.
    reads_without_document: u32,
}

impl LastGoodKeys {
    /// `refresh` is how long a copy is served before KV is asked again.
    pub fn new(refresh: Duration) -> Self {
        Self {
            current: None,
            current_raw: Vec::new(),
            clock: RefreshClock::new(refresh),
            reads_without_document: 0,
        }
    }

    /// The document to serve, if any good one was ever seen.
    pub fn current(&self) -> Option<&Arc<KeyDocument>> {
        self.current.as_ref()
    }

    /// Whether the store should be read now: with a document, once per
    /// refresh interval; without one, soon after a failed read but not on
    /// every request (1 s, then backing off to every 10 s), since every
    /// request for the key set would otherwise cost a KV and a Cache API
    /// read for as long as the document is missing or KV fails.
    pub fn is_due(&self, now_ms: u64) -> bool {
        let wait = match self.current {
            Some(_) => self.clock.interval_ms(),
            None => self.retry_wait_ms(),
        };
        self.clock.waited(now_ms, wait)
    }

    /// The wait after a read that left the isolate without a document:
    /// 1 s, 2 s, 4 s, 8 s, then 10 s, capped by the refresh interval (so
    /// `KV_REFRESH_SECONDS = 0` still reads on every request).
    fn retry_wait_ms(&self) -> u64 {
        let doublings = self.reads_without_document.saturating_sub(1).min(16);
        (millis(NO_DOCUMENT_RETRY_FIRST) << doublings)
            .min(millis(NO_DOCUMENT_RETRY_MAX))
            .min(self.clock.interval_ms())
    }

    /// [`Self::is_due`], and if so, the read is recorded as started now:
    /// Workers interleave an isolate's requests at every `await`, so
    /// without this each request arriving during the read would start one
    /// of its own. Those requests are answered with what is in force (the
    /// current document, or 503 like the ones before them). A fresh
    /// isolate's first requests are the exception: with nothing ever read,
    /// each goes to the store rather than answer 503 untried.
    pub fn claim_read(&mut self, now_ms: u64) -> bool {
        if !self.is_due(now_ms) {
            return false;
        }
        if self.clock.ever_checked() {
            self.clock.checked(now_ms);
        }
        true
    }

    /// Takes in what KV returned. A valid document replaces the current one;
    /// anything else keeps it and is reported.
    pub fn apply_store_read(&mut self, now_ms: u64, fetched: Fetched) -> KeyRefresh {
        let refresh = self.apply(now_ms, fetched);
        self.reads_without_document = match self.current {
            Some(_) => 0,
            None => self.reads_without_document.saturating_add(1),
        };
        refresh
    }

    fn apply(&mut self, now_ms: u64, fetched: Fetched) -> KeyRefresh {
        self.clock.checked(now_ms);
        let mut refresh = KeyRefresh::default();
        match fetched {
            Fetched::Found(raw) if self.current.is_some() && raw == self.current_raw => {}
            Fetched::Found(raw) => match KeyDocument::parse(&raw) {
                Ok(doc) => {
                    let changed = self
                        .current
                        .as_ref()
                        .is_none_or(|cur| cur.version() != doc.version());
                    if changed {
                        refresh
                            .events
                            .push(Event::new(EventKind::KeyDocumentLoaded).about(doc.version()));
                        refresh.store_copy = true;
                        self.current = Some(Arc::new(doc));
                    }
                    self.current_raw = raw;
                }
                Err(err) => refresh
                    .events
                    .push(Event::new(EventKind::KeyDocumentRejected).failed(err)),
            },
            Fetched::Missing => refresh
                .events
                .push(Event::new(EventKind::KeyDocumentMissing)),
            Fetched::Failed(err) => refresh
                .events
                .push(Event::new(EventKind::KeyStoreFailed).failed(err)),
        }
        refresh
    }

    /// Takes in the Cache API copy, which the shell reads only when there is
    /// no current document. The copy is validated again: a cache is a store
    /// like any other.
    pub fn restore_copy(&mut self, fetched: Fetched) -> Option<Event> {
        if self.current.is_some() {
            return None;
        }
        match fetched {
            Fetched::Found(raw) => match KeyDocument::parse(&raw) {
                Ok(doc) => {
                    let event = Event::new(EventKind::KeyDocumentRestored).about(doc.version());
                    self.current = Some(Arc::new(doc));
                    // Not the KV bytes: the next KV read must parse again.
                    self.current_raw.clear();
                    Some(event)
                }
                Err(err) => Some(Event::new(EventKind::KeyCopyRejected).failed(err)),
            },
            Fetched::Missing => None,
            Fetched::Failed(err) => Some(Event::new(EventKind::KeyCopyFailed).failed(err)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_keys::{key_set_json, other_key_set_json};

    const MINUTE: Duration = Duration::from_secs(60);

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.event).collect()
    }

    #[test]
    fn serves_the_canonical_form_with_a_strong_etag() {
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&key_set_json()).unwrap(),
        )
        .unwrap();
        let a = KeyDocument::parse(pretty.as_bytes()).unwrap();
        let b = KeyDocument::parse(key_set_json().as_bytes()).unwrap();
        assert_eq!(
            a.body(),
            b.body(),
            "whitespace does not change the document"
        );
        assert_eq!(a.etag(), b.etag());
        assert!(a.etag().starts_with('"') && a.etag().ends_with('"'));
        assert!(!a.etag().starts_with("W/"));
        assert!(a.etag().starts_with(&format!("\"{}", a.version())));
        let c = KeyDocument::parse(other_key_set_json().as_bytes()).unwrap();
        assert_ne!(a.etag(), c.etag());
        assert_ne!(a.version(), c.version());
    }

    #[test]
    fn refuses_documents_that_must_never_be_served() {
        let no_kid = key_set_json().replace("\"kid\":", "\"x-kid\":");
        let many = {
            let v: serde_json::Value = serde_json::from_str(&key_set_json()).unwrap();
            let key = v["keys"][0].clone();
            let keys: Vec<_> = (0..101)
                .map(|i| {
                    let mut k = key.clone();
                    k["kid"] = format!("k{i}").into();
                    k
                })
                .collect();
            serde_json::json!({ "keys": keys }).to_string()
        };
        for (doc, expect) in [
            ("{not json".to_string(), "not a JWK Set"),
            ("{\"keys\":[]}".to_string(), "no keys"),
            (no_kid, "no `kid`"),
            (many, "101 keys"),
        ] {
            let err = KeyDocument::parse(doc.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::KeyDocument(_)), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn first_good_document_is_loaded_and_copied() {
        let mut keys = LastGoodKeys::new(MINUTE);
        assert!(keys.is_due(0));
        let r = keys.apply_store_read(0, Fetched::Found(key_set_json().into_bytes()));
        assert_eq!(kinds(&r.events), [EventKind::KeyDocumentLoaded]);
        assert!(r.store_copy);
        let version = keys.current().unwrap().version().to_string();
        assert_eq!(r.events[0].subject.as_deref(), Some(version.as_str()));
    }

    #[test]
    fn rereads_only_after_the_interval_and_is_quiet_when_unchanged() {
        let mut keys = LastGoodKeys::new(MINUTE);
        keys.apply_store_read(1_000, Fetched::Found(key_set_json().into_bytes()));
        assert!(!keys.is_due(1_000));
        assert!(!keys.is_due(60_999));
        assert!(keys.is_due(61_000));
        let r = keys.apply_store_read(61_000, Fetched::Found(key_set_json().into_bytes()));
        assert_eq!(r, KeyRefresh::default());
        // The same keys, spelt differently: a parse, but no new version.
        let pretty = key_set_json().replace(',', ", ");
        let r = keys.apply_store_read(122_000, Fetched::Found(pretty.into_bytes()));
        assert_eq!(r, KeyRefresh::default());
    }

    #[test]
    fn a_new_version_replaces_the_old_one() {
        let mut keys = LastGoodKeys::new(Duration::ZERO);
        keys.apply_store_read(0, Fetched::Found(key_set_json().into_bytes()));
        let old = keys.current().unwrap().version().to_string();
        assert!(keys.is_due(0), "interval 0 reads on every request");
        let r = keys.apply_store_read(1, Fetched::Found(other_key_set_json().into_bytes()));
        assert_eq!(kinds(&r.events), [EventKind::KeyDocumentLoaded]);
        assert!(r.store_copy);
        assert_ne!(keys.current().unwrap().version(), old);
    }

    #[test]
    fn invalid_missing_or_failed_reads_keep_the_last_good_document() {
        let mut keys = LastGoodKeys::new(Duration::ZERO);
        keys.apply_store_read(0, Fetched::Found(key_set_json().into_bytes()));
        let good = keys.current().unwrap().clone();
        let reads = [
            (
                Fetched::Found(b"{\"keys\": [{}]}".to_vec()),
                EventKind::KeyDocumentRejected,
            ),
            (
                Fetched::Found(b"garbage".to_vec()),
                EventKind::KeyDocumentRejected,
            ),
            (Fetched::Missing, EventKind::KeyDocumentMissing),
            (
                Fetched::Failed(Error::Kv {
                    key: "jwks".into(),
                    message: "timeout".into(),
                }),
                EventKind::KeyStoreFailed,
            ),
        ];
        for (i, (read, want)) in reads.into_iter().enumerate() {
            let r = keys.apply_store_read(i as u64 + 1, read);
            assert_eq!(kinds(&r.events), [want]);
            assert!(!r.store_copy);
            assert_eq!(keys.current(), Some(&good), "after {want:?}");
        }
        let rejected = keys.apply_store_read(9, Fetched::Found(b"[]".to_vec()));
        assert!(
            rejected.events[0]
                .error
                .as_deref()
                .unwrap()
                .contains("key document rejected"),
            "{rejected:?}"
        );
    }

    #[test]
    fn without_any_copy_the_store_is_asked_again_within_seconds_not_every_request() {
        let mut keys = LastGoodKeys::new(MINUTE);
        keys.apply_store_read(0, Fetched::Missing);
        assert!(keys.current().is_none());
        assert!(!keys.is_due(999), "not on every request");
        assert!(keys.is_due(1_000), "no copy: do not wait a minute to retry");
        keys.apply_store_read(1_000, Fetched::Found(b"{}".to_vec()));
        assert!(keys.current().is_none());
        assert!(!keys.is_due(2_999), "backing off");
        assert!(keys.is_due(3_000));
        // A good document ends the back-off: the refresh interval applies.
        keys.apply_store_read(3_000, Fetched::Found(key_set_json().into_bytes()));
        assert!(!keys.is_due(62_999));
        assert!(keys.is_due(63_000));
    }

    /// The reads one isolate makes while KV has no document and a request
    /// for the key set arrives every `every_ms`, over `for_ms`.
    fn reads_while_missing(refresh: Duration, every_ms: u64, for_ms: u64) -> Vec<u64> {
        let mut keys = LastGoodKeys::new(refresh);
        let mut reads = Vec::new();
        for now in (0..for_ms).step_by(every_ms as usize) {
            if keys.claim_read(now) {
                reads.push(now);
                let r = keys.apply_store_read(now, Fetched::Missing);
                assert_eq!(kinds(&r.events), [EventKind::KeyDocumentMissing]);
            }
        }
        reads
    }

    #[test]
    fn without_any_copy_reads_back_off_to_one_every_ten_seconds() {
        // 6000 requests in a minute: 9 reads, not 6000.
        assert_eq!(
            reads_while_missing(MINUTE, 10, 60_000),
            [
                0, 1_000, 3_000, 7_000, 15_000, 25_000, 35_000, 45_000, 55_000
            ]
        );
        // Never waits longer than the refresh interval.
        assert_eq!(
            reads_while_missing(Duration::from_secs(3), 10, 12_000),
            [0, 1_000, 3_000, 6_000, 9_000]
        );
        // `KV_REFRESH_SECONDS = 0` asks for a read on every request.
        assert_eq!(reads_while_missing(Duration::ZERO, 1, 5), [0, 1, 2, 3, 4]);
        // An hour of failed reads does not overflow the back-off: 0, 1, 3,
        // 7 s, then every 10 s from 15 s to 3595 s.
        let hour = reads_while_missing(MINUTE, 1_000, 3_600_000);
        assert_eq!(hour.len(), 4 + 359);
        assert!(hour.windows(2).all(|w| w[1] - w[0] <= 10_000));
    }

    #[test]
    fn a_claimed_read_keeps_interleaved_requests_from_reading_too() {
        let mut keys = LastGoodKeys::new(MINUTE);
        // A fresh isolate: nothing read yet, every first request may read.
        assert!(keys.claim_read(0));
        assert!(keys.claim_read(0));
        keys.apply_store_read(5, Fetched::Missing);
        // Due again at 1005: the first claim wins, the rest wait for it.
        assert!(!keys.claim_read(1_004));
        assert!(keys.claim_read(1_005));
        assert!(!keys.claim_read(1_006));
        keys.apply_store_read(1_020, Fetched::Found(key_set_json().into_bytes()));
        assert!(keys.current().is_some());
        // With a document, the same at each refresh.
        assert!(!keys.claim_read(61_019));
        assert!(keys.claim_read(61_020));
        assert!(!keys.claim_read(61_021));
        assert!(keys.current().is_some(), "still served meanwhile");
    }

    #[test]
    fn the_cache_copy_is_validated_and_used_only_without_a_current_document() {
        let mut keys = LastGoodKeys::new(MINUTE);
        let e = keys.restore_copy(Fetched::Found(b"{\"keys\":[{\"kty\":\"RSA\"}]}".to_vec()));
        assert_eq!(e.map(|e| e.event), Some(EventKind::KeyCopyRejected));
        assert!(keys.current().is_none());
        assert_eq!(keys.restore_copy(Fetched::Missing), None);

        let e = keys.restore_copy(Fetched::Found(key_set_json().into_bytes()));
        assert_eq!(e.map(|e| e.event), Some(EventKind::KeyDocumentRestored));
        let restored = keys.current().unwrap().clone();
        assert!(
            keys.is_due(0),
            "a restored copy does not count as a KV read"
        );

        // A second copy is ignored while one is in force.
        assert_eq!(
            keys.restore_copy(Fetched::Found(other_key_set_json().into_bytes())),
            None
        );
        assert_eq!(keys.current(), Some(&restored));

        // KV coming back with the same keys is not a new version: no event,
        // and no second copy write.
        let r = keys.apply_store_read(5, Fetched::Found(key_set_json().into_bytes()));
        assert_eq!(r, KeyRefresh::default());
        assert_eq!(keys.current(), Some(&restored));
    }
}
