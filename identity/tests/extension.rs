//! The `aws2azure-identity` Lambda extension as a process, the way Lambda
//! runs it: `AWS_LAMBDA_RUNTIME_API` points at the devstack's Extensions
//! API, which registers it and sends INVOKE and SHUTDOWN; tokens come from
//! a real token API on loopback (the SigV4 gateway in front of the broker,
//! the Entra stand-in trusting the edge's issuer).
//!
//! By default the native build runs. To run the deployable one instead, set
//! `AWS2AZURE_EXTENSION` to its path and, for a foreign architecture,
//! `AWS2AZURE_EXTENSION_RUNNER` to the emulator command (whitespace-separated)
//! that runs it: `scripts/test-arm64` runs the arm64 layer's binary under
//! `qemu-aarch64-static -L /usr/aarch64-linux-gnu`.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential, issued_claims};
use aws2azure_devstack::extensions_api::{ErrorKind, ExtensionsApi};
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_devstack::{Server, lambda_binary, loopback};
use aws2azure_shared::assertion::AUDIENCE;
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::jwk::JwkSet;
use aws2azure_shared::profile::Profiles;
use aws2azure_signer::api::handle;
use aws2azure_signer::broker::{Broker, BrokerSettings};
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::signing::LocalKeySigner;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The extension process to start: `AWS2AZURE_EXTENSION` (default: the
/// native build) behind the optional `AWS2AZURE_EXTENSION_RUNNER`.
fn extension() -> tokio::process::Command {
    lambda_binary::command(
        "AWS2AZURE_EXTENSION",
        env!("CARGO_BIN_EXE_aws2azure-identity"),
        "./scripts/build-lambda --extension",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "00000000-1111-2222-3333-444444444444";
const SUBJECT: &str = "aws2azure:graph";
const RESOURCE: &str = "https://graph.microsoft.com";
const REGION: &str = "us-east-1";
const SECRET: &str = "5f0c2a7e9b1d4c38a6e2f1b0c9d8e7a6";
const WAIT: Duration = Duration::from_secs(30);

/// The token API on loopback: edge, Entra stand-in, broker, gateway.
struct TokenApi {
    _edge: EdgeServer,
    entra: EntraStandIn,
    _entra_server: Server,
    gateway: Server,
    principal: Principal,
    profiles: String,
}

impl TokenApi {
    /// Entra's tokens live `lifetime` seconds.
    async fn start(lifetime: u64) -> Self {
        let signer = LocalKeySigner::generate().unwrap();
        let keys = JwkSet::new(vec![signer.jwk().clone()]).unwrap();
        let edge = EdgeServer::start(loopback(), |a| format!("http://{a}"), Some(&keys))
            .await
            .unwrap();
        let issuer = edge.issuer().clone();
        let entra = EntraStandIn::new(EntraConfig {
            token_lifetime_secs: lifetime,
            ..EntraConfig::new(vec![FederatedCredential {
                tenant_id: TENANT.into(),
                client_id: CLIENT.into(),
                issuer: issuer.to_string(),
                subject: SUBJECT.into(),
                audience: AUDIENCE.into(),
            }])
        });
        let entra_server = entra.clone().serve(loopback()).await.unwrap();
        let profiles = format!(
            r#"{{"graph": {{"tenant_id": "{TENANT}", "client_id": "{CLIENT}",
                 "scope": "{RESOURCE}/.default", "subject": "{SUBJECT}",
                 "authority": "{}"}}}}"#,
            entra_server.url()
        );
        let broker = Broker::new(
            Profiles::from_json(&profiles).unwrap(),
            BrokerSettings::new(issuer),
            Arc::new(signer),
            Arc::new(EntraClient::new(Duration::from_secs(5)).unwrap()),
            None,
            Arc::new(SystemClock),
        );
        let principal = Principal {
            access_key_id: "ASIAEXTENSIONTEST001".into(),
            secret_access_key: "extension-test-secret-access-key-0000000".into(),
            session_token: Some("IQoJb3JpZ2luX2VjextensionTestSession".into()),
            arn: "arn:aws:sts::111122223333:assumed-role/function-role/aws2azure-function".into(),
            caller: "AROAEXTENSIONTEST0001:aws2azure-function".into(),
            account_id: "111122223333".into(),
        };
        let function: gateway::Function = Arc::new(move |request| {
            let broker = broker.clone();
            Box::pin(async move { handle(&broker, &request).await.0 })
        });
        let gateway = gateway::serve(loopback(), REGION, "dev", vec![principal.clone()], function)
            .await
            .unwrap();
        Self {
            _edge: edge,
            entra,
            _entra_server: entra_server,
            gateway,
            principal,
            profiles,
        }
    }

    fn issued(&self) -> u64 {
        self.entra.stats().issued
    }
}

