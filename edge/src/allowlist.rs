//! The allowlist in force: the `AzureActiveDirectory` ranges compiled into
//! the edge, or an override an operator published to KV.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws2azure_shared::allowlist::{Allowlist, AllowlistDocument};

use crate::Error;
use crate::key_document::Fetched;
use crate::log::{Event, EventKind};
use crate::refresh::RefreshClock;

/// The `AzureActiveDirectory` service tag from the shared crate's reference
/// data, turned into a compact allowlist document by `build.rs`.
const BUILTIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/azure_ad_allowlist.json"));

/// The compiled-in allowlist document, parsed on first use per isolate
/// (about 20 µs natively), with the parser KV overrides need anyway.
pub fn builtin_document() -> &'static AllowlistDocument {
    static DOC: OnceLock<AllowlistDocument> = OnceLock::new();
    DOC.get_or_init(|| {
        AllowlistDocument::from_json(BUILTIN)
            .expect("build.rs wrote a valid allowlist document (checked by this crate's tests)")
    })
}

/// The compiled-in allowlist, built once per isolate.
pub fn builtin_allowlist() -> Arc<Allowlist> {
    static LIST: OnceLock<Arc<Allowlist>> = OnceLock::new();
    LIST.get_or_init(|| Arc::new(builtin_document().allowlist()))
        .clone()
}

fn label(origin: &str, doc: &AllowlistDocument) -> String {
    match doc.change_number {
        Some(change) => format!("{origin}:{}#{change}", doc.source),
        None => format!("{origin}:{}", doc.source),
    }
}

#[derive(Debug)]
struct Override {
    raw: Vec<u8>,
    list: Arc<Allowlist>,
    label: String,
}

/// The allowlist an isolate applies, and when it last asked KV for an
/// override. Sans I/O, like [`crate::LastGoodKeys`].
#[derive(Debug)]
pub struct AllowlistState {
    builtin: Arc<Allowlist>,
    builtin_label: String,
    override_: Option<Override>,
    clock: RefreshClock,
}

impl AllowlistState {
    pub fn new(builtin: Arc<Allowlist>, builtin_label: String, refresh: Duration) -> Self {
        Self {
            builtin,
            builtin_label,
            override_: None,
            clock: RefreshClock::new(refresh),
        }
    }

    /// Starts from the compiled-in `AzureActiveDirectory` list.
    pub fn with_builtin(refresh: Duration) -> Self {
        Self::new(
            builtin_allowlist(),
            label("builtin", builtin_document()),
            refresh,
        )
    }

    pub fn current(&self) -> &Arc<Allowlist> {
        self.override_.as_ref().map_or(&self.builtin, |o| &o.list)
    }

    /// Where [`Self::current`] came from, e.g. `builtin:AzureActiveDirectory#24`.
    pub fn label(&self) -> &str {
        self.override_
            .as_ref()
            .map_or(&self.builtin_label, |o| &o.label)
    }

    pub fn is_due(&self, now_ms: u64) -> bool {
        self.clock.is_due(now_ms)
    }

