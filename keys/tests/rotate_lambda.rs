//! The real `rotate` binary as a process, polling a local Lambda Runtime
//! API with EventBridge's scheduled event: settings from the environment,
//! KMS and Secrets Manager in moto, the Cloudflare API stand-in whose KV is
//! a local edge, the edge's public key set; a report per run and one EMF
//! metrics line per run on stdout, for the template's alarms.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws2azure_devstack::cloudflare::{self, CloudflareConfig, CloudflareStandIn, Fault};
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::lambda_runtime_api::{Outcome, RuntimeApi};
use aws2azure_devstack::loopback;
use aws2azure_devstack::moto::{self, MotoServer};
use aws2azure_shared::jwk::JwkSet;
use serde_json::Value;
use tokio::io::AsyncReadExt;

const EVENT: &str = include_str!("fixtures/scheduled-event.json");
const TOKEN: &str = "cf-rotate-lambda-token-0123456789";

fn rotate() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rotate"))
}

fn lambda_env(runtime_api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "aws2azure-rotation".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ("AWS_REGION", moto::REGION.into()),
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY.into()),
        (
            "AWS2AZURE_BROKER_ROLE_ARN",
            "arn:aws:iam::123456789012:role/stack-BrokerRole-1".into(),
        ),
        (
            "AWS2AZURE_ROTATION_ROLE_ARN",
            "arn:aws:iam::123456789012:role/stack-RotationRole-1".into(),
        ),
        ("AWS2AZURE_CLOUDFLARE_ACCOUNT_ID", "acct".into()),
        ("AWS2AZURE_CLOUDFLARE_NAMESPACE_ID", "ns".into()),
    ]
}

async fn invoke(runtime: &RuntimeApi) -> Outcome {
    let event: Value = serde_json::from_str(EVENT).unwrap();
    runtime
        .invoke(event, Duration::from_secs(30))
        .await
        .expect("the function answers")
}

fn actions(outcome: &Outcome) -> Vec<String> {
    let Outcome::Response(response) = outcome else {
        panic!("a response, not {outcome:?}");
    };
    response["report"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_rotation_runs_as_a_lambda_and_reports_each_run() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config().await;
    let ring = format!("rotate-lambda-{}", fastrand::u32(..));
    let secret = aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(format!("{ring}-cloudflare"))
        .secret_string(format!(r#"{{"token": "{TOKEN}"}}"#))
        .send()
        .await
        .unwrap();

    let edge = EdgeServer::start(loopback(), |a| format!("http://{a}"), None)
        .await
        .unwrap();
    let stand_in = CloudflareStandIn::with_backend(
        CloudflareConfig {
            api_token: TOKEN.into(),
            account_id: "acct".into(),
            namespace_id: "ns".into(),
        },
        Arc::new(edge.kv_backend("jwks")),
    );
    let cloudflare_server = stand_in.clone().serve(loopback()).await.unwrap();
    let runtime = RuntimeApi::default();
    let runtime_server = runtime.serve(loopback()).await.unwrap();

    let started = Instant::now();
    let mut child = rotate()
        .envs(lambda_env(&runtime_server.addr().to_string()))
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS2AZURE_KEY_RING", &ring)
        .env("AWS2AZURE_ISSUER", edge.issuer().as_str())
        .env(
            "AWS2AZURE_CLOUDFLARE_API_BASE",
            cloudflare::api_base(&cloudflare_server),
        )
        .env(
            "AWS2AZURE_CLOUDFLARE_API_TOKEN_SECRET",
            secret.arn().unwrap(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut text = String::new();
        out.read_to_string(&mut text).await.map(|_| text)
    });
    while runtime.first_poll().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rotate never polled: {:?}",
            runtime.init_error()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // First run: a key is created and published; the edge serves it.
    let first = invoke(&runtime).await;
    let done = actions(&first);
    assert!(done.contains(&"staged".to_string()), "{first:?}");
    assert!(done.contains(&"published".to_string()), "{first:?}");
    let served = reqwest::get(edge.issuer().jwks_uri())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(JwkSet::from_json(&served).unwrap().keys().len(), 1);

    // The run read the public key set after publishing: the warm-up starts.
    assert!(done.contains(&"seen-public".to_string()), "{first:?}");

    // Second run: nothing is due, and the report says what K1 waits for.
    let second = invoke(&runtime).await;
    assert!(actions(&second).is_empty(), "{second:?}");
    let Outcome::Response(response) = &second else {
        unreachable!()
    };
    assert!(
        response["report"]["waiting"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("K1 refuses the promotion")),
        "{response}"
    );

    // A refused API token: the run fails, and says so in its metrics.
    stand_in.fail_next(
        1,
        Fault::Status {
            status: 401,
            retry_after: None,
        },
    );
    // Something must be published for the fault to matter: the edge's copy
    // is overwritten by hand, so the run republishes.
    edge.set_keys(None);
    let failed = invoke(&runtime).await;
    let Outcome::Error(error) = &failed else {
        panic!("a function error, not {failed:?}");
    };
    assert!(
        error.to_string().contains("401"),
        "the error names the refusal: {error}"
    );

    child.start_kill().unwrap();
    let stdout = stdout.await.unwrap().unwrap();
    assert!(!stdout.contains(TOKEN), "the API token is not logged");
    let emf: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("_aws").is_some())
        .collect();
    assert_eq!(emf.len(), 3, "one metrics line per run: {stdout}");
    for line in &emf {
        assert_eq!(line["Ring"], ring.as_str());
    }
    assert_eq!(emf[0]["RotationSucceeded"], 1);
    assert_eq!(emf[1]["RotationSucceeded"], 1);
    assert_eq!(emf[1]["NextKeyNotPublic"], 0);
    assert_eq!(emf[2]["RotationFailed"], 1);
    assert_eq!(emf[2]["RotationSucceeded"], 0);
}

#[tokio::test]
async fn a_missing_setting_fails_init_with_one_line_naming_it() {
    let runtime = RuntimeApi::default();
    let server = runtime.serve(loopback()).await.unwrap();
    let output = rotate()
        .envs(lambda_env(&server.addr().to_string()))
        .env("AWS2AZURE_KEY_RING", "ring")
        .env("AWS2AZURE_ISSUER", "https://issuer.example.com")
        .env_remove("AWS2AZURE_ROTATION_ROLE_ARN")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("an error line: {stdout}"));
    assert_eq!(line["fields"]["message"], "invalid configuration");
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(error.contains("AWS2AZURE_ROTATION_ROLE_ARN"), "{error}");
    assert!(runtime.first_poll().is_none(), "never runs half-configured");
}
