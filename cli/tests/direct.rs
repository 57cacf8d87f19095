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
