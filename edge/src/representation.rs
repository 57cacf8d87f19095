//! A served document: its bytes and their strong entity tag.

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Characters of the hash kept as the short version id in logs: 72 bits,
/// plenty to tell a handful of published versions apart.
const VERSION_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Representation {
    body: Bytes,
    /// `"<base64url SHA-256 of body>"`: strong, because the bytes are
    /// exactly what is served (no per-response encoding happens here).
    etag: String,
}

impl Representation {
    pub(crate) fn new(body: Bytes) -> Self {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&body));
        Self {
            body,
            etag: format!("\"{hash}\""),
        }
    }

    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    pub(crate) fn etag(&self) -> &str {
        &self.etag
    }

    pub(crate) fn version(&self) -> &str {
        &self.etag[1..=VERSION_LEN]
    }

    /// RFC 9110 section 13.1.2: `If-None-Match` matches when the header is
    /// `*` or lists this entity tag under the weak comparison (so `W/"x"`
    /// matches `"x"`). A malformed header matches nothing, which serves the
    /// full document: the safe answer.
    pub(crate) fn matches_if_none_match(&self, header: &str) -> bool {
        let header = header.trim();
        if header == "*" {
            return true;
        }
        let ours = &self.etag[..];
        let mut rest = header;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                return false;
            }
            let tag = rest.strip_prefix("W/").unwrap_or(rest);
            let Some(after_quote) = tag.strip_prefix('"') else {
                return false;
            };
            let Some(end) = after_quote.find('"') else {
                return false;
            };
            let candidate = &tag[..end + 2];
            rest = after_quote[end + 1..].trim_start_matches([' ', '\t']);
            // After a tag only a separator may follow.
            if !(rest.is_empty() || rest.starts_with(',')) {
                return false;
            }
            if candidate == ours {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_strong_quoted_and_content_addressed() {
        let a = Representation::new(Bytes::from_static(b"{\"keys\":[]}"));
        let b = Representation::new(Bytes::from_static(b"{\"keys\":[ ]}"));
        assert_ne!(a.etag(), b.etag());
        assert_eq!(a.etag().len(), 43 + 2);
        assert!(a.etag().starts_with('"') && a.etag().ends_with('"'));
        assert_eq!(a.version().len(), VERSION_LEN);
        assert_eq!(a, Representation::new(Bytes::from_static(b"{\"keys\":[]}")));
    }

    #[test]
    fn if_none_match_follows_rfc_9110() {
        let r = Representation::new(Bytes::from_static(b"x"));
        let tag = r.etag().to_string();
        let other = "\"0000000000000000000000000000000000000000000\"";
        let matching = [
            tag.clone(),
            "*".to_string(),
            " * ".to_string(),
            format!("W/{tag}"),
            format!("{other}, {tag}"),
            format!("{other},{tag}"),
            format!("{other} ,\t W/{tag} , \"z\""),
            format!(", {tag}"),
        ];
        for header in &matching {
            assert!(r.matches_if_none_match(header), "{header}");
        }
        let not_matching = [
            String::new(),
            other.to_string(),
            tag.trim_matches('"').to_string(),
            format!("{tag}x"),
            format!("\"{tag}\""),
            format!("w/{tag}"),
            "\"unterminated".to_string(),
            format!("{other} {tag}"),
            "*, \"a\"".to_string(),
        ];
        for header in &not_matching {
            assert!(!r.matches_if_none_match(header), "{header}");
        }
    }
}
