//! The Lambda's configuration, read from the environment once at init and
//! validated whole: a bad setting stops the function from starting, with a
//! message that names the setting and the fix.

use std::time::Duration;

use aws2azure_shared::assertion::check_lifetime;
use aws2azure_shared::discovery::Issuer;
use aws2azure_shared::profile::Profiles;

use crate::Error;
use crate::broker::BrokerSettings;

pub const ISSUER: &str = "AWS2AZURE_ISSUER";
pub const PROFILES: &str = "AWS2AZURE_PROFILES";
pub const PROFILES_FILE: &str = "AWS2AZURE_PROFILES_FILE";
pub const KMS_KEY: &str = "AWS2AZURE_KMS_KEY";
pub const SIGNING_KEY_FILE: &str = "AWS2AZURE_SIGNING_KEY_FILE";
pub const CACHE_TABLE: &str = "AWS2AZURE_CACHE_TABLE";
pub const REFRESH_MARGIN: &str = "AWS2AZURE_REFRESH_MARGIN_SECS";
pub const ASSERTION_LIFETIME: &str = "AWS2AZURE_ASSERTION_LIFETIME_SECS";
pub const ENTRA_ATTEMPT_TIMEOUT: &str = "AWS2AZURE_ENTRA_TIMEOUT_MS";
pub const ENTRA_DEADLINE: &str = "AWS2AZURE_ENTRA_DEADLINE_MS";
pub const WARM_ENTRA: &str = "AWS2AZURE_WARM_ENTRA";
pub const STS_DURATION: &str = "AWS2AZURE_STS_DURATION_SECS";

/// Where the signing key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A KMS key id, ARN, alias name or alias ARN.
    Kms(String),
    /// A PEM file with an RSA private key (development, self-managed keys).
    PemFile(String),
}

/// Everything the Lambda needs, validated.
#[derive(Clone, Debug)]
pub struct SignerConfig {
    pub profiles: Profiles,
    pub broker: BrokerSettings,
    pub key: KeySource,
    pub cache_table: Option<String>,
    pub entra_attempt_timeout: Duration,
    pub warm_entra: bool,
    /// `DurationSeconds` of the assertions STS signs for `sts` profiles.
    pub sts_duration_secs: u64,
}

impl SignerConfig {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment in production, a map
    /// in tests); files named by settings are read from disk.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let env = Env(lookup);

        let issuer = env.get(ISSUER).ok_or_else(|| {
            Error::config(
                ISSUER,
                "is not set; set it to the public URL of the edge, exactly as registered in the \
                 federated credential (e.g. https://issuer.example.com)",
            )
        })?;
        let issuer = Issuer::parse(&issuer).map_err(|e| Error::config(ISSUER, e.to_string()))?;

        let no_profiles = format!(
            "no profiles: set {PROFILES} to a JSON object such as \
             {{\"graph\": {{\"tenant_id\": ..., \"client_id\": ..., \"scope\": \
             \"https://graph.microsoft.com/.default\", \"subject\": ...}}}} or \
             {PROFILES_FILE} to a file holding it"
        );
        let profiles_json = match env.one_of(PROFILES, PROFILES_FILE, &no_profiles)? {
            OneOf::First(json) => json,
            OneOf::Second(path) => std::fs::read_to_string(&path)
                .map_err(|e| Error::config(PROFILES_FILE, format!("cannot read `{path}`: {e}")))?,
        };
        let profiles = Profiles::from_json(&profiles_json)
            .map_err(|e| Error::config(PROFILES, e.to_string()))?;

        let key = match env.one_of(
            KMS_KEY,
            SIGNING_KEY_FILE,
            "is not set; set it to the signing key's alias (e.g. alias/aws2azure-current) or ARN",
        )? {
            OneOf::First(kms) => KeySource::Kms(kms),
            OneOf::Second(path) => KeySource::PemFile(path),
        };

        let mut broker = BrokerSettings::new(issuer);
        broker.refresh_margin_secs = env.number(REFRESH_MARGIN, 300, 60..=1800)?;
        broker.assertion_lifetime_secs = env.number(ASSERTION_LIFETIME, 300, 60..=600)?;
        check_lifetime(broker.assertion_lifetime_secs)
            .map_err(|e| Error::config(ASSERTION_LIFETIME, e.to_string()))?;
        let attempt_ms = env.number(ENTRA_ATTEMPT_TIMEOUT, 5_000, 500..=10_000)?;
        let deadline_ms = env.number(ENTRA_DEADLINE, 15_000, 1_000..=25_000)?;
        if attempt_ms > deadline_ms {
            return Err(Error::config(
                ENTRA_ATTEMPT_TIMEOUT,
                format!("{attempt_ms} ms exceeds {ENTRA_DEADLINE} ({deadline_ms} ms)"),
            ));
        }
        broker.exchange_deadline = Duration::from_millis(deadline_ms);
        broker
            .check_budget()
            .map_err(|e| Error::config(ENTRA_DEADLINE, e.to_string()))?;

