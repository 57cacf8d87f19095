//! RSA public keys as JSON Web Keys (RFC 7517) and key sets.
//!
//! The only keys this project publishes are RSA signing keys for RS256, so
//! [`Jwk`] is that and nothing else: a value of it is always a valid,
//! publishable key (RSA, at least 2048 bits, `use: sig`, `alg: RS256`, a
//! non-empty `kid`). Documents from elsewhere are read through [`RawJwk`] and
//! checked by `TryFrom`, so a tool can report per key what is wrong.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spki::der::Decode as _;

use crate::{Error, b64url, b64url_decode, echo, json_error};

/// Longest echo of a member's value (`kty`, `use`, `alg`) in an error.
const MAX_VALUE_ECHO: usize = 32;

/// The only signature algorithm Entra accepts for federated assertions.
pub const RS256: &str = "RS256";
/// Entra reads only the first 100 keys of a key set; more are refused.
pub const MAX_KEYS: usize = 100;
/// Keys below this size are refused outright.
pub const MIN_RSA_BITS: usize = 2048;
/// Longest `kid` accepted; RFC 7638 thumbprints are 43 characters, KMS ids
/// and ARNs stay well below this.
const MAX_KID_LEN: usize = 256;

/// A key id as it appears in the JWS header and in the key set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn new(kid: impl Into<String>) -> Result<Self, Error> {
        let kid = kid.into();
        if kid.is_empty() {
            return Err(Error::InvalidKeySet("a key has an empty `kid`".into()));
        }
        if kid.len() > MAX_KID_LEN || kid.chars().any(char::is_control) {
            return Err(Error::InvalidKeySet(format!(
                "a `kid` must be at most {MAX_KID_LEN} printable characters"
            )));
        }
        Ok(Self(kid))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated RSA signing key in JWK form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawJwk", into = "RawJwk")]
pub struct Jwk {
    kid: KeyId,
    /// Big-endian modulus without leading zero bytes.
    n: Vec<u8>,
    /// Big-endian public exponent without leading zero bytes.
    e: Vec<u8>,
}

impl Jwk {
    /// Builds the key from big-endian modulus and exponent; the `kid` is the
    /// RFC 7638 thumbprint, so the same key always gets the same id.
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<Self, Error> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        check_rsa(n, e)?;
        let kid = KeyId(rsa_thumbprint(&b64url(n), &b64url(e)));
        Ok(Self {
            kid,
            n: n.to_vec(),
            e: e.to_vec(),
        })
    }

    /// From a DER `SubjectPublicKeyInfo`: what KMS `GetPublicKey` returns and
    /// what `openssl rsa -pubout -outform DER` writes.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| Error::MalformedKey(format!("not a DER SubjectPublicKeyInfo ({e})")))?;
        if spki.algorithm.oid != pkcs1::ALGORITHM_OID {
            return Err(Error::UnsupportedKeyType {
                algorithm: algorithm_name(&spki.algorithm.oid.to_string()),
            });
        }
        let key_bytes = spki.subject_public_key.as_bytes().ok_or_else(|| {
            Error::MalformedKey("the public key bit string has unused bits".into())
        })?;
        Self::from_pkcs1_der(key_bytes)
    }

    /// From a DER PKCS #1 `RSAPublicKey`.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, Error> {
        let key = pkcs1::RsaPublicKeyRef::from_der(der)
            .map_err(|e| Error::MalformedKey(format!("not a DER RSAPublicKey ({e})")))?;
        Self::from_rsa_components(key.modulus.as_bytes(), key.public_exponent.as_bytes())
    }

    /// From PEM: `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY`
    /// (PKCS #1). Private keys are refused rather than silently accepted, so
    /// that a private key is never handed to a tool that publishes keys.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
            .map_err(|e| Error::MalformedKey(format!("not a PEM document ({e})")))?;
        match label {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(&der),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                Err(Error::MalformedKey(format!(
                    "PEM holds a private key (`{label}`); pass its public half \
                     (`openssl rsa -in key.pem -pubout`)"
                )))
            }
            other => Err(Error::MalformedKey(format!(
                "unexpected PEM label `{other}`: expected `PUBLIC KEY` or `RSA PUBLIC KEY`"
            ))),
        }
    }

    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// Replaces the key id, e.g. to keep an id an operator already registered.
    pub fn with_kid(mut self, kid: KeyId) -> Self {
        self.kid = kid;
        self
    }

    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    pub fn exponent(&self) -> &[u8] {
        &self.e
    }

    pub fn bits(&self) -> usize {
        bit_length(&self.n)
    }

    /// The RFC 7638 thumbprint of this key (independent of its `kid`).
    pub fn thumbprint(&self) -> String {
        rsa_thumbprint(&b64url(&self.n), &b64url(&self.e))
    }
}

