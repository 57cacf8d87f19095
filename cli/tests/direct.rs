//! `aws2azure token --direct` as a process, with no broker: the workload's
//! own credentials (from the environment, as the AWS SDK reads them) ask
//! the STS stand-in for an assertion and the CLI exchanges it at the Entra
//! stand-in, which validates it against the stand-in's key set.

use std::process::Command;

use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential};
use aws2azure_devstack::gateway::Principal;
use aws2azure_devstack::sts::{StsConfig, StsFault, StsStandIn};
use aws2azure_devstack::{Server, loopback};
use aws2azure_shared::assertion::AUDIENCE;

const BIN: &str = env!("CARGO_BIN_EXE_aws2azure");
const REGION: &str = "eu-west-1";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const APP: &str = "00000000-1111-2222-3333-444444444444";
const OTHER_APP: &str = "00000000-1111-2222-3333-555555555555";
const WORKLOAD_ROLE: &str = "arn:aws:iam::111122223333:role/batch-job";
const GRAPH_ROLE: &str = "arn:aws:iam::111122223333:role/aws2azure-graph";

fn workload() -> Principal {
    Principal {
        access_key_id: "ASIAEXAMPLEWORKLOAD1".into(),
        secret_access_key: "workload-secret".into(),
        session_token: Some("workload-session".into()),
        arn: "arn:aws:sts::111122223333:assumed-role/batch-job/i-0123".into(),
        caller: "AROAEXAMPLE:i-0123".into(),
        account_id: "111122223333".into(),
    }
}

struct Rig {
    sts: StsStandIn,
    entra: EntraStandIn,
    dir: tempfile::TempDir,
    _servers: Vec<Server>,
}

impl Rig {
    async fn start() -> Self {
        let (sts, sts_server) = StsStandIn::serve(
            StsConfig {
                region: REGION.into(),
                principals: vec![workload()],
                assumable_roles: vec![GRAPH_ROLE.into()],
            },
            loopback(),
        )
        .await
        .unwrap();
        let trust = |client: &str, subject: &str| FederatedCredential {
            tenant_id: TENANT.into(),
            client_id: client.into(),
            issuer: sts.issuer().into(),
            subject: subject.into(),
            audience: AUDIENCE.into(),
        };
        let entra = EntraStandIn::new(EntraConfig::new(vec![
            trust(APP, GRAPH_ROLE),
            trust(APP, WORKLOAD_ROLE),
            trust(OTHER_APP, "arn:aws:iam::111122223333:role/not-this-one"),
        ]));
        let entra_server = entra.clone().serve(loopback()).await.unwrap();
        let authority = entra_server.url();
        let dir = tempfile::tempdir().unwrap();
        let table = |name: &str, client: &str, rest: &str| {
            format!(
                "[profiles.{name}]\ntenant_id = \"{TENANT}\"\nclient_id = \"{client}\"\n\
                 scope = \"https://graph.microsoft.com/.default\"\nauthority = \"{authority}\"\n{rest}\n"
            )
        };
        let config = [
            table(
                "graph",
                APP,
                &format!("assertion = \"sts\"\nrole_arn = \"{GRAPH_ROLE}\""),
            ),
            table(
                "own",
                APP,
                &format!("assertion = \"sts\"\nsubject = \"{WORKLOAD_ROLE}\""),
            ),
            table(
                "wrong-trust",
                OTHER_APP,
                &format!("assertion = \"sts\"\nsubject = \"{WORKLOAD_ROLE}\""),
            ),
            table("keyed", APP, "subject = \"aws2azure:graph\""),
        ]
        .concat();
        std::fs::write(dir.path().join("aws2azure.toml"), config).unwrap();
        Self {
            sts,
            entra,
            dir,
            _servers: vec![sts_server, entra_server],
        }
    }

