//! Properties of every shared parser that sees input from outside (key sets
//! from KV or a remote issuer, allowlist documents, the Service Tags
//! download, issuer URLs, discovery documents): arbitrary bytes and
//! structure-aware mutations of valid documents never panic, are refused
//! with a clear, bounded message, and valid documents round-trip.

mod support;

use aws2azure_shared::Error;
use aws2azure_shared::allowlist::{AllowlistDocument, AllowlistMode, Cidr};
use aws2azure_shared::discovery::{DiscoveryDocument, Issuer};
use aws2azure_shared::jwk::{Jwk, JwkSet, KeyId, MAX_KEYS, RawJwk};
use aws2azure_shared::service_tags;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{
    arb_byte_edit, arb_json, arb_mutation, arb_text, assert_clear_error, config, edit_bytes,
    maybe_huge, mutate,
};

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------- keys

/// An RSA public key's components: a 2048- to 4160-bit odd modulus and a
/// small odd exponent. Primality does not matter to the parser.
fn arb_components() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let modulus = proptest::collection::vec(any::<u8>(), 256..=520).prop_map(|mut n| {
        n[0] |= 0x80;
        *n.last_mut().unwrap() |= 1;
        n
    });
    let exponent = prop_oneof![
        Just(vec![1, 0, 1]),
        Just(vec![3]),
        proptest::collection::vec(any::<u8>(), 1..=8).prop_map(|mut e| {
            e[0] |= 1;
            *e.last_mut().unwrap() |= 1;
            if e == [1] {
                e = vec![3];
            }
            e
        }),
    ];
    (modulus, exponent)
}

fn arb_kid() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[A-Za-z0-9._:/-]{1,64}".prop_map(Some),
        "\\PC{1,40}".prop_map(Some),
    ]
}

fn arb_key() -> impl Strategy<Value = Jwk> {
    (arb_components(), arb_kid()).prop_map(|((n, e), kid)| {
        let key = Jwk::from_rsa_components(&n, &e).expect("valid components");
        match kid.map(KeyId::new) {
            Some(Ok(kid)) => key.with_kid(kid),
            _ => key,
        }
    })
}

fn arb_key_set() -> impl Strategy<Value = JwkSet> {
    proptest::collection::vec(arb_key(), 1..=4).prop_map(|keys| {
        let mut unique: Vec<Jwk> = Vec::new();
        for k in keys {
            if !unique.iter().any(|u| u.kid() == k.kid()) {
                unique.push(k);
            }
        }
        JwkSet::new(unique).expect("unique kids, few keys")
    })
}

fn check_key_set_parse(document: &[u8]) {
    match JwkSet::from_json(document) {
        Ok(set) => {
            assert!(set.keys().len() <= MAX_KEYS);
            // What parsed is publishable and re-parses to itself.
            let canonical = set.to_json();
            let again = JwkSet::from_json(canonical.as_bytes()).expect("canonical form parses");
            assert_eq!(again, set);
            assert_eq!(again.to_json(), canonical, "canonical form is stable");
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::InvalidKeySet(_)
                        | Error::MalformedKey(_)
                        | Error::UnsupportedKeyType { .. }
                        | Error::WeakKey { .. }
                ),
                "{e:?}"
            );
            assert_clear_error(&e);
        }
    }
    // The serde path (`#[serde(try_from)]`) must not panic either.
    let _ = serde_json::from_slice::<JwkSet>(document);
}

