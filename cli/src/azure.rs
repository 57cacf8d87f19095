//! `aws2azure azure PROFILE`: the Entra side of a profile, as the exact
//! `az` command and the equivalent Bicep and Terraform.

use std::path::Path;

use aws2azure_shared::assertion::AUDIENCE;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::{AssertionSource, Profile};

use crate::Error;
use crate::config::CliConfig;

/// The forms `aws2azure azure` prints the credential in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Az,
    Bicep,
    Terraform,
    All,
}

/// `aws2azure azure PROFILE`: the profile from the configuration file at
/// `config`, with `issuer` or the file's own, as the text to print.
pub fn run(
    config: &Path,
    profile: &str,
    issuer: Option<&str>,
    format: Format,
) -> Result<String, Error> {
    let loaded = CliConfig::load(config)?;
    let found = loaded.profile(profile, config)?;
    // Whoever signs the profile's assertions is its issuer: the edge for
    // the broker's key, the account's AWS issuer when STS signs.
    let issuer = match (issuer, found.assertion) {
        (Some(url), _) => Issuer::parse(url).map_err(|e| Error::Usage(e.to_string()))?,
        (None, AssertionSource::Kms) => loaded.issuer.clone().ok_or_else(|| {
            Error::Usage(format!(
                "no issuer: pass --issuer or set `issuer` in {}",
                config.display()
            ))
        })?,
        (None, AssertionSource::Sts) => loaded.sts_issuer.clone().ok_or_else(|| {
            Error::Usage(format!(
                "no AWS issuer for profile `{profile}` (assertion = \"sts\"): pass --issuer or set \
                 `sts_issuer` in {} to the account's issuer, which `aws iam \
                 get-outbound-web-identity-federation-info --query IssuerIdentifier --output text` \
                 prints",
                config.display()
            ))
        })?,
    };
    Ok(output(found, &issuer, format))
}

/// The credential in `format`; all of them under headings with
/// [`Format::All`].
pub fn output(profile: &Profile, issuer: &Issuer, format: Format) -> String {
    let all = format == Format::All;
    let mut out = String::new();
    if all {
        out.push_str(&format!(
            "# Federated credential for profile `{}`: issuer, subject and audience must match the assertion exactly.\n# An app registration holds at most 20 federated credentials.\n\n",
            profile.name
        ));
    }
    if all || format == Format::Az {
        if all {
            out.push_str("# Azure CLI\n");
        }
        out.push_str(&az_command(profile, issuer));
        out.push('\n');
    }
    if all || format == Format::Bicep {
        if all {
            out.push_str("\n# Bicep (Microsoft Graph extension)\n");
        }
        out.push_str(&bicep(profile, issuer));
    }
    if all || format == Format::Terraform {
        if all {
            out.push_str("\n# Terraform (azuread)\n");
        }
        out.push_str(&terraform(profile, issuer));
    }
    out
}

/// The federated credential's name: stable per profile, within Entra's
/// rules (letters, digits, `-`, `_`; at most 120 characters).
pub fn credential_name(profile: &Profile) -> String {
    // Distinct per source, so that both credentials of a profile can exist
    // while it moves from one source to the other.
    let suffix = match profile.assertion {
        AssertionSource::Kms => "",
        AssertionSource::Sts => "-sts",
    };
    let name: String = format!("aws2azure-{}{suffix}", profile.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.chars().take(120).collect()
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// An HCL string literal: JSON escaping plus HCL's template sequences.
fn hcl_string(s: &str) -> String {
    json_string(s).replace("${", "$${").replace("%{", "%%{")
}

/// The `az` CLI command, with the parameters as JSON in single quotes.
pub fn az_command(profile: &Profile, issuer: &Issuer) -> String {
    let parameters = serde_json::json!({
        "name": credential_name(profile),
        "issuer": issuer.as_str(),
        "subject": profile.subject.as_str(),
        "audiences": [AUDIENCE],
        "description": format!("aws2azure profile {} (scope {})", profile.name, profile.scope),
    });
    // The JSON holds no single quote unless a value does; escape for sh.
    let quoted = parameters.to_string().replace('\'', r"'\''");
    format!(
        "az ad app federated-credential create --id {} --parameters '{quoted}'",
        profile.client_id
    )
}

pub fn bicep(profile: &Profile, issuer: &Issuer) -> String {
    format!(
        r#"extension microsoftGraphV1

// The existing app registration (Application (client) ID {client}).
resource app 'Microsoft.Graph/applications@v1.0' existing = {{
  uniqueName: 'REPLACE-with-the-app-uniqueName'
}}

resource {ident} 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = {{
  name: '${{app.uniqueName}}/{name}'
  audiences: [ '{audience}' ]
  issuer: '{issuer}'
  subject: '{subject}'
  description: 'aws2azure profile {profile}'
}}
"#,
        client = profile.client_id,
        ident = bicep_identifier(profile),
        name = credential_name(profile),
        audience = AUDIENCE,
        issuer = bicep_escape(issuer.as_str()),
        subject = bicep_escape(profile.subject.as_str()),
        profile = profile.name,
    )
}

fn bicep_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\'', "\\'")
        .replace("${", "\\${")
}

