//! The query protocol's actions: `GetWebIdentityToken` (an RS256 JWT with
//! AWS's claims, or one of STS's errors), `AssumeRole` (a session that acts
//! as the role) and `GetCallerIdentity`, each parsed from the form the SDK
//! posts and answered in STS's XML.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    AWS_CLAIMS, MAX_PAYLOAD_BYTES, NAMESPACE, Refusal, Session, StsFault, StsStandIn, now_unix,
    refuse,
};
use crate::sigv4::Principal;

/// The one value of a form field given at most once.
pub(super) fn one<'a>(form: &'a HashMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    form.get(key)
        .filter(|v| v.len() == 1)
        .map(|v| v[0].as_str())
}

fn validation(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "ValidationError", message)
}

/// `DurationSeconds` within `range`, or `default` when absent.
fn duration(
    form: &HashMap<String, Vec<String>>,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, Refusal> {
    match one(form, "DurationSeconds") {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|d| range.contains(d))
            .ok_or_else(|| {
                validation(format!(
                    "1 validation error detected: Value at 'durationSeconds' failed to satisfy \
                     constraint: Member must have value between {} and {}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// Values of a list parameter (`Audience.member.1`, `.2`, …), in order.
fn members<'a>(form: &'a HashMap<String, Vec<String>>, prefix: &str) -> Vec<&'a str> {
    (1..)
        .map_while(|n| one(form, &format!("{prefix}.member.{n}")))
        .collect()
}

impl StsStandIn {
    pub(super) fn get_web_identity_token(
        &self,
        principal: &Principal,
        form: &HashMap<String, Vec<String>>,
    ) -> Result<String, Refusal> {
        self.count(|s| s.web_identity_token_calls += 1);
        let audiences = members(form, "Audience");
        if audiences.is_empty()
            || audiences.len() > 10
            || audiences.iter().any(|a| a.is_empty() || a.len() > 1000)
        {
            return Err(validation(
                "1 validation error detected: Value at 'audience' failed to satisfy constraint: \
                 Member must have length between 1 and 10, each of 1 to 1000 characters",
            ));
        }
        match one(form, "SigningAlgorithm") {
            Some("RS256") => {}
            Some("ES384") => {
                return Err(validation(
                    "the stand-in signs RS256 only (AWS also offers ES384, which Entra does not accept)",
                ));
            }
            _ => {
                return Err(validation(
                    "1 validation error detected: Value at 'signingAlgorithm' failed to satisfy \
                     constraint: Member must satisfy enum value set: [RS256, ES384]",
                ));
            }
        }
        let lifetime = duration(form, 60..=3600, 300)?;
        let mut request_tags = serde_json::Map::new();
        for n in 1.. {
            let (Some(key), Some(value)) = (
                one(form, &format!("Tags.member.{n}.Key")),
                one(form, &format!("Tags.member.{n}.Value")),
            ) else {
                break;
            };
            request_tags.insert(key.to_string(), Value::String(value.to_string()));
        }

        if !self.inner.enabled.load(Ordering::SeqCst) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "OutboundWebIdentityFederationDisabledException",
                "Outbound web identity federation is not enabled for this account.",
            ));
        }
        if let Some(fault) = self.next_fault() {
            return Err(fault_refusal(fault));
        }
        let (subject, session_ends) = self.identity_of(principal);
        let now = now_unix();
        if session_ends.is_some_and(|ends| now + lifetime > ends) {
            return Err(session_escalation());
        }
        let mut aws = json!({
            "aws_account": principal.account_id,
            "source_region": self.inner.config.region,
            "principal_id": subject,
        });
        if !request_tags.is_empty() {
            aws["request_tags"] = Value::Object(request_tags);
        }
        let audience = match audiences.as_slice() {
            [single] => json!(single),
            many => json!(many),
        };
        let claims = json!({
            "iss": self.inner.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid::Uuid::new_v4().to_string(),
            AWS_CLAIMS: aws,
        });
        let payload = claims.to_string();
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(payload_too_large());
        }
        let jwt = self.sign(&payload)?;
        self.count(|s| {
            s.tokens_issued += 1;
            s.subjects.push(subject.clone());
        });
        Ok(format!(
            "<GetWebIdentityTokenResponse xmlns=\"{NAMESPACE}\">\
             <GetWebIdentityTokenResult>\
             <WebIdentityToken>{jwt}</WebIdentityToken>\
             <Expiration>{}</Expiration>\
             </GetWebIdentityTokenResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
             </GetWebIdentityTokenResponse>",
            timestamp(now + lifetime),
            uuid::Uuid::new_v4()
        ))
    }

    fn sign(&self, payload: &str) -> Result<String, Refusal> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({ "kid": self.inner.jwk.kid().as_str(), "typ": "JWT", "alg": "RS256" });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.as_bytes())
        );
        let mut signature = vec![0; self.inner.key.public_modulus_len()];
        self.inner
            .key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailure",
                    "signing failed",
                )
            })?;
        Ok(format!("{input}.{}", b64(&signature)))
    }

    pub(super) fn assume_role(
        &self,
        principal: &Principal,
        form: &HashMap<String, Vec<String>>,
    ) -> Result<String, Refusal> {
        self.count(|s| s.assume_role_calls += 1);
        let role_arn = one(form, "RoleArn")
            .ok_or_else(|| validation("1 validation error detected: RoleArn is required"))?;
        let session_name = one(form, "RoleSessionName")
            .filter(|n| {
                (2..=64).contains(&n.len())
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@-_".contains(&b))
            })
            .ok_or_else(|| {
                validation(
                    "1 validation error detected: Value at 'roleSessionName' failed to satisfy \
                     constraint: 2 to 64 characters of [\\w+=,.@-]",
                )
            })?;
        let lifetime = duration(form, 900..=43_200, 3600)?;
        if !self
            .inner
            .config
            .assumable_roles
            .iter()
            .any(|r| r == role_arn)
        {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                format!(
                    "User: {} is not authorized to perform: sts:AssumeRole on resource: {}",
                    principal.arn,
                    aws2azure_shared::echo(role_arn, 256)
                ),
            ));
        }
        let (partition, account, name) = role_parts(role_arn).ok_or_else(|| {
            validation(format!(
                "{} is not a role ARN",
                aws2azure_shared::echo(role_arn, 256)
            ))
        })?;
        let expires = now_unix() + lifetime;
        let role_id = format!("AROA{}", random_upper(17));
        let assumed = Principal {
            access_key_id: format!("ASIA{}", random_upper(16)),
            secret_access_key: uuid::Uuid::new_v4().simple().to_string(),
            session_token: Some(format!("FwoGZXIvYXdzE{}", uuid::Uuid::new_v4().simple())),
            arn: format!("arn:{partition}:sts::{account}:assumed-role/{name}/{session_name}"),
            caller: format!("{role_id}:{session_name}"),
            account_id: account.to_string(),
        };
        let xml = format!(
            "<AssumeRoleResponse xmlns=\"{NAMESPACE}\"><AssumeRoleResult>\
             <AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser>\
             <Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
             <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
             </AssumeRoleResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></AssumeRoleResponse>",
            assumed.caller,
            assumed.arn,
            assumed.access_key_id,
            assumed.secret_access_key,
            assumed.session_token.as_deref().unwrap_or_default(),
            timestamp(expires),
            uuid::Uuid::new_v4()
        );
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                assumed.access_key_id.clone(),
                Session {
                    principal: assumed,
                    role_arn: role_arn.to_string(),
                    expires,
                },
            );
        Ok(xml)
    }

    pub(super) fn get_caller_identity(&self, principal: &Principal) -> String {
        format!(
            "<GetCallerIdentityResponse xmlns=\"{NAMESPACE}\"><GetCallerIdentityResult>\
             <Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account>\
             </GetCallerIdentityResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
             </GetCallerIdentityResponse>",
            principal.arn,
            principal.caller,
            principal.account_id,
            uuid::Uuid::new_v4()
        )
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME` → (partition, account, name).
pub(super) fn role_parts(arn: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iam", "", account, resource] => {
            let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
            (!name.is_empty()).then_some((*partition, *account, name))
        }
        _ => None,
    }
}

fn session_escalation() -> Refusal {
    refuse(
        StatusCode::FORBIDDEN,
        "SessionDurationEscalationException",
        "The requested token duration would extend the session beyond its original expiration time.",
    )
}

fn payload_too_large() -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        "JWTPayloadSizeExceededException",
        "The requested token payload size exceeds the maximum allowed size.",
    )
}

fn fault_refusal(fault: StsFault) -> Refusal {
    match fault {
        StsFault::SessionDurationEscalation => session_escalation(),
        StsFault::JwtPayloadSizeExceeded => payload_too_large(),
        StsFault::AccessDenied => refuse(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "User is not authorized to perform: sts:GetWebIdentityToken",
        ),
        StsFault::Throttling => refuse(StatusCode::BAD_REQUEST, "Throttling", "Rate exceeded"),
        StsFault::ServiceUnavailable => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unavailable",
        ),
    }
}

fn timestamp(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn random_upper(len: usize) -> String {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    (0..len)
        .map(|i| {
            let b = bytes[i % bytes.len()].wrapping_add((i / bytes.len()) as u8);
            UPPER[(b as usize) % UPPER.len()] as char
        })
        .collect()
}
