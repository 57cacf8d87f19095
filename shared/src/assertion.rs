//! The client assertion: the short-lived JWT Entra exchanges for a token.
//!
//! This module builds the header and claims and the JWS signing input
//! (`base64url(header).base64url(claims)`); a signer (KMS, a local key) only
//! turns those bytes into an RS256 signature, and [`SigningInput::into_assertion`]
//! assembles the compact JWS.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::discovery::Issuer;
use crate::jwk::{KeyId, RS256};
use crate::profile::Subject;
use crate::{Error, b64url};

/// `client_assertion_type` of a JWT bearer assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience Entra requires of federated assertions.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
/// Default assertion lifetime, seconds.
pub const DEFAULT_LIFETIME_SECS: u64 = 300;
/// Longest lifetime this project signs (Entra accepts longer; a short one
/// limits what a leaked assertion is worth).
pub const MAX_LIFETIME_SECS: u64 = 600;
/// Shortest lifetime that still survives a retried exchange.
pub const MIN_LIFETIME_SECS: u64 = 60;
/// `nbf` is back-dated by this much to absorb clock skew with Entra.
pub const NOT_BEFORE_SKEW_SECS: u64 = 30;
/// KMS `Sign` accepts at most 4096 bytes with `MessageType=RAW`.
pub const MAX_SIGNING_INPUT_LEN: usize = 4096;

/// The JOSE header of every assertion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwsHeader {
    pub alg: String,
    pub typ: String,
    pub kid: KeyId,
}

impl JwsHeader {
    pub fn rs256(kid: KeyId) -> Self {
        Self {
            alg: RS256.into(),
            typ: "JWT".into(),
            kid,
        }
    }
}

/// The claims of an assertion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

/// Builds claims within the lifetime bounds above.
#[derive(Clone, Debug)]
pub struct AssertionBuilder<'a> {
    issuer: &'a Issuer,
    subject: &'a Subject,
    lifetime_secs: u64,
}

impl<'a> AssertionBuilder<'a> {
    pub fn new(issuer: &'a Issuer, subject: &'a Subject) -> Self {
        Self {
            issuer,
            subject,
            lifetime_secs: DEFAULT_LIFETIME_SECS,
        }
    }

    pub fn lifetime_secs(mut self, secs: u64) -> Result<Self, Error> {
        check_lifetime(secs)?;
        self.lifetime_secs = secs;
        Ok(self)
    }

    /// `now` is Unix seconds from the caller's clock; `jti` must be unique
    /// per assertion (the caller owns randomness, this crate stays pure).
    pub fn build(&self, now: u64, jti: &str) -> Result<AssertionClaims, Error> {
        if jti.is_empty() || jti.len() > 128 || !jti.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidAssertion(
                "`jti` must be 1 to 128 printable ASCII characters".into(),
            ));
        }
        Ok(AssertionClaims {
            iss: self.issuer.as_str().to_string(),
            sub: self.subject.as_str().to_string(),
            aud: AUDIENCE.to_string(),
            iat: now,
            nbf: now.saturating_sub(NOT_BEFORE_SKEW_SECS),
            exp: now + self.lifetime_secs,
            jti: jti.to_string(),
        })
    }
}

/// Checks an assertion lifetime against the project's bounds.
pub fn check_lifetime(secs: u64) -> Result<(), Error> {
    if (MIN_LIFETIME_SECS..=MAX_LIFETIME_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(Error::InvalidAssertion(format!(
            "lifetime of {secs} s is out of bounds: use {MIN_LIFETIME_SECS} to \
             {MAX_LIFETIME_SECS} s (default {DEFAULT_LIFETIME_SECS})"
        )))
    }
}

/// The exact bytes an RS256 signature covers.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningInput(String);

impl SigningInput {
    pub fn new(header: &JwsHeader, claims: &AssertionClaims) -> Result<Self, Error> {
        if header.alg != RS256 {
            return Err(Error::InvalidAssertion(format!(
                "alg `{}` is not supported: Entra accepts RS256 only",
                header.alg
            )));
        }
        let header = serde_json::to_vec(header).expect("header serialises");
        let claims = serde_json::to_vec(claims).expect("claims serialise");
        let input = format!("{}.{}", b64url(&header), b64url(&claims));
        if input.len() > MAX_SIGNING_INPUT_LEN {
            return Err(Error::InvalidAssertion(format!(
                "signing input is {} bytes; KMS signs at most {MAX_SIGNING_INPUT_LEN} raw bytes \
                 (shorten the subject or issuer)",
                input.len()
            )));
        }
        Ok(Self(input))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the signature, yielding the compact JWS.
    pub fn into_assertion(self, signature: &[u8]) -> ClientAssertion {
        let mut jwt = self.0;
        jwt.push('.');
        jwt.push_str(&b64url(signature));
        ClientAssertion(jwt)
    }
}

impl fmt::Debug for SigningInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningInput({} bytes)", self.0.len())
    }
}

/// A signed assertion. It is a bearer credential for a few minutes, so its
/// `Debug` never shows it; only [`ClientAssertion::expose`] does, for the
/// one place that sends it to Entra.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientAssertion(String);

impl ClientAssertion {
    /// An assertion signed by someone else (AWS STS `GetWebIdentityToken`),
    /// checked for a compact JWS's shape: three base64url segments whose
    /// first two are JSON objects. Nothing is echoed: it is a credential.
    pub fn signed_elsewhere(jwt: String) -> Result<Self, Error> {
        let assertion = Self(jwt);
        assertion.unverified_part(0)?;
        assertion.unverified_claims()?;
        Ok(assertion)
    }

