//! The credential endpoint as Azure programs meet it: `aws2azure serve`, a
//! real process, in front of the dev stack (edge, Entra stand-in, broker
//! behind the SigV4 gateway, all in this process), asked for Graph tokens by
//! Microsoft's own SDKs: Python `azure-identity` (ManagedIdentityCredential
//! and DefaultAzureCredential) and node `@azure/identity`
//! (ManagedIdentityCredential). Each gets exactly the token the broker
//! issued, every second call comes from a cache, and Entra sees one exchange.
//!
//! It runs the `aws2azure` binary of this target directory, which
//! `cargo test --workspace` (`./scripts/test`) builds; alone, build it
//! first: `cargo build -p aws2azure-cli && cargo test -p aws2azure-tests --test identity_sdks`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws2azure_client::TokenClient;
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_devstack::{Server, loopback};
use aws2azure_signer::api::handle;
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_tests::azure_sdk::{self, Sdk, SdkCall, sha256_hex};
use aws2azure_tests::rig::{CLIENT, Federation, SCOPE, SUBJECT, TENANT};

const REGION: &str = "eu-west-1";
const STAGE: &str = "prod";
const PROFILE: &str = "graph";
/// How long `aws2azure serve` may take to print its two lines.
const STARTUP: Duration = Duration::from_secs(30);
/// How far an SDK's `expires_on` may be from the broker's: the SDKs turn
/// `expires_on` into a lifetime and back, rounding on the way.
const EXPIRY_SLACK: u64 = 5;

/// The caller the gateway accepts, an IAM user of its own.
fn principal() -> Principal {
    Principal {
        access_key_id: "AKIAIDENTITYSDKS0001".into(),
        secret_access_key: "sdkTestSecretKey0000000000000000000000000".into(),
        session_token: None,
        arn: "arn:aws:iam::111122223333:user/azure-sdks".into(),
        caller: "AIDAIDENTITYSDKS00001".into(),
        account_id: "111122223333".into(),
    }
}

/// The token API behind the SigV4 gateway, counting the calls that reach it.
struct TokenApi {
    fed: Federation,
    gateway: Server,
    calls: Arc<AtomicUsize>,
}

impl TokenApi {
    async fn start() -> Self {
        let signer: Arc<dyn AssertionSigner> = Arc::new(LocalKeySigner::generate().unwrap());
        let fed = Federation::start(signer.as_ref()).await;
        let broker = fed.broker(signer, None, Duration::from_secs(2));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let function: gateway::Function = Arc::new(move |request| {
            let broker = broker.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { handle(&broker, &request).await.0 })
        });
        let gateway = gateway::serve(loopback(), REGION, STAGE, vec![principal()], function)
            .await
            .unwrap();
        Self {
            fed,
            gateway,
            calls,
        }
    }

    fn endpoint(&self) -> String {
        format!("{}/{STAGE}", self.gateway.url())
    }

    /// The broker's token, asked for directly as any SigV4 client would.
    async fn token(&self) -> aws2azure_client::TokenResponse {
        let p = principal();
        let credentials = Credentials::new(
            p.access_key_id,
            p.secret_access_key,
            None,
            None,
            "identity-sdks",
        );
        TokenClient::new(
            &self.endpoint(),
            REGION,
            SharedCredentialsProvider::new(credentials),
        )
        .unwrap()
        .token(PROFILE, 0)
        .await
        .expect("the token API answers the test itself")
    }
}

