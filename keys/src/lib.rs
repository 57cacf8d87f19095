//! The signing keys' lifecycle.
//!
//! Keys move `next → current → previous → retired`. The state lives in KMS
//! only: one alias per active state (`…-next`, `…-current`, `…-previous`)
//! and tags with the time each step happened. Two invariants make a
//! rotation invisible to Entra:
//!
//! - **K1**: no assertion is signed by a key that the public edge has not
//!   served for the warm-up period ([`plan`] refuses the promotion).
//! - **K2**: a key stays in the public document for the previous-key
//!   retention after its last possible use ([`plan`] refuses the
//!   retirement; [`Timings`] refuses a retention too short to cover an
//!   assertion's lifetime, the edge's caches and the signers' re-resolution).
//!
//! The decisions are a pure function of the key ring, the clock and what the
//! public edge serves ([`plan`]); [`rotation::Rotator`] carries them out
//! against a [`store::KeyStore`] (KMS, or in process), a
//! [`publish::Publisher`] (Workers KV through the Cloudflare API) and a
//! [`public::PublicKeySet`] (the issuer's discovery document and key set,
//! read as Entra reads them).

pub mod cloudflare;
pub mod document;
pub mod error;
pub mod kms;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod public;
pub mod publish;
pub mod ring;
pub mod rotation;
pub mod settings;
pub mod store;
pub mod timings;

pub use error::Error;
pub use ring::{KeyRecord, KeyRing, KeyState, Slot, Stamp};
pub use timings::Timings;
