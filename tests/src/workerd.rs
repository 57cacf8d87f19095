//! The compiled edge Worker (edge/build) running in workerd, for tests.
//!
//! [`WorkerdEdge::start`] runs `tests/edge/serve.mjs` (Miniflare, from the
//! pinned npm packages) on a real loopback port, waits until it serves, and
//! stops it, workerd included, when dropped. The running Worker's KV can be
//! changed under it, and a fresh isolate started, through the script's
//! control port; every line the Worker logs is collected, and on request
//! every KV read it makes.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};

/// How long the Worker may take to start (Miniflare needs ~0.5 s; a loaded
/// 2-core CI machine building the signer at the same time, much more).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a log line may lag behind its response.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The repository root (where wrangler.toml and node_modules are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A free loopback port, for an issuer URL that must name the port before
/// the Worker starts. Another process could take it in between; on this
/// machine's loopback that has not been seen.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Refuses to test a Worker older than its sources: the tests would pass or
/// fail for code that is not the code under test.
fn assert_built_from_current_sources(root: &Path) {
    fn newest(path: &Path) -> Option<SystemTime> {
        let meta = fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        fs::read_dir(path)
            .ok()?
            .filter_map(|entry| newest(&entry.ok()?.path()))
            .max()
    }
    let built = fs::metadata(root.join("edge/build/index_bg.wasm"))
        .and_then(|m| m.modified())
        .expect("edge/build/index_bg.wasm exists");
    let inputs = [
        "edge/src",
        "edge/build.rs",
        "edge/Cargo.toml",
        "shared/src",
        "shared/data/service-tags",
        "Cargo.lock",
    ];
    for input in inputs {
        if newest(&root.join(input)).is_some_and(|changed| changed > built) {
            panic!(
                "edge/build is older than {input}: rebuild the Worker with ./scripts/build-edge \
                 (./scripts/test does it before cargo test)"
            );
        }
    }
}

/// What the Worker starts with.
#[derive(Clone, Debug, Default)]
pub struct EdgeOptions {
    bindings: Map<String, Value>,
    kv: Map<String, Value>,
    no_kv_binding: bool,
    port: u16,
    cf: Option<Value>,
    count_kv_reads: bool,
}

impl EdgeOptions {
    /// A Worker on `port` (0: any) with `ISSUER` set and nothing else.
    pub fn new(issuer: &str, port: u16) -> Self {
        Self::default().var("ISSUER", issuer).port(port)
    }

    /// A Worker variable: a string, or any JSON value (wrangler passes TOML
    /// numbers and tables as such).
    pub fn var(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.bindings.insert(name.to_string(), value.into());
        self
    }

    pub fn without_var(mut self, name: &str) -> Self {
        self.bindings.remove(name);
        self
    }

    /// A KV entry present when the Worker starts.
    pub fn kv(mut self, key: &str, value: &str) -> Self {
        self.kv.insert(key.to_string(), value.into());
        self
    }