/// A JWK exactly as found in a document, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawJwk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kty: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

impl TryFrom<RawJwk> for Jwk {
    type Error = Error;

    fn try_from(raw: RawJwk) -> Result<Self, Error> {
        let kid = raw
            .kid
            .ok_or_else(|| Error::InvalidKeySet("a key has no `kid`".into()))?;
        let kid = KeyId::new(kid)?;
        let at = |msg: String| Error::InvalidKeySet(format!("key `{kid}`: {msg}"));
        match raw.kty.as_deref() {
            Some("RSA") => {}
            Some(other) => {
                return Err(Error::UnsupportedKeyType {
                    algorithm: format!("kty {} (key `{kid}`)", echo(other, MAX_VALUE_ECHO)),
                });
            }
            None => return Err(at("no `kty`".into())),
        }
        let shown = |value: &Option<String>| value.as_deref().map(|v| echo(v, MAX_VALUE_ECHO));
        if raw.use_.as_deref() != Some("sig") {
            return Err(at(format!(
                "`use` is {:?}, expected \"sig\"",
                shown(&raw.use_)
            )));
        }
        if raw.alg.as_deref() != Some(RS256) {
            return Err(at(format!(
                "`alg` is {:?}, expected \"RS256\"",
                shown(&raw.alg)
            )));
        }
        let decode = |field: &str, v: Option<String>| -> Result<Vec<u8>, Error> {
            let v = v.ok_or_else(|| at(format!("no `{field}`")))?;
            b64url_decode(&v).ok_or_else(|| at(format!("`{field}` is not base64url")))
        };
        let n = decode("n", raw.n)?;
        let e = decode("e", raw.e)?;
        let mut jwk = Self::from_rsa_components(&n, &e).map_err(|err| match err {
            Error::WeakKey { bits } => at(format!(
                "RSA key of {bits} bits is too weak: use at least {MIN_RSA_BITS} bits"
            )),
            other => other,
        })?;
        jwk.kid = kid;
        Ok(jwk)
    }
}

impl From<Jwk> for RawJwk {
    fn from(jwk: Jwk) -> Self {
        Self {
            kty: Some("RSA".into()),
            use_: Some("sig".into()),
            alg: Some(RS256.into()),
            kid: Some(jwk.kid.0),
            n: Some(b64url(&jwk.n)),
            e: Some(b64url(&jwk.e)),
        }
    }
}

/// A JWK Set of publishable keys: at most [`MAX_KEYS`], unique `kid`s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawJwkSet", into = "RawJwkSet")]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Serialize, Deserialize)]
struct RawJwkSet {
    keys: Vec<Jwk>,
}

impl TryFrom<RawJwkSet> for JwkSet {
    type Error = Error;
    fn try_from(raw: RawJwkSet) -> Result<Self, Error> {
        Self::new(raw.keys)
    }
}

impl From<JwkSet> for RawJwkSet {
    fn from(set: JwkSet) -> Self {
        Self { keys: set.keys }
    }
}

