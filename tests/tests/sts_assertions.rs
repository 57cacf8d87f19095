//! The second assertion source end to end: a workload asks the token API
//! (SigV4 through the devstack's gateway) for profiles whose assertions
//! AWS signs; the broker gets them from the STS stand-in through the AWS
//! SDK (GetWebIdentityToken, AssumeRole into each profile's role first),
//! and the Entra stand-in validates them against the stand-in's own
//! discovery document and key set, as Entra validates AWS's issuer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws2azure_client::{Error as ClientError, TokenClient};
use aws2azure_devstack::entra::{EntraConfig, EntraStandIn, FederatedCredential};
use aws2azure_devstack::gateway::{self, Principal};
use aws2azure_devstack::sts::{AWS_CLAIMS, StsConfig, StsFault, StsStandIn};
use aws2azure_devstack::{Server, loopback};
use aws2azure_shared::assertion::AUDIENCE;
use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::Profiles;
use aws2azure_signer::api::handle;
use aws2azure_signer::audit::AuditRecord;
use aws2azure_signer::broker::{Assertions, Broker, BrokerSettings};
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::signing::LocalKeySigner;
use aws2azure_signer::sts::StsWebIdentity;
use aws2azure_tests::python;

const REGION: &str = "eu-west-1";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const GRAPH_APP: &str = "00000000-1111-2222-3333-444444444444";
const MAIL_APP: &str = "00000000-1111-2222-3333-555555555555";
const BROKER_ROLE: &str = "arn:aws:iam::111122223333:role/aws2azure-broker";
const GRAPH_ROLE: &str = "arn:aws:iam::111122223333:role/aws2azure-graph";
const MAIL_ROLE: &str = "arn:aws:iam::111122223333:role/aws2azure-mail";
/// A role whose trust policy does not name the broker's role.
const FORBIDDEN_ROLE: &str = "arn:aws:iam::111122223333:role/someone-elses";

/// The broker's own credentials, as its Lambda role's session.
fn broker_principal() -> Principal {
    Principal {
        access_key_id: "ASIAEXAMPLEBROKER001".into(),
        secret_access_key: "broker-secret".into(),
        session_token: Some("broker-session".into()),
        arn: "arn:aws:sts::111122223333:assumed-role/aws2azure-broker/lambda".into(),
        caller: "AROAEXAMPLEBROKER:lambda".into(),
        account_id: "111122223333".into(),
    }
}

/// A workload calling the token API.
fn workload() -> Principal {
    Principal {
        access_key_id: "AKIAEXAMPLEWORKLOAD1".into(),
        secret_access_key: "workload-secret".into(),
        session_token: None,
        arn: "arn:aws:iam::111122223333:user/workload".into(),
        caller: "AIDAEXAMPLEWORKLOAD".into(),
        account_id: "111122223333".into(),
    }
}

struct Rig {
    sts: StsStandIn,
    entra: EntraStandIn,
    client: TokenClient,
    /// The audit record of every request the token API answered.
    audits: Arc<Mutex<Vec<AuditRecord>>>,
    _servers: Vec<Server>,
}

