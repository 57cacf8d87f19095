//! Pure types and rules shared by every part of aws2azure.
//!
//! Nothing here performs I/O or needs an async runtime: the crate builds for
//! `wasm32-unknown-unknown` (the edge Worker) and natively (signer, CLI), and
//! every rule can be tested with canned data.
//!
//! One module per protocol concept:
//! - [`jwk`]: RSA public keys as JWKs and key sets, RFC 7638 key ids.
//! - [`discovery`]: the canonical issuer and its OpenID discovery document.
//! - [`assertion`]: the client assertion's header, claims and JWS signing input.
//! - [`profile`]: the token profiles an operator configures.
//! - [`allowlist`]: CIDR sets with fast containment and the allowlist modes.
//! - [`service_tags`]: Microsoft's Service Tags download, reduced to one tag.
//! - [`clock`]: time, injected, so expiry rules are tested without waiting.
//! - [`token_api`]: the token API's answers, as the signer writes them and
//!   the client reads them.

pub mod allowlist;
pub mod assertion;
pub mod clock;
pub mod discovery;
mod error;
pub mod jwk;
pub mod profile;
pub mod service_tags;
pub mod token_api;

pub use error::Error;

/// Base64url without padding, the encoding of every JOSE field.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Input echoed into an error message: at most `max` characters, control
/// characters replaced, so that a hostile document can neither flood a log
/// line nor forge one.
pub fn echo(input: &str, max: usize) -> String {
    let mut out: String = input
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if input.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// serde_json's message with any echoed value bounded (its "invalid type:
/// string …" quotes a whole string value) and the position kept.
pub(crate) fn json_error(error: &serde_json::Error) -> String {
    /// Room for serde's own words and a short excerpt of the value.
    const MAX: usize = 160;
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match full.strip_suffix(&position) {
        Some(message) if error.line() > 0 => format!("{}{position}", echo(message, MAX)),
        _ => echo(&full, MAX),
    }
}

pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}
