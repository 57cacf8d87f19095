//! Independent validators written in Python (PyJWT), run from the
//! workspace's virtualenv that `scripts/test` installs.

use std::path::PathBuf;
use std::process::Command;

pub fn interpreter() -> PathBuf {
    if let Some(p) = std::env::var_os("AWS2AZURE_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"));
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Runs `script` with `args`; returns stdout, panics with stderr on failure.
pub fn run(script: &str, args: &[&str]) -> String {
    let out = Command::new(interpreter())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs (./scripts/test installs .venv)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the script file `path` with `args`; returns stdout, panics with
/// stderr on failure.
pub fn run_file(path: &str, args: &[&str]) -> String {
    let out = Command::new(interpreter())
        .arg(path)
        .args(args)
        .output()
        .expect("python runs (./scripts/test installs .venv)");
    assert!(
        out.status.success(),
        "python {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Verifies an RS256 JWT with PyJWT against a PEM public key and returns
/// its claims as JSON; panics if PyJWT rejects it.
pub fn pyjwt_verify(
    jwt: &str,
    public_pem: &str,
    audience: &str,
    issuer: &str,
) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys, jwt
token, pem, aud, iss = sys.argv[1:5]
claims = jwt.decode(token, pem, algorithms=["RS256"], audience=aud, issuer=iss,
                    options={"require": ["exp", "iat", "nbf", "iss", "sub", "aud", "jti"]})
print(json.dumps({"claims": claims, "header": jwt.get_unverified_header(token)}))
"#;
    serde_json::from_str(&run(SCRIPT, &[jwt, public_pem, audience, issuer])).unwrap()
}
