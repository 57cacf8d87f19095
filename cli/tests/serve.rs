//! `aws2azure serve` as a process in front of `aws2azure dev`'s token API:
//! the protocol's answers, hostile requests refused with JSON while the
//! endpoint stays up, one log line per request and never a token in one,
//! settings refused at start-up with exit code 2.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_aws2azure");
const GRAPH: &str = "https://graph.microsoft.com";
const DEV_CLIENT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

/// A child process whose stdout `export` lines are read and whose stderr is
/// collected; killed on drop.
struct Running {
    child: Child,
    exports: Vec<(String, String)>,
    stdout: String,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `command` and reads stdout until `ready` is seen.
    fn start(mut command: Command, ready: &str) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
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
        let (mut exports, mut stdout, mut line) = (vec![], String::new(), String::new());
        while !stdout.contains(ready) {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "exited before `{ready}`:\n{stdout}\n{}",
                    stderr.lock().unwrap()
                );
            }
            stdout.push_str(&line);
            if let Some((k, v)) = line
                .trim()
                .strip_prefix("export ")
                .and_then(|e| e.split_once('='))
            {
                exports.push((k.to_string(), v.to_string()));
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            child,
            exports,
            stdout,
            stderr,
        }
    }

    fn var(&self, name: &str) -> String {
        self.exports
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} not exported:\n{}", self.stdout))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev() -> Running {
    let mut command = Command::new(BIN);
    command.args(["dev", "--edge", "127.0.0.1:0", "--gateway", "127.0.0.1:0"]);
    command.args(["--entra", "127.0.0.1:0", "--identity", "127.0.0.1:0"]);
    Running::start(command, "Running;")
}

/// `aws2azure serve` with the dev stack's credentials and nothing else of
/// the machine's AWS setup.
fn serve_command(dev: &Running, config: &std::path::Path) -> Command {
    serve_on(dev, config, "127.0.0.1:0")
}

fn serve_on(dev: &Running, config: &std::path::Path, listen: &str) -> Command {
    let token_api = token_api(dev);
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--endpoint",
            &token_api,
            "--listen",
            listen,
            "--config",
        ])
        .arg(config)
        .env_remove("AWS_PROFILE")
        .env_remove("IDENTITY_HEADER")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
    ] {
        command.env(name, dev.var(name));
    }
    command
}

fn config_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"
[profiles.graph]
tenant_id = "11111111-2222-3333-4444-555555555555"
client_id = "{DEV_CLIENT_ID}"
scope = "{GRAPH}/.default"
subject = "aws2azure:dev:graph"

[resources]
"https://graph.microsoft.com/beta-alias" = "graph"
"#
    )
    .unwrap();
    file
}

struct Answer {
    status: u16,
    body: serde_json::Value,
}

fn get(url: &str, header: Option<&str>) -> Answer {
    let client = reqwest::blocking::Client::new();
    let mut request = client.get(url);
    if let Some(h) = header {
        request = request.header("X-IDENTITY-HEADER", h);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "every answer, token or error"
    );
    let text = response.text().unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("HTTP {status}: not JSON ({e}): {text:?}")),
    }
}

