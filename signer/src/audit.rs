//! The audit record: one line per token request, saying who asked for which
//! profile and how it went, never a token or an assertion. The metrics are
//! derived from it.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use serde::Serialize;

use crate::broker::{CacheOutcome, Upstream};

/// Who called, as API Gateway established it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallerIdentity {
    /// `identity.userArn` as given (for an assumed role it includes the
    /// session name).
    pub arn: String,
    /// A stable identity for grouping: the role ARN for assumed roles
    /// (`arn:aws:iam::ACCOUNT:role/NAME`), else the ARN itself.
    pub principal: String,
    /// The role session name, for assumed roles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
}

impl CallerIdentity {
    pub fn from_request(req: &Request) -> Option<Self> {
        let Some(RequestContext::ApiGatewayV1(ctx)) = req.request_context_ref() else {
            return None;
        };
        let identity = &ctx.identity;
        let arn = identity.user_arn.as_deref().filter(|a| !a.is_empty())?;
        let (principal, session) = principal_of(arn);
        Some(Self {
            arn: arn.to_string(),
            principal,
            session,
            account: identity.account_id.clone().filter(|a| !a.is_empty()),
            source_ip: identity.source_ip.clone(),
        })
    }
}

/// `arn:aws:sts::111122223333:assumed-role/app/i-0abc` →
/// (`arn:aws:iam::111122223333:role/app`, `Some("i-0abc")`). Role paths are
/// not part of an assumed-role ARN, so the role ARN is given without one.
pub fn principal_of(arn: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if let [_, partition, "sts", _, account, resource] = parts.as_slice()
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, session)) = rest.split_once('/')
    {
        return (
            format!("arn:{partition}:iam::{account}:role/{role}"),
            Some(session.to_string()),
        );
    }
    (arn.to_string(), None)
}

/// One line per request in the audit log; never a token or an assertion.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerIdentity>,
    /// The requested profile as sent (still encoded, if it was), bounded
    /// and with control characters replaced.
    pub profile: String,
    /// Whether `profile` names a configured profile: only then is it a
    /// metric dimension (anything else is the caller's choice of string).
    #[serde(skip)]
    pub profile_configured: bool,
    /// Where a configured profile's assertions come from (`kms`, `sts`), so
    /// that `sign_calls` and `sign_ms` read as KMS or as STS calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assertion: Option<&'static str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheOutcome>,
    pub entra_calls: u32,
    pub entra_ms: u64,
    pub sign_calls: u32,
    pub sign_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub shared_cache_degraded: bool,
    pub duration_ms: u64,
}

impl AuditRecord {
    /// Writes the audit line (through `tracing`, so it follows the Lambda
    /// log format) and the metrics line.
    pub fn emit(&self) {
        let caller = self.caller.as_ref();
        tracing::info!(
            target: "aws2azure::audit",
            request_id = self.request_id.as_deref(),
            caller = caller.map(|c| c.arn.as_str()),
            principal = caller.map(|c| c.principal.as_str()),
            session = caller.and_then(|c| c.session.as_deref()),
            account = caller.and_then(|c| c.account.as_deref()),
            source_ip = caller.and_then(|c| c.source_ip.as_deref()),
            profile = %self.profile,
            assertion = self.assertion,
            status = self.status,
            error = self.error,
            cache = self.cache.map(CacheOutcome::as_str),
            entra_calls = self.entra_calls,
            entra_ms = self.entra_ms,
            sign_calls = self.sign_calls,
            sign_ms = self.sign_ms,
            aadsts = self.aadsts,
            correlation_id = self.correlation_id.as_deref(),
            shared_cache_degraded = self.shared_cache_degraded,
            duration_ms = self.duration_ms,
            "token request"
        );
    }
}

impl AuditRecord {
    pub(crate) fn upstream(&mut self, upstream: &Upstream) {
        self.entra_calls = upstream.entra_calls;
        self.entra_ms = upstream.entra_ms;
        self.sign_calls = upstream.sign_calls;
        self.sign_ms = upstream.sign_ms;
        self.shared_cache_degraded = upstream.shared_cache_degraded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assumed_roles_reduce_to_their_role() {
        assert_eq!(
            principal_of("arn:aws:sts::111122223333:assumed-role/app-role/i-0abc123"),
            (
                "arn:aws:iam::111122223333:role/app-role".to_string(),
                Some("i-0abc123".to_string())
            )
        );
        assert_eq!(
            principal_of("arn:aws-us-gov:sts::111122223333:assumed-role/r/botocore-session-1"),
            (
                "arn:aws-us-gov:iam::111122223333:role/r".to_string(),
                Some("botocore-session-1".to_string())
            )
        );
        assert_eq!(
            principal_of("arn:aws:iam::111122223333:user/alice"),
            ("arn:aws:iam::111122223333:user/alice".to_string(), None)
        );
        assert_eq!(principal_of("garbage"), ("garbage".to_string(), None));
    }
}
