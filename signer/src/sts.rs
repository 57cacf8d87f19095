//! The second assertion source: AWS signs the client assertion itself
//! (IAM outbound identity federation, STS `GetWebIdentityToken`), for the
//! account's AWS issuer, with the calling role's ARN as subject.
//!
//! A profile with a `role_arn` gets its assertion from a session of that
//! role (the SDK's `AssumeRoleProvider`, which caches and refreshes the
//! session), so profiles keep distinct subjects; the others from the
//! broker's own role. Audience `api://AzureADTokenExchange`, RS256 (Entra
//! accepts nothing else), and a short lifetime: the assertion is exchanged
//! at once.

use std::collections::HashMap;
use std::error::Error as _;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_sdk_sts::Client;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws2azure_shared::assertion::{AUDIENCE, ClientAssertion};
use aws2azure_shared::profile::RoleArn;

use crate::Error;

/// `DurationSeconds` bounds the broker accepts (STS allows up to 3600): the
/// assertion is used within seconds, and a short one cannot outlive the
/// role session it came from (`SessionDurationEscalationException`).
pub const MIN_DURATION_SECS: u64 = 60;
pub const MAX_DURATION_SECS: u64 = 300;
pub const DEFAULT_DURATION_SECS: u64 = 120;
/// The session name of the broker's `AssumeRole` calls (CloudTrail shows it).
pub const SESSION_NAME: &str = "aws2azure";

/// Something that gets AWS-signed assertions.
#[async_trait]
pub trait WebIdentitySource: Send + Sync + 'static {
    /// An assertion for Entra, signed by STS for the broker's role or, with
    /// `role`, for that role.
    async fn web_identity_token(&self, role: Option<&RoleArn>) -> Result<ClientAssertion, Error>;
}

/// `GetWebIdentityToken` through the AWS SDK.
pub struct StsWebIdentity {
    own: Client,
    by_role: HashMap<RoleArn, Client>,
    duration_secs: u64,
}

impl StsWebIdentity {
    /// Clients for the broker's own role and for each of `roles`, from
    /// `aws` (region, credentials, `AWS_ENDPOINT_URL_STS`). Nothing is
    /// called yet: a role is assumed on its first assertion.
    pub async fn new(
        aws: &SdkConfig,
        roles: impl IntoIterator<Item = RoleArn>,
        duration_secs: u64,
    ) -> Self {
        let mut by_role = HashMap::new();
        for role in roles {
            if by_role.contains_key(&role) {
                continue;
            }
            let provider = AssumeRoleProvider::builder(role.as_str())
                .session_name(SESSION_NAME)
                .configure(aws)
                .build()
                .await;
            let assumed = aws.to_builder().credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(provider),
            );
            by_role.insert(role, Client::new(&assumed.build()));
        }
        Self {
            own: Client::new(aws),
            by_role,
            duration_secs,
        }
    }
}

#[async_trait]
impl WebIdentitySource for StsWebIdentity {
    async fn web_identity_token(&self, role: Option<&RoleArn>) -> Result<ClientAssertion, Error> {
        let client = match role {
            None => &self.own,
            Some(role) => self
                .by_role
                .get(role)
                .ok_or_else(|| Error::Internal(format!("no STS client for the role `{role}`")))?,
        };
        let out = client
            .get_web_identity_token()
            .audience(AUDIENCE)
            .signing_algorithm("RS256")
            .duration_seconds(self.duration_secs as i32)
            .send()
            .await
            .map_err(map_sdk_error)?;
        let jwt = out.web_identity_token.ok_or_else(|| {
            Error::StsUnreachable("GetWebIdentityToken answered without a token".into())
        })?;
        ClientAssertion::signed_elsewhere(jwt).map_err(|e| Error::StsUnreachable(e.to_string()))
    }
}

/// STS's answers by what helps: refusals keep their code (and get a fix
/// named, see [`Error::Sts`]), outages and throttling are "unreachable".
/// A refused `AssumeRole` arrives as a credentials failure of the
/// `GetWebIdentityToken` call; it is found in the error's causes.
fn map_sdk_error<E, R>(err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = &err {
        let e = service.err();
        return refusal(
            "GetWebIdentityToken",
            e.code().unwrap_or("Unknown"),
            e.message().unwrap_or_default(),
        );
    }
    let mut cause = err.source();
    while let Some(e) = cause {
        if let Some(SdkError::ServiceError(service)) =
            e.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>()
        {
            let e = service.err();
            return refusal(
                "AssumeRole",
                e.code().unwrap_or("Unknown"),
                e.message().unwrap_or_default(),
            );
        }
        cause = e.source();
    }
    match err {
        SdkError::TimeoutError(_) => Error::StsUnreachable("timed out".into()),
        other => Error::StsUnreachable(DisplayErrorContext(&other).to_string()),
    }
}

