//! The one structured log line the edge writes per request.

use serde::Serialize;

/// Longest client address or path kept in a log record: enough for any real
/// address or route, bounded so that a hostile request cannot bloat the log.
const MAX_LOGGED_LEN: usize = 256;

/// One request, as the operator reads it in Workers Logs: what was asked,
/// what was answered, what the allowlist decided, which key document was
/// in force, and whatever happened to the stores on the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `allow`, `monitor-deny` or `deny`; absent when the edge is
    /// misconfigured and no decision was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowlist_mode: Option<&'static str>,
    /// Where the allowlist in force came from (absent in mode `off`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowlist: Option<String>,
    /// The client address as the shell received it (`CF-Connecting-IP` in
    /// the Worker), even when it does not parse: that is what was judged.
    pub client: Option<String>,
    /// The Cloudflare data centre, when the runtime tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo: Option<String>,
    /// Short version id of the key document in force, if there is one.
    pub key_version: Option<String>,
    /// Store reads, rejections and fallbacks that happened while serving
    /// this request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Why the edge could not serve at all (a configuration error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The setting that error names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<&'static str>,
}

impl LogRecord {
    pub(crate) fn new(method: &str, path: &str, client: Option<&str>, colo: Option<&str>) -> Self {
        Self {
            method: bounded(method),
            path: bounded(path),
            status: 0,
            decision: None,
            allowlist_mode: None,
            allowlist: None,
            client: client.map(bounded),
            colo: colo.map(bounded),
            key_version: None,
            events: Vec::new(),
            error: None,
            setting: None,
        }
    }

    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a log record always serialises")
    }
}

/// Something that happened to the key document or the allowlist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// A stable name, e.g. `key_document_rejected`; see [`EventKind`].
    pub event: EventKind,
    /// The key document version or allowlist label the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    pub fn new(event: EventKind) -> Self {
        Self {
            event,
            subject: None,
            error: None,
        }
    }

    pub fn about(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn failed(mut self, error: impl ToString) -> Self {
        self.error = Some(error.to_string());
        self
    }
}

/// The events the edge logs; the names are what operators alert on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new key document version was read from KV and is now served.
    KeyDocumentLoaded,
    /// The key document in KV failed validation; the last good one is served.
    KeyDocumentRejected,
    /// KV has no key document; the last good one is served.
    KeyDocumentMissing,
    /// KV failed; the last good one is served.
    KeyStoreFailed,
    /// A fresh isolate took the last good key document from the Cache API.
    KeyDocumentRestored,
    /// The Cache API copy failed validation and was not used.
    KeyCopyRejected,
    /// Reading or writing the Cache API copy failed.
    KeyCopyFailed,
    /// An allowlist override was read from KV and is now in force.
    AllowlistLoaded,
    /// The allowlist override in KV failed validation; the previous
    /// allowlist stays in force.
    AllowlistRejected,
    /// The allowlist override disappeared from KV; the built-in list is back.
    AllowlistRemoved,
    /// KV failed while reading the allowlist override; nothing changed.
    AllowlistStoreFailed,
}

fn bounded(text: &str) -> String {
    if text.len() <= MAX_LOGGED_LEN {
        return text.to_string();
    }
    let mut end = MAX_LOGGED_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_LOGGED_LEN);
        let record = LogRecord::new("GET", &long, Some(&long), None);
        assert!(record.path.len() <= MAX_LOGGED_LEN + "…".len());
        assert!(record.path.ends_with('…'));
        assert_eq!(record.client.as_deref(), Some(record.path.as_str()));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn serialises_to_one_line_with_snake_case_events() {
        let mut record = LogRecord::new("GET", "/jwks\n\"x", Some("::1"), Some("AMS"));
        record.status = 200;
        record.events.push(
            Event::new(EventKind::KeyDocumentRejected)
                .about("abc")
                .failed("bad"),
        );
        let line = record.to_json();
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/jwks\n\"x");
        assert_eq!(v["events"][0]["event"], "key_document_rejected");
        assert_eq!(v["colo"], "AMS");
        assert!(v.get("error").is_none());
        assert!(v["key_version"].is_null(), "always present, null if none");
    }
}
