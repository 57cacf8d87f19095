//! Microsoft's "Azure IP Ranges and Service Tags" download.
//!
//! The real file is 4 to 6 MB with about 3,000 tags; we need one. Entries are
//! read with their `properties` left as borrowed raw JSON, and only the
//! selected tag's properties are parsed, so the file is never held twice
//! (no DOM of it is built) and the other tags cost a scan.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::allowlist::{AllowlistDocument, Cidr};
use crate::{Error, echo, json_error};

/// Longest echo of the requested tag name in an error.
const MAX_TAG_ECHO: usize = 80;

/// The tag Entra's sign-in and token endpoints are published under.
pub const DEFAULT_TAG: &str = "AzureActiveDirectory";

/// One service tag with its prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTag {
    pub name: String,
    pub change_number: Option<u64>,
    pub prefixes: Vec<Cidr>,
}

impl ServiceTag {
    pub fn into_allowlist_document(self) -> AllowlistDocument {
        AllowlistDocument {
            source: self.name,
            change_number: self.change_number,
            prefixes: self.prefixes,
        }
    }
}

#[derive(Deserialize)]
struct File<'a> {
    #[serde(borrow)]
    values: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    properties: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    #[serde(default)]
    change_number: Option<u64>,
    address_prefixes: Vec<String>,
}

/// Picks the tag named `tag` (exact, case-sensitive) from a whole Service
/// Tags file (`{"changeNumber", "cloud", "values": [...]}`) or from a single
/// tag entry (`{"name", "id", "properties"}`), as mirrors publish them.
pub fn select(json: &[u8], tag: &str) -> Result<ServiceTag, Error> {
    let not_json = |e: serde_json::Error| {
        let hint = if e.is_eof() {
            " (the file looks truncated)"
        } else {
            ""
        };
        Error::ServiceTags(format!("not valid JSON{hint}: {}", json_error(&e)))
    };
    // Validate the whole document first: a truncated download must not yield
    // a partial tag just because the wanted entry came early.
    let value: &RawValue = serde_json::from_slice(json).map_err(not_json)?;
    let entries: Vec<Entry<'_>> = match serde_json::from_str::<File<'_>>(value.get()) {
        Ok(file) => file.values,
        Err(_) => match serde_json::from_str::<Entry<'_>>(value.get()) {
            Ok(single) => vec![single],
            Err(_) => {
                return Err(Error::ServiceTags(
                    "expected the Service Tags download (`{\"values\": [...]}`) or one tag \
                     entry (`{\"name\", \"properties\"}`)"
                        .into(),
                ));
            }
        },
    };
    let available = entries.len();
    let shown = echo(tag, MAX_TAG_ECHO);
    let entry = entries
        .into_iter()
        .find(|e| e.name == tag)
        .ok_or_else(|| Error::TagNotFound {
            tag: shown.clone(),
            available,
        })?;
    let props: Properties = serde_json::from_str(entry.properties.get()).map_err(|e| {
        Error::ServiceTags(format!(
            "tag `{shown}` has no usable `addressPrefixes`: {}",
            json_error(&e)
        ))
    })?;
    if props.address_prefixes.is_empty() {
        return Err(Error::ServiceTags(format!(
            "tag `{shown}` has no address prefixes"
        )));
    }
    let prefixes = props
        .address_prefixes
        .iter()
        .map(|p| p.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::ServiceTags(format!("tag `{shown}`: {e}")))?;
    Ok(ServiceTag {
        name: entry.name.into_owned(),
        change_number: props.change_number,
        prefixes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"changeNumber": 3, "cloud": "Public", "values": [
        {"name": "Other", "id": "Other", "properties": {"changeNumber": 1, "addressPrefixes": ["1.0.0.0/8"]}},
        {"name": "AzureActiveDirectory", "id": "AzureActiveDirectory",
         "properties": {"changeNumber": 24, "region": "", "addressPrefixes": ["20.190.128.0/18", "2603:1006:2000::/48"]}}
    ]}"#;

    #[test]
    fn picks_the_named_tag_only() {
        let tag = select(FILE.as_bytes(), DEFAULT_TAG).unwrap();
        assert_eq!(tag.name, DEFAULT_TAG);
        assert_eq!(tag.change_number, Some(24));
        assert_eq!(tag.prefixes.len(), 2);
        let other = select(FILE.as_bytes(), "Other").unwrap();
        assert_eq!(other.prefixes[0].to_string(), "1.0.0.0/8");
    }

    #[test]
    fn refuses_truncated_missing_and_malformed() {
        let truncated = &FILE.as_bytes()[..FILE.len() - 20];
        let err = select(truncated, DEFAULT_TAG).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        let err = select(FILE.as_bytes(), "azureactivedirectory").unwrap_err();
        assert_eq!(
            err,
            Error::TagNotFound {
                tag: "azureactivedirectory".into(),
                available: 2
            }
        );
        assert!(err.to_string().contains("case-sensitive"));

        let err = select(br#"{"values": 3}"#, DEFAULT_TAG).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected the Service Tags download"),
            "{err}"
        );

        let bad = FILE.replace("20.190.128.0/18", "20.190.128.0/33");
        let err = select(bad.as_bytes(), DEFAULT_TAG).unwrap_err();
        assert!(err.to_string().contains("exceeds 32"), "{err}");

        let empty = FILE.replace(r#"["20.190.128.0/18", "2603:1006:2000::/48"]"#, "[]");
        let err = select(empty.as_bytes(), DEFAULT_TAG).unwrap_err();
        assert!(err.to_string().contains("no address prefixes"), "{err}");
    }
}
