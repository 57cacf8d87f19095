//! The real `bootstrap` binary as a process, polling a local Lambda Runtime
//! API: init from the environment (KMS and DynamoDB in moto, Entra and the
//! edge from the devstack), real REST events in, API Gateway responses out,
//! JSON logs and EMF metrics on stdout.
//!
//! By default the native binary cargo builds for this test runs. To run the
//! deployable one instead, set `AWS2AZURE_BOOTSTRAP` to its path and, for a
//! foreign architecture, `AWS2AZURE_BOOTSTRAP_RUNNER` to the emulator
//! command (whitespace-separated) that runs it: `scripts/test-arm64` runs the
//! arm64 build under `qemu-aarch64-static -L /usr/aarch64-linux-gnu`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential};
use aws2azure_devstack::lambda_runtime_api::{Outcome, RuntimeApi};
use aws2azure_devstack::moto::MotoServer;
use aws2azure_devstack::{lambda_binary, loopback};
use aws2azure_shared::jwk::{Jwk, JwkSet};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "00000000-1111-2222-3333-444444444444";
const EVENT: &str = include_str!("fixtures/rest-iam-user.json");

/// The bootstrap process to start: `AWS2AZURE_BOOTSTRAP` (default: the
/// native build) behind the optional `AWS2AZURE_BOOTSTRAP_RUNNER`.
fn bootstrap() -> tokio::process::Command {
    lambda_binary::command(
        "AWS2AZURE_BOOTSTRAP",
        env!("CARGO_BIN_EXE_bootstrap"),
        "./scripts/build-lambda",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn lambda_env(runtime_api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "aws2azure-broker".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_binary_serves_tokens_through_a_local_runtime_api() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config().await;
    let kms = aws_sdk_kms::Client::new(&config);
    let key_id = aws2azure_devstack::moto::create_signing_key(&kms, "alias/bootstrap-test").await;
    let public = kms.get_public_key().key_id(&key_id).send().await.unwrap();
    let jwk = Jwk::from_spki_der(public.public_key().unwrap().as_ref()).unwrap();
    aws2azure_devstack::moto::create_cache_table(
        &aws_sdk_dynamodb::Client::new(&config),
        "bootstrap-tokens",
    )
    .await;

    let edge = EdgeServer::start(
        loopback(),
        |a| format!("http://{a}"),
        Some(&JwkSet::new(vec![jwk]).unwrap()),
    )
    .await
    .unwrap();
    let entra = EntraStandIn::new(EntraConfig::new(vec![FederatedCredential {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        issuer: edge.issuer().to_string(),
        subject: "aws2azure:graph".into(),
        audience: "api://AzureADTokenExchange".into(),
    }]));
    let entra_server = entra.clone().serve(loopback()).await.unwrap();
    let runtime = RuntimeApi::default();
    let runtime_server = runtime.serve(loopback()).await.unwrap();

    let profiles = json!({"graph": {"tenant_id": TENANT, "client_id": CLIENT,
        "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph",
        "authority": entra_server.url()}});
    let started = Instant::now();
    let mut child = bootstrap()
        .envs(lambda_env(&runtime_server.addr().to_string()))
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS2AZURE_ISSUER", edge.issuer().as_str())
        .env("AWS2AZURE_PROFILES", profiles.to_string())
        .env("AWS2AZURE_KMS_KEY", "alias/bootstrap-test")
        .env("AWS2AZURE_CACHE_TABLE", "bootstrap-tokens")
        // The most an operator can turn on: the raw event (the caller's
        // Authorization header) must still stay out of the log.
        .env("AWS_LAMBDA_LOG_LEVEL", "TRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the bootstrap (or AWS2AZURE_BOOTSTRAP_RUNNER) starts");
    // Drained as it comes: at TRACE the output outgrows a pipe's buffer.
    let mut out = child.stdout.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut text = String::new();
        out.read_to_string(&mut text).await.map(|_| text)
    });
    while runtime.first_poll().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bootstrap never polled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Figures for scripts/test-arm64 (shown with --nocapture).
    let init = runtime.first_poll().unwrap().duration_since(started);
    println!("bootstrap init: {} ms to the first poll", init.as_millis());

    let event: Value = serde_json::from_str(EVENT).unwrap();
    let mut tokens = vec![];
    for request in ["first (miss)", "second (hit)"] {
        let sent = Instant::now();
        let Some(Outcome::Response(response)) =
            runtime.invoke(event.clone(), Duration::from_secs(20)).await
        else {
            panic!("no response from the function");
        };
        println!(
            "bootstrap {request} token request: {} ms",
            sent.elapsed().as_millis()
        );
        assert_eq!(response["statusCode"], 200, "{response}");
        let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["profile"], "graph");
        tokens.push(body["access_token"].as_str().unwrap().to_string());
        let headers = &response["multiValueHeaders"];
        assert_eq!(headers["cache-control"][0], "no-store", "{response}");
    }
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(entra.stats().token_requests, 1);

    // Unknown profile: a 404 document, not a function error.
    let mut unknown = event.clone();
    unknown["path"] = json!("/token/nope");
    unknown["requestContext"]["path"] = json!("/prod/token/nope");
    unknown["pathParameters"]["profile"] = json!("nope");
    let Some(Outcome::Response(response)) = runtime.invoke(unknown, Duration::from_secs(10)).await
    else {
        panic!("no response");
    };
    assert_eq!(response["statusCode"], 404);

    child.start_kill().unwrap();
    let stdout = stdout.await.unwrap().unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let audit: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "token request")
        .collect();
    assert_eq!(audit.len(), 3, "{stdout}");
    assert_eq!(audit[0]["fields"]["cache"], "miss");
    assert_eq!(audit[1]["fields"]["cache"], "hit");
    assert_eq!(audit[2]["fields"]["status"], 404);
    let emf: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    assert_eq!(emf.len(), 3, "one metrics document per request");
    assert_eq!(emf[1]["CacheHit"], 1);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "KMS signing key resolved")
    );
    for token in &tokens {
        assert!(
            !stdout.contains(token.as_str()),
            "no token in the function's output"
        );
    }
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"),
        "TRACE is on for the function's own crates"
    );
    let signature = event["headers"]["Authorization"]
        .as_str()
        .and_then(|a| a.rsplit("Signature=").next())
        .unwrap();
    assert!(
        !stdout.contains(signature),
        "the caller's Authorization header is not logged, even at TRACE"
    );
    assert!(
        !stdout.contains("eyJhbGciOiJSUzI1NiIs"),
        "no assertion or other RS256 JWT in the function's output"
    );
}

#[tokio::test]
async fn a_bad_setting_fails_init_with_one_line_naming_it() {
    let runtime = RuntimeApi::default();
    let server = runtime.serve(loopback()).await.unwrap();
    let output = bootstrap()
        .envs(lambda_env(&server.addr().to_string()))
        .env("AWS2AZURE_ISSUER", "http://issuer.example.com")
        .env("AWS2AZURE_PROFILES", "{}")
        .env("AWS2AZURE_KMS_KEY", "alias/x")
        .output()
        .await
        .expect("the bootstrap (or AWS2AZURE_BOOTSTRAP_RUNNER) starts");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("an error line: {stdout}"));
    assert_eq!(line["fields"]["message"], "invalid configuration");
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains("AWS2AZURE_ISSUER") && error.contains("https"),
        "{error}"
    );
    assert!(
        runtime.first_poll().is_none(),
        "never served half-configured"
    );
}
