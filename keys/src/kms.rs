//! Placeholder: the KMS key store (being written).
