//! Microsoft's own Azure SDKs (Python `azure-identity`, node
//! `@azure/identity`) asking a credential endpoint for tokens the way an
//! unchanged Azure program does: the scripts in `tests/identity/`, run with
//! nothing but `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` in their environment.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::workerd::repo_root;

/// A token request's way to fail slowly: the SDKs retry 5xx for about 5 s
/// and node retries a 404 for about 20 s before giving up.
pub const SDK_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// `tests/identity/sdk_python.py`: ManagedIdentityCredential, then
    /// DefaultAzureCredential, two calls each.
    Python,
    /// `tests/identity/sdk_node.mjs`: ManagedIdentityCredential, two calls.
    Node,
}

/// One `get_token` as the script reports it (the token only by its hash).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SdkCall {
    pub sdk: String,
    pub credential: String,
    pub call: u32,
    pub token_sha256: String,
    pub expires_on: u64,
}

/// A finished run of one script.
#[derive(Debug)]
pub struct SdkRun {
    pub status: ExitStatus,
    pub calls: Vec<SdkCall>,
    pub stdout: String,
    pub stderr: String,
}

impl SdkRun {
    /// The calls, or a panic with the script's own explanation.
    pub fn expect_success(&self, sdk: Sdk) -> &[SdkCall] {
        assert!(
            self.status.success(),
            "{sdk:?} SDK failed ({}):\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.calls
    }
}

/// The lowercase hex SHA-256 of `text`, how the scripts report tokens.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Runs `sdk`'s script against the endpoint the two variables describe. The
/// environment holds only them, `PATH` and a scratch `HOME`: no proxy, no
/// Azure CLI login, no `AZURE_*` variable can steer the SDK elsewhere.
pub fn run(sdk: Sdk, identity_endpoint: &str, identity_header: &str, home: &Path) -> SdkRun {
    let root = repo_root();
    let mut command = match sdk {
        Sdk::Python => {
            let mut c = Command::new(crate::python::interpreter());
            c.arg(root.join("tests/identity/sdk_python.py"));
            c
        }
        Sdk::Node => {
            assert!(
                root.join("node_modules/@azure/identity").is_dir(),
                "node_modules/@azure/identity is missing: run `npm ci` (./scripts/test does)"
            );
            let mut c = Command::new("node");
            c.arg(root.join("tests/identity/sdk_node.mjs"));
            c
        }
    };
    command
        .current_dir(&root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("IDENTITY_ENDPOINT", identity_endpoint)
        .env("IDENTITY_HEADER", identity_header)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, stdout, stderr) = run_bounded(command, SDK_TIMEOUT, &format!("{sdk:?} SDK"));
    let calls = if status.success() {
        stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{sdk:?} SDK printed `{line}`, not a call: {e}"))
            })
            .collect()
    } else {
        vec![]
    };
    SdkRun {
        status,
        calls,
        stdout,
        stderr,
    }
}

/// Runs `command` to its end, killing it after `limit`.
fn run_bounded(mut command: Command, limit: Duration, what: &str) -> (ExitStatus, String, String) {
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {limit:?}; killed:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}
