//! Helpers for the end-to-end tests in `tests/tests/`: real runtimes,
//! started and stopped by the tests themselves.
//!
//! - [`workerd`]: the compiled edge Worker in workerd (Miniflare).
//! - [`rig`]: a local federation (edge core, Entra stand-in, broker).
//! - [`drill`]: the key rotation's rig (KMS ring, workerd edge, Cloudflare
//!   stand-in, rotator, Entra stand-in, broker) and its observers.
//! - [`aws`], [`python`], [`logs`]: moto resource names, Python validators
//!   from the workspace's virtualenv, captured log lines.
//! - [`azure_sdk`]: Microsoft's Azure SDKs (Python and node) asking a
//!   credential endpoint for tokens, as unchanged Azure programs do.

pub mod aws;
pub mod azure_sdk;
pub mod drill;
pub mod logs;
pub mod python;
pub mod rig;
pub mod workerd;

/// An API Gateway REST event from `signer/tests/fixtures`, edited by `edit`,
/// as the Lambda runtime hands it to the function.
pub fn event(fixture: &str, edit: impl FnOnce(&mut serde_json::Value)) -> lambda_http::Request {
    let path = format!(
        "{}/../signer/tests/fixtures/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut value);
    lambda_http::request::from_str(&value.to_string()).expect("a valid REST event")
}

/// Sets the `{profile}` of a REST event as API Gateway would.
pub fn with_profile(event: &mut serde_json::Value, raw: &str) {
    event["path"] = serde_json::json!(format!("/token/{raw}"));
    event["pathParameters"] = serde_json::json!({ "profile": raw });
    event["requestContext"]["path"] = serde_json::json!(format!("/prod/token/{raw}"));
}