    /// Takes in what KV returned for the override key. A missing key means
    /// "no override": the compiled-in list. A failed read or an invalid
    /// document changes nothing.
    pub fn apply_store_read(&mut self, now_ms: u64, fetched: Fetched) -> Option<Event> {
        self.clock.checked(now_ms);
        match fetched {
            Fetched::Found(raw) if self.override_.as_ref().is_some_and(|o| o.raw == raw) => None,
            Fetched::Found(raw) => match AllowlistDocument::from_json(&raw) {
                Ok(doc) => {
                    let label = label("kv", &doc);
                    let event = Event::new(EventKind::AllowlistLoaded)
                        .about(format!("{label} ({} prefixes)", doc.prefixes.len()));
                    self.override_ = Some(Override {
                        raw,
                        list: Arc::new(doc.allowlist()),
                        label,
                    });
                    Some(event)
                }
                Err(err) => Some(
                    Event::new(EventKind::AllowlistRejected)
                        .about(self.label())
                        .failed(Error::AllowlistDocument(err)),
                ),
            },
            Fetched::Missing => self
                .override_
                .take()
                .map(|gone| Event::new(EventKind::AllowlistRemoved).about(gone.label)),
            Fetched::Failed(err) => Some(
                Event::new(EventKind::AllowlistStoreFailed)
                    .about(self.label())
                    .failed(err),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> std::net::IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_builtin_list_is_the_real_azure_ad_tag() {
        let doc = builtin_document();
        let source =
            include_bytes!("../../shared/data/service-tags/AzureActiveDirectory.serviceTag.json");
        let expected = aws2azure_shared::service_tags::select(source, "AzureActiveDirectory")
            .unwrap()
            .into_allowlist_document();
        assert_eq!(
            doc, &expected,
            "build.rs shipped exactly the tag's prefixes"
        );
        assert_eq!(doc.source, "AzureActiveDirectory");
        assert_eq!(doc.change_number, Some(24));
        assert_eq!(doc.prefixes.len(), 216);
        let list = builtin_allowlist();
        // login.microsoftonline.com's range and one IPv6 range of the tag.
        assert!(list.contains(ip("20.190.128.1")));
        assert!(list.contains(ip("::ffff:20.190.128.1")));
        assert!(list.contains(ip("2603:1006:2000::1")));
        assert!(!list.contains(ip("8.8.8.8")));
        assert!(!list.contains(ip("2001:db8::1")));
        assert!(Arc::ptr_eq(&list, &builtin_allowlist()), "built once");
    }

    #[test]
    fn an_override_replaces_the_builtin_list_until_it_is_removed() {
        let mut state = AllowlistState::with_builtin(Duration::from_secs(60));
        assert_eq!(state.label(), "builtin:AzureActiveDirectory#24");
        assert!(state.is_due(0));
        let doc =
            br#"{"source":"office","changeNumber":7,"prefixes":["192.0.2.0/24","2001:db8::/32"]}"#;
        let e = state
            .apply_store_read(0, Fetched::Found(doc.to_vec()))
            .unwrap();
        assert_eq!(e.event, EventKind::AllowlistLoaded);
        assert_eq!(e.subject.as_deref(), Some("kv:office#7 (2 prefixes)"));
        assert_eq!(state.label(), "kv:office#7");
        assert!(state.current().contains(ip("192.0.2.9")));
        assert!(!state.current().contains(ip("20.190.128.1")));
        assert!(!state.is_due(59_999));
        assert!(state.is_due(60_000));

        assert_eq!(
            state.apply_store_read(60_000, Fetched::Found(doc.to_vec())),
            None,
            "unchanged: quiet"
        );

        let e = state.apply_store_read(120_000, Fetched::Missing).unwrap();
        assert_eq!(e.event, EventKind::AllowlistRemoved);
        assert_eq!(state.label(), "builtin:AzureActiveDirectory#24");
        assert!(state.current().contains(ip("20.190.128.1")));
        assert_eq!(state.apply_store_read(180_000, Fetched::Missing), None);
    }

    #[test]
    fn invalid_overrides_and_store_failures_change_nothing() {
        let mut state = AllowlistState::with_builtin(Duration::ZERO);
        let good = br#"{"source":"office","prefixes":["192.0.2.0/24"]}"#;
        state.apply_store_read(0, Fetched::Found(good.to_vec()));
        for (read, want) in [
            (
                Fetched::Found(br#"{"source":"x","prefixes":[]}"#.to_vec()),
                "no prefixes",
            ),
            (
                Fetched::Found(br#"{"source":"x","prefixes":["10.0.0.0/40"]}"#.to_vec()),
                "exceeds 32",
            ),
            (
                Fetched::Found(b"nope".to_vec()),
                "allowlist document rejected",
            ),
            (
                Fetched::Failed(Error::Kv {
                    key: "allowlist".into(),
                    message: "boom".into(),
                }),
                "boom",
            ),
        ] {
            let e = state.apply_store_read(1, read).unwrap();
            assert!(e.error.as_deref().unwrap().contains(want), "{e:?}");
            assert_eq!(e.subject.as_deref(), Some("kv:office"));
            assert_eq!(state.label(), "kv:office");
            assert!(state.current().contains(ip("192.0.2.1")));
        }
    }
}