/// DER of `SEQUENCE { INTEGER n, INTEGER e }` (PKCS #1) and its SPKI.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v = be.to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn spki_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let pkcs1 = der(0x30, &[der_uint(n), der_uint(e)].concat());
    let rsa_oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let algorithm = der(0x30, &[&rsa_oid[..], &[0x05, 0x00]].concat());
    let bits = der(0x03, &[&[0u8][..], &pkcs1].concat());
    der(0x30, &[algorithm, bits].concat())
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn key_sets_round_trip(set in arb_key_set()) {
        let json = set.to_json();
        let parsed = JwkSet::from_json(json.as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &set);
        prop_assert_eq!(serde_json::from_str::<JwkSet>(&json).unwrap(), set);
        // Pretty-printed, it is the same set.
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(&json).unwrap()).unwrap();
        prop_assert_eq!(JwkSet::from_json(pretty.as_bytes()).unwrap().to_json(), json);
    }

    #[test]
    fn key_set_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_key_set_parse(&bytes);
    }

    #[test]
    fn key_set_arbitrary_json(doc in arb_json()) {
        check_key_set_parse(doc.to_string().as_bytes());
        check_key_set_parse(json!({ "keys": [doc] }).to_string().as_bytes());
    }

    #[test]
    fn key_set_mutated(set in arb_key_set(), mutations in proptest::collection::vec(arb_mutation(), 1..4)) {
        let doc: Value = serde_json::from_str(&set.to_json()).unwrap();
        check_key_set_parse(mutate(doc, &mutations).to_string().as_bytes());
    }

    #[test]
    fn key_set_damaged_bytes(set in arb_key_set(), edits in proptest::collection::vec(arb_byte_edit(), 1..4)) {
        check_key_set_parse(&edit_bytes(set.to_json().into_bytes(), &edits));
    }

    /// Each JWK member in turn given a value of the wrong type or a huge one.
    #[test]
    fn key_members_of_any_value(
        key in arb_key(),
        member in prop::sample::select(vec!["kty", "use", "alg", "kid", "n", "e", "keys"]),
        value in arb_json(),
        huge in maybe_huge(),
    ) {
        let value = huge.map_or(value, |h| Value::String(h.text()));
        let mut doc: Value = json!({ "keys": [serde_json::to_value(&key).unwrap()] });
        if member == "keys" {
            doc["keys"] = value;
        } else {
            doc["keys"][0][member] = value;
        }
        check_key_set_parse(doc.to_string().as_bytes());
        let raw: Result<RawJwk, _> = serde_json::from_value(doc["keys"][0].clone());
        if let Ok(raw) = raw
            && let Err(e) = Jwk::try_from(raw)
        {
            assert_clear_error(&e);
        }
    }

    #[test]
    fn der_and_pem_keys_round_trip_and_damage_is_refused(
        (n, e) in arb_components(),
        edits in proptest::collection::vec(arb_byte_edit(), 0..3),
        label in prop::sample::select(vec!["PUBLIC KEY", "RSA PUBLIC KEY", "PRIVATE KEY", "CERTIFICATE", "X"]),
    ) {
        let expected = Jwk::from_rsa_components(&n, &e).unwrap();
        let spki = spki_der(&n, &e);
        prop_assert_eq!(Jwk::from_spki_der(&spki).unwrap(), expected.clone());
        prop_assert_eq!(Jwk::from_pem(&pem("PUBLIC KEY", &spki)).unwrap(), expected.clone());
        let damaged = edit_bytes(spki.clone(), &edits);
        for result in [
            Jwk::from_spki_der(&damaged),
            Jwk::from_pkcs1_der(&damaged),
            Jwk::from_pem(&pem(label, &damaged)),
            Jwk::from_pem(&String::from_utf8_lossy(&edit_bytes(pem(label, &spki).into_bytes(), &edits))),
        ] {
            match result {
                Ok(key) => prop_assert!(key.bits() >= 2048),
                Err(err) => { assert_clear_error(&err); }
            }
        }
    }

    #[test]
    fn pem_and_der_arbitrary_input(text in "\\PC{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for result in [Jwk::from_pem(&text), Jwk::from_spki_der(&bytes), Jwk::from_pkcs1_der(&bytes)] {
            if let Err(err) = result {
                assert_clear_error(&err);
            }
        }
    }

    #[test]
    fn key_ids(kid in arb_text(), huge in maybe_huge()) {
        let kid = huge.map_or(kid, |h| h.text());
        match KeyId::new(kid.clone()) {
            Ok(id) => prop_assert_eq!(id.as_str(), kid.as_str()),
            Err(e) => { assert_clear_error(&e); }
        }
    }
}

// ------------------------------------------------------------ allowlist

fn arb_cidr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv4Addr::from(a))),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv6Addr::from(a))),
        any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        (any::<[u8; 4]>(), 96u8..=128)
            .prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv4Addr::from(a).to_ipv6_mapped())),
    ]
}