impl JwkSet {
    pub fn new(keys: Vec<Jwk>) -> Result<Self, Error> {
        if keys.len() > MAX_KEYS {
            return Err(Error::InvalidKeySet(format!(
                "{} keys; Entra reads only the first {MAX_KEYS}, publish fewer",
                keys.len()
            )));
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(Error::InvalidKeySet(format!(
                    "`kid` {} appears twice",
                    key.kid
                )));
            }
        }
        Ok(Self { keys })
    }

    /// Parses and validates a key set document (`{"keys": [...]}`).
    pub fn from_json(document: &[u8]) -> Result<Self, Error> {
        // serde wraps errors from `try_from` in its own text; keep ours intact
        // by validating in two steps.
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<RawJwk>,
        }
        let doc: Doc = serde_json::from_slice(document).map_err(|e| {
            Error::InvalidKeySet(format!("not a JWK Set document ({})", json_error(&e)))
        })?;
        if doc.keys.len() > MAX_KEYS {
            return Err(Error::InvalidKeySet(format!(
                "{} keys; Entra reads only the first {MAX_KEYS}, publish fewer",
                doc.keys.len()
            )));
        }
        let keys = doc
            .keys
            .into_iter()
            .map(Jwk::try_from)
            .collect::<Result<_, _>>()?;
        Self::new(keys)
    }

    /// The canonical serialisation: what the edge serves and hashes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a key set always serialises")
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_str() == kid)
    }
}