    /// No `EDGE_KV` binding at all.
    pub fn without_kv_binding(mut self) -> Self {
        self.no_kv_binding = true;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// `request.cf` for every request (default `{"colo": "TST"}`).
    pub fn cf(mut self, cf: Value) -> Self {
        self.cf = Some(cf);
        self
    }

    /// Reports every KV read the Worker makes ([`WorkerdEdge::kv_reads`]),
    /// through a wrapper around the real namespace.
    pub fn count_kv_reads(mut self) -> Self {
        self.count_kv_reads = true;
        self
    }

    fn to_json(&self) -> String {
        let mut config = json!({
            "bindings": self.bindings,
            "kv": self.kv,
            "kvBinding": !self.no_kv_binding,
            "port": self.port,
            "countKvReads": self.count_kv_reads,
        });
        if let Some(cf) = &self.cf {
            config["cf"] = cf.clone();
        }
        config.to_string()
    }
}

/// A running edge Worker in workerd. Stopped on drop.
pub struct WorkerdEdge {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
    control: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// The key of every KV read, in order (with [`EdgeOptions::count_kv_reads`]).
    kv_reads: Arc<Mutex<Vec<String>>>,
    /// How many log lines [`WorkerdEdge::next_log`] has handed out.
    seen: Mutex<usize>,
    http: reqwest::Client,
}

impl WorkerdEdge {
    /// Starts the Worker and waits until it serves. Panics, with the
    /// script's own output, if it cannot.
    pub fn start(options: &EdgeOptions) -> Self {
        let root = repo_root();
        let index = root.join("edge/build/index.js");
        assert!(
            index.exists(),
            "{} is missing: build the Worker first with ./scripts/build-edge \
             (./scripts/test does it before cargo test)",
            index.display()
        );
        assert_built_from_current_sources(&root);
        assert!(
            root.join("node_modules/miniflare").exists(),
            "node_modules/miniflare is missing: run `npm ci` (./scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/edge/serve.mjs"))
            .arg(options.to_json())
            .current_dir(&root)
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env("WRANGLER_SEND_METRICS", "false")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs (install node 20+)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let kv_reads = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let (logs, kv_reads) = (logs.clone(), kv_reads.clone());
            // One reader, in order: a request's KV reads are recorded before
            // its log line.
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(ready) = line.strip_prefix("READY ") {
                        let _ = ready_tx.send(ready.to_string());
                    } else if let Some(log) = line.strip_prefix("LOG ") {
                        logs.lock().unwrap().push(log.to_string());
                    } else if let Some(key) = line.strip_prefix("KV_READ ") {
                        kv_reads.lock().unwrap().push(key.to_string());
                    }
                }
            });
        }
        {
            let errors = errors.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    errors.lock().unwrap().push(line);
                }
            });
        }
        let ready = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(ready) => ready,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "the edge did not start within {START_TIMEOUT:?}; serve.mjs said:\n{}",
                    errors.lock().unwrap().join("\n")
                );
            }
        };
        let ready: Value = serde_json::from_str(&ready).expect("READY carries JSON");
        let url = ready["url"].as_str().expect("url").trim_end_matches('/');
        let control = ready["control"].as_str().expect("control");
        Self {
            child,
            stdin,
            url: url.to_string(),
            control: control.trim_end_matches('/').to_string(),
            logs,
            kv_reads,
            seen: Mutex::new(0),
            http: reqwest::Client::new(),
        }
    }

    /// The Worker's origin, e.g. `http://127.0.0.1:8787`.
    pub fn origin(&self) -> &str {
        &self.url
    }

    /// `origin + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<String>) {
        if let Err(e) = self.try_control(method, path, body).await {
            panic!("{e}");
        }
    }

    async fn try_control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.control));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| {
            format!("control {method} {path}: the control port did not answer: {e}")
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "control {method} {path}: {status} {}",
                response.text().await.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Writes a KV entry under the running Worker.
    pub async fn put_kv(&self, key: &str, value: &str) {
        self.control(
            reqwest::Method::PUT,
            &format!("/kv/{key}"),
            Some(value.to_string()),
        )
        .await;
    }

    /// [`Self::put_kv`] that reports a failure instead of panicking, for a
    /// writer running inside a server (the Cloudflare API stand-in's KV).
    pub async fn try_put_kv(&self, key: &str, value: &str) -> Result<(), String> {
        self.try_control(
            reqwest::Method::PUT,
            &format!("/kv/{key}"),
            Some(value.to_string()),
        )
        .await
    }

    pub async fn delete_kv(&self, key: &str) {
        self.control(reqwest::Method::DELETE, &format!("/kv/{key}"), None)
            .await;
    }

    /// Restarts workerd with the same options: a fresh isolate, with KV and
    /// the Cache API kept, as a new Cloudflare location would see them.
    pub async fn reload(&self) {
        self.control(reqwest::Method::POST, "/reload", None).await;
    }

    /// How many times the Worker has read `key` from KV so far. Complete up
    /// to the last request whose log line [`Self::next_log`] returned.
    /// Counted only with [`EdgeOptions::count_kv_reads`].
    pub fn kv_reads(&self, key: &str) -> usize {
        self.kv_reads
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == key)
            .count()
    }

    /// Every log line so far, parsed.
    pub fn logs(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The log line of the next request not yet looked at: the Worker
    /// writes exactly one line per request, in order, so a test that reads
    /// one line after each request reads that request's line. Waits for it,
    /// since a line can arrive a little after its response.
    pub fn next_log(&self) -> Value {
        let index = {
            let mut seen = self.seen.lock().unwrap();
            *seen += 1;
            *seen - 1
        };
        let start = Instant::now();
        loop {
            if let Some(line) = self.logs.lock().unwrap().get(index) {
                return serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            }
            if start.elapsed() > LOG_TIMEOUT {
                panic!(
                    "no log line #{index} within {LOG_TIMEOUT:?}; the lines were:\n{}",
                    self.logs.lock().unwrap().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WorkerdEdge {
    fn drop(&mut self) {
        // Closing stdin asks serve.mjs to dispose of Miniflare, which stops
        // workerd; killing node outright would leave workerd running.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