fn arb_allowlist_document() -> impl Strategy<Value = AllowlistDocument> {
    (
        "[A-Za-z0-9 ._-]{0,40}",
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(arb_cidr_text(), 1..20),
    )
        .prop_map(|(source, change_number, prefixes)| AllowlistDocument {
            source,
            change_number,
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        })
}

fn check_allowlist_parse(document: &[u8]) {
    match AllowlistDocument::from_json(document) {
        Ok(doc) => {
            assert!(!doc.prefixes.is_empty());
            let again = AllowlistDocument::from_json(doc.to_json_pretty().as_bytes()).unwrap();
            assert_eq!(again, doc);
            let list = doc.allowlist();
            for p in &doc.prefixes {
                assert!(list.contains(p.net().network()));
            }
        }
        Err(e) => {
            assert!(matches!(e, Error::InvalidAllowlist(_)), "{e:?}");
            assert_clear_error(&e);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn cidr_text_round_trips(text in arb_cidr_text()) {
        let cidr: Cidr = text.parse().unwrap();
        let shown = cidr.to_string();
        prop_assert_eq!(shown.parse::<Cidr>().unwrap(), cidr);
        prop_assert!(cidr.contains(cidr.net().network()));
    }

    #[test]
    fn cidr_arbitrary_text(
        text in prop_oneof![arb_text(), "[0-9a-fA-F:./% ]{0,60}"],
        huge in maybe_huge(),
    ) {
        let text = huge.map_or(text, |h| h.text());
        match text.parse::<Cidr>() {
            Ok(c) => prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c),
            Err(e) => {
                let message = assert_clear_error(&e);
                prop_assert!(!message.contains('\0'));
            }
        }
        match text.parse::<AllowlistMode>() {
            Ok(mode) => prop_assert_eq!(mode.as_str(), text.trim()),
            Err(e) => { assert_clear_error(&e); }
        }
    }

    #[test]
    fn allowlist_documents_round_trip(doc in arb_allowlist_document()) {
        let json = doc.to_json_pretty();
        prop_assert_eq!(AllowlistDocument::from_json(json.as_bytes()).unwrap(), doc);
    }

    #[test]
    fn allowlist_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..256), doc in arb_json()) {
        check_allowlist_parse(&bytes);
        check_allowlist_parse(doc.to_string().as_bytes());
        check_allowlist_parse(json!({"source": "x", "prefixes": [doc]}).to_string().as_bytes());
    }

    #[test]
    fn allowlist_mutated(
        doc in arb_allowlist_document(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        edits in proptest::collection::vec(arb_byte_edit(), 1..3),
    ) {
        let value: Value = serde_json::from_str(&doc.to_json_pretty()).unwrap();
        check_allowlist_parse(mutate(value, &mutations).to_string().as_bytes());
        check_allowlist_parse(&edit_bytes(doc.to_json_pretty().into_bytes(), &edits));
    }
}

// --------------------------------------------------------- service tags

/// A Service Tags download with `others` tags around the wanted one.
fn service_tags_file(
    tag: &str,
    change: u64,
    prefixes: &[String],
    others: usize,
    single: bool,
) -> Value {
    let entry = |name: &str, prefixes: &[String]| {
        json!({"name": name, "id": name, "properties": {
            "changeNumber": change, "region": "", "regionId": 0, "platform": "Azure",
            "systemService": "AzureAD", "addressPrefixes": prefixes, "networkFeatures": null}})
    };
    if single {
        return entry(tag, prefixes);
    }
    let mut values: Vec<Value> = (0..others)
        .map(|i| entry(&format!("Other{i}"), &["10.0.0.0/8".to_string()]))
        .collect();
    values.insert(others / 2, entry(tag, prefixes));
    json!({"changeNumber": 300, "cloud": "Public", "values": values})
}

fn arb_service_tags() -> impl Strategy<Value = (String, u64, Vec<String>, Value)> {
    (
        "[A-Za-z][A-Za-z0-9.]{0,30}",
        any::<u64>(),
        proptest::collection::vec(arb_cidr_text(), 1..12),
        0usize..6,
        any::<bool>(),
    )
        .prop_map(|(tag, change, prefixes, others, single)| {
            let file = service_tags_file(&tag, change, &prefixes, others, single);
            (tag, change, prefixes, file)
        })
}

