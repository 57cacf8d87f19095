//! The `aws2azure` command's subcommands, as a library so that each is
//! testable and usable from Rust code.

pub mod allowlist;
mod error;
pub mod token;

pub use error::{Error, ExitCode};
