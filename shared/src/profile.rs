//! Token profiles: the operator's list of which Entra application, scope and
//! federated subject the broker may ever request a token for.
//!
//! A profile name is the path segment of `GET /token/{profile}` and part of
//! the IAM resource ARN, which is why a raw scope is never used there.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::discovery::is_loopback_host;

/// Entra's global authority; sovereign clouds and tests configure another.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Entra limits a federated credential's subject to 600 characters.
pub const MAX_SUBJECT_LEN: usize = 600;
/// Profile names become path segments and IAM ARN parts: keep them short.
pub const MAX_PROFILE_NAME_LEN: usize = 64;

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// URL-safe profile name: `[A-Za-z0-9._-]`, 1 to 64 characters, not
    /// starting with a dot.
    ProfileName
);
string_newtype!(
    /// Directory (tenant) id: a GUID or a verified domain name.
    TenantId
);
string_newtype!(
    /// Application (client) id of the Entra app registration: a GUID.
    ClientId
);
string_newtype!(
    /// One resource's `/.default` scope.
    Scope
);
string_newtype!(
    /// The `sub` of the assertion; matched exactly by a federated credential.
    Subject
);
string_newtype!(
    /// Base URL of the Entra authority, without a trailing slash.
    Authority
);
string_newtype!(
    /// An IAM role the broker assumes before it asks AWS STS for a profile's
    /// assertion (`assertion = "sts"`): the assertion's subject is then this
    /// role's ARN, so profiles keep distinct subjects.
    RoleArn
);
string_newtype!(
    /// An IAM principal a profile's tokens may be issued to, compared
    /// exactly with the caller API Gateway authenticated: a role ARN
    /// (`arn:aws:iam::ACCOUNT:role/NAME`, the form an assumed-role caller is
    /// reduced to) or an IAM user ARN (`arn:aws:iam::ACCOUNT:user/PATH/NAME`).
    PrincipalArn
);

// Lets the profile map be searched by `&str` (String and str order alike).
impl std::borrow::Borrow<str> for ProfileName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl ProfileName {
    pub fn parse(name: &str) -> Result<Self, Error> {
        let fail = |reason: String| Error::InvalidProfile {
            profile: printable(name),
            field: "name",
            reason,
        };
        if name.is_empty() || name.len() > MAX_PROFILE_NAME_LEN {
            return Err(fail(format!(
                "must be 1 to {MAX_PROFILE_NAME_LEN} characters long"
            )));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(fail(
                "use only letters, digits, `-`, `_` and `.`: it is a URL path segment and part of an IAM resource ARN".into(),
            ));
        }
        if name.starts_with('.') {
            return Err(fail("must not start with `.`".into()));
        }
        Ok(Self(name.to_string()))
    }
}

impl TenantId {
    pub fn parse(tenant: &str) -> Result<Self, Error> {
        let lower = tenant.to_ascii_lowercase();
        if matches!(lower.as_str(), "common" | "organizations" | "consumers") {
            return Err(reason_only(
                "tenant_id",
                format!(
                    "`{tenant}` is not a tenant: client-credential tokens need the directory's \
                     GUID or a verified domain (Entra admin center > Overview > Tenant ID)"
                ),
            ));
        }
        if is_guid(tenant) || is_domain(tenant) {
            Ok(Self(tenant.to_string()))
        } else {
            Err(reason_only(
                "tenant_id",
                format!(
                    "`{}` is neither a GUID nor a domain name; use the Directory (tenant) ID",
                    printable(tenant)
                ),
            ))
        }
    }
}

impl ClientId {
    pub fn parse(client: &str) -> Result<Self, Error> {
        if is_guid(client) {
            Ok(Self(client.to_string()))
        } else {
            Err(reason_only(
                "client_id",
                format!(
                    "`{}` is not a GUID; use the app registration's Application (client) ID",
                    printable(client)
                ),
            ))
        }
    }
}

impl Scope {
    pub fn parse(scope: &str) -> Result<Self, Error> {
        if scope.split_whitespace().count() > 1 || scope.contains(',') {
            return Err(reason_only(
                "scope",
                format!(
                    "`{}` names more than one resource; Entra issues a client-credential token \
                     for one resource, so make one profile per resource",
                    printable(scope)
                ),
            ));
        }
        if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(reason_only("scope", "must not contain whitespace".into()));
        }
        let Some(resource) = scope.strip_suffix("/.default") else {
            return Err(reason_only(
                "scope",
                format!(
                    "`{}` must end in `/.default`, e.g. `https://graph.microsoft.com/.default`: \
                     client-credential tokens carry the app's granted roles for one resource",
                    printable(scope)
                ),
            ));
        };
        if resource.is_empty() || resource.contains("/.default") {
            return Err(reason_only(
                "scope",
                format!(
                    "`{}` must name exactly one resource before `/.default`",
                    printable(scope)
                ),
            ));
        }
        Ok(Self(scope.to_string()))
    }

    /// The resource the scope names: what the managed-identity protocol calls
    /// `resource` (`https://graph.microsoft.com/.default` →
    /// `https://graph.microsoft.com`).
    pub fn resource(&self) -> &str {
        self.0.strip_suffix("/.default").unwrap_or(&self.0)
    }
}

