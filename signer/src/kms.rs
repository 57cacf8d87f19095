//! The production signer: an asymmetric RSA key in AWS KMS.
//!
//! `Sign` uses `RSASSA_PKCS1_V1_5_SHA_256` with `MessageType=RAW` over the
//! JWS signing input (KMS hashes it; the input stays far below the 4 KiB RAW
//! limit, which `SigningInput` enforces). The key reference (alias or id) is
//! resolved to a key id and its public key once, then again every few
//! minutes, so an alias moved by rotation is picked up without a restart.
//!
//! No lock is held across a KMS call: one caller re-resolves while the
//! others keep signing with the key they have, so a slow or abandoned
//! `DescribeKey` never holds up a signature for another token.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use aws2azure_shared::assertion::{AssertionClaims, ClientAssertion, JwsHeader, SigningInput};
use aws2azure_shared::jwk::Jwk;

use crate::Error;
use crate::signing::AssertionSigner;
use aws2azure_shared::clock::Clock;

/// How long a resolved key id and public key are trusted by default.
pub const RESOLVE_TTL_SECS: u64 = 300;

/// For how many resolve intervals a key whose re-resolution keeps failing
/// is still used. Past that the signer fails instead: key rotation keeps a
/// demoted key published for a bounded time (K2), which only holds if
/// nobody signs with it for longer than this.
pub const UNCONFIRMED_INTERVALS: u64 = 3;

#[derive(Clone)]
struct ResolvedKey {
    key_id: String,
    jwk: Jwk,
    resolved_at: u64,
    /// When KMS last confirmed that the alias names this key.
    confirmed_at: u64,
}

/// The resolved key and whether a caller is re-resolving it right now.
#[derive(Default)]
struct Resolution {
    key: Option<ResolvedKey>,
    refreshing: bool,
}

pub struct KmsSigner {
    client: Client,
    key_ref: String,
    clock: Arc<dyn Clock>,
    resolve_interval_secs: u64,
    resolution: Arc<Mutex<Resolution>>,
}

/// Clears `refreshing` however the re-resolution ends, a dropped future
/// included, so that the next caller tries again.
struct RefreshTurn(Arc<Mutex<Resolution>>);

impl Drop for RefreshTurn {
    fn drop(&mut self) {
        lock(&self.0).refreshing = false;
    }
}

fn lock(resolution: &Mutex<Resolution>) -> MutexGuard<'_, Resolution> {
    resolution.lock().unwrap_or_else(|p| p.into_inner())
}

