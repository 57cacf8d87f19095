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
                "--identity",
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
        // The credential endpoint answered as it answers an Azure SDK, from
        // the token the loop already holds (still one Entra call).
        assert!(
            transcript.contains(": 200, Bearer token for client_id")
                && transcript.contains("(Entra calls so far: 1)\n\nTry it"),
            "{transcript}"
        );
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

fn python() -> String {
    if let Ok(python) = std::env::var("AWS2AZURE_PYTHON") {
        return python;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

/// botocore's SigV4Auth (AWS's reference signer) signs `GET ENDPOINT+PATH`
/// for execute-api; http.client sends the request target exactly as signed.
/// One JSON line per path: {path, status, body}.
const BOTOCORE_GET: &str = r#"
import http.client, json, os, sys
from urllib.parse import urlsplit
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
endpoint = urlsplit(sys.argv[1])
credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"],
    os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_SESSION_TOKEN"])
for path in sys.argv[2:]:
    target = endpoint.path + path
    request = AWSRequest(method="GET", url=f"{endpoint.scheme}://{endpoint.netloc}{target}")
    SigV4Auth(credentials, "execute-api", os.environ["AWS_REGION"]).add_auth(request)
    connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=10)
    connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", endpoint.netloc)
    for name, value in request.headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    print(json.dumps({"path": path, "status": response.status,
                      "body": json.loads(response.read() or b"null")}))
"#;

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
    // dev's own demonstration made three requests (two as a workload, one
    // by its credential endpoint); this is the fourth.
    let seen = dev.requests_settled(4);
    assert_eq!(seen, 4);

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

/// An encoded profile name reaches the token API with a valid signature,
/// from AWS's reference signer and from awscurl, and is refused there: the
/// gateway canonicalises the path as sent like AWS does (encoded again, so
/// `%61` is signed as `%2561`), and IAM, matching the path as sent, would
/// not see `graph` in `gr%61ph`.
#[test]
fn encoded_profile_names_pass_the_signature_check_and_are_refused_by_the_api() {
    let dev = Dev::start();
    let encoded = [
        "/token/gr%61ph",
        "/token/%67%72%61%70%68",
        "/token/g%72aph",
        "/token/gr%C3%A4ph",
        "/token/graph%2F..%2Fadmin",
    ];
    let out = dev
        .with_credentials(&python())
        .args(["-c", BOTOCORE_GET, &dev.endpoint, "/token/graph"])
        .args(encoded)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), encoded.len() + 1);
    assert_eq!(answers[0]["status"], 200, "{}", answers[0]);
    assert_eq!(answers[0]["body"]["profile"], "graph");
    for answer in &answers[1..] {
        assert_eq!(answer["status"], 400, "{answer}");
        assert_eq!(answer["body"]["error"], "invalid_request", "{answer}");
        assert!(
            answer["body"]["error_description"]
                .as_str()
                .unwrap()
                .contains("without percent-encoding"),
            "{answer}"
        );
    }

    // awscurl sends through Python requests, which rewrites an encoded
    // unreserved character (`%61` to `a`) after awscurl signed the path as
    // given: that signature fails at API Gateway too, so awscurl is given
    // the encoded names requests leaves alone.
    for path in [
        "/token/gr%C3%A4ph",
        "/token/graph%2F..%2Fadmin",
        "/token/graph%20",
    ] {
        let out = dev
            .with_credentials(&awscurl())
            .args([
                "--service",
                "execute-api",
                "--region",
                "us-east-1",
                &format!("{}{path}", dev.endpoint),
            ])
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{path}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(json["error"], "invalid_request", "{path}: {json}");
        assert!(
            json["error_description"]
                .as_str()
                .unwrap()
                .contains("without percent-encoding"),
            "{path}: {json}"
        );
    }
    // dev's three, botocore's six, awscurl's three: each answered by the API.
    assert_eq!(dev.requests_settled(12), 12);
    let log = dev.stderr.lock().unwrap().clone();
    assert!(
        log.contains("[dev] GET /token/gr%61ph by ") && log.contains("-> 400 (invalid_request)"),
        "{log}"
    );
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