fn check_service_tags_select(document: &[u8], tag: &str) {
    match service_tags::select(document, tag) {
        Ok(found) => {
            assert_eq!(found.name, tag);
            assert!(!found.prefixes.is_empty());
            let doc = found.into_allowlist_document();
            assert_eq!(
                AllowlistDocument::from_json(doc.to_json_pretty().as_bytes()).unwrap(),
                doc
            );
        }
        Err(e) => {
            assert!(
                matches!(e, Error::ServiceTags(_) | Error::TagNotFound { .. }),
                "{e:?}"
            );
            assert_clear_error(&e);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn service_tags_round_trip((tag, change, prefixes, file) in arb_service_tags()) {
        let found = service_tags::select(file.to_string().as_bytes(), &tag).unwrap();
        prop_assert_eq!(&found.name, &tag);
        prop_assert_eq!(found.change_number, Some(change));
        let want: Vec<Cidr> = prefixes.iter().map(|p| p.parse().unwrap()).collect();
        prop_assert_eq!(found.prefixes, want);
    }

    #[test]
    fn service_tags_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..256), doc in arb_json(), tag in arb_text()) {
        check_service_tags_select(&bytes, &tag);
        check_service_tags_select(doc.to_string().as_bytes(), &tag);
        check_service_tags_select(json!({"values": [{"name": tag, "properties": doc}]}).to_string().as_bytes(), &tag);
    }

    #[test]
    fn service_tags_mutated(
        (tag, _change, _prefixes, file) in arb_service_tags(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        edits in proptest::collection::vec(arb_byte_edit(), 1..3),
    ) {
        check_service_tags_select(mutate(file.clone(), &mutations).to_string().as_bytes(), &tag);
        check_service_tags_select(&edit_bytes(file.to_string().into_bytes(), &edits), &tag);
    }
}

// ------------------------------------------------- issuer and discovery

fn arb_issuer_text() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,10}){1,3}",
        Just("127.0.0.1".to_string()),
        Just("[::1]".to_string()),
        Just("localhost".to_string()),
    ];
    (
        prop::sample::select(vec!["https", "http"]),
        host,
        proptest::option::of(1u16..),
        "(/[A-Za-z0-9._~-]{1,12}){0,3}/?",
    )
        .prop_map(|(scheme, host, port, path)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{path}")
        })
}

fn check_issuer(text: &str) {
    match Issuer::parse(text) {
        Ok(issuer) => {
            assert_eq!(issuer.as_str(), text, "kept byte for byte");
            let after_scheme = |url: &str| url.split_once("://").unwrap().1.to_string();
            assert!(!after_scheme(&issuer.discovery_url()).contains("//"));
            assert!(!after_scheme(&issuer.jwks_uri()).contains("//"));
            assert!(
                issuer
                    .jwks_uri()
                    .starts_with(issuer.as_str().trim_end_matches('/'))
            );
            let json = serde_json::to_string(&issuer).unwrap();
            assert_eq!(serde_json::from_str::<Issuer>(&json).unwrap(), issuer);
            let doc = DiscoveryDocument::for_issuer(&issuer);
            assert_eq!(doc.issuer, text);
            assert_eq!(
                serde_json::from_str::<DiscoveryDocument>(&doc.to_json()).unwrap(),
                doc
            );
        }
        Err(e) => {
            assert!(matches!(e, Error::InvalidIssuer { .. }), "{e:?}");
            assert_clear_error(&e);
        }
    }
}

