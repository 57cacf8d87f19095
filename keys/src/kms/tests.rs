use super::*;

#[test]
fn the_stack_name_is_a_valid_ring() {
    validate_ring("aws2azure").unwrap();
    validate_ring("team/aws2azure_prod-2").unwrap();
}

#[test]
fn ring_names_kms_would_refuse_are_refused_with_the_rule() {
    for (ring, says) in [
        ("", "empty"),
        ("aws2 azure", "letters, digits"),
        ("ring:x", "letters, digits"),
        ("aws/ring", "reserves"),
        ("AWS/ring", "reserves"),
    ] {
        let err = validate_ring(ring).unwrap_err().to_string();
        assert!(err.contains("key ring name"), "{ring}: {err}");
        assert!(err.contains(says), "{ring}: {err}");
    }
}

#[test]
fn the_longest_ring_name_still_fits_every_alias() {
    let max = "a".repeat(209);
    validate_ring(&max).unwrap();
    let store_alias = format!("alias/{max}-{MEMBER_INFIX}{}", "0".repeat(KEY_ID_LEN));
    assert_eq!(store_alias.len(), MAX_ALIAS_LEN);
    let err = validate_ring(&format!("{max}a")).unwrap_err().to_string();
    assert!(err.contains("at most 209"), "{err}");
}

const KEY: &str = "0a1b2c3d-0000-4000-8000-000000000001";

#[test]
fn state_and_member_aliases_are_recognised() {
    assert_eq!(
        parse_alias("r", "alias/r-current", KEY),
        Some(RingAlias::State(Slot::Current))
    );
    assert_eq!(
        parse_alias("r", "alias/r-next", KEY),
        Some(RingAlias::State(Slot::Next))
    );
    assert_eq!(
        parse_alias("r", "alias/r-previous", KEY),
        Some(RingAlias::State(Slot::Previous))
    );
    assert_eq!(
        parse_alias("r", &format!("alias/r-key-{KEY}"), KEY),
        Some(RingAlias::Member)
    );
}

#[test]
fn aliases_of_rings_with_a_longer_name_do_not_count() {
    // Ring `r-key` and ring `r-next` share the prefix `alias/r-`.
    assert_eq!(parse_alias("r", "alias/r-key-next", KEY), None);
    assert_eq!(parse_alias("r", "alias/r-next-current", KEY), None);
    assert_eq!(
        parse_alias("r", &format!("alias/r-key-key-{KEY}"), KEY),
        None
    );
    assert_eq!(
        parse_alias("r", &format!("alias/r-next-key-{KEY}"), KEY),
        None
    );
    // A member alias pointing at another key than it names.
    assert_eq!(
        parse_alias("r", &format!("alias/r-key-{KEY}"), "another"),
        None
    );
    assert_eq!(parse_alias("r", "alias/rx-current", KEY), None);
    assert_eq!(parse_alias("r", "alias/r-Current", KEY), None);
}

#[test]
fn a_disabled_retired_key_keeps_its_kid_from_the_tag() {
    let real = crate::memory::test_jwk("real");
    let kid = real.kid().as_str().to_string();
    let jwk = placeholder(KEY, Some(&kid));
    assert_eq!(jwk.kid(), real.kid());
    assert_ne!(jwk.modulus(), real.modulus());
    let without = placeholder(KEY, None);
    assert_eq!(without.kid().as_str(), format!("disabled-{KEY}"));
}