impl KmsSigner {
    /// `key_ref`: a key id, key ARN, alias name (`alias/aws2azure-current`) or
    /// alias ARN. Retries of throttled calls are the SDK client's (configure
    /// them on the client, see `bootstrap`).
    pub fn new(client: Client, key_ref: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            key_ref: key_ref.into(),
            clock,
            resolve_interval_secs: RESOLVE_TTL_SECS,
            resolution: Arc::default(),
        }
    }

    /// How long a resolved key is used before the alias is resolved again
    /// (default [`RESOLVE_TTL_SECS`]), in whole seconds of the signer's
    /// clock. The key rotation's K2 retention counts on it
    /// (`signer_resolve_interval`); a short one lets a test rotate keys in
    /// seconds, at the price of a `DescribeKey` and a `GetPublicKey` per
    /// interval.
    pub fn with_resolve_interval(mut self, interval: std::time::Duration) -> Self {
        self.resolve_interval_secs = interval.as_secs();
        self
    }

    /// Resolves the key now: fails fast on a wrong key at start-up and warms
    /// the connection to KMS before the first request.
    pub async fn resolve(&self) -> Result<Jwk, Error> {
        Ok(self.current().await?.jwk)
    }

    /// How long a key is used without KMS confirming the alias still names
    /// it: the longest a signer can go on with a key after rotation moved
    /// the alias away from it.
    pub fn unconfirmed_limit(&self) -> u64 {
        self.resolve_interval_secs
            .saturating_mul(UNCONFIRMED_INTERVALS)
    }

    async fn current(&self) -> Result<ResolvedKey, Error> {
        let now = self.clock.now_unix();
        {
            let mut resolution = lock(&self.resolution);
            match resolution.key.clone() {
                Some(key)
                    if now.saturating_sub(key.resolved_at) < self.resolve_interval_secs
                        && now.saturating_sub(key.confirmed_at) < self.unconfirmed_limit() =>
                {
                    return Ok(key);
                }
                // Someone is re-resolving: sign with the key we have.
                Some(key) if resolution.refreshing => return Ok(key),
                // Stale, or none yet (then every caller resolves: there is
                // nothing to sign with meanwhile).
                _ => resolution.refreshing = true,
            }
        }
        let _turn = RefreshTurn(self.resolution.clone());
        let fetched = self.fetch(now).await;
        let mut resolution = lock(&self.resolution);
        match fetched {
            Ok(key) => {
                resolution.key = Some(key.clone());
                Ok(key)
            }
            // A failed re-resolution keeps the key we had: signing with the
            // known key beats failing every request while KMS hiccups.
            // Try again only after another TTL, so that a KMS outage does
            // not put two extra calls in front of every Sign.
            Err(err) => match resolution.key.as_mut() {
                Some(key) if now.saturating_sub(key.confirmed_at) < self.unconfirmed_limit() => {
                    tracing::warn!(error = %err, "re-resolving the KMS key failed; keeping the current one");
                    key.resolved_at = now;
                    Ok(key.clone())
                }
                // The alias may have moved long ago: keep failing (and
                // retrying) rather than sign with a key that rotation may
                // already have taken out of the public key set.
                Some(_) => {
                    tracing::error!(error = %err, "the KMS key could not be confirmed for too long; not signing with it");
                    Err(err)
                }
                None => Err(err),
            },
        }
    }

    async fn fetch(&self, now: u64) -> Result<ResolvedKey, Error> {
        let described = self
            .client
            .describe_key()
            .key_id(&self.key_ref)
            .send()
            .await
            .map_err(map_sdk_error)?;
        let meta = described.key_metadata().ok_or_else(|| Error::Kms {
            code: "NoKeyMetadata".into(),
            message: format!("DescribeKey returned no metadata for {}", self.key_ref),
        })?;
        if !meta.enabled() {
            return Err(Error::Kms {
                code: "DisabledKey".into(),
                message: format!(
                    "key {} is not enabled (state {:?}); enable it or point the alias at an \
                     enabled key",
                    meta.key_id(),
                    meta.key_state()
                ),
            });
        }
        let key_id = meta.arn().unwrap_or(meta.key_id()).to_string();
        let public = self
            .client
            .get_public_key()
            .key_id(&key_id)
            .send()
            .await
            .map_err(map_sdk_error)?;
        let der = public.public_key().ok_or_else(|| Error::Kms {
            code: "NoPublicKey".into(),
            message: format!("GetPublicKey returned no key for {key_id}"),
        })?;
        let jwk = Jwk::from_spki_der(der.as_ref())?;
        Ok(ResolvedKey {
            key_id,
            jwk,
            resolved_at: now,
            confirmed_at: now,
        })
    }
}

#[async_trait]
impl AssertionSigner for KmsSigner {
    async fn public_key(&self) -> Result<Jwk, Error> {
        Ok(self.current().await?.jwk)
    }

    async fn sign_assertion(&self, claims: &AssertionClaims) -> Result<ClientAssertion, Error> {
        let key = self.current().await?;
        let input = SigningInput::new(&JwsHeader::rs256(key.jwk.kid().clone()), claims)?;
        let signed = self
            .client
            .sign()
            .key_id(&key.key_id)
            .message(Blob::new(input.as_bytes()))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::RsassaPkcs1V15Sha256)
            .send()
            .await
            .map_err(map_sdk_error)?;
        let signature = signed.signature().ok_or_else(|| Error::Kms {
            code: "NoSignature".into(),
            message: "Sign returned no signature".into(),
        })?;
        Ok(input.into_assertion(signature.as_ref()))
    }
}

fn map_sdk_error<E, R>(err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown").to_string();
            let message = e.message().unwrap_or_default().to_string();
            match code.as_str() {
                "ThrottlingException" | "LimitExceededException" => Error::KmsThrottled,
                "KMSInternalException"
                | "DependencyTimeoutException"
                | "KeyUnavailableException" => Error::KmsUnreachable(format!("{code}: {message}")),
                _ => Error::Kms { code, message },
            }
        }
        SdkError::TimeoutError(_) => Error::KmsUnreachable("timed out".into()),
        SdkError::DispatchFailure(d) => Error::KmsUnreachable(format!("dispatch failed: {d:?}")),
        other => Error::KmsUnreachable(format!("{other}")),
    }
}
