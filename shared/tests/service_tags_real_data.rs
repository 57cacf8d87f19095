//! The allowlist on Microsoft's real `AzureActiveDirectory` Service Tag data
//! (change number 24, 216 prefixes), copied into `shared/data/service-tags/`.

use std::net::IpAddr;

use aws2azure_shared::Error;
use aws2azure_shared::allowlist::{Allowlist, Cidr, last_address, step_address};
use aws2azure_shared::service_tags::{DEFAULT_TAG, select};

const WHOLE_FILE: &[u8] =
    include_bytes!("../data/service-tags/ServiceTags_Public.AzureActiveDirectory-only.json");
const SINGLE_TAG: &[u8] =
    include_bytes!("../data/service-tags/AzureActiveDirectory.serviceTag.json");

fn first_address(c: &Cidr) -> IpAddr {
    c.net().network()
}

#[test]
fn both_real_files_yield_the_same_216_prefixes() {
    let whole = select(WHOLE_FILE, DEFAULT_TAG).unwrap();
    let single = select(SINGLE_TAG, DEFAULT_TAG).unwrap();
    assert_eq!(whole, single);
    assert_eq!(whole.prefixes.len(), 216);
    assert_eq!(whole.change_number, Some(24));
    let v6 = whole
        .prefixes
        .iter()
        .filter(|c| c.net().network().is_ipv6())
        .count();
    assert_eq!(v6, 15);
}

#[test]
fn accepts_the_bounds_of_every_prefix_and_rejects_just_outside() {
    let tag = select(WHOLE_FILE, DEFAULT_TAG).unwrap();
    let list = Allowlist::new(&tag.prefixes);
    assert_eq!(list.prefix_count(), 216);
    let covered = |a: IpAddr| tag.prefixes.iter().any(|c| c.contains(a));
    let mut outside_checked = 0;
    for cidr in &tag.prefixes {
        let (first, last) = (first_address(cidr), last_address(cidr));
        assert!(list.contains(first), "{cidr} first {first}");
        assert!(list.contains(last), "{cidr} last {last}");
        if let IpAddr::V4(v4) = first {
            assert!(
                list.contains(IpAddr::V6(v4.to_ipv6_mapped())),
                "{cidr} as mapped IPv6"
            );
        }
        for outside in [step_address(first, -1), step_address(last, 1)]
            .into_iter()
            .flatten()
        {
            // Adjacent prefixes in the data legitimately cover a neighbour.
            assert_eq!(
                list.contains(outside),
                covered(outside),
                "{cidr} neighbour {outside}"
            );
            if !covered(outside) {
                outside_checked += 1;
                if let IpAddr::V4(v4) = outside {
                    assert!(!list.contains(IpAddr::V6(v4.to_ipv6_mapped())));
                }
            }
        }
    }
    // Most neighbours are outside the tag; the test must really test that.
    assert!(outside_checked > 300, "{outside_checked}");
}

#[test]
fn refuses_truncated_and_tagless_real_files() {
    for cut in [0, 1, 100, WHOLE_FILE.len() / 2, WHOLE_FILE.len() - 3] {
        let err = select(&WHOLE_FILE[..cut], DEFAULT_TAG).unwrap_err();
        assert!(matches!(err, Error::ServiceTags(_)), "cut {cut}: {err:?}");
    }
    let err = select(WHOLE_FILE, "AzureFrontDoor.Backend").unwrap_err();
    assert_eq!(
        err,
        Error::TagNotFound {
            tag: "AzureFrontDoor.Backend".into(),
            available: 1
        }
    );
}
