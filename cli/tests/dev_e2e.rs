//! `aws2azure dev` as a process, used by `aws2azure token` and by the
//! independent SigV4 client `awscurl` with the credentials it prints; bad
//! signatures refused with API Gateway's 403s; `doctor` against the dev edge
//! and against broken issuers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aws2azure");

struct Dev {
    child: Child,
    endpoint: String,
    issuer: String,
    env: Vec<(String, String)>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Dev {
    fn start() -> Self {
        let mut child = Command::new(BIN)
            .args([
                "dev",
                "--edge",
                "127.0.0.1:0",
                "--gateway",
                "127.0.0.1:0",
                "--entra",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut endpoint, mut issuer, mut env, mut transcript) =
            (None, None, vec![], String::new());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "dev exited early:\n{transcript}\n{}",
                stderr.lock().unwrap()
            );
            transcript.push_str(&line);
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("token API") {
                endpoint = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = l.strip_prefix("edge (issuer)") {
                issuer = Some(rest.trim().to_string());
            } else if let Some(export) = l.strip_prefix("export ") {
                let (k, v) = export.split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
            } else if l.starts_with("Running;") {
                break;
            }
        }
        assert!(transcript.contains("1. assertion minted"), "{transcript}");
        assert!(
            transcript.contains("2. discovery fetched") && transcript.contains("(1 + 1 requests)"),
            "{transcript}"
        );
        assert!(transcript.contains("3. token issued"), "{transcript}");
        assert!(
            transcript.contains("4. second call        served from the cache"),
            "{transcript}"
        );
        assert!(transcript.contains("(redacted,"));
        // Drain stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            child,
            endpoint: endpoint.expect("endpoint printed"),
            issuer: issuer.expect("issuer printed"),
            env,
            stderr,
        }
    }

    fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    /// A command with exactly the printed credentials and nothing else of
    /// the machine's AWS setup.
    fn with_credentials(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().cloned());
        cmd
    }

    fn requests_seen(&self) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .matches("[dev] GET /token/")
            .count()
    }

    /// The request lines dev printed, once its stderr has been read up to
    /// `expected` of them (or after a grace period, whatever it is then).
    fn requests_settled(&self, expected: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.requests_seen() < expected && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.requests_seen()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn awscurl() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/awscurl");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "awscurl".into()
    }
}