/// RFC 7638 section 3: SHA-256 over the required members in lexicographic
/// order, no whitespace. `n` and `e` are base64url and need no escaping.
fn rsa_thumbprint(n_b64: &str, e_b64: &str) -> String {
    let canonical = format!(r#"{{"e":"{e_b64}","kty":"RSA","n":"{n_b64}"}}"#);
    b64url(&Sha256::digest(canonical.as_bytes()))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn bit_length(be: &[u8]) -> usize {
    let be = strip_leading_zeros(be);
    match be.first() {
        None => 0,
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), Error> {
    let bits = bit_length(n);
    if bits < MIN_RSA_BITS {
        return Err(Error::WeakKey { bits });
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err(Error::MalformedKey("RSA modulus is even".into()));
    }
    // Exponents are small odd numbers in practice (65537); anything larger
    // than 64 bits or even is a corrupted key.
    if e.is_empty() || e.len() > 8 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
        return Err(Error::MalformedKey(
            "RSA public exponent is not valid".into(),
        ));
    }
    Ok(())
}

fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.2.1" => "EC (id-ecPublicKey)".into(),
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        other => format!("OID {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    #[test]
    fn rfc7638_example_thumbprint() {
        let n = b64url_decode(RFC7638_N).unwrap();
        let jwk = Jwk::from_rsa_components(&n, &[1, 0, 1]).unwrap();
        assert_eq!(jwk.kid().as_str(), RFC7638_THUMBPRINT);
        assert_eq!(jwk.thumbprint(), RFC7638_THUMBPRINT);
        assert_eq!(jwk.bits(), 2048);
    }

    #[test]
    fn serialises_every_required_member() {
        let n = b64url_decode(RFC7638_N).unwrap();
        let jwk = Jwk::from_rsa_components(&n, &[0, 1, 0, 1]).unwrap();
        let v: serde_json::Value = serde_json::to_value(&jwk).unwrap();
        assert_eq!(v["kty"], "RSA");
        assert_eq!(v["use"], "sig");
        assert_eq!(v["alg"], "RS256");
        assert_eq!(v["kid"], RFC7638_THUMBPRINT);
        assert_eq!(v["n"], RFC7638_N);
        assert_eq!(v["e"], "AQAB", "leading zero bytes are not part of e");
        let back: Jwk = serde_json::from_value(v).unwrap();
        assert_eq!(back, jwk);
    }

    #[test]
    fn refuses_weak_and_malformed_components() {
        let n = b64url_decode(RFC7638_N).unwrap();
        assert_eq!(
            Jwk::from_rsa_components(&n[..128], &[1, 0, 1]).unwrap_err(),
            Error::WeakKey { bits: 1024 }
        );
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(matches!(
            Jwk::from_rsa_components(&even, &[1, 0, 1]),
            Err(Error::MalformedKey(_))
        ));
        assert!(Jwk::from_rsa_components(&n, &[]).is_err());
        assert!(Jwk::from_rsa_components(&n, &[1]).is_err());
        assert!(Jwk::from_rsa_components(&n, &[1, 0, 0]).is_err());
    }

    #[test]
    fn key_set_rules() {
        let n = b64url_decode(RFC7638_N).unwrap();
        let key = Jwk::from_rsa_components(&n, &[1, 0, 1]).unwrap();
        let dup = JwkSet::new(vec![key.clone(), key.clone()]).unwrap_err();
        assert!(dup.to_string().contains("appears twice"), "{dup}");

        let many: Vec<Jwk> = (0..=MAX_KEYS)
            .map(|i| key.clone().with_kid(KeyId::new(format!("k{i}")).unwrap()))
            .collect();
        assert!(JwkSet::new(many[..MAX_KEYS].to_vec()).is_ok());
        let err = JwkSet::new(many).unwrap_err();
        assert!(err.to_string().contains("first 100"), "{err}");

        let set = JwkSet::new(vec![key.clone()]).unwrap();
        let json = set.to_json();
        assert_eq!(JwkSet::from_json(json.as_bytes()).unwrap(), set);
        assert_eq!(set.find(RFC7638_THUMBPRINT), Some(&key));
    }

    #[test]
    fn key_set_documents_that_must_be_refused() {
        let good = format!(
            r#"{{"kty":"RSA","use":"sig","alg":"RS256","kid":"a","n":"{RFC7638_N}","e":"AQAB"}}"#
        );
        let cases = [
            ("not json", "not a JWK Set"),
            (r#"{"keys": {}}"#, "not a JWK Set"),
            (r#"{"nokeys": []}"#, "not a JWK Set"),
            (
                &format!(
                    r#"{{"keys":[{{"kty":"RSA","use":"sig","alg":"RS256","n":"{RFC7638_N}","e":"AQAB"}}]}}"#
                ),
                "no `kid`",
            ),
            (
                &format!(r#"{{"keys":[{}]}}"#, good.replace("RS256", "PS256")),
                "`alg`",
            ),
            (
                &format!(r#"{{"keys":[{}]}}"#, good.replace(r#""sig""#, r#""enc""#)),
                "`use`",
            ),
            (
                &format!(r#"{{"keys":[{}]}}"#, good.replace(r#""RSA""#, r#""EC""#)),
                "kty EC",
            ),
            (
                &format!(r#"{{"keys":[{}]}}"#, good.replace("AQAB", "A$$B")),
                "base64url",
            ),
            (
                &format!(
                    r#"{{"keys":[{}]}}"#,
                    good.replace(r#""kid":"a""#, r#""kid":"""#)
                ),
                "empty",
            ),
        ];
        for (doc, expect) in cases {
            let err = JwkSet::from_json(doc.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expect), "{doc}: {err}");
        }
        let weak = good.replace(RFC7638_N, &RFC7638_N[..172]);
        let err = JwkSet::from_json(format!(r#"{{"keys":[{weak}]}}"#).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("too weak"), "{err}");
    }

    #[test]
    fn refuses_malformed_der_and_pem() {
        for der in [&b""[..], b"\x30\x03\x02\x01", b"garbage bytes here"] {
            assert!(matches!(
                Jwk::from_spki_der(der),
                Err(Error::MalformedKey(_))
            ));
        }
        assert!(matches!(
            Jwk::from_pem("hello"),
            Err(Error::MalformedKey(_))
        ));
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = Jwk::from_pem(private).unwrap_err();
        assert!(err.to_string().contains("-pubout"), "{err}");
    }
}