    /// The claims, read without checking the signature: for comparing what
    /// another signer wrote (its subject, its issuer) with what the profile
    /// expects, before Entra refuses it with a less helpful message.
    pub fn unverified_claims(&self) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        self.unverified_part(1)
    }

    fn unverified_part(
        &self,
        index: usize,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        let segments: Vec<&str> = self.0.split('.').collect();
        let malformed = || {
            Error::InvalidAssertion(
                "not a compact JWS (three base64url segments, header and claims JSON objects)"
                    .into(),
            )
        };
        if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {
            return Err(malformed());
        }
        let bytes = crate::b64url_decode(segments[index]).ok_or_else(malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(malformed()),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64url_decode;

    fn issuer() -> Issuer {
        Issuer::parse("https://issuer.example.com/").unwrap()
    }

    #[test]
    fn an_assertion_signed_elsewhere_must_be_shaped_like_a_jws() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let claims = b64(r#"{"sub":"arn:aws:iam::111122223333:role/r","iss":"https://x"}"#);
        let good = ClientAssertion::signed_elsewhere(format!("{header}.{claims}.c2ln")).unwrap();
        assert_eq!(
            good.unverified_claims().unwrap()["sub"],
            "arn:aws:iam::111122223333:role/r"
        );
        for bad in [
            String::new(),
            "a.b".into(),
            format!("{header}.{claims}"),
            format!("{header}.{claims}.sig.extra"),
            format!("{header}..c2ln"),
            format!("{header}.{}.c2ln", b64("[1]")),
            format!("{}.{claims}.c2ln", b64("not json")),
            format!("{header}.%%%.c2ln"),
        ] {
            let err = ClientAssertion::signed_elsewhere(bad.clone()).unwrap_err();
            assert!(matches!(err, Error::InvalidAssertion(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains(&claims), "no echo of the token");
        }
    }

    #[test]
    fn claims_follow_the_rules() {
        let issuer = issuer();
        let subject = Subject::parse("aws2azure:graph").unwrap();
        let claims = AssertionBuilder::new(&issuer, &subject)
            .build(1_700_000_000, "j-1")
            .unwrap();
        assert_eq!(claims.iss, "https://issuer.example.com/");
        assert_eq!(claims.sub, "aws2azure:graph");
        assert_eq!(claims.aud, AUDIENCE);
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.nbf, 1_700_000_000 - 30);
        assert_eq!(claims.exp, 1_700_000_000 + 300);
        let ten = AssertionBuilder::new(&issuer, &subject)
            .lifetime_secs(600)
            .unwrap()
            .build(10_000, "j")
            .unwrap();
        assert_eq!(ten.exp - ten.iat, 600);
    }

    #[test]
    fn lifetime_bounds_and_jti_are_enforced() {
        let issuer = issuer();
        let subject = Subject::parse("s").unwrap();
        for bad in [0, 59, 601, 3600] {
            let err = AssertionBuilder::new(&issuer, &subject)
                .lifetime_secs(bad)
                .unwrap_err();
            assert!(err.to_string().contains("60 to 600"), "{err}");
        }
        let b = AssertionBuilder::new(&issuer, &subject);
        assert!(b.build(1, "").is_err());
        assert!(b.build(1, "has space").is_err());
        assert!(b.build(1, &"x".repeat(129)).is_err());
    }

    #[test]
    fn signing_input_is_header_dot_claims() {
        let issuer = issuer();
        let subject = Subject::parse("s").unwrap();
        let claims = AssertionBuilder::new(&issuer, &subject)
            .build(100, "j")
            .unwrap();
        let header = JwsHeader::rs256(KeyId::new("kid-1").unwrap());
        let input = SigningInput::new(&header, &claims).unwrap();
        let text = std::str::from_utf8(input.as_bytes()).unwrap().to_string();
        let (h, c) = text.split_once('.').unwrap();
        let h: serde_json::Value = serde_json::from_slice(&b64url_decode(h).unwrap()).unwrap();
        assert_eq!(
            h,
            serde_json::json!({"alg":"RS256","typ":"JWT","kid":"kid-1"})
        );
        let c: AssertionClaims = serde_json::from_slice(&b64url_decode(c).unwrap()).unwrap();
        assert_eq!(c, claims);

        let jwt = input.into_assertion(&[0xfb, 0xff]);
        assert_eq!(jwt.expose(), format!("{text}.-_8"));
        assert_eq!(format!("{jwt:?}"), "ClientAssertion(<redacted>)");
    }

    #[test]
    fn refuses_oversized_input_and_other_algorithms() {
        let issuer = issuer();
        let subject = Subject::parse(&"s".repeat(600)).unwrap();
        let mut claims = AssertionBuilder::new(&issuer, &subject)
            .build(100, "j")
            .unwrap();
        claims.sub = "x".repeat(4000);
        let header = JwsHeader::rs256(KeyId::new("k").unwrap());
        let err = SigningInput::new(&header, &claims).unwrap_err();
        assert!(err.to_string().contains("4096"), "{err}");
        let mut hs = header.clone();
        hs.alg = "HS256".into();
        claims.sub = "s".into();
        assert!(SigningInput::new(&hs, &claims).is_err());
    }
}
