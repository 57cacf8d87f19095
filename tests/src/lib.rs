//! Helpers for the end-to-end tests in `tests/tests/`: real runtimes,
//! started and stopped by the tests themselves.
//!
//! - [`workerd`]: the compiled edge Worker in workerd (Miniflare).

pub mod workerd;
