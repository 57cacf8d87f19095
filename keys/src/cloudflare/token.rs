//! The Cloudflare API token: read from the environment, a file or AWS
//! Secrets Manager, and never printed.
//!
//! There is deliberately no way to take it from a command-line argument:
//! the arguments of a process are readable by every user of the machine
//! (`ps`, `/proc/PID/cmdline`) and end up in shell histories and CI logs.

use std::fmt;
use std::path::Path;

use crate::Error;

/// The variable holding the token itself.
pub const API_TOKEN: &str = "AWS2AZURE_CLOUDFLARE_API_TOKEN";
/// The variable naming a file that holds the token (a mounted secret).
pub const API_TOKEN_FILE: &str = "AWS2AZURE_CLOUDFLARE_API_TOKEN_FILE";

/// Longest token accepted. Cloudflare's are 40 characters; the margin is
/// for other formats, the limit for a file that is not a token at all.
const MAX_TOKEN_BYTES: usize = 1024;

/// A Cloudflare API token. `Debug` and `Display` print `ApiToken(redacted)`,
/// so it cannot leak through a log line or an error message by mistake.
///
/// Read it with [`ApiToken::from_env`] or [`ApiToken::from_secrets_manager`];
/// never from a command-line argument, which every user of the machine can
/// read.
#[derive(Clone)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(redacted)")
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(redacted)")
    }
}

impl ApiToken {
    /// A token already read from a secret store (surrounding whitespace is
    /// trimmed). `source` names where it came from, for the error. Do not
    /// feed it a command-line argument.
    pub fn new(value: &str, source: &'static str) -> Result<Self, Error> {
        let value = value.trim();
        let problem = if value.is_empty() {
            Some("it is empty".to_string())
        } else if value.len() > MAX_TOKEN_BYTES {
            Some(format!(
                "it is longer than {MAX_TOKEN_BYTES} bytes, so it is not an API token"
            ))
        } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
            // Sent as an HTTP header value: visible ASCII only.
            Some("it contains whitespace or characters that are not printable ASCII".to_string())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::Config {
                setting: source,
                message: format!(
                    "the Cloudflare API token is unusable: {problem}; store the token exactly as \
                     Cloudflare showed it (My Profile → API Tokens)"
                ),
            }),
            None => Ok(Self(value.to_string())),
        }
    }

    /// From [`API_TOKEN`] or the file named by [`API_TOKEN_FILE`]: exactly
    /// one of them must be set.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`ApiToken::from_env`] over any variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        match (var(API_TOKEN), var(API_TOKEN_FILE)) {
            (Some(_), Some(_)) => Err(Error::Config {
                setting: API_TOKEN,
                message: format!(
                    "both {API_TOKEN} and {API_TOKEN_FILE} are set; unset one of them so that \
                     only one token is in play"
                ),
            }),
            (Some(token), None) => Self::new(&token, API_TOKEN),
            (None, Some(path)) => Self::from_file(Path::new(&path)),
            (None, None) => Err(Error::Config {
                setting: API_TOKEN,
                message: format!(
                    "no Cloudflare API token: set {API_TOKEN_FILE} to a file holding it (or \
                     {API_TOKEN} to the token), or read it from AWS Secrets Manager; create \
                     the token with \"Workers KV Storage: Edit\" on the account"
                ),
            }),
        }
    }

    /// From a file: its contents, trimmed. Refused if it is empty, not a
    /// regular file, too large to be a token, or writable by every user
    /// (anyone could swap the token). A file every user may read is only
    /// warned about: container secret mounts are commonly 0444 or 0644.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let shown = path.display();
        let fail = |message: String| Error::Config {
            setting: API_TOKEN_FILE,
            message,
        };
        let metadata = std::fs::metadata(path).map_err(|e| {
            fail(format!(
                "cannot read {shown} ({e}); point {API_TOKEN_FILE} at the file holding the token"
            ))
        })?;
        if !metadata.is_file() {
            return Err(fail(format!(
                "{shown} is not a regular file; point {API_TOKEN_FILE} at the file holding the token"
            )));
        }
        if metadata.len() > MAX_TOKEN_BYTES as u64 {
            return Err(fail(format!(
                "{shown} is larger than {MAX_TOKEN_BYTES} bytes, so it does not hold just an API \
                 token; point {API_TOKEN_FILE} at the file holding the token"
            )));
        }
        check_mode(path, &metadata).map_err(fail)?;
        let contents = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "cannot read {shown} ({e}); the token must be UTF-8 text"
            ))
        })?;
        if contents.trim().is_empty() {
            return Err(fail(format!(
                "{shown} is empty; write the Cloudflare API token into it"
            )));
        }
        Self::new(&contents, API_TOKEN_FILE)
    }

    /// From an AWS Secrets Manager secret's `SecretString`: the `token`
    /// member if it is a JSON object (`{"token": "..."}`), else the whole
    /// string.
    pub async fn from_secrets_manager(
        client: &aws_sdk_secretsmanager::Client,
        secret_id: &str,
    ) -> Result<Self, Error> {
        use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;

        let secret_error = |message: String, source| Error::Secret {
            secret_id: secret_id.to_string(),
            message,
            source,
        };
        let output = client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| {
                let code = e.code().unwrap_or_default().to_string();
                let detail = e.message().unwrap_or_default().to_string();
                let message = match code.as_str() {
                    "ResourceNotFoundException" => format!(
                        "it does not exist ({detail}); create it with the Cloudflare API token, \
                         or fix the secret id"
                    ),
                    "AccessDeniedException" => format!(
                        "access was denied ({detail}); allow secretsmanager:GetSecretValue on \
                         it (and kms:Decrypt on its key) to the role that runs the key manager"
                    ),
                    "DecryptionFailure" => format!(
                        "it cannot be decrypted ({detail}); allow kms:Decrypt on its KMS key"
                    ),
                    "" => format!(
                        "Secrets Manager could not be reached ({}); check the network, the \
                         region and the credentials",
                        aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                    ),
                    other => format!("Secrets Manager refused the read ({other}: {detail})"),
                };
                secret_error(message, Some(Box::new(e)))
            })?;
        let Some(text) = output.secret_string() else {
            return Err(secret_error(
                "it has no SecretString (only binary); store the token as a text secret".into(),
                None,
            ));
        };
        let token = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(members)) => match members.get("token") {
                Some(serde_json::Value::String(token)) => token.clone(),
                _ => {
                    return Err(secret_error(
                        "it is a JSON object without a string member \"token\"; store \
                         {\"token\": \"<the API token>\"} or the bare token"
                            .into(),
                        None,
                    ));
                }
            },
            _ => text.to_string(),
        };
        Self::new(&token, "the Secrets Manager secret").map_err(|e| match e {
            Error::Config { message, .. } => secret_error(message, None),
            other => other,
        })
    }

    /// The token itself, for the `Authorization` header only.
    pub(super) fn secret(&self) -> &str {
        &self.0
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(format!(
            "{} is writable by every user (mode {:o}), so anyone could replace the token; run \
             `chmod 600` on it",
            path.display(),
            mode & 0o777
        ));
    }
    if mode & 0o004 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the Cloudflare API token file is readable by every user; `chmod 600` it unless it is a container secret mount"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}