fn bicep_identifier(profile: &Profile) -> String {
    let mut id: String = profile
        .name
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    id.insert_str(0, "fic_");
    id
}

pub fn terraform(profile: &Profile, issuer: &Issuer) -> String {
    format!(
        r#"# azuread provider >= 3.0
data "azuread_application" "app" {{
  client_id = "{client}"
}}

resource "azuread_application_federated_identity_credential" "{ident}" {{
  application_id = data.azuread_application.app.id
  display_name   = {name}
  description    = {description}
  audiences      = [{audience}]
  issuer         = {issuer}
  subject        = {subject}
}}
"#,
        client = profile.client_id,
        ident = bicep_identifier(profile),
        name = hcl_string(&credential_name(profile)),
        description = hcl_string(&format!("aws2azure profile {}", profile.name)),
        audience = hcl_string(AUDIENCE),
        issuer = hcl_string(issuer.as_str()),
        subject = hcl_string(profile.subject.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws2azure_shared::profile::ProfileConfig;

    fn profile(subject: &str) -> Profile {
        Profile::new(
            "graph.v1",
            &ProfileConfig {
                tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
                client_id: "00000000-1111-2222-3333-444444444444".into(),
                scope: "https://graph.microsoft.com/.default".into(),
                subject: subject.into(),
                authority: None,
                allowed_principals: None,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn az_command_carries_issuer_subject_and_audience_exactly() {
        let issuer = Issuer::parse("https://issuer.example.com/").unwrap();
        let cmd = az_command(&profile("aws2azure:graph"), &issuer);
        assert!(cmd.starts_with("az ad app federated-credential create --id 00000000-1111-2222-3333-444444444444 --parameters '"));
        let json = cmd
            .split_once(" --parameters '")
            .unwrap()
            .1
            .trim_end_matches('\'');
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            v["issuer"], "https://issuer.example.com/",
            "trailing slash kept"
        );
        assert_eq!(v["subject"], "aws2azure:graph");
        assert_eq!(
            v["audiences"],
            serde_json::json!(["api://AzureADTokenExchange"])
        );
        assert_eq!(v["name"], "aws2azure-graph-v1");
    }

    #[test]
    fn quotes_are_escaped_in_every_format() {
        let issuer = Issuer::parse("https://issuer.example.com").unwrap();
        let p = profile("it's ${x}");
        assert!(az_command(&p, &issuer).contains(r"it'\''s"));
        assert!(bicep(&p, &issuer).contains(r"subject: 'it\'s \${x}'"));
        assert!(terraform(&p, &issuer).contains(r#"subject        = "it's $${x}""#));
    }

    #[test]
    fn an_sts_profile_is_federated_with_the_aws_issuer_and_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aws2azure.toml");
        let profiles = r#"
            [profiles.graph]
            tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "00000000-1111-2222-3333-444444444444"
            scope = "https://graph.microsoft.com/.default"
            subject = "aws2azure:graph"
            [profiles.graph-sts]
            tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "00000000-1111-2222-3333-444444444444"
            scope = "https://graph.microsoft.com/.default"
            assertion = "sts"
            role_arn = "arn:aws:iam::111122223333:role/aws2azure-graph"
        "#;
        let aws = "https://0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.tokens.sts.global.api.aws";
        std::fs::write(
            &path,
            format!("issuer = \"https://issuer.example.com\"\nsts_issuer = \"{aws}\"\n{profiles}"),
        )
        .unwrap();
        let out = run(&path, "graph-sts", None, Format::Az).unwrap();
        assert!(out.contains(&format!("\"issuer\":\"{aws}\"")), "{out}");
        assert!(
            out.contains("\"subject\":\"arn:aws:iam::111122223333:role/aws2azure-graph\""),
            "{out}"
        );
        assert!(
            out.contains("\"name\":\"aws2azure-graph-sts-sts\""),
            "{out}"
        );
        // The kms profile in the same file keeps the edge's issuer.
        let out = run(&path, "graph", None, Format::Az).unwrap();
        assert!(
            out.contains("\"issuer\":\"https://issuer.example.com\""),
            "{out}"
        );

        std::fs::write(
            &path,
            format!("issuer = \"https://issuer.example.com\"\n{profiles}"),
        )
        .unwrap();
        let err = run(&path, "graph-sts", None, Format::Az).unwrap_err();
        assert!(
            err.to_string()
                .contains("get-outbound-web-identity-federation-info"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::ExitCode::Usage);
    }
}
