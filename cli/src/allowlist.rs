//! `aws2azure allowlist`: Microsoft's Service Tags download → the edge's
//! allowlist document, with what changed against the current one.

use std::collections::BTreeSet;
use std::path::Path;

use aws2azure_shared::allowlist::{AllowlistDocument, Cidr};
use aws2azure_shared::service_tags;

use crate::Error;

/// What changed between the current allowlist and the new one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<Cidr>,
    pub removed: Vec<Cidr>,
    pub unchanged: usize,
}

impl Change {
    pub fn between(current: &AllowlistDocument, new: &AllowlistDocument) -> Self {
        let old: BTreeSet<Cidr> = current.prefixes.iter().copied().collect();
        let new: BTreeSet<Cidr> = new.prefixes.iter().copied().collect();
        Self {
            added: new.difference(&old).copied().collect(),
            removed: old.difference(&new).copied().collect(),
            unchanged: old.intersection(&new).count(),
        }
    }
}

pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds the allowlist document from a Service Tags file.
pub fn from_service_tags(path: &Path, tag: &str) -> Result<AllowlistDocument, Error> {
    let bytes = read(path)?;
    let tag = service_tags::select(&bytes, tag).map_err(|source| Error::Input {
        context: path.display().to_string(),
        source,
    })?;
    Ok(tag.into_allowlist_document())
}

pub fn read_current(path: &Path) -> Result<AllowlistDocument, Error> {
    AllowlistDocument::from_json(&read(path)?).map_err(|source| Error::Input {
        context: path.display().to_string(),
        source,
    })
}

/// A human summary of the new document and its change.
pub fn summary(doc: &AllowlistDocument, change: Option<&Change>) -> String {
    let v6 = doc
        .prefixes
        .iter()
        .filter(|c| c.net().network().is_ipv6())
        .count();
    let mut out = format!(
        "{}{}: {} prefixes ({} IPv4, {} IPv6)\n",
        doc.source,
        doc.change_number
            .map(|n| format!(" (change {n})"))
            .unwrap_or_default(),
        doc.prefixes.len(),
        doc.prefixes.len() - v6,
        v6
    );
    match change {
        None => out.push_str("no current allowlist given (--current): nothing to compare\n"),
        Some(c) if c.added.is_empty() && c.removed.is_empty() => {
            out.push_str(&format!(
                "unchanged against the current allowlist ({} prefixes)\n",
                c.unchanged
            ));
        }
        Some(c) => {
            out.push_str(&format!(
                "against the current allowlist: {} added, {} removed, {} unchanged\n",
                c.added.len(),
                c.removed.len(),
                c.unchanged
            ));
            for a in &c.added {
                out.push_str(&format!("  + {a}\n"));
            }
            for r in &c.removed {
                out.push_str(&format!("  - {r}\n"));
            }
        }
    }
    out
}