fn refusal(operation: &'static str, code: &str, message: &str) -> Error {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "ServiceUnavailable"
        | "InternalFailure" => Error::StsUnreachable(format!("{operation}: {code}: {message}")),
        _ => Error::Sts {
            operation,
            code: code.to_string(),
            message: message.to_string(),
        },
    }
}

/// Checks that STS signed for the subject the profile's federated
/// credential names, so that a mismatch is reported as such rather than
/// as Entra's AADSTS700213.
pub fn check_subject(
    assertion: &ClientAssertion,
    profile: &aws2azure_shared::profile::Profile,
) -> Result<(), Error> {
    let claims = assertion
        .unverified_claims()
        .map_err(|e| Error::StsUnreachable(e.to_string()))?;
    let signed = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
    if signed == profile.subject.as_str() {
        return Ok(());
    }
    Err(Error::StsSubject {
        profile: profile.name.to_string(),
        expected: profile.subject.to_string(),
        signed: aws2azure_shared::echo(signed, 256),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws2azure_shared::discovery::Issuer;
    use aws2azure_shared::profile::Profiles;
    use base64::Engine as _;

    use super::*;
    use crate::broker::{Assertions, Broker, BrokerSettings};
    use crate::entra::EntraClient;

    const ROLE: &str = "arn:aws:iam::111122223333:role/aws2azure-graph";

    fn profiles() -> Profiles {
        Profiles::from_json(&format!(
            r#"{{"graph": {{"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "client_id": "00000000-1111-2222-3333-444444444444",
                "scope": "https://graph.microsoft.com/.default",
                "assertion": "sts", "role_arn": "{ROLE}"}}}}"#
        ))
        .unwrap()
    }

    fn jwt(sub: &str) -> ClientAssertion {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        ClientAssertion::signed_elsewhere(format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256"}"#),
            b64(&format!(r#"{{"sub":"{sub}"}}"#))
        ))
        .unwrap()
    }

    #[test]
    fn an_assertion_for_another_role_is_refused_before_entra_sees_it() {
        let profiles = profiles();
        let profile = profiles.get("graph").unwrap();
        check_subject(&jwt(ROLE), profile).unwrap();
        let err = check_subject(&jwt("arn:aws:iam::111122223333:role/other"), profile).unwrap_err();
        assert!(matches!(err, Error::StsSubject { .. }), "{err:?}");
        assert!(err.to_string().contains("role/other"), "{err}");
        assert_eq!(err.api_status().1, "signer_unavailable");
    }

    #[test]
    fn refusals_keep_their_code_and_name_the_fix_while_outages_are_unreachable() {
        let err = refusal(
            "GetWebIdentityToken",
            "OutboundWebIdentityFederationDisabledException",
            "not enabled",
        );
        assert!(
            err.to_string()
                .contains("aws iam enable-outbound-web-identity-federation"),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert_eq!(err.api_status().0.as_u16(), 500);
        for code in ["Throttling", "ServiceUnavailable"] {
            let err = refusal("GetWebIdentityToken", code, "later");
            assert!(matches!(err, Error::StsUnreachable(_)), "{code}");
            assert_eq!(err.api_status().0.as_u16(), 503);
        }
    }

    #[tokio::test]
    async fn a_broker_without_sts_refuses_sts_profiles_up_front() {
        let err = Broker::with_assertions(
            profiles(),
            BrokerSettings::new(Issuer::parse("https://issuer.example.com").unwrap()),
            Assertions::default(),
            Arc::new(EntraClient::new(std::time::Duration::from_secs(1)).unwrap()),
            None,
            Arc::new(aws2azure_shared::clock::SystemClock),
        )
        .err()
        .unwrap();
        assert_eq!(
            err,
            Error::NoAssertionSource {
                profile: "graph".into(),
                source_name: "sts"
            }
        );
    }
}
