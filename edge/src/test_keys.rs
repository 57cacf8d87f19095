//! Public keys for the native tests: the RFC 7638 example key and one
//! generated with `openssl genrsa 2048`. Only public halves: nothing is
//! signed here.

use aws2azure_shared::jwk::{Jwk, JwkSet};
use base64::Engine as _;

const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
const OPENSSL_N: &str = "ybi0A3-h9U2ySiCmlfiyha0PqNVLvaSmLxJcAl0ToFkzoGG-ixizyH3Tu6MRQ2-gdJq92D8Lj4KHANQCtzG-FZak4PAve22H-xdx5IYGYNPyr4yeVqPPFL4svobSxlo6sfihTe-gl34CoNMTA1Fw-oAASlwJqMQhioGGFwg3y35ddyz5_JydGKlzl5_2iiZE8NBI_gWYHlIcYL5dlmG0fdLhLjS5NtQcxK7FJUuiTCwHGIFPU5GG8xA0x8X2SfspI6_UgXePEflp8Rj9aRNAX0_hdTJSYzBbOxQRkjeCeBWiWmqDoHn_5rsfVFPtxuTaLOYfrjCsZKqlVUwxJJKB3Q";

fn key(n: &str) -> Jwk {
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n)
        .unwrap();
    Jwk::from_rsa_components(&n, &[1, 0, 1]).unwrap()
}

/// One key: what a first deployment publishes.
pub(crate) fn key_set_json() -> String {
    JwkSet::new(vec![key(RFC7638_N)]).unwrap().to_json()
}

/// Two keys: the same one plus its successor, as during a rotation.
pub(crate) fn other_key_set_json() -> String {
    JwkSet::new(vec![key(RFC7638_N), key(OPENSSL_N)])
        .unwrap()
        .to_json()
}