        let warm_entra = match env.get(WARM_ENTRA).as_deref() {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(Error::config(
                    WARM_ENTRA,
                    format!("`{other}` is not a boolean: use true or false"),
                ));
            }
        };

        let sts_duration_secs = env.number(
            STS_DURATION,
            crate::sts::DEFAULT_DURATION_SECS,
            crate::sts::MIN_DURATION_SECS..=crate::sts::MAX_DURATION_SECS,
        )?;

        Ok(Self {
            profiles,
            broker,
            key,
            cache_table: env.get(CACHE_TABLE),
            entra_attempt_timeout: Duration::from_millis(attempt_ms),
            warm_entra,
            sts_duration_secs,
        })
    }
}

/// Settings read through a lookup, each trimmed, an empty one as unset.
struct Env<F>(F);

/// Which of two settings that say one thing two ways was given.
enum OneOf {
    First(String),
    Second(String),
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A whole number within `range`, or `default` when unset.
    fn number(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, Error> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    Error::config(
                        name,
                        format!(
                            "`{v}` is not a whole number from {} to {} (default {default})",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }

    /// Exactly one of `first` and `second`; `missing` says what to set when
    /// neither is. Errors name `first`.
    fn one_of(
        &self,
        first: &'static str,
        second: &'static str,
        missing: &str,
    ) -> Result<OneOf, Error> {
        match (self.get(first), self.get(second)) {
            (Some(value), None) => Ok(OneOf::First(value)),
            (None, Some(value)) => Ok(OneOf::Second(value)),
            (Some(_), Some(_)) => Err(Error::config(
                first,
                format!("set either {first} or {second}, not both"),
            )),
            (None, None) => Err(Error::config(first, missing)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const PROFILES_JSON: &str = r#"{"graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "client_id": "00000000-1111-2222-3333-444444444444",
        "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"}}"#;

    fn env(pairs: &[(&str, &str)]) -> Result<SignerConfig, Error> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SignerConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            (ISSUER, "https://issuer.example.com"),
            (PROFILES, PROFILES_JSON),
            (KMS_KEY, "alias/aws2azure-current"),
        ]
    }

    #[test]
    fn defaults() {
        let c = env(&base()).unwrap();
        assert_eq!(c.key, KeySource::Kms("alias/aws2azure-current".into()));
        assert_eq!(c.broker.refresh_margin_secs, 300);
        assert_eq!(c.broker.assertion_lifetime_secs, 300);
        assert_eq!(c.broker.exchange_deadline, Duration::from_secs(15));
        assert!(c.broker.worst_case() <= c.broker.request_deadline);
        assert_eq!(c.entra_attempt_timeout, Duration::from_secs(5));
        assert!(c.cache_table.is_none());
        assert!(c.warm_entra);
    }

    #[test]
    fn every_error_names_its_setting() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (vec![], ISSUER, "is not set"),
            (vec![(ISSUER, "http://issuer.example.com")], ISSUER, "https"),
            (
                vec![(ISSUER, "https://i.example.com"), (KMS_KEY, "k")],
                PROFILES,
                "no profiles",
            ),
            (
                vec![
                    (ISSUER, "https://i.example.com"),
                    (PROFILES, "{}"),
                    (KMS_KEY, "k"),
                ],
                PROFILES,
                "at least one",
            ),
            (
                vec![(ISSUER, "https://i.example.com"), (PROFILES, "[")],
                PROFILES,
                "JSON object",
            ),
            (
                vec![
                    (ISSUER, "https://i.example.com"),
                    (PROFILES_FILE, "/nonexistent/p.json"),
                ],
                PROFILES_FILE,
                "cannot read",
            ),
            (
                vec![(ISSUER, "https://i.example.com"), (PROFILES, PROFILES_JSON)],
                KMS_KEY,
                "alias",
            ),
        ];
        for (pairs, setting, hint) in cases {
            let err = env(&pairs).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(setting) && text.contains(hint), "{text}");
        }
        for (name, value, hint) in [
            (REFRESH_MARGIN, "5", "60 to 1800"),
            (ASSERTION_LIFETIME, "3600", "60 to 600"),
            (ENTRA_DEADLINE, "30000", "25000"),
            (ENTRA_ATTEMPT_TIMEOUT, "abc", "500 to 10000"),
            (WARM_ENTRA, "maybe", "boolean"),
            (SIGNING_KEY_FILE, "/k.pem", "not both"),
        ] {
            let mut pairs = base();
            pairs.push((name, value));
            let text = env(&pairs).unwrap_err().to_string();
            assert!(text.contains(hint), "{name}: {text}");
        }
        // Within its own range, yet more than the request deadline leaves.
        let mut pairs = base();
        pairs.push((ENTRA_DEADLINE, "25000"));
        let text = env(&pairs).unwrap_err().to_string();
        assert!(
            text.contains(ENTRA_DEADLINE)
                && text.contains("request deadline of 24000 ms")
                && text.contains("at most 16000 ms"),
            "{text}"
        );
        let mut pairs = base();
        pairs.push((ENTRA_DEADLINE, "16000"));
        assert!(env(&pairs).is_ok(), "the largest deadline that fits");
        let mut pairs = base();
        pairs.push((ENTRA_ATTEMPT_TIMEOUT, "9000"));
        pairs.push((ENTRA_DEADLINE, "5000"));
        assert!(env(&pairs).unwrap_err().to_string().contains("exceeds"));
    }
}
