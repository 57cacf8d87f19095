//! Placeholder: the signing keys' KMS key policy (being written).