    /// Runs `aws2azure token PROFILE --direct` with the workload's
    /// credentials in the environment; (exit code, stdout, stderr).
    async fn token(&self, profile: &str) -> (i32, String, String) {
        let w = workload();
        let mut command = Command::new(BIN);
        command
            .args(["token", profile, "--direct", "--config"])
            .arg(self.dir.path().join("aws2azure.toml"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_ACCESS_KEY_ID", w.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", w.secret_access_key)
            .env("AWS_SESSION_TOKEN", w.session_token.unwrap())
            .env("AWS_REGION", REGION)
            .env("AWS_ENDPOINT_URL_STS", self.sts.issuer())
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

fn sub_of(access_token: &str) -> String {
    use base64::Engine as _;
    let payload = access_token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_gets_tokens_with_no_broker_and_reuses_them_from_disk() {
    let rig = Rig::start().await;
    let (code, token, stderr) = rig.token("graph").await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        sub_of(&token),
        GRAPH_ROLE,
        "assumed into the profile's role"
    );
    let (code, own, stderr) = rig.token("own").await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sub_of(&own), WORKLOAD_ROLE, "the workload's own role");
    assert_eq!(rig.sts.stats().assume_role_calls, 1);
    assert_eq!(rig.entra.stats().issued, 2);

    // The second run of each is served from the disk cache.
    let (code, again, _) = rig.token("graph").await;
    assert_eq!((code, again), (0, token));
    assert_eq!(rig.sts.stats().web_identity_token_calls, 2);
    assert_eq!(rig.entra.stats().token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_errors_name_their_fix_exit_1_and_are_not_retried() {
    let rig = Rig::start().await;
    rig.sts.set_federation(false);
    let (code, stdout, stderr) = rig.token("own").await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(
        stderr.contains("OutboundWebIdentityFederationDisabledException")
            && stderr.contains("aws iam enable-outbound-web-identity-federation"),
        "{stderr}"
    );
    rig.sts.set_federation(true);
    for (fault, says) in [
        (
            StsFault::SessionDurationEscalation,
            "AWS2AZURE_STS_DURATION_SECS",
        ),
        (StsFault::JwtPayloadSizeExceeded, "remove tags"),
    ] {
        rig.sts.inject(fault, 1);
        let (code, _, stderr) = rig.token("own").await;
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    assert_eq!(rig.sts.stats().web_identity_token_calls, 3, "one call each");
    assert_eq!(rig.entra.stats().token_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_naming_another_role_fails_once_and_a_kms_profile_is_refused() {
    let rig = Rig::start().await;
    let (code, _, stderr) = rig.token("wrong-trust").await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("AADSTS700213"), "{stderr}");
    assert_eq!(rig.entra.stats().token_requests, 1, "not retried");
    assert!(!stderr.contains("eyJ"), "no token or assertion: {stderr}");

    let (code, _, stderr) = rig.token("keyed").await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("assertion = \"sts\""), "{stderr}");
    assert_eq!(rig.sts.stats().web_identity_token_calls, 1);
}

impl Rig {
    /// The workload's credentials and the STS stand-in's address, as the
    /// AWS SDK reads them from the environment.
    fn with_workload_env(&self, command: &mut Command) {
        let w = workload();
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_ACCESS_KEY_ID", w.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", w.secret_access_key)
            .env("AWS_SESSION_TOKEN", w.session_token.unwrap())
            .env("AWS_REGION", REGION)
            .env("AWS_ENDPOINT_URL_STS", self.sts.issuer())
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// A configuration with only the `sts` profiles (serve --direct serves
    /// every profile of its file).
    fn sts_only_config(&self) -> std::path::PathBuf {
        let all = std::fs::read_to_string(self.dir.path().join("aws2azure.toml")).unwrap();
        let sts_only = all.split("[profiles.keyed]").next().unwrap().to_string();
        let path = self.dir.path().join("sts-only.toml");
        std::fs::write(&path, sts_only).unwrap();
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_aws_issuer_like_any_other() {
    let rig = Rig::start().await;
    let issuer = rig.sts.issuer().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["doctor", &issuer, "--allow-http"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("PASS  issuer matches"), "{report}");
    assert!(
        report.contains("RSA 2048 bits") && report.contains("WARN  key es384-"),
        "the RSA key passes, the ES384 key is only a warning: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_direct_answers_azure_sdks_with_no_broker() {
    use std::io::{BufRead, BufReader};
    let rig = Rig::start().await;
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--direct", "--listen", "127.0.0.1:0", "--config"])
        .arg(rig.sts_only_config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    rig.with_workload_env(&mut command);
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let exports = tokio::task::spawn_blocking(move || {
        let mut exports = std::collections::HashMap::new();
        let mut lines = BufReader::new(stdout).lines();
        while exports.len() < 2 {
            let line = lines.next().expect("serve printed its exports").unwrap();
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|e| e.split_once('=')) {
                exports.insert(k.to_string(), v.to_string());
            }
        }
        exports
    })
    .await
    .unwrap();
    let ask = |selector: &str| {
        reqwest::Client::new()
            .get(format!(
                "{}?api-version=2019-08-01&resource=https%3A%2F%2Fgraph.microsoft.com&{selector}",
                exports["IDENTITY_ENDPOINT"]
            ))
            .header("X-IDENTITY-HEADER", &exports["IDENTITY_HEADER"])
            .send()
    };
    // `graph` and `own` serve the same resource for the same app: the SDK
    // chooses with mi_res_id, the profile's name.
    let answer: serde_json::Value = ask("mi_res_id=graph").await.unwrap().json().await.unwrap();
    let token = answer["access_token"].as_str().expect("a token");
    assert_eq!(sub_of(token), GRAPH_ROLE);
    assert_eq!(rig.entra.stats().issued, 1);
    // A profile whose app trusts another role: the SDK gets a JSON error
    // that says why, and serve stays up.
    let refused = ask(&format!("client_id={OTHER_APP}")).await.unwrap();
    assert_eq!(refused.status(), 502);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS700213"),
        "{body}"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("direct: AWS STS and Entra"), "{log}");
    assert!(log.contains(r#""origin":"direct""#), "{log}");
    assert!(!log.contains(token), "no token in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_an_sts_profile_against_its_sts_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dev.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.graph]\ntenant_id = \"{TENANT}\"\nclient_id = \"{APP}\"\n\
             scope = \"https://graph.microsoft.com/.default\"\nassertion = \"sts\"\n\
             role_arn = \"{GRAPH_ROLE}\"\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BIN);
        command.args(["dev", "--once", "--config"]).arg(&config);
        for part in ["--edge", "--gateway", "--entra", "--identity", "--sts"] {
            command.args([part, "127.0.0.1:0"]);
        }
        command.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("STS stand-in      http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1. assertion signed   by the STS stand-in")
            && stdout.contains(&format!("sub={GRAPH_ROLE}")),
        "{stdout}"
    );
    assert!(stdout.contains("served from the cache"), "{stdout}");
}
