//! The `aws2azure` command's subcommands, as a library so that each is
//! testable and usable from Rust code.

pub mod allowlist;
pub mod token;
mod error;

pub use error::{Error, ExitCode};
