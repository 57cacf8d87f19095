//! `aws2azure keys export`: the key set document the edge serves, built
//! from KMS keys (their `GetPublicKey`) and/or PEM files, for
//! `wrangler kv key put` or the edge's `KEY_DOCUMENT` variable.

use std::path::PathBuf;
use std::sync::Arc;

use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::jwk::{Jwk, JwkSet};
use aws2azure_signer::kms::KmsSigner;
use aws2azure_signer::signing::LocalKeySigner;

use crate::Error;

/// Reads every key, in the order given (current key first), and validates
/// the set (RSA ≥ 2048, unique ids, at most 100).
pub async fn export(
    kms_keys: &[String],
    pem_files: &[PathBuf],
    region: Option<&str>,
) -> Result<JwkSet, Error> {
    if kms_keys.is_empty() && pem_files.is_empty() {
        return Err(Error::Usage(
            "name at least one key: --kms-key alias/... or --pem FILE".into(),
        ));
    }
    let mut keys = Vec::new();
    if !kms_keys.is_empty() {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        let client = aws_sdk_kms::Client::new(&loader.load().await);
        for key_ref in kms_keys {
            let signer = KmsSigner::new(client.clone(), key_ref, Arc::new(SystemClock));
            keys.push(
                signer
                    .resolve()
                    .await
                    .map_err(|e| Error::Usage(format!("--kms-key {key_ref}: {e}")))?,
            );
        }
    }
    for path in pem_files {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let context = path.display().to_string();
        // A public key, or the public half of a private key.
        let jwk = match Jwk::from_pem(&text) {
            Ok(jwk) => jwk,
            Err(public_err) => match LocalKeySigner::from_pem(&text) {
                Ok(signer) => signer.jwk().clone(),
                Err(_) => {
                    return Err(Error::Input {
                        context,
                        source: public_err,
                    });
                }
            },
        };
        keys.push(jwk);
    }
    JwkSet::new(keys).map_err(|source| Error::Input {
        context: "key set".into(),
        source,
    })
}
