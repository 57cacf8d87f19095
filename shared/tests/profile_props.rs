//! Properties of the profile configuration parser (`PROFILES`, read once at
//! Lambda init and by the CLI): valid configurations round-trip field for
//! field; arbitrary and mutated documents never panic and are refused with
//! a clear, bounded error.

mod support;

use std::collections::BTreeMap;

use aws2azure_shared::Error;
use aws2azure_shared::profile::{
    Authority, ClientId, DEFAULT_AUTHORITY, ProfileConfig, ProfileName, Profiles, Scope, Subject,
    TenantId,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{
    arb_byte_edit, arb_json, arb_mutation, arb_text, assert_clear_error, config, edit_bytes,
    maybe_huge, mutate,
};

fn arb_guid() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
}

/// One valid profile as configuration JSON.
fn arb_profile() -> impl Strategy<Value = Value> {
    (
        prop_oneof![arb_guid(), "[a-z]([a-z0-9-]{0,10}[a-z0-9])?\\.(com|net|onmicrosoft\\.com)"],
        arb_guid(),
        "https://[a-z]{1,12}\\.(com|net)(/[a-z]{1,8})?/\\.default",
        "[A-Za-z0-9:._/-]{1,60}",
        proptest::option::of(prop_oneof![
            Just("https://login.microsoftonline.us".to_string()),
            Just("http://127.0.0.1:8080/".to_string()),
            "https://[a-z]{1,10}\\.example",
        ]),
    )
        .prop_map(|(tenant, client, scope, subject, authority)| {
            let mut p = json!({"tenant_id": tenant, "client_id": client, "scope": scope, "subject": subject});
            if let Some(a) = authority {
                p["authority"] = json!(a);
            }
            p
        })
}

fn arb_profiles() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map("[A-Za-z0-9][A-Za-z0-9._-]{0,20}", arb_profile(), 1..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A clear refusal: the profile error types, a bounded message.
fn check_profiles_parse(document: &str) {
    match Profiles::from_json(document) {
        Ok(profiles) => {
            assert!(!profiles.is_empty());
            for p in profiles.iter() {
                // Everything the broker later relies on holds.
                assert!(ProfileName::parse(p.name.as_str()).is_ok());
                assert!(p.scope.as_str().ends_with("/.default"));
                assert!(
                    p.token_endpoint()
                        .starts_with(&format!("{}/{}/", p.authority, p.tenant_id))
                );
            }
        }
        Err(e) => {
            assert!(
                matches!(e, Error::InvalidProfiles(_) | Error::InvalidProfile { .. }),
                "{e:?}"
            );
            assert_clear_error(&e);
        }
    }
}

/// Only the bound on the message (a document that may parse).
fn check_profiles_bounded(document: &str) {
    if let Err(e) = Profiles::from_json(document) {
        assert_clear_error(&e);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_profiles_round_trip(doc in arb_profiles()) {
        let text = doc.to_string();
        let profiles = Profiles::from_json(&text).unwrap();
        let configs: BTreeMap<String, ProfileConfig> = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(profiles.len(), configs.len());
        for (name, cfg) in &configs {
            let p = profiles.get(name).unwrap();
            prop_assert_eq!(p.name.as_str(), name.as_str());
            prop_assert_eq!(p.tenant_id.as_str(), cfg.tenant_id.as_str());
            prop_assert_eq!(p.client_id.as_str(), cfg.client_id.as_str());
            prop_assert_eq!(p.scope.as_str(), cfg.scope.as_str());
            prop_assert_eq!(p.subject.as_str(), cfg.subject.as_str());
            let authority = cfg.authority.as_deref().unwrap_or(DEFAULT_AUTHORITY);
            prop_assert_eq!(p.authority.as_str(), authority.strip_suffix('/').unwrap_or(authority));
        }
        // The configuration serialises back to the same profiles.
        let again = Profiles::from_json(&serde_json::to_string(&configs).unwrap()).unwrap();
        prop_assert_eq!(again, profiles);
    }

    #[test]
    fn arbitrary_documents(bytes in proptest::collection::vec(any::<u8>(), 0..256), doc in arb_json()) {
        check_profiles_parse(&String::from_utf8_lossy(&bytes));
        check_profiles_parse(&doc.to_string());
        check_profiles_parse(&json!({ "p": doc }).to_string());
    }

    #[test]
    fn mutated_documents(
        doc in arb_profiles(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        edits in proptest::collection::vec(arb_byte_edit(), 1..3),
    ) {
        check_profiles_parse(&mutate(doc.clone(), &mutations).to_string());
        check_profiles_parse(&String::from_utf8_lossy(&edit_bytes(doc.to_string().into_bytes(), &edits)));
    }

    /// Each field of a valid profile in turn replaced by arbitrary text:
    /// the validators' own messages are bounded.
    #[test]
    fn each_field_of_any_text(
        doc in arb_profile(),
        field in prop::sample::select(vec!["tenant_id", "client_id", "scope", "subject", "authority"]),
        text in arb_text(),
        huge in maybe_huge(),
    ) {
        let text = huge.map_or(text, |h| h.text());
        let mut doc = doc;
        doc[field] = json!(text);
        let document = json!({ "p": doc }).to_string();
        check_profiles_parse(&document);
        check_profiles_bounded(&document);
        for result in [
            TenantId::parse(&text).map(drop),
            ClientId::parse(&text).map(drop),
            Scope::parse(&text).map(drop),
            Subject::parse(&text).map(drop),
            Authority::parse(&text).map(drop),
            ProfileName::parse(&text).map(drop),
        ] {
            if let Err(e) = result {
                assert_clear_error(&e);
            }
        }
    }
}

/// Serde's messages are passed on whole by `Profiles::from_json`: a
/// wrongly typed value or an unknown member name was echoed in full; now
/// bounded as the other shared parsers do.
#[test]
fn profile_json_errors_are_bounded() {
    let huge = "x".repeat(100_000);
    check_profiles_bounded(&json!({ "p": huge }).to_string());
    check_profiles_bounded(&json!({ "p": { huge.as_str(): 1 } }).to_string());
}