fn check_discovery_parse(document: &[u8]) {
    match DiscoveryDocument::from_json(document) {
        Ok(doc) => {
            let again = DiscoveryDocument::from_json(doc.to_json().as_bytes()).unwrap();
            assert_eq!(again, doc);
        }
        Err(e) => {
            assert!(matches!(e, Error::InvalidDiscovery(_)), "{e:?}");
            assert_clear_error(&e);
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn issuers_round_trip(text in arb_issuer_text()) {
        check_issuer(&text);
        if text.starts_with("https://") {
            prop_assert!(Issuer::parse(&text).is_ok(), "{}", text);
        }
    }

    #[test]
    fn issuer_arbitrary_text(
        text in prop_oneof![arb_text(), "[a-z:/.?#@\\[\\]% ]{0,40}"],
        huge in maybe_huge(),
    ) {
        let text = huge.map_or(text, |h| h.text());
        check_issuer(&text);
    }

    #[test]
    fn issuer_damaged(
        text in arb_issuer_text(),
        edits in proptest::collection::vec(arb_byte_edit(), 1..3),
        tail in arb_text(),
        huge in maybe_huge(),
    ) {
        let tail = huge.map_or(tail, |h| h.text());
        let damaged = String::from_utf8_lossy(&edit_bytes(text.clone().into_bytes(), &edits)).into_owned();
        check_issuer(&damaged);
        check_issuer(&format!("{text}{tail}"));
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn discovery_documents_round_trip(text in arb_issuer_text()) {
        if let Ok(issuer) = Issuer::parse(&text) {
            let doc = DiscoveryDocument::for_issuer(&issuer);
            prop_assert_eq!(DiscoveryDocument::from_json(doc.to_json().as_bytes()).unwrap(), doc);
        }
    }

    #[test]
    fn discovery_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..256), doc in arb_json()) {
        check_discovery_parse(&bytes);
        check_discovery_parse(doc.to_string().as_bytes());
    }

    #[test]
    fn discovery_mutated(
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        edits in proptest::collection::vec(arb_byte_edit(), 1..3),
    ) {
        let issuer = Issuer::parse("https://issuer.example.com/tenant").unwrap();
        let doc = DiscoveryDocument::for_issuer(&issuer).to_json();
        let value: Value = serde_json::from_str(&doc).unwrap();
        check_discovery_parse(mutate(value, &mutations).to_string().as_bytes());
        check_discovery_parse(&edit_bytes(doc.into_bytes(), &edits));
    }
}

// ------------------------------------------------ regressions, by name

/// Found by `key_members_of_any_value`: a key set's errors echoed the
/// value of `use`, `alg` and `kty` in full.
#[test]
fn key_member_values_are_not_echoed_in_full() {
    let n = b64url(&[0xc5; 256]);
    for member in ["use", "alg", "kty"] {
        let mut key =
            json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k", "n": n, "e": "AQAB"});
        key[member] = json!("x".repeat(100_000));
        let err = JwkSet::from_json(json!({ "keys": [key] }).to_string().as_bytes()).unwrap_err();
        let message = assert_clear_error(&err);
        assert!(message.contains(member), "{message}");
    }
}

/// Found by `key_set_arbitrary_json`: serde's "invalid type: string …"
/// echoed a whole string value of the wrong type.
#[test]
fn wrongly_typed_values_are_not_echoed_in_full() {
    let huge = json!("y".repeat(100_000)).to_string();
    let err = JwkSet::from_json(format!(r#"{{"keys": {huge}}}"#).as_bytes()).unwrap_err();
    let message = assert_clear_error(&err);
    assert!(message.contains("invalid type: string"), "{message}");
    assert!(message.contains("line 1 column"), "{message}");
    let err = AllowlistDocument::from_json(
        format!(r#"{{"source": "x", "prefixes": {huge}}}"#).as_bytes(),
    )
    .unwrap_err();
    assert_clear_error(&err);
    let file =
        format!(r#"{{"values": [{{"name": "T", "properties": {{"addressPrefixes": {huge}}}}}]}}"#);
    assert_clear_error(&service_tags::select(file.as_bytes(), "T").unwrap_err());
}

/// Found by `issuer_arbitrary_text`: an invalid issuer was echoed in full.
#[test]
fn a_huge_issuer_is_not_echoed_in_full() {
    let err = Issuer::parse(&format!("ftp://{}", "h".repeat(100_000))).unwrap_err();
    let message = assert_clear_error(&err);
    assert!(
        message.starts_with("invalid issuer `ftp://hhh"),
        "{message}"
    );
}