impl Rig {
    /// Profiles: `graph` and `mail` each with a role of their own, `own`
    /// with the broker's role, `wrong-trust` whose app trusts another role
    /// than the one that signs, and `forbidden` whose role the broker may
    /// not assume.
    async fn start() -> Self {
        let (sts, sts_server) = StsStandIn::serve(
            StsConfig {
                region: REGION.into(),
                principals: vec![broker_principal()],
                assumable_roles: vec![GRAPH_ROLE.into(), MAIL_ROLE.into()],
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
            trust(GRAPH_APP, GRAPH_ROLE),
            trust(GRAPH_APP, BROKER_ROLE),
            trust(MAIL_APP, MAIL_ROLE),
        ]));
        let entra_server = entra.clone().serve(loopback()).await.unwrap();
        let authority = entra_server.url();
        let profile = |client: &str, scope: &str, rest: &str| {
            format!(
                r#"{{"tenant_id": "{TENANT}", "client_id": "{client}", "scope": "{scope}",
                    "authority": "{authority}", "assertion": "sts", {rest}}}"#
            )
        };
        let graph = "https://graph.microsoft.com/.default";
        let profiles = Profiles::from_json(&format!(
            r#"{{"graph": {}, "mail": {}, "own": {}, "wrong-trust": {}, "forbidden": {}}}"#,
            profile(GRAPH_APP, graph, &format!(r#""role_arn": "{GRAPH_ROLE}""#)),
            profile(
                MAIL_APP,
                "https://outlook.office365.com/.default",
                &format!(r#""role_arn": "{MAIL_ROLE}""#)
            ),
            profile(
                GRAPH_APP,
                "https://management.azure.com/.default",
                &format!(r#""subject": "{BROKER_ROLE}""#)
            ),
            profile(MAIL_APP, graph, &format!(r#""role_arn": "{GRAPH_ROLE}""#)),
            profile(
                GRAPH_APP,
                graph,
                &format!(r#""role_arn": "{FORBIDDEN_ROLE}""#)
            ),
        ))
        .unwrap();

        let b = broker_principal();
        let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(sts.issuer())
            .credentials_provider(Credentials::new(
                b.access_key_id,
                b.secret_access_key,
                b.session_token,
                None,
                "broker",
            ))
            .load()
            .await;
        let roles = profiles.iter().filter_map(|p| p.role_arn.clone());
        let web_identity = StsWebIdentity::new(&aws, roles, 120).await;
        let mut settings =
            BrokerSettings::new(Issuer::parse("https://issuer.example.com").unwrap());
        settings.backoff_base = Duration::from_millis(10);
        settings.backoff_max = Duration::from_millis(50);
        let broker = Broker::with_assertions(
            profiles,
            settings,
            Assertions {
                key: Some(Arc::new(LocalKeySigner::generate().unwrap())),
                sts: Some(Arc::new(web_identity)),
            },
            Arc::new(EntraClient::new(Duration::from_secs(5)).unwrap()),
            None,
            Arc::new(SystemClock),
        )
        .unwrap();
        let audits = Arc::new(Mutex::new(Vec::new()));
        let recorded = audits.clone();
        let function: gateway::Function = Arc::new(move |request| {
            let broker = broker.clone();
            let recorded = recorded.clone();
            Box::pin(async move {
                let (response, audit) = handle(&broker, &request).await;
                recorded.lock().unwrap().push(audit);
                response
            })
        });
        let gateway_server = gateway::serve(loopback(), REGION, "test", vec![workload()], function)
            .await
            .unwrap();
        let w = workload();
        let client = TokenClient::new(
            &format!("{}/test", gateway_server.url()),
            REGION,
            SharedCredentialsProvider::new(Credentials::new(
                w.access_key_id,
                w.secret_access_key,
                None,
                None,
                "workload",
            )),
        )
        .unwrap();
        Self {
            sts,
            entra,
            client,
            audits,
            _servers: vec![sts_server, entra_server, gateway_server],
        }
    }

    /// The claims of an access token the Entra stand-in issued.
    fn claims(access_token: &str) -> serde_json::Value {
        use base64::Engine as _;
        let payload = access_token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    async fn refusal(&self, profile: &str) -> (u16, String, String) {
        match self.client.token(profile, 0).await.unwrap_err() {
            ClientError::Api {
                status,
                error,
                description,
                ..
            } => (status, error, description),
            other => panic!("expected the API's refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn profiles_get_tokens_for_their_own_roles_through_sts() {
    let rig = Rig::start().await;
    let graph = rig.client.token("graph", 0).await.unwrap();
    let mail = rig.client.token("mail", 0).await.unwrap();
    let own = rig.client.token("own", 0).await.unwrap();
    // The Entra stand-in's tokens carry the subject it matched.
    assert_eq!(Rig::claims(&graph.access_token)["sub"], GRAPH_ROLE);
    assert_eq!(Rig::claims(&mail.access_token)["sub"], MAIL_ROLE);
    assert_eq!(Rig::claims(&own.access_token)["sub"], BROKER_ROLE);
    assert_eq!(Rig::claims(&mail.access_token)["appid"], MAIL_APP);
    let stats = rig.sts.stats();
    assert_eq!(stats.subjects, vec![GRAPH_ROLE, MAIL_ROLE, BROKER_ROLE]);
    assert_eq!(stats.assume_role_calls, 2, "one session per role");
    assert_eq!(rig.entra.stats().issued, 3);

    // Cached: neither STS nor Entra is asked again.
    let again = rig.client.token("graph", 0).await.unwrap();
    assert_eq!(again.access_token, graph.access_token);
    assert_eq!(rig.sts.stats().web_identity_token_calls, 3);
    assert_eq!(rig.entra.stats().token_requests, 3);

    // The audit says where each assertion came from, and how many STS gave.
    let audits = rig.audits.lock().unwrap();
    let seen: Vec<_> = audits
        .iter()
        .map(|a| (a.profile.as_str(), a.assertion, a.sign_calls))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("graph", Some("sts"), 1),
            ("mail", Some("sts"), 1),
            ("own", Some("sts"), 1),
            ("graph", Some("sts"), 0),
        ]
    );
}

#[tokio::test]
async fn a_trust_that_names_another_role_fails_once_with_700213() {
    let rig = Rig::start().await;
    let (status, error, message) = rig.refusal("wrong-trust").await;
    assert_eq!(
        (status, error.as_str()),
        (502, "entra_refused"),
        "{message}"
    );
    assert!(message.contains("AADSTS700213"), "{message}");
    assert_eq!(rig.entra.stats().token_requests, 1, "not retried");
    assert_eq!(rig.sts.stats().web_identity_token_calls, 1);
}

#[tokio::test]
async fn each_sts_error_is_reported_with_its_fix_and_not_retried() {
    let rig = Rig::start().await;
    rig.sts.set_federation(false);
    let (status, error, message) = rig.refusal("graph").await;
    assert_eq!((status, error.as_str()), (500, "signer_unavailable"));
    assert!(
        message.contains("OutboundWebIdentityFederationDisabledException")
            && message.contains("aws iam enable-outbound-web-identity-federation"),
        "{message}"
    );
    rig.sts.set_federation(true);

    for (fault, code, fix) in [
        (
            StsFault::SessionDurationEscalation,
            "SessionDurationEscalationException",
            "AWS2AZURE_STS_DURATION_SECS",
        ),
        (
            StsFault::JwtPayloadSizeExceeded,
            "JWTPayloadSizeExceededException",
            "remove tags",
        ),
        (
            StsFault::AccessDenied,
            "AccessDenied",
            "sts:GetWebIdentityToken",
        ),
    ] {
        rig.sts.inject(fault, 1);
        let (status, error, message) = rig.refusal("graph").await;
        assert_eq!(
            (status, error.as_str()),
            (500, "signer_unavailable"),
            "{code}"
        );
        assert!(message.contains(code) && message.contains(fix), "{message}");
        assert!(
            !message.contains(GRAPH_ROLE),
            "role ARNs stay in the log: {message}"
        );
    }
    let stats = rig.sts.stats();
    assert_eq!(
        stats.web_identity_token_calls, 4,
        "one call each: none retried"
    );
    assert_eq!(rig.entra.stats().token_requests, 0, "nothing reached Entra");

    // Throttling is retried by the SDK client (3 attempts), then answered
    // 503 for the caller to come back; the next request gets its token.
    rig.sts.inject(StsFault::Throttling, 3);
    let (status, error, _) = rig.refusal("graph").await;
    assert_eq!((status, error.as_str()), (503, "upstream_unavailable"));
    assert_eq!(rig.sts.stats().web_identity_token_calls, 4 + 3);
    rig.client.token("graph", 0).await.unwrap();
}

#[tokio::test]
async fn a_role_the_broker_may_not_assume_is_a_refusal_naming_the_fix() {
    let rig = Rig::start().await;
    let (status, error, message) = rig.refusal("forbidden").await;
    assert_eq!(
        (status, error.as_str()),
        (500, "signer_unavailable"),
        "{message}"
    );
    assert!(
        message.contains("AccessDenied") && message.contains("sts:AssumeRole"),
        "{message}"
    );
    let stats = rig.sts.stats();
    assert_eq!(stats.refused.get("AccessDenied"), Some(&1), "{stats:?}");
    assert_eq!(stats.tokens_issued, 0);
}

#[tokio::test]
async fn pyjwt_verifies_the_stand_ins_assertions_against_its_key_set() {
    let (sts, _server) = StsStandIn::serve(
        StsConfig {
            region: REGION.into(),
            principals: vec![broker_principal()],
            assumable_roles: vec![],
        },
        loopback(),
    )
    .await
    .unwrap();
    let b = broker_principal();
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(sts.issuer())
        .credentials_provider(Credentials::new(
            b.access_key_id,
            b.secret_access_key,
            b.session_token,
            None,
            "broker",
        ))
        .load()
        .await;
    use aws2azure_signer::sts::WebIdentitySource as _;
    let assertion = StsWebIdentity::new(&aws, Vec::new(), 120)
        .await
        .web_identity_token(None)
        .await
        .unwrap();
    let issuer = sts.issuer().to_string();
    let jwt = assertion.expose().to_string();
    let out = tokio::task::spawn_blocking(move || {
        python::run_file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/edge/pyjwt_check.py"),
            &["verify", &issuer, AUDIENCE, &jwt],
        )
    })
    .await
    .unwrap();
    let claims: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(claims["sub"], BROKER_ROLE);
    assert_eq!(claims["iss"], sts.issuer());
    assert_eq!(claims[AWS_CLAIMS]["aws_account"], "111122223333");
}
