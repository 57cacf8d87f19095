//! Assertion signers: something that holds an RSA key and turns assertion
//! claims into a signed client assertion. The key never leaves the signer.
//! Header (`kid`) and signature come from one call, so a signer whose key
//! changes (a KMS alias moved during rotation) can never pair one key's `kid`
//! with another key's signature.

use async_trait::async_trait;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use aws2azure_shared::assertion::{AssertionClaims, ClientAssertion, JwsHeader, SigningInput};
use aws2azure_shared::jwk::Jwk;

use crate::Error;

#[async_trait]
pub trait AssertionSigner: Send + Sync + 'static {
    /// The public key that verifies this signer's signatures; its `kid` goes
    /// into every assertion header.
    async fn public_key(&self) -> Result<Jwk, Error>;

    /// An RS256 assertion of these claims, `kid` and signature from the
    /// same key.
    async fn sign_assertion(&self, claims: &AssertionClaims) -> Result<ClientAssertion, Error>;
}

/// A signer holding an RSA key in process memory: for `aws2azure dev`, tests,
/// and deployments that bring their own key. Production uses KMS.
pub struct LocalKeySigner {
    key: KeyPair,
    jwk: Jwk,
}

impl LocalKeySigner {
    /// From a PEM private key: PKCS #8 (`PRIVATE KEY`, what `openssl genrsa`
    /// writes) or PKCS #1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
            .map_err(|e| Error::LocalKey(format!("not a PEM document ({e})")))?;
        let key = match label {
            "PRIVATE KEY" => KeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => KeyPair::from_der(&der),
            other => {
                return Err(Error::LocalKey(format!(
                    "PEM label `{other}`: expected an RSA `PRIVATE KEY` or `RSA PRIVATE KEY`"
                )));
            }
        }
        .map_err(|e| Error::LocalKey(format!("not an RSA private key ({e})")))?;
        Self::from_key(key)
    }

    /// A fresh 2048-bit key, for a local run with nothing configured.
    pub fn generate() -> Result<Self, Error> {
        let key = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| Error::LocalKey("RSA key generation failed".into()))?;
        Self::from_key(key)
    }

    fn from_key(key: KeyPair) -> Result<Self, Error> {
        let jwk = Jwk::from_pkcs1_der(key.public_key().as_ref())?;
        Ok(Self { key, jwk })
    }

    /// The private key as PKCS #8 PEM, so a generated key can be kept.
    pub fn to_pkcs8_pem(&self) -> Result<String, Error> {
        let der = self
            .key
            .as_der()
            .map_err(|_| Error::LocalKey("cannot encode the key".into()))?;
        pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, der.as_ref())
            .map_err(|e| Error::LocalKey(e.to_string()))
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }
}

#[async_trait]
impl AssertionSigner for LocalKeySigner {
    async fn public_key(&self) -> Result<Jwk, Error> {
        Ok(self.jwk.clone())
    }

    async fn sign_assertion(&self, claims: &AssertionClaims) -> Result<ClientAssertion, Error> {
        let input = SigningInput::new(&JwsHeader::rs256(self.jwk.kid().clone()), claims)?;
        let mut signature = vec![0; self.key.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut signature)
            .map_err(|_| Error::LocalKey("signing failed".into()))?;
        Ok(input.into_assertion(&signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws2azure_shared::assertion::AssertionBuilder;
    use aws2azure_shared::discovery::Issuer;
    use aws2azure_shared::profile::Subject;

    #[tokio::test]
    async fn signatures_verify_with_the_published_key() {
        let signer = LocalKeySigner::generate().unwrap();
        let jwk = signer.public_key().await.unwrap();
        assert_eq!(jwk.bits(), 2048);
        let issuer = Issuer::parse("https://issuer.example.com").unwrap();
        let subject = Subject::parse("s").unwrap();
        let claims = AssertionBuilder::new(&issuer, &subject)
            .build(1, "j")
            .unwrap();
        let assertion = signer.sign_assertion(&claims).await.unwrap();
        let jwt = assertion.expose();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let header = input.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(&b64(header)).unwrap();
        assert_eq!(header["kid"], jwk.kid().as_str());
        assert_eq!(header["alg"], "RS256");
        let public = aws_lc_rs::signature::RsaPublicKeyComponents {
            n: jwk.modulus(),
            e: jwk.exponent(),
        };
        public
            .verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                input.as_bytes(),
                &b64(sig),
            )
            .expect("signature verifies");

        // The exported key loads back to the same public key.
        let again = LocalKeySigner::from_pem(&signer.to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(again.jwk(), &jwk);
    }

    fn b64(s: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap()
    }

    #[test]
    fn refuses_unusable_pem() {
        for pem in [
            "",
            "garbage",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(
                matches!(LocalKeySigner::from_pem(pem), Err(Error::LocalKey(_))),
                "{pem}"
            );
        }
    }
}
