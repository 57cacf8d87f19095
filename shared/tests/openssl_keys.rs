//! JWKs built from keys that `openssl` generates, checked against what
//! `openssl` itself reads back from the same public key.

use std::path::Path;
use std::process::Command;

use aws2azure_shared::Error;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use base64::Engine as _;

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn b64url_to_hex(s: &str) -> String {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// What openssl reports for the public key: modulus (hex) and exponent.
fn openssl_n_e(dir: &Path) -> (String, u64) {
    let modulus = String::from_utf8(openssl(
        dir,
        &["rsa", "-pubin", "-in", "pub.pem", "-noout", "-modulus"],
    ))
    .unwrap();
    let n_hex = modulus.trim().strip_prefix("Modulus=").unwrap().to_string();
    let text = String::from_utf8(openssl(
        dir,
        &["rsa", "-pubin", "-in", "pub.pem", "-noout", "-text"],
    ))
    .unwrap();
    let exp_line = text.lines().find(|l| l.starts_with("Exponent:")).unwrap();
    let e: u64 = exp_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    (n_hex, e)
}

#[test]
fn jwk_matches_openssl_for_2048_3072_4096_bit_keys() {
    for bits in ["2048", "3072", "4096"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(d, &["genrsa", "-out", "key.pem", bits]);
        openssl(d, &["rsa", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        openssl(
            d,
            &[
                "rsa", "-in", "key.pem", "-pubout", "-outform", "DER", "-out", "pub.der",
            ],
        );
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "key.pem",
                "-RSAPublicKey_out",
                "-out",
                "pkcs1.pem",
            ],
        );

        let from_der = Jwk::from_spki_der(&std::fs::read(d.join("pub.der")).unwrap()).unwrap();
        let from_pem = Jwk::from_pem(&std::fs::read_to_string(d.join("pub.pem")).unwrap()).unwrap();
        let from_pkcs1 =
            Jwk::from_pem(&std::fs::read_to_string(d.join("pkcs1.pem")).unwrap()).unwrap();
        assert_eq!(from_der, from_pem);
        assert_eq!(from_der, from_pkcs1);
        assert_eq!(from_der.bits().to_string(), bits);

        let json: serde_json::Value = serde_json::to_value(&from_der).unwrap();
        let (n_hex, e) = openssl_n_e(d);
        assert_eq!(
            b64url_to_hex(json["n"].as_str().unwrap()),
            n_hex,
            "{bits}-bit n"
        );
        let e_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(json["e"].as_str().unwrap())
            .unwrap();
        assert_eq!(e_bytes.iter().fold(0u64, |acc, b| acc << 8 | *b as u64), e);
        assert_eq!(
            json["kid"].as_str().unwrap().len(),
            43,
            "SHA-256 thumbprint, base64url"
        );

        // A key set of it survives a round trip through its canonical form.
        let set = JwkSet::new(vec![from_der]).unwrap();
        assert_eq!(JwkSet::from_json(set.to_json().as_bytes()).unwrap(), set);
    }
}

#[test]
fn refuses_weak_ec_and_malformed_keys_from_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["genrsa", "-out", "weak.pem", "1024"]);
    let weak = openssl(d, &["rsa", "-in", "weak.pem", "-pubout", "-outform", "DER"]);
    assert_eq!(
        Jwk::from_spki_der(&weak).unwrap_err(),
        Error::WeakKey { bits: 1024 }
    );

    openssl(
        d,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    let ec = openssl(d, &["ec", "-in", "ec.pem", "-pubout", "-outform", "DER"]);
    let err = Jwk::from_spki_der(&ec).unwrap_err();
    assert!(matches!(err, Error::UnsupportedKeyType { .. }), "{err:?}");
    assert!(err.to_string().contains("EC"), "{err}");
    let ec_pem = String::from_utf8(openssl(d, &["ec", "-in", "ec.pem", "-pubout"])).unwrap();
    assert!(matches!(
        Jwk::from_pem(&ec_pem),
        Err(Error::UnsupportedKeyType { .. })
    ));

    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    let ed = openssl(d, &["pkey", "-in", "ed.pem", "-pubout", "-outform", "DER"]);
    assert!(
        Jwk::from_spki_der(&ed)
            .unwrap_err()
            .to_string()
            .contains("Ed25519")
    );

    openssl(d, &["genrsa", "-out", "key.pem", "2048"]);
    let good = openssl(d, &["rsa", "-in", "key.pem", "-pubout", "-outform", "DER"]);
    for cut in [1, 10, good.len() / 2, good.len() - 1] {
        let err = Jwk::from_spki_der(&good[..cut]).unwrap_err();
        assert!(
            matches!(err, Error::MalformedKey(_)),
            "cut at {cut}: {err:?}"
        );
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        Jwk::from_spki_der(&trailing),
        Err(Error::MalformedKey(_))
    ));

    let private = std::fs::read_to_string(d.join("key.pem")).unwrap();
    assert!(
        Jwk::from_pem(&private)
            .unwrap_err()
            .to_string()
            .contains("private key")
    );
}
