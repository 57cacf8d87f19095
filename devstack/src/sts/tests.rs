//! The stand-in as AWS's own SDK sees it: every call below goes through
//! `aws-sdk-sts` (SigV4, the query protocol, its XML and error parsing).

use aws_credential_types::Credentials;
use aws_sdk_sts::operation::get_web_identity_token::GetWebIdentityTokenError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::actions::role_parts;
use super::*;

const REGION: &str = "eu-west-1";
const BROKER_ROLE: &str = "arn:aws:iam::111122223333:role/aws2azure-broker";
const GRAPH_ROLE: &str = "arn:aws:iam::111122223333:role/team/aws2azure-graph";

fn broker() -> Principal {
    Principal {
        access_key_id: "AKIAEXAMPLEBROKER001".into(),
        secret_access_key: "broker-secret".into(),
        session_token: None,
        arn: "arn:aws:sts::111122223333:assumed-role/aws2azure-broker/lambda".into(),
        caller: "AROAEXAMPLE:lambda".into(),
        account_id: "111122223333".into(),
    }
}

struct Rig {
    sts: StsStandIn,
    _server: Server,
}

impl Rig {
    async fn start() -> Self {
        let (sts, server) = StsStandIn::serve(
            StsConfig {
                region: REGION.into(),
                principals: vec![broker()],
                assumable_roles: vec![GRAPH_ROLE.into()],
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        Self {
            sts,
            _server: server,
        }
    }

    fn client_as(&self, credentials: Credentials) -> aws_sdk_sts::Client {
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(REGION))
            .endpoint_url(self.sts.issuer())
            .credentials_provider(credentials)
            .build();
        aws_sdk_sts::Client::from_conf(config)
    }

    fn client(&self) -> aws_sdk_sts::Client {
        let b = broker();
        self.client_as(Credentials::new(
            b.access_key_id,
            b.secret_access_key,
            None,
            None,
            "test",
        ))
    }

    async fn token(
        &self,
        client: &aws_sdk_sts::Client,
    ) -> Result<
        aws_sdk_sts::operation::get_web_identity_token::GetWebIdentityTokenOutput,
        GetWebIdentityTokenError,
    > {
        client
            .get_web_identity_token()
            .audience("api://AzureADTokenExchange")
            .signing_algorithm("RS256")
            .duration_seconds(120)
            .send()
            .await
            .map_err(|e| e.into_service_error())
    }

    /// Verifies `jwt` against the key set fetched from the issuer's
    /// discovery document, over HTTP, as a relying party does.
    async fn verify(&self, jwt: &str) -> serde_json::Value {
        let http = reqwest::Client::new();
        let discovery: DiscoveryDocument = http
            .get(format!("{}{DISCOVERY_PATH}", self.sts.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery.issuer, self.sts.issuer());
        let document: serde_json::Value = http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // AWS publishes an ES384 key beside the RSA one.
        let kinds: Vec<&str> = document["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kty"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["RSA", "EC"]);
        let keys = JwkSet::new(vec![
            serde_json::from_value::<aws2azure_shared::jwk::RawJwk>(document["keys"][0].clone())
                .unwrap()
                .try_into()
                .unwrap(),
        ])
        .unwrap();
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        let key = keys.find(header.kid.as_deref().unwrap()).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let decoding =
            DecodingKey::from_rsa_components(&b64(key.modulus()), &b64(key.exponent())).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["api://AzureADTokenExchange"]);
        validation.set_issuer(&[self.sts.issuer()]);
        jsonwebtoken::decode::<serde_json::Value>(jwt, &decoding, &validation)
            .expect("the token verifies against the published key set")
            .claims
    }
}

#[tokio::test]
async fn issues_rs256_tokens_with_aws_claims_for_the_calling_role() {
    let rig = Rig::start().await;
    let out = rig.token(&rig.client()).await.unwrap();
    let jwt = out.web_identity_token().unwrap();
    let claims = rig.verify(jwt).await;
    assert_eq!(claims["sub"], BROKER_ROLE, "the role, not the session");
    assert_eq!(claims["aud"], "api://AzureADTokenExchange");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 120);
    assert_eq!(out.expiration().unwrap().secs() as u64, exp);
    assert!(!claims["jti"].as_str().unwrap().is_empty());
    assert_eq!(claims[AWS_CLAIMS]["aws_account"], "111122223333");
    assert_eq!(claims[AWS_CLAIMS]["source_region"], REGION);
    assert_eq!(claims[AWS_CLAIMS]["principal_id"], BROKER_ROLE);
    assert_eq!(rig.sts.stats().subjects, vec![BROKER_ROLE.to_string()]);
}

#[tokio::test]
async fn an_assumed_role_signs_with_its_own_arn() {
    let rig = Rig::start().await;
    let assumed = rig
        .client()
        .assume_role()
        .role_arn(GRAPH_ROLE)
        .role_session_name("aws2azure")
        .send()
        .await
        .unwrap();
    let c = assumed.credentials().unwrap();
    assert_eq!(
        assumed.assumed_role_user().unwrap().arn(),
        "arn:aws:sts::111122223333:assumed-role/aws2azure-graph/aws2azure"
    );
    let as_graph = rig.client_as(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "assumed",
    ));
    let who = as_graph.get_caller_identity().send().await.unwrap();
    assert_eq!(who.account(), Some("111122223333"));
    let out = rig.token(&as_graph).await.unwrap();
    let claims = rig.verify(out.web_identity_token().unwrap()).await;
    assert_eq!(claims["sub"], GRAPH_ROLE);

    // A role nobody may assume.
    let err = rig
        .client()
        .assume_role()
        .role_arn("arn:aws:iam::111122223333:role/admin")
        .role_session_name("aws2azure")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("AccessDenied"));
}

