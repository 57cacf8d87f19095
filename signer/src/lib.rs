//! The aws2azure token broker.
//!
//! `GET /token/{profile}` → an Entra access token, with no Azure secret: the
//! broker signs a short-lived client assertion with a KMS key and exchanges
//! it at Entra through workload identity federation, caching the result.
//!
//! The core ([`broker`]) works through small traits ([`signing::AssertionSigner`],
//! [`entra::TokenExchange`], [`cache::SharedCache`], [`aws2azure_shared::clock::Clock`]); the
//! adapters for real services ([`kms`], [`entra::EntraClient`], [`dynamodb`])
//! and for local runs ([`signing::LocalKeySigner`]) plug into them. [`api`]
//! is the HTTP boundary, [`runtime`] wires it all from [`settings`] for the
//! Lambda (`bootstrap`).

pub mod api;
pub mod audit;
pub mod broker;
pub mod cache;
pub mod dynamodb;
pub mod entra;
mod error;
pub mod kms;
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod settings;
pub mod signing;
pub mod sts;
pub mod token;

pub use error::{CONFIGURATION_AADSTS, Error, RETRYABLE_AADSTS};

/// Longest caller input (a profile name, a query parameter) echoed into a
/// log line or an error.
pub(crate) const ECHO_MAX: usize = 64;

/// Caller input as it may appear in a log line or an error: bounded, with
/// control characters replaced.
pub(crate) fn echo(input: &str) -> String {
    aws2azure_shared::echo(input, ECHO_MAX)
}
