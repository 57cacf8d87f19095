use std::collections::HashMap;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const PROFILES_JSON: &str = r#"{
  "graph": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "client_id": "00000000-1111-2222-3333-444444444444",
            "scope": "https://graph.microsoft.com/.default", "subject": "aws2azure:graph"},
  "vault": {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "client_id": "00000000-1111-2222-3333-555555555555",
            "scope": "https://vault.azure.net/.default", "subject": "aws2azure:vault"}
}"#;

fn good() -> HashMap<&'static str, String> {
    HashMap::from([
        (
            IDENTITY_ENDPOINT,
            "http://127.0.0.1:8791/msi/token".to_string(),
        ),
        (IDENTITY_HEADER, SECRET.to_string()),
        (
            TOKEN_API,
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod/".to_string(),
        ),
        (PROFILES, PROFILES_JSON.to_string()),
        (REGION, "us-east-1".to_string()),
    ])
}

fn settings(vars: &HashMap<&'static str, String>) -> Result<ExtensionSettings, Error> {
    ExtensionSettings::from_lookup(|name| vars.get(name).cloned())
}

/// The message of the setting error `vars` give.
fn refused(vars: &HashMap<&'static str, String>) -> String {
    let error = settings(vars).unwrap_err();
    assert!(matches!(error, Error::Setting { .. }), "{error:?}");
    error.to_string()
}

#[test]
fn a_complete_environment_gives_every_setting() {
    let s = settings(&good()).unwrap();
    assert_eq!(s.endpoint.listen, "127.0.0.1:8791".parse().unwrap());
    assert_eq!(s.endpoint.path, "/msi/token");
    assert!(s.endpoint.header.matches(SECRET.as_bytes()));
    assert_eq!(
        s.token_api,
        "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
    );
    // The token API's own region wins over the function's.
    assert_eq!(s.region, "eu-west-1");
    assert_eq!(
        s.resources.served(),
        "https://graph.microsoft.com, https://vault.azure.net"
    );
}

#[test]
fn a_custom_domain_takes_the_functions_region() {
    let mut vars = good();
    vars.insert(TOKEN_API, "https://tokens.example.com/prod".into());
    assert_eq!(settings(&vars).unwrap().region, "us-east-1");
    vars.remove(REGION);
    let message = refused(&vars);
    assert!(message.starts_with("AWS_REGION: is not set"), "{message}");
    assert!(message.contains("fix: set AWS_REGION"), "{message}");
}

#[test]
fn each_missing_variable_is_named_with_its_fix() {
    for name in [IDENTITY_ENDPOINT, IDENTITY_HEADER, TOKEN_API, PROFILES] {
        for value in [None, Some("  ")] {
            let mut vars = good();
            match value {
                None => vars.remove(name),
                Some(v) => vars.insert(name, v.to_string()),
            };
            let message = refused(&vars);
            assert!(
                message.starts_with(&format!("{name}: is not set (fix: ")),
                "{message}"
            );
        }
    }
}

#[test]
fn unusable_values_are_named_and_the_secret_never_shown() {
    let cases = [
        (
            IDENTITY_ENDPOINT,
            "http://10.0.0.1:8791/msi/token",
            "IDENTITY_ENDPOINT",
        ),
        (
            IDENTITY_ENDPOINT,
            "http://127.0.0.1/msi/token",
            "IDENTITY_ENDPOINT",
        ),
        (IDENTITY_HEADER, "short-secret", "IDENTITY_HEADER"),
        (
            TOKEN_API,
            "http://tokens.example.com/prod",
            "AWS2AZURE_ENDPOINT",
        ),
        (TOKEN_API, "tokens.example.com", "AWS2AZURE_ENDPOINT"),
        (
            TOKEN_API,
            "https://tokens.example.com/prod?x=1",
            "AWS2AZURE_ENDPOINT",
        ),
        (
            TOKEN_API,
            "https://user@tokens.example.com/prod",
            "AWS2AZURE_ENDPOINT",
        ),
        (PROFILES, "{not json", "AWS2AZURE_PROFILES"),
        (PROFILES, "{}", "AWS2AZURE_PROFILES"),
        (
            RESOURCES,
            r#"["https://vault.azure.net"]"#,
            "AWS2AZURE_RESOURCES",
        ),
        (
            RESOURCES,
            r#"{"https://x.example": "nope"}"#,
            "AWS2AZURE_RESOURCES",
        ),
    ];
    for (name, value, named) in cases {
        let mut vars = good();
        vars.insert(name, value.to_string());
        let message = refused(&vars);
        assert!(
            message.starts_with(&format!("{named}: ")),
            "{name}={value}: {message}"
        );
        assert!(message.contains("(fix: "), "{message}");
        assert!(!message.contains(SECRET), "{message}");
        if name == IDENTITY_HEADER {
            assert!(!message.contains(value), "{message}");
        }
    }
}

#[test]
fn resource_overrides_and_a_local_token_api_are_accepted() {
    let mut vars = good();
    vars.insert(TOKEN_API, "http://127.0.0.1:4000/dev".into());
    vars.insert(
        RESOURCES,
        r#"{"https://storage.azure.com": "vault"}"#.into(),
    );
    let s = settings(&vars).unwrap();
    assert_eq!(s.token_api, "http://127.0.0.1:4000/dev");
    assert_eq!(s.region, "us-east-1");
    assert!(s.resources.served().contains("https://storage.azure.com"));
}

#[test]
fn the_time_left_counts_the_margin_and_never_goes_negative() {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = time_left(now_ms + 10_000, Duration::from_millis(500));
    assert!(
        left <= Duration::from_millis(9_500) && left > Duration::from_millis(9_000),
        "{left:?}"
    );
    assert_eq!(
        time_left(now_ms + 100, Duration::from_millis(500)),
        Duration::ZERO
    );
    assert_eq!(time_left(0, Duration::ZERO), Duration::ZERO);
}

#[test]
fn log_lines_are_json_with_the_event_first() {
    let line = log_line("refresh", json!({"b": 1, "a": "x\"y\nz"}));
    assert!(line.starts_with(r#"{"event":"refresh","#), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
    let parsed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed, json!({"event": "refresh", "a": "x\"y\nz", "b": 1}));
    assert_eq!(log_line("stopped", json!({})), r#"{"event":"stopped"}"#);
}