#[tokio::test]
async fn each_sts_error_reaches_the_sdk_as_its_own_type() {
    let rig = Rig::start().await;
    let client = rig.client();

    rig.sts.set_federation(false);
    let err = rig.token(&client).await.unwrap_err();
    assert!(
        matches!(
            err,
            GetWebIdentityTokenError::OutboundWebIdentityFederationDisabledException(_)
        ),
        "{err:?}"
    );
    rig.sts.set_federation(true);

    rig.sts.inject(StsFault::SessionDurationEscalation, 1);
    let err = rig.token(&client).await.unwrap_err();
    assert!(
        matches!(
            err,
            GetWebIdentityTokenError::SessionDurationEscalationException(_)
        ),
        "{err:?}"
    );
    rig.sts.inject(StsFault::JwtPayloadSizeExceeded, 1);
    let err = rig.token(&client).await.unwrap_err();
    assert!(
        matches!(
            err,
            GetWebIdentityTokenError::JwtPayloadSizeExceededException(_)
        ),
        "{err:?}"
    );
    // Faults are used up: the next call succeeds.
    rig.token(&client).await.unwrap();
    let refused = rig.sts.stats().refused;
    assert_eq!(refused["OutboundWebIdentityFederationDisabledException"], 1);
    assert_eq!(refused["SessionDurationEscalationException"], 1);
    assert_eq!(refused["JWTPayloadSizeExceededException"], 1);
}

#[tokio::test]
async fn the_errors_also_come_from_what_causes_them() {
    let rig = Rig::start().await;
    // A session of 900 s cannot sign a token of an hour.
    let assumed = rig
        .client()
        .assume_role()
        .role_arn(GRAPH_ROLE)
        .role_session_name("short")
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let c = assumed.credentials().unwrap();
    let short = rig.client_as(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "assumed",
    ));
    let err = short
        .get_web_identity_token()
        .audience("api://AzureADTokenExchange")
        .signing_algorithm("RS256")
        .duration_seconds(3600)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            GetWebIdentityTokenError::SessionDurationEscalationException(_)
        ),
        "{err:?}"
    );

    // Request tags that make the claims too large.
    let mut request = rig
        .client()
        .get_web_identity_token()
        .audience("api://AzureADTokenExchange")
        .signing_algorithm("RS256");
    for n in 0..50 {
        request = request.tags(
            aws_sdk_sts::types::Tag::builder()
                .key(format!("tag{n}"))
                .value("v".repeat(100))
                .build()
                .unwrap(),
        );
    }
    let err = request.send().await.unwrap_err().into_service_error();
    assert!(
        matches!(
            err,
            GetWebIdentityTokenError::JwtPayloadSizeExceededException(_)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn refuses_bad_signatures_parameters_and_actions() {
    let rig = Rig::start().await;
    let wrong_secret = rig.client_as(Credentials::new(
        broker().access_key_id,
        "not-the-secret",
        None,
        None,
        "test",
    ));
    let err = rig.token(&wrong_secret).await.unwrap_err();
    assert_eq!(err.meta().code(), Some("SignatureDoesNotMatch"), "{err:?}");
    let unknown = rig.client_as(Credentials::new("AKIAUNKNOWN", "x", None, None, "test"));
    let err = rig.token(&unknown).await.unwrap_err();
    assert_eq!(err.meta().code(), Some("InvalidClientTokenId"), "{err:?}");

    let err = rig
        .client()
        .get_web_identity_token()
        .audience("api://AzureADTokenExchange")
        .signing_algorithm("HS256")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("ValidationError"), "{err:?}");
    let err = rig
        .client()
        .get_web_identity_token()
        .audience("api://AzureADTokenExchange")
        .signing_algorithm("RS256")
        .duration_seconds(30)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("ValidationError"), "{err:?}");
    assert_eq!(rig.sts.stats().tokens_issued, 0);

    // A raw form with an unknown action, signed by nobody: refused before
    // the action is read.
    let response = reqwest::Client::new()
        .post(rig.sts.issuer())
        .form(&[("Action", "DeleteEverything")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("<ErrorResponse"));
}

#[test]
fn an_assumed_role_session_acts_as_its_role() {
    assert_eq!(
        role_of("arn:aws:sts::111122223333:assumed-role/r/s"),
        "arn:aws:iam::111122223333:role/r"
    );
    let user = "arn:aws:iam::111122223333:user/u";
    assert_eq!(role_of(user), user);
    assert_eq!(
        role_parts(GRAPH_ROLE),
        Some(("aws", "111122223333", "aws2azure-graph"))
    );
    assert_eq!(role_parts("arn:aws:iam::111122223333:user/u"), None);
}
