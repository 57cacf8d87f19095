//! The CLI's optional configuration file (TOML): the issuer and the
//! profiles, with the same fields as the Lambda's `AWS2AZURE_PROFILES`.
//!
//! ```toml
//! issuer = "https://issuer.example.com"
//!
//! [profiles.graph]
//! tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
//! client_id = "00000000-1111-2222-3333-444444444444"
//! scope = "https://graph.microsoft.com/.default"
//! subject = "aws2azure:graph"
//!
//! # profiles with assertion = "sts": the account's AWS issuer (`aws iam
//! # get-outbound-web-identity-federation-info`), for `aws2azure azure`
//! sts_issuer = "https://0123abcd-....tokens.sts.global.api.aws"
//!
//! [profiles.graph-sts]
//! tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
//! client_id = "00000000-1111-2222-3333-444444444444"
//! scope = "https://graph.microsoft.com/.default"
//! assertion = "sts"
//! role_arn = "arn:aws:iam::111122223333:role/aws2azure-graph"
//!
//! # only for `aws2azure serve`: more names SDKs may ask for, resource →
//! # profile (a profile `arm` with scope https://management.azure.com/.default
//! # could also serve "https://management.core.windows.net/")
//! [resources]
//! "https://graph.microsoft.com/v1.0" = "graph"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::{Profile, ProfileConfig, Profiles};
use serde::Deserialize;

use crate::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    sts_issuer: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, ProfileConfig>,
    #[serde(default)]
    resources: BTreeMap<String, String>,
}

/// A validated configuration file.
#[derive(Clone, Debug)]
pub struct CliConfig {
    pub issuer: Option<Issuer>,
    /// The AWS account's issuer, for profiles whose assertions STS signs.
    pub sts_issuer: Option<Issuer>,
    pub profiles: Profiles,
    /// For `aws2azure serve`: resources (as Azure SDKs name them) served by
    /// a profile whose scope does not name them, resource → profile.
    pub resources: BTreeMap<String, String>,
}

impl CliConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Usage(msg) => Error::Usage(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let file: File = toml::from_str(text).map_err(|e| Error::Usage(e.to_string()))?;
        let parse = |setting: &str, url: Option<String>| {
            url.map(|u| Issuer::parse(&u))
                .transpose()
                .map_err(|e| Error::Usage(format!("{setting}: {e}")))
        };
        let issuer = parse("issuer", file.issuer)?;
        let sts_issuer = parse("sts_issuer", file.sts_issuer)?;
        let profiles =
            Profiles::from_configs(file.profiles).map_err(|e| Error::Usage(e.to_string()))?;
        Ok(Self {
            issuer,
            sts_issuer,
            profiles,
            resources: file.resources,
        })
    }
}

impl CliConfig {
    /// The profile `name`; the error lists the file's profiles.
    pub fn profile(&self, name: &str, path: &Path) -> Result<&Profile, Error> {
        self.profiles.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "no profile `{name}` in {} (it has: {})",
                path.display(),
                self.profiles
                    .iter()
                    .map(|p| p.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = CliConfig::parse(
            r#"
            issuer = "https://issuer.example.com/"
            [profiles.graph]
            tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "00000000-1111-2222-3333-444444444444"
            scope = "https://graph.microsoft.com/.default"
            subject = "aws2azure:graph"
            "#,
        )
        .unwrap();
        assert_eq!(c.issuer.unwrap().as_str(), "https://issuer.example.com/");
        assert!(c.profiles.get("graph").is_some());

        let err = CliConfig::parse("[profiles.graph]\ntenant_id = \"x\"").unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        let err = CliConfig::parse("issuer = \"http://example.com\"\n[profiles]").unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        let err = CliConfig::parse("isuer = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