/// `aws2azure serve` as a process, its standard output and error collected.
struct Serve {
    child: Child,
    identity_endpoint: String,
    identity_header: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What the process wrote, once it has exited.
struct Stopped {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn aws2azure_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_soak"))
        .with_file_name(format!("aws2azure{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p aws2azure-cli` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// The value of an `export NAME=VALUE` line, unquoted as a shell would for
/// the plain single quotes `eval` accepts.
fn exported<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let value = line
        .strip_prefix("export ")?
        .strip_prefix(name)?
        .strip_prefix('=')?;
    Some(
        value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value),
    )
}

fn collect(
    pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

impl Serve {
    /// Starts it with the gateway's credentials in its environment, as
    /// exported by hand or by `aws2azure dev`, and nothing else of this
    /// machine's AWS setup; waits for its two `export` lines.
    fn start(endpoint: &str, config: &Path, home: &Path) -> Self {
        let p = principal();
        let mut child = Command::new(aws2azure_bin())
            .args(["serve", "--endpoint", endpoint, "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .env_clear()
            .env("HOME", home)
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("AWS_ACCESS_KEY_ID", &p.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &p.secret_access_key)
            .env("AWS_REGION", REGION)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("aws2azure serve starts");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        let (tx, rx) = mpsc::channel();
        let watched = Arc::clone(&stdout);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while started.elapsed() < STARTUP {
                if watched.lock().unwrap().lines().count() >= 2 {
                    let _ = tx.send(());
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut serve = Self {
            child,
            identity_endpoint: String::new(),
            identity_header: String::new(),
            stdout,
            stderr,
            readers,
        };
        if rx.recv().is_err() {
            let status = serve.child.try_wait().ok().flatten();
            panic!(
                "aws2azure serve printed no two export lines within {STARTUP:?} (exit: {status:?}):\n{}\n{}",
                serve.stdout.lock().unwrap(),
                serve.stderr.lock().unwrap()
            );
        }
        let text = serve.stdout.lock().unwrap().clone();
        let lines: Vec<&str> = text.lines().take(2).collect();
        let endpoint = exported(lines[0], "IDENTITY_ENDPOINT").unwrap_or_else(|| {
            panic!("first line `{}` is not export IDENTITY_ENDPOINT=", lines[0])
        });
        let header = exported(lines[1], "IDENTITY_HEADER")
            .unwrap_or_else(|| panic!("second line is not `export IDENTITY_HEADER=...`"));
        serve.identity_endpoint = endpoint.to_string();
        serve.identity_header = header.to_string();
        serve
    }

    /// Stops it as Ctrl-C would (SIGTERM), or kills it after 10 s.
    fn stop(mut self) -> Result<Stopped, String> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(|e| format!("SIGTERM to aws2azure serve: {e}"))?;
        let mut status = None;
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err("aws2azure serve did not stop within 10 s of SIGTERM; killed".into());
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(Stopped {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The CLI's configuration file with the stack's profile (the broker knows
/// where its Entra is; `serve` needs only the names and scopes).
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("aws2azure.toml");
    std::fs::write(
        &path,
        format!(
            "[profiles.{PROFILE}]\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\n\
             scope = \"{SCOPE}\"\nsubject = \"{SUBJECT}\"\n"
        ),
    )
    .unwrap();
    path
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs the scripts off the runtime, which keeps serving the stack.
async fn run_sdk(sdk: Sdk, endpoint: &str, header: &str, home: &Path) -> azure_sdk::SdkRun {
    let (endpoint, header, home) = (endpoint.to_string(), header.to_string(), home.to_path_buf());
    tokio::task::spawn_blocking(move || azure_sdk::run(sdk, &endpoint, &header, &home))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sdks_get_the_brokers_token_from_aws2azure_serve() {
    let api = TokenApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (endpoint, home) = (api.endpoint(), dir.path().to_path_buf());
    let serve = tokio::task::spawn_blocking(move || Serve::start(&endpoint, &config, &home))
        .await
        .unwrap();
    let port = serve
        .identity_endpoint
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/msi/token"))
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("IDENTITY_ENDPOINT={}", serve.identity_endpoint));
    assert_ne!(port, 0, "the printed endpoint has the real port");

    let python = run_sdk(
        Sdk::Python,
        &serve.identity_endpoint,
        &serve.identity_header,
        dir.path(),
    )
    .await;
    let node = run_sdk(
        Sdk::Node,
        &serve.identity_endpoint,
        &serve.identity_header,
        dir.path(),
    )
    .await;
    let calls: Vec<SdkCall> = [
        python.expect_success(Sdk::Python),
        node.expect_success(Sdk::Node),
    ]
    .concat();
    let shapes: Vec<(&str, &str, u32)> = calls
        .iter()
        .map(|c| (c.sdk.as_str(), c.credential.as_str(), c.call))
        .collect();
    assert_eq!(
        shapes,
        [
            ("python", "ManagedIdentityCredential", 1),
            ("python", "ManagedIdentityCredential", 2),
            ("python", "DefaultAzureCredential", 1),
            ("python", "DefaultAzureCredential", 2),
            ("node", "ManagedIdentityCredential", 1),
            ("node", "ManagedIdentityCredential", 2),
        ]
    );
    // Three credential objects each asked the endpoint once; the endpoint
    // asked the token API once and served the rest from its cache.
    assert_eq!(
        api.calls.load(Ordering::SeqCst),
        1,
        "the token API was called once for the three credentials"
    );

    let issued = api.token().await;
    let expected = sha256_hex(&issued.access_token);
    for call in &calls {
        assert_eq!(
            call.token_sha256, expected,
            "{call:?} got another token than the broker's"
        );
        assert!(
            call.expires_on.abs_diff(issued.expires_on) <= EXPIRY_SLACK,
            "{call:?}: the broker's token expires at {}",
            issued.expires_on
        );
        // An SDK holding a token with less than 5 minutes left asks again.
        assert!(call.expires_on > now() + 300, "{call:?}");
    }
    let stats = api.fed.entra.stats();
    assert_eq!(
        (stats.token_requests, stats.issued),
        (1, 1),
        "Entra exchanged one assertion for all six calls and the test's own"
    );

    // The SSRF guard holds against an SDK too, with a token in the cache.
    let wrong = run_sdk(
        Sdk::Python,
        &serve.identity_endpoint,
        "not-the-identity-header-of-serve",
        dir.path(),
    )
    .await;
    assert!(
        !wrong.status.success() && wrong.calls.is_empty(),
        "a wrong IDENTITY_HEADER got a token:\n{}",
        wrong.stdout
    );

    let secret = serve.identity_header.clone();
    let stopped = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(
        stopped.status.success(),
        "aws2azure serve exits cleanly on SIGTERM: {}\n{}",
        stopped.status,
        stopped.stderr
    );
    // One log line per request: three credential objects asked once each
    // (their second calls came from the SDKs' own caches, which keep a token
    // with more than 5 minutes left), the first one filled the endpoint's
    // cache, and the wrong header was refused.
    let requests: Vec<(u64, Option<String>)> = stopped
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "identity_request")
        .map(|l| {
            (
                l["status"].as_u64().unwrap_or_default(),
                l["origin"].as_str().map(str::to_string),
            )
        })
        .collect();
    let origin = |o: &str| Some(o.to_string());
    assert_eq!(
        requests,
        [
            (200, origin("token_api")),
            (200, origin("cache")),
            (200, origin("cache")),
            (401, None),
        ],
        "serve's request log:\n{}",
        stopped.stderr
    );
    for (what, text) in [
        ("serve's stderr", &stopped.stderr),
        ("serve's stdout", &stopped.stdout),
        (
            "the Python SDK's output",
            &format!("{}{}", python.stdout, python.stderr),
        ),
        (
            "the node SDK's output",
            &format!("{}{}", node.stdout, node.stderr),
        ),
        (
            "the refused SDK's output",
            &format!("{}{}", wrong.stdout, wrong.stderr),
        ),
    ] {
        assert!(
            !text.contains(&issued.access_token),
            "{what} holds the token"
        );
    }
    assert!(
        !stopped.stderr.contains(&secret),
        "serve's log holds the IDENTITY_HEADER secret"
    );
    assert_eq!(
        api.fed.entra.stats().token_requests,
        1,
        "nothing asked Entra again"
    );
}
