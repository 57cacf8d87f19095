//! The `aws2azure` command's subcommands, as a library so that each is
//! testable and usable from Rust code (the token client above all).

pub mod allowlist;
pub mod azure;
pub mod config;
pub mod dev;
pub mod direct;
pub mod doctor;
mod error;
pub mod keys;
pub mod serve;
mod signal;
/// The token API's client, re-exported for the `token` command's users.
pub use aws2azure_client as token;

pub use error::{Error, ExitCode};