#[test]
fn serve_answers_sdks_and_refuses_hostile_requests() {
    let dev = dev();
    let config = config_file();
    let serve = Running::start(
        serve_command(&dev, config.path()),
        "export IDENTITY_HEADER=",
    );
    let endpoint = serve.var("IDENTITY_ENDPOINT");
    let header = serve.var("IDENTITY_HEADER");
    assert!(endpoint.starts_with("http://127.0.0.1:") && endpoint.ends_with("/msi/token"));
    assert_eq!(header.len(), 64, "a random 256-bit secret, hex");
    let url = |query: &str| format!("{endpoint}?{query}");

    // The token the broker issued, through the endpoint, twice.
    let ok = get(
        &url(&format!("api-version=2019-08-01&resource={GRAPH}")),
        Some(&header),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let token = ok.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(ok.body["token_type"], "Bearer");
    assert_eq!(ok.body["resource"], GRAPH);
    assert_eq!(ok.body["client_id"], DEV_CLIENT_ID);
    let expires_on: u64 = ok.body["expires_on"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expires_on > now + 3000, "{expires_on} vs {now}");
    let from_api = Command::new(BIN)
        .args(["token", "graph", "--no-cache", "--endpoint"])
        .arg(token_api(&dev))
        .envs(dev.exports.iter().cloned())
        .output()
        .unwrap();
    assert!(from_api.status.success());
    assert_eq!(String::from_utf8(from_api.stdout).unwrap().trim(), token);
    let slash = get(
        &url(&format!("api-version=2019-08-01&resource={GRAPH}/")),
        Some(&header),
    );
    assert_eq!(slash.body["access_token"].as_str(), Some(token.as_str()));
    let alias = get(
        &url(
            "api-version=2019-08-01&resource=https://graph.microsoft.com/beta-alias&client_id=AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE",
        ),
        Some(&header),
    );
    assert_eq!(alias.status, 200, "override and client_id: {}", alias.body);

    let huge = format!("api-version=2019-08-01&resource={}", "a".repeat(60_000));
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        (
            format!("api-version=2019-08-01&resource={GRAPH}"),
            None,
            401,
            "unauthorized",
        ),
        (
            format!("api-version=2019-08-01&resource={GRAPH}"),
            Some("wrong-secret-of-some-length"),
            401,
            "unauthorized",
        ),
        (
            "api-version=2019-08-01".into(),
            Some(&header),
            400,
            "invalid_request",
        ),
        (
            format!("api-version=2018-02-01&resource={GRAPH}"),
            Some(&header),
            400,
            "invalid_request",
        ),
        (
            "api-version=2019-08-01&resource=https://vault.azure.net".into(),
            Some(&header),
            400,
            "unknown_resource",
        ),
        (
            format!("api-version=2019-08-01&resource={GRAPH}&resource={GRAPH}"),
            Some(&header),
            400,
            "invalid_request",
        ),
        (
            "api-version=2019-08-01&resource=https://graph%0d%0aSet-Cookie:%20x".into(),
            Some(&header),
            400,
            "invalid_request",
        ),
        (
            "api-version=2019-08-01&resource=%00%01%1b[2J".into(),
            Some(&header),
            400,
            "invalid_request",
        ),
        (
            format!(
                "api-version=2019-08-01&resource={GRAPH}&client_id=00000000-0000-0000-0000-000000000000"
            ),
            Some(&header),
            400,
            "unknown_identity",
        ),
        (
            format!("api-version=2019-08-01&resource={GRAPH}&object_id=1"),
            Some(&header),
            400,
            "unknown_identity",
        ),
        (huge, Some(&header), 414, "invalid_request"),
    ];
    for (query, given, status, code) in &cases {
        let answer = get(&url(query), *given);
        assert_eq!(
            answer.status,
            *status,
            "{}: {}",
            &query[..query.len().min(80)],
            answer.body
        );
        assert_eq!(answer.body["error"], *code, "{}", answer.body);
        assert!(
            answer.body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        assert_eq!(answer.body["statusCode"], *status, "App Service's field");
        assert_eq!(answer.body["message"], answer.body["error_description"]);
    }
    let served = get(
        &url("api-version=2019-08-01&resource=https://vault.azure.net"),
        Some(&header),
    );
    assert!(
        served.body["error_description"]
            .as_str()
            .unwrap()
            .contains(GRAPH),
        "an unknown resource's answer names what is served: {}",
        served.body
    );
    let wrong_path = get(
        &format!("{}/other", endpoint.trim_end_matches("/msi/token")),
        Some(&header),
    );
    assert_eq!(wrong_path.status, 404);
    let post = reqwest::blocking::Client::new()
        .post(url(&format!("api-version=2019-08-01&resource={GRAPH}")))
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);

    // Garbage on the socket, then a request line with raw control bytes.
    let addr = endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for raw in [
        b"\x00\x01\x02 not http at all\r\n\r\n".as_slice(),
        b"GET /msi/token?resource=a\x07b HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
    ] {
        let mut socket = TcpStream::connect(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket.write_all(raw).unwrap();
        let mut reply = Vec::new();
        let _ = socket.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
            "{reply}"
        );
    }

    // Still up, still serving from its cache.
    let again = get(
        &url(&format!("api-version=2019-08-01&resource={GRAPH}")),
        Some(&header),
    );
    assert_eq!(again.body["access_token"].as_str(), Some(token.as_str()));

    std::thread::sleep(Duration::from_millis(200));
    let log = serve.stderr();
    assert!(!log.contains(&token), "a token in the log:\n{log}");
    assert!(!log.contains(&header), "the header secret in the log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // One line per HTTP request answered (the raw garbage never became one).
    assert_eq!(lines.len(), 3 + cases.len() + 4, "{log}");
    assert_eq!(lines[0]["origin"], "token_api", "{log}");
    assert_eq!(lines[1]["origin"], "cache", "{log}");
    assert!(
        lines
            .iter()
            .all(|l| !l.to_string().chars().any(|c| c.is_control())),
        "no control character reaches a log line"
    );
    assert!(
        log.lines().all(|l| l.len() < 1000),
        "a huge query is not copied into the log"
    );
}

fn token_api(dev: &Running) -> String {
    dev.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("token API"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string()
}

#[test]
fn serve_stops_on_sigterm_and_refuses_bad_settings() {
    let dev = dev();
    let config = config_file();

    let mut serve = Running::start(
        serve_command(&dev, config.path()),
        "export IDENTITY_HEADER=",
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&serve.child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = serve.child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let refused = |listen: &str, env: Option<&str>, expected: &str| {
        let mut command = serve_on(&dev, config.path(), listen);
        if let Some(value) = env {
            command.env("IDENTITY_HEADER", value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "no export line for an endpoint that never started"
        );
    };
    refused("0.0.0.0:0", None, "--allow-remote");
    refused("127.0.0.1:0", Some("short"), "IDENTITY_HEADER");
    let mut bad = tempfile::NamedTempFile::new().unwrap();
    write!(bad, "[resources]\n\"https://x\" = \"nope\"\n").unwrap();
    let mut command = serve_command(&dev, bad.path());
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no profiles are configured"));

    // A secret given through the environment is the one required.
    let mut command = serve_command(&dev, config.path());
    command.env("IDENTITY_HEADER", "given-secret-0123456789");
    let given = Running::start(command, "export IDENTITY_HEADER=");
    assert_eq!(given.var("IDENTITY_HEADER"), "given-secret-0123456789");
    let endpoint = given.var("IDENTITY_ENDPOINT");
    let ok = get(
        &format!("{endpoint}?api-version=2019-08-01&resource={GRAPH}"),
        Some("given-secret-0123456789"),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}