impl Subject {
    pub fn parse(subject: &str) -> Result<Self, Error> {
        let len = subject.chars().count();
        if len == 0 || len > MAX_SUBJECT_LEN {
            return Err(reason_only(
                "subject",
                format!(
                    "is {len} characters long; Entra accepts 1 to {MAX_SUBJECT_LEN}, matched exactly"
                ),
            ));
        }
        if subject.trim() != subject || subject.chars().any(char::is_control) {
            return Err(reason_only(
                "subject",
                "must not have leading or trailing whitespace or control characters: Entra \
                 matches it exactly"
                    .into(),
            ));
        }
        Ok(Self(subject.to_string()))
    }
}

impl Authority {
    pub fn parse(authority: &str) -> Result<Self, Error> {
        let trimmed = authority.strip_suffix('/').unwrap_or(authority);
        let fail =
            |reason: &str| reason_only("authority", format!("`{}` {reason}", printable(authority)));
        let uri: http::Uri = trimmed
            .parse()
            .map_err(|_| fail("is not an absolute URL"))?;
        let host = uri
            .authority()
            .map(|a| a.host())
            .ok_or_else(|| fail("has no host; expected e.g. https://login.microsoftonline.com"))?;
        if uri.query().is_some() {
            return Err(fail("must not contain a query"));
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback_host(host) => {}
            _ => return Err(fail("must use https (http only on loopback, for tests)")),
        }
        Ok(Self(trimmed.to_string()))
    }

    pub fn default_global() -> Self {
        Self(DEFAULT_AUTHORITY.to_string())
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub fn token_endpoint(&self, tenant: &TenantId) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.0, tenant.0)
    }
}

/// Where a profile's client assertions come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AssertionSource {
    /// The broker signs with its own key (KMS; a local key in `aws2azure
    /// dev`) for the issuer the edge serves.
    #[default]
    Kms,
    /// AWS signs: STS `GetWebIdentityToken` (IAM outbound identity
    /// federation), the account's AWS issuer, the role's ARN as subject.
    Sts,
}

impl AssertionSource {
    pub fn parse(source: &str) -> Result<Self, Error> {
        match source {
            "kms" => Ok(Self::Kms),
            "sts" => Ok(Self::Sts),
            other => Err(reason_only(
                "assertion",
                format!(
                    "`{}` is neither \"kms\" (the broker's own key, the default) nor \"sts\" \
                     (AWS signs the assertion: STS GetWebIdentityToken)",
                    printable(other)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kms => "kms",
            Self::Sts => "sts",
        }
    }
}

/// One profile as written in configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub scope: String,
    /// Required, except for an `sts` profile with `role_arn` (the subject is
    /// then the role's ARN).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// `kms` (default) or `sts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion: Option<String>,
    /// For `sts`: the role the broker assumes before asking STS, so that
    /// the assertion's subject is this role rather than the broker's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// When given, only these IAM principals get this profile's tokens, on
    /// top of what IAM allows: defence in depth against a too-broad policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_principals: Option<Vec<String>>,
}

impl From<&Profile> for ProfileConfig {
    fn from(profile: &Profile) -> Self {
        Self {
            tenant_id: profile.tenant_id.to_string(),
            client_id: profile.client_id.to_string(),
            scope: profile.scope.to_string(),
            subject: profile.subject.to_string(),
            assertion: Some(profile.assertion.as_str().to_string()),
            role_arn: profile.role_arn.as_ref().map(ToString::to_string),
            authority: Some(profile.authority.to_string()),
            allowed_principals: profile
                .allowed_principals
                .as_ref()
                .map(|list| list.iter().map(ToString::to_string).collect()),
        }
    }
}

/// A validated profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: ProfileName,
    pub tenant_id: TenantId,
    pub client_id: ClientId,
    pub scope: Scope,
    pub subject: Subject,
    pub assertion: AssertionSource,
    /// For `sts` only: the role assumed before asking STS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<RoleArn>,
    pub authority: Authority,
    /// `None`: any caller IAM lets through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_principals: Option<Vec<PrincipalArn>>,
}

impl Profile {
    pub fn new(name: &str, config: &ProfileConfig) -> Result<Self, Error> {
        let name = ProfileName::parse(name)?;
        let named = |err: Error| match err {
            Error::InvalidProfile { field, reason, .. } => Error::InvalidProfile {
                profile: name.0.clone(),
                field,
                reason,
            },
            other => other,
        };
        let assertion = match &config.assertion {
            Some(source) => AssertionSource::parse(source).map_err(named)?,
            None => AssertionSource::default(),
        };
        let role_arn = config
            .role_arn
            .as_deref()
            .map(|arn| RoleArn::parse("role_arn", arn))
            .transpose()
            .map_err(named)?;
        let subject = subject_of(assertion, role_arn.as_ref(), &config.subject).map_err(named)?;
        Ok(Self {
            tenant_id: TenantId::parse(&config.tenant_id).map_err(named)?,
            client_id: ClientId::parse(&config.client_id).map_err(named)?,
            scope: Scope::parse(&config.scope).map_err(named)?,
            subject,
            assertion,
            role_arn,
            authority: match &config.authority {
                Some(a) => Authority::parse(a).map_err(named)?,
                None => Authority::default_global(),
            },
            allowed_principals: match &config.allowed_principals {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(named(reason_only(
                        "allowed_principals",
                        "is empty, which would refuse every caller: list at least one \
                         principal, or remove the setting to leave access to IAM alone"
                            .into(),
                    )));
                }
                Some(list) => Some(
                    list.iter()
                        .map(|arn| PrincipalArn::parse(arn))
                        .collect::<Result<_, _>>()
                        .map_err(named)?,
                ),
            },
            name,
        })
    }