/// The extension process and what it wrote to standard error.
struct Extension {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Reads standard error to its end (the process's).
    reader: Option<tokio::task::JoinHandle<()>>,
    identity_endpoint: String,
}

impl Extension {
    /// Starts the binary with a Lambda function's environment; `tune`
    /// changes it.
    fn start(
        api: &Server,
        token_api: &TokenApi,
        tune: impl FnOnce(&mut Vec<(&'static str, String)>),
    ) -> Self {
        let identity_endpoint = format!("http://127.0.0.1:{}/msi/token", free_port());
        let mut env = vec![
            ("AWS_LAMBDA_RUNTIME_API", api.addr().to_string()),
            ("IDENTITY_ENDPOINT", identity_endpoint.clone()),
            ("IDENTITY_HEADER", SECRET.to_string()),
            (
                "AWS2AZURE_ENDPOINT",
                format!("{}/dev", token_api.gateway.url()),
            ),
            ("AWS2AZURE_PROFILES", token_api.profiles.clone()),
            ("AWS_REGION", REGION.to_string()),
            (
                "AWS_ACCESS_KEY_ID",
                token_api.principal.access_key_id.clone(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY",
                token_api.principal.secret_access_key.clone(),
            ),
            (
                "AWS_SESSION_TOKEN",
                token_api.principal.session_token.clone().unwrap(),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
        ];
        tune(&mut env);
        let mut child = extension()
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&stderr);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            stderr,
            reader: Some(reader),
            identity_endpoint,
        }
    }

    /// Waits for the process to end, then for the last of its log.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("still running after {within:?}:\n{}", self.log()),
        };
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        }
        status
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The log's JSON lines of `event`.
    fn events(&self, event: &str) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Asks the endpoint for a token, as an Azure SDK does.
    async fn token(&self, header: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(format!(
                "{}?api-version=2019-08-01&resource=https%3A%2F%2Fgraph.microsoft.com",
                self.identity_endpoint
            ))
            .header("Metadata", "true");
        if let Some(header) = header {
            request = request.header("X-IDENTITY-HEADER", header);
        }
        request.send().await.unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A token answer's access token and `expires_on`.
async fn granted(response: reqwest::Response) -> (String, u64) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], RESOURCE);
    assert_eq!(body["client_id"], CLIENT);
    let token = body["access_token"].as_str().unwrap().to_string();
    let claims = issued_claims(&token).expect("a token the Entra stand-in issued");
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["aud"], RESOURCE);
    // The protocol's expires_on is a string of epoch seconds.
    let expires_on = body["expires_on"].as_str().unwrap().parse().unwrap();
    (token, expires_on)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_before_the_first_invoke_and_ends_promptly_on_shutdown() {
    let token_api = TokenApi::start(3599).await;
    let api = ExtensionsApi::default();
    let api_server = api.serve(loopback()).await.unwrap();
    let mut extension = Extension::start(&api_server, &token_api, |_| {});

    api.wait_for_next(1, WAIT).await.unwrap();
    let registered = api.registered();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].name, "aws2azure-identity");
    assert_eq!(registered[0].events, ["INVOKE", "SHUTDOWN"]);

    // Parked in its first `next`: the function's init may already ask.
    let refused = extension.token(None).await;
    assert_eq!(refused.status(), 401);
    let wrong = extension.token(Some("0123456789abcdef-wrong")).await;
    assert_eq!(wrong.status(), 401);
    let (token, _) = granted(extension.token(Some(SECRET)).await).await;
    let seen = &api.registered()[0];
    assert_eq!(
        (seen.next_calls, seen.parked, seen.events_received),
        (1, true, 0)
    );
    assert_eq!(token_api.issued(), 1);

    // A token far from its refresh point is not fetched again on INVOKE.
    api.push_invoke(Duration::from_secs(30)).unwrap();
    api.wait_for_next(2, WAIT).await.unwrap();
    assert_eq!(token_api.issued(), 1);
    let (again, _) = granted(extension.token(Some(SECRET)).await).await;
    assert_eq!(again, token);

    let shutdown = Instant::now();
    api.push_shutdown().unwrap();
    let status = extension.exit(Duration::from_secs(5)).await;
    let took = shutdown.elapsed();
    assert!(status.success(), "{status}\n{}", extension.log());
    // Lambda allows external extensions under 2 s before SIGKILL.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(
        std::net::TcpStream::connect(
            extension
                .identity_endpoint
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
        )
        .is_err(),
        "the endpoint still listens after the process ended"
    );

    assert!(api.errors().is_empty(), "{:?}", api.errors());
    assert!(api.refused().is_empty(), "{:?}", api.refused());
    let log = extension.log();
    assert!(!log.contains(&token), "a token in the log:\n{log}");
    assert!(
        !log.contains(SECRET),
        "the header secret in the log:\n{log}"
    );
    assert_eq!(extension.events("extension_stopped").len(), 1, "{log}");
    assert!(
        extension.events("extension_stopped")[0]
            .get("error")
            .is_none(),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_nearing_its_refresh_point_is_refreshed_on_invoke() {
    // Entra's tokens live 900 s: held, one is due for refresh at once (the
    // cache refreshes 15 minutes ahead) and still handed out (over 6).
    let token_api = TokenApi::start(900).await;
    let api = ExtensionsApi::default();
    let api_server = api.serve(loopback()).await.unwrap();
    let mut extension = Extension::start(&api_server, &token_api, |_| {});
    api.wait_for_next(1, WAIT).await.unwrap();

    let (first, first_expiry) = granted(extension.token(Some(SECRET)).await).await;
    assert_eq!(token_api.issued(), 1);
    // A second passes, so the refreshed token expires later.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    api.push_invoke(Duration::from_secs(30)).unwrap();
    // Back in `next`: the refresh was awaited within the INVOKE.
    api.wait_for_next(2, WAIT).await.unwrap();
    assert_eq!(token_api.issued(), 2, "{}", extension.log());

    let (second, second_expiry) = granted(extension.token(Some(SECRET)).await).await;
    assert_ne!(second, first);
    assert!(
        second_expiry > first_expiry,
        "{second_expiry} <= {first_expiry}"
    );

    api.push_shutdown().unwrap();
    let status = extension.exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}\n{}", extension.log());
    let log = extension.log();
    assert!(!log.contains(&first) && !log.contains(&second), "{log}");
    // Its log (read to the end now) says what the INVOKE did.
    let refreshes = extension.events("refresh");
    assert_eq!(refreshes.len(), 1, "{log}");
    assert_eq!(refreshes[0]["refreshed"], 1);
    assert_eq!(refreshes[0]["failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_is_reported_as_an_init_error_and_fails_the_start() {
    let token_api = TokenApi::start(3599).await;
    let api = ExtensionsApi::default();
    let api_server = api.serve(loopback()).await.unwrap();
    let bad_secret = "tooShort7";
    let mut extension = Extension::start(&api_server, &token_api, |env| {
        env.retain(|(k, _)| *k != "IDENTITY_HEADER");
        env.push(("IDENTITY_HEADER", bad_secret.into()));
    });

    let status = extension.exit(WAIT).await;
    assert_eq!(status.code(), Some(2), "{}", extension.log());
    let errors = api.errors();
    assert_eq!(errors.len(), 1, "{errors:?}\n{}", extension.log());
    assert_eq!(errors[0].extension, "aws2azure-identity");
    assert_eq!(errors[0].kind, ErrorKind::Init);
    assert_eq!(errors[0].error_type, "Extension.InvalidSetting");
    let body = errors[0].body.as_ref().unwrap();
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.starts_with("IDENTITY_HEADER: "), "{message}");
    assert!(message.contains("(fix: "), "{message}");
    assert!(!message.contains(bad_secret), "{message}");
    assert_eq!(body["errorType"], "Extension.InvalidSetting");
    // It registered (to be allowed to report) and never became ready.
    let registered = api.registered();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].next_calls, 0);
    assert!(!extension.log().contains(bad_secret), "{}", extension.log());
    assert_eq!(token_api.issued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_reported_as_an_init_error() {
    let token_api = TokenApi::start(3599).await;
    let api = ExtensionsApi::default();
    let api_server = api.serve(loopback()).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut extension = Extension::start(&api_server, &token_api, |env| {
        env.retain(|(k, _)| *k != "IDENTITY_ENDPOINT");
        env.push((
            "IDENTITY_ENDPOINT",
            format!("http://127.0.0.1:{port}/msi/token"),
        ));
    });

    let status = extension.exit(WAIT).await;
    assert_eq!(status.code(), Some(2), "{}", extension.log());
    let errors = api.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].error_type, "Extension.BindFailed");
    let message = errors[0].body.as_ref().unwrap()["errorMessage"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_lambda_it_says_so_and_fails() {
    let token_api = TokenApi::start(3599).await;
    let api = ExtensionsApi::default();
    let api_server = api.serve(loopback()).await.unwrap();
    let mut extension = Extension::start(&api_server, &token_api, |env| {
        env.retain(|(k, _)| *k != "AWS_LAMBDA_RUNTIME_API");
    });
    let status = extension.exit(WAIT).await;
    assert_eq!(status.code(), Some(2), "{}", extension.log());
    let failed = extension.events("extension_failed");
    assert_eq!(failed.len(), 1, "{}", extension.log());
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.starts_with("AWS_LAMBDA_RUNTIME_API "), "{error}");
    assert!(error.contains("fix: "), "{error}");
    assert!(api.registered().is_empty());
}
