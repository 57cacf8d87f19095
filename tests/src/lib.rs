//! Support for the end-to-end tests: AWS resources in moto, Python tools
//! from the workspace's virtualenv, log capture.

pub mod aws;
pub mod logs;
pub mod python;