    /// Whether `principal` (a role ARN as assumed-role callers reduce to,
    /// or a user ARN) may get this profile's tokens.
    pub fn allows(&self, principal: &str) -> bool {
        self.allowed_principals
            .as_ref()
            .is_none_or(|list| list.iter().any(|p| p.as_str() == principal))
    }

    /// Identifies the token this profile yields. Every part that changes the
    /// token is in it, so no token crosses profiles even when two profiles
    /// share a name over time.
    pub fn cache_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.name.0,
            self.authority.0,
            self.tenant_id.0,
            self.client_id.0,
            self.scope.0,
            self.subject.0
        )
    }

    pub fn token_endpoint(&self) -> String {
        self.authority.token_endpoint(&self.tenant_id)
    }
}

/// The subject a profile's assertions carry. With `sts`, AWS writes it (the
/// calling role's ARN), so the configuration can only name that role.
fn subject_of(
    assertion: AssertionSource,
    role_arn: Option<&RoleArn>,
    configured: &str,
) -> Result<Subject, Error> {
    match (assertion, role_arn) {
        (AssertionSource::Kms, Some(_)) => Err(reason_only(
            "role_arn",
            "is only for assertion = \"sts\": the broker's own key signs whatever subject the \
             profile names"
                .into(),
        )),
        (AssertionSource::Kms, None) if configured.is_empty() => Err(reason_only(
            "subject",
            format!(
                "is missing: name the subject of the app's federated credential (Entra accepts \
                 1 to {MAX_SUBJECT_LEN} characters, matched exactly)"
            ),
        )),
        (AssertionSource::Kms, None) => Subject::parse(configured),
        (AssertionSource::Sts, Some(role)) if configured.is_empty() || configured == role.0 => {
            Ok(Subject(role.0.clone()))
        }
        (AssertionSource::Sts, Some(_)) => Err(reason_only(
            "subject",
            format!(
                "`{}` differs from role_arn: with assertion = \"sts\" AWS signs the role's ARN as \
                 the subject; leave subject out",
                printable(configured)
            ),
        )),
        (AssertionSource::Sts, None) if configured.is_empty() => Err(reason_only(
            "subject",
            "is missing: with assertion = \"sts\", set role_arn (a role the broker assumes) or \
             name the broker's own role ARN as subject (AWS signs with it as subject)"
                .into(),
        )),
        (AssertionSource::Sts, None) => {
            RoleArn::parse("subject", configured).map(|role| Subject(role.0))
        }
    }
}

/// The validated set of profiles, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profiles(BTreeMap<ProfileName, Profile>);

impl Profiles {
    /// Parses `{"name": {tenant_id, client_id, scope, subject, authority?}, ...}`.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let raw: BTreeMap<String, ProfileConfig> = serde_json::from_str(json).map_err(|e| {
            Error::InvalidProfiles(format!(
                "expected a JSON object of profiles, each with tenant_id, client_id, scope, \
                 subject, and optional authority and allowed_principals ({})",
                crate::json_error(&e)
            ))
        })?;
        Self::from_configs(raw)
    }

    pub fn from_configs(raw: BTreeMap<String, ProfileConfig>) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::InvalidProfiles(
                "no profiles are configured; define at least one".into(),
            ));
        }
        raw.iter()
            .map(|(name, cfg)| Profile::new(name, cfg).map(|p| (p.name.clone(), p)))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn reason_only(field: &'static str, reason: String) -> Error {
    Error::InvalidProfile {
        profile: String::new(),
        field,
        reason,
    }
}

/// How much of a refused value an error echoes (through [`crate::echo`]).
const MAX_ECHO: usize = 80;

fn printable(input: &str) -> String {
    crate::echo(input, MAX_ECHO)
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_domain(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

mod arn;

#[cfg(test)]
mod tests;