#[test]
fn token_and_awscurl_get_tokens_with_the_printed_credentials() {
    let dev = Dev::start();
    let cache = tempfile::tempdir().unwrap();

    let out = dev
        .with_credentials(BIN)
        .args([
            "token",
            "graph",
            "--endpoint",
            &dev.endpoint,
            "--json",
            "--cache-dir",
        ])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["profile"], "graph");
    assert_eq!(json["token_type"], "Bearer");
    let token = json["access_token"].as_str().unwrap().to_string();
    // dev's own demonstration made two requests; this is the third.
    let seen = dev.requests_settled(3);
    assert_eq!(seen, 3);

    // Raw output, from the disk cache: no request reaches the API.
    let out = dev
        .with_credentials(BIN)
        .args(["token", "graph", "--endpoint", &dev.endpoint, "--cache-dir"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), token);
    assert_eq!(
        dev.requests_settled(seen),
        seen,
        "served from the on-disk cache"
    );

    // A cached token with less left than --min-validity (300 s by default)
    // is not reused: the API is asked.
    let file = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut cached: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    cached["expires_on"] = (now + 100).into();
    std::fs::write(&file, cached.to_string()).unwrap();
    let out = dev
        .with_credentials(BIN)
        .args(["token", "graph", "--endpoint", &dev.endpoint, "--cache-dir"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dev.requests_settled(seen + 1), seen + 1);

    // The independent client, awscurl (PyPI), with the same exported variables.
    let out = dev
        .with_credentials(&awscurl())
        .args([
            "--service",
            "execute-api",
            "--region",
            "us-east-1",
            &format!("{}/token/graph", dev.endpoint),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        json["access_token"].as_str(),
        Some(token.as_str()),
        "same cached token from the broker"
    );

    // Unknown profile: a clear refusal and exit code 1.
    let out = dev
        .with_credentials(BIN)
        .args(["token", "nope", "--endpoint", &dev.endpoint, "--no-cache"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404, unknown_profile"));
}

fn signed_get(url: &str, creds: &Credentials, at: SystemTime) -> reqwest::blocking::RequestBuilder {
    let identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("execute-api")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable =
        SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[])).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = http::Request::get(url).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    let mut builder = reqwest::blocking::Client::new().get(url);
    for (k, v) in request.headers() {
        builder = builder.header(k, v);
    }
    builder
}

#[test]
fn bad_signatures_are_refused_like_api_gateway_refuses_them() {
    let dev = Dev::start();
    let creds = Credentials::new(
        dev.var("AWS_ACCESS_KEY_ID"),
        dev.var("AWS_SECRET_ACCESS_KEY"),
        Some(dev.var("AWS_SESSION_TOKEN")),
        None,
        "test",
    );
    let url = format!("{}/token/graph", dev.endpoint);
    let message = |r: reqwest::blocking::Response| -> (u16, String) {
        let status = r.status().as_u16();
        (
            status,
            r.json::<Value>().unwrap()["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };

    // Baseline: the same signer, right inputs, is accepted.
    assert_eq!(
        signed_get(&url, &creds, SystemTime::now())
            .send()
            .unwrap()
            .status(),
        200
    );

    // Wrong secret, through awscurl.
    let out = dev
        .with_credentials(&awscurl())
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wrong-secret-wrong-secret-wrong-secret00",
        )
        .args(["--service", "execute-api", "--region", "us-east-1", &url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("signature we calculated does not match"),
        "{text}"
    );
    assert!(
        !text.contains(&dev.var("AWS_SESSION_TOKEN")),
        "the session token is not echoed"
    );

    // Stale date: signed 10 minutes ago.
    let (status, msg) = message(
        signed_get(&url, &creds, SystemTime::now() - Duration::from_secs(600))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 403);
    assert!(msg.starts_with("Signature expired:"), "{msg}");

    // Tampered path: signed for graph, sent for another profile.
    let request = signed_get(&url, &creds, SystemTime::now()).build().unwrap();
    let mut tampered = request.try_clone().unwrap();
    *tampered.url_mut() = format!("{}/token/other", dev.endpoint).parse().unwrap();
    let (status, msg) = message(reqwest::blocking::Client::new().execute(tampered).unwrap());
    assert_eq!(status, 403);
    assert!(
        msg.contains("signature we calculated does not match"),
        "{msg}"
    );

    // Missing signature.
    let (status, msg) = message(reqwest::blocking::get(&url).unwrap());
    assert_eq!(
        (status, msg.as_str()),
        (403, "Missing Authentication Token")
    );

    // The session token of temporary credentials is required.
    let without_token = Credentials::new(
        dev.var("AWS_ACCESS_KEY_ID"),
        dev.var("AWS_SECRET_ACCESS_KEY"),
        None,
        None,
        "t",
    );
    let (status, msg) = message(
        signed_get(&url, &without_token, SystemTime::now())
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, msg.as_str()),
        (
            403,
            "The security token included in the request is invalid."
        )
    );
}

#[test]
fn doctor_passes_the_dev_edge_and_sigterm_stops_dev_cleanly() {
    let mut dev = Dev::start();
    let out = Command::new(BIN)
        .args(["doctor", &dev.issuer, "--allow-http"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(table.contains("PASS  issuer matches"), "{table}");
    assert!(!table.contains("FAIL"), "{table}");

    // Without --allow-http, plain http is refused.
    let out = Command::new(BIN)
        .args(["doctor", &dev.issuer])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("https only"));

    Command::new("kill")
        .args(["-TERM", &dev.child.id().to_string()])
        .status()
        .unwrap();
    let status = dev.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}
