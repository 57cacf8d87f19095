//! Settings, token sources and message hygiene, without a server
//! (`keys/tests/cloudflare.rs` speaks to the stand-in over sockets).

use std::collections::HashMap;
use std::io::Write as _;

use super::*;
use crate::Error;

const SECRET: &str = "s3cr3t-T0KEN-0123456789abcdef0123456789";

fn settings() -> CloudflareSettings {
    CloudflareSettings::new("0123456789abcdef0123456789abcdef", "ns_readable-id").unwrap()
}

fn config_error(result: Result<impl std::fmt::Debug, Error>) -> (&'static str, String) {
    match result {
        Err(Error::Config { setting, message }) => (setting, message),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn settings_have_defaults_and_accept_readable_stand_in_ids() {
    let s = settings();
    assert_eq!(s.api_base(), "https://api.cloudflare.com/client/v4");
    assert_eq!(s.kv_key(), "jwks");
    assert_eq!(s.timeout(), DEFAULT_TIMEOUT);
    assert_eq!(s.namespace_id(), "ns_readable-id");
}

#[test]
fn ids_are_checked_and_the_error_names_the_variable() {
    for bad in ["", "has space", "slash/id", "dot.id", &"a".repeat(65), "ü"] {
        let (setting, message) = config_error(CloudflareSettings::new(bad, "ns"));
        assert_eq!(setting, ACCOUNT_ID, "{bad:?}");
        assert!(message.contains("32 hexadecimal"), "{message}");
        let (setting, _) = config_error(CloudflareSettings::new("acct", bad));
        assert_eq!(setting, NAMESPACE_ID);
    }
    assert!(CloudflareSettings::new(&"a".repeat(64), "n").is_ok());
}

#[test]
fn the_api_base_is_https_or_loopback_http() {
    for good in [
        "https://api.cloudflare.com/client/v4/",
        "http://127.0.0.1:8787/client/v4",
        "http://localhost:1/client/v4",
        "http://[::1]:9/client/v4",
    ] {
        let s = settings().with_api_base(good).unwrap();
        assert!(!s.api_base().ends_with('/'), "{}", s.api_base());
    }
    for (bad, why) in [
        ("http://api.example.com/client/v4", "loopback"),
        ("ftp://127.0.0.1/", "scheme"),
        ("api.cloudflare.com/client/v4", "absolute URL"),
        ("https://api.cloudflare.com/client/v4?x=1", "query"),
        ("https://api.cloudflare.com /client/v4", "whitespace"),
    ] {
        let (setting, message) = config_error(settings().with_api_base(bad));
        assert_eq!(setting, API_BASE);
        assert!(message.contains(why), "{bad}: {message}");
        assert!(
            message.contains(DEFAULT_API_BASE),
            "names the fix: {message}"
        );
    }
    let (_, message) =
        config_error(settings().with_api_base("https://user:hunter2@api.cloudflare.com/"));
    assert!(message.contains("user information"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn the_kv_key_follows_kvs_rules() {
    let s = settings().with_kv_key("keys/jwks=1").unwrap();
    assert_eq!(s.kv_key(), "keys/jwks=1");
    assert!(settings().with_kv_key(&"k".repeat(512)).is_ok());
    for bad in ["", ".", "..", "a b", "tab\t", &"k".repeat(513)] {
        let (setting, message) = config_error(settings().with_kv_key(bad));
        assert_eq!(setting, KV_KEY, "{bad:?}");
        assert!(message.contains("KEY_DOCUMENT_KV_KEY"), "{message}");
    }
}

#[test]
fn the_timeout_is_bounded() {
    assert!(settings().with_timeout(Duration::from_secs(1)).is_ok());
    assert!(settings().with_timeout(MAX_TIMEOUT).is_ok());
    for bad in [Duration::ZERO, MAX_TIMEOUT + Duration::from_secs(1)] {
        assert_eq!(config_error(settings().with_timeout(bad)).0, TIMEOUT);
    }
}

#[test]
fn settings_from_variables() {
    let (setting, message) = config_error(CloudflareSettings::from_vars(vars(&[])));
    assert_eq!(setting, ACCOUNT_ID);
    assert!(message.contains("not set"), "{message}");
    let (setting, _) = config_error(CloudflareSettings::from_vars(vars(&[(ACCOUNT_ID, "a")])));
    assert_eq!(setting, NAMESPACE_ID);
    let s = CloudflareSettings::from_vars(vars(&[
        (ACCOUNT_ID, "a"),
        (NAMESPACE_ID, "n"),
        (API_BASE, "http://127.0.0.1:1/client/v4"),
        (KV_KEY, "doc"),
        (TIMEOUT, "3"),
    ]))
    .unwrap();
    assert_eq!(s.api_base(), "http://127.0.0.1:1/client/v4");
    assert_eq!((s.kv_key(), s.timeout()), ("doc", Duration::from_secs(3)));
    let (setting, _) = config_error(CloudflareSettings::from_vars(vars(&[
        (ACCOUNT_ID, "a"),
        (NAMESPACE_ID, "n"),
        (TIMEOUT, "soon"),
    ])));
    assert_eq!(setting, TIMEOUT);
}

#[test]
fn the_token_never_prints() {
    let token = ApiToken::new(&format!("  {SECRET}\n"), API_TOKEN).unwrap();
    assert_eq!(token.secret(), SECRET, "trimmed");
    assert_eq!(format!("{token:?}"), "ApiToken(redacted)");
    assert_eq!(format!("{token}"), "ApiToken(redacted)");
    for bad in ["", "   ", "two words", "tab\tinside", "ü-token"] {
        let (setting, message) = config_error(ApiToken::new(bad, API_TOKEN));
        assert_eq!(setting, API_TOKEN);
        assert!(message.contains("API Tokens"), "names the fix: {message}");
    }
    // A refused value is not echoed either.
    let (_, message) = config_error(ApiToken::new(&format!("{SECRET} x"), API_TOKEN));
    assert!(!message.contains(SECRET), "{message}");
}

#[test]
fn the_token_comes_from_exactly_one_variable() {
    let from_var = ApiToken::from_vars(vars(&[(API_TOKEN, SECRET)])).unwrap();
    assert_eq!(from_var.secret(), SECRET);

    let (setting, message) = config_error(ApiToken::from_vars(vars(&[])));
    assert_eq!(setting, API_TOKEN);
    assert!(message.contains(API_TOKEN_FILE), "{message}");

    let (_, message) = config_error(ApiToken::from_vars(vars(&[
        (API_TOKEN, SECRET),
        (API_TOKEN_FILE, "/nonexistent"),
    ])));
    assert!(message.contains("both"), "{message}");
    assert!(!message.contains(SECRET), "{message}");

    let (setting, message) = config_error(ApiToken::from_vars(vars(&[(API_TOKEN, "")])));
    assert_eq!(setting, API_TOKEN);
    assert!(message.contains("empty"), "{message}");
}

#[cfg(unix)]
#[test]
fn the_token_file_is_read_trimmed_and_checked() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let set_mode = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
    let from_file = |path: &std::path::Path| {
        ApiToken::from_vars(vars(&[(API_TOKEN_FILE, path.to_str().unwrap())]))
    };

    let mut file = std::fs::File::create(&path).unwrap();
    write!(file, "{SECRET}\n\n").unwrap();
    set_mode(0o600).unwrap();
    assert_eq!(from_file(&path).unwrap().secret(), SECRET);

    set_mode(0o666).unwrap();
    let (setting, message) = config_error(from_file(&path));
    assert_eq!(setting, API_TOKEN_FILE);
    assert!(message.contains("chmod 600"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
    // Readable by all (a container secret mount): accepted, with a warning.
    set_mode(0o644).unwrap();
    assert!(from_file(&path).is_ok());

    std::fs::write(&path, " \n").unwrap();
    set_mode(0o600).unwrap();
    let (_, message) = config_error(from_file(&path));
    assert!(message.contains("is empty"), "{message}");

    std::fs::write(&path, "x".repeat(4096)).unwrap();
    let (_, message) = config_error(from_file(&path));
    assert!(message.contains("larger than"), "{message}");

    let (_, message) = config_error(from_file(dir.path()));
    assert!(message.contains("not a regular file"), "{message}");
    let (_, message) = config_error(from_file(&dir.path().join("missing")));
    assert!(message.contains("cannot read"), "{message}");
}

fn kv() -> CloudflareKv {
    CloudflareKv::new(settings(), ApiToken::new(SECRET, API_TOKEN).unwrap()).unwrap()
}

#[test]
fn describe_names_the_place_and_never_the_token() {
    let kv = CloudflareKv::new(
        settings().with_kv_key("a%key/ü").unwrap(),
        ApiToken::new(SECRET, API_TOKEN).unwrap(),
    )
    .unwrap();
    assert_eq!(
        kv.describe(),
        "Workers KV 0123456789abcdef0123456789abcdef/ns_readable-id/a%key/ü via \
         https://api.cloudflare.com/client/v4"
    );
    assert!(
        kv.url.ends_with("/values/a%25key%2F%C3%BC"),
        "the key is one percent-encoded segment: {}",
        kv.url
    );
}

#[test]
fn cloudflares_messages_are_quoted_capped_and_cleaned() {
    let kv = kv();
    let body = br#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"},{"code":9109,"message":"Invalid\naccess\u0000token"}],"messages":[],"result":null}"#;
    assert_eq!(
        kv.quote(body),
        "Authentication error (code 10000); Invalid access token (code 9109)"
    );
    let echo =
        format!(r#"{{"success":false,"errors":[{{"code":1,"message":"bad token {SECRET}"}}]}}"#);
    let quoted = kv.quote(echo.as_bytes());
    assert!(!quoted.contains(SECRET), "{quoted}");
    assert!(quoted.contains("[redacted]"), "{quoted}");

    let long = format!("<html>{}</html>", "x".repeat(1000));
    let quoted = kv.quote(long.as_bytes());
    assert_eq!(quoted.chars().count(), MAX_MESSAGE_CHARS + 1, "{quoted}");
    assert!(quoted.starts_with("not Cloudflare's JSON: <html>xx"));
    assert!(quoted.ends_with('…'));
    // A token echoed across the cap is cut out before the cut, not after.
    let straddling = format!("{}{SECRET}", "y".repeat(MAX_MESSAGE_CHARS - 50));
    let quoted = kv.quote(straddling.as_bytes());
    assert!(!quoted.contains(&SECRET[..20]), "{quoted}");
    assert_eq!(kv.quote(b""), "empty answer");
    assert_eq!(
        kv.quote(br#"{"success":false,"errors":[]}"#),
        "no error message in the answer"
    );
}

#[test]
fn only_short_rate_limits_and_server_errors_are_retried() {
    let server = PublishError::Server {
        status: 502,
        message: String::new(),
        attempts: 1,
    };
    assert_eq!(retry_wait(&server, 0), Some(BACKOFF));
    assert_eq!(retry_wait(&server, 1), Some(BACKOFF * 2));
    let limited = |secs: Option<u64>| PublishError::RateLimited {
        retry_after: secs.map(Duration::from_secs),
    };
    assert_eq!(
        retry_wait(&limited(Some(2)), 0),
        Some(Duration::from_secs(2))
    );
    assert_eq!(retry_wait(&limited(Some(0)), 0), Some(BACKOFF));
    assert_eq!(retry_wait(&limited(Some(3)), 0), None);
    assert_eq!(retry_wait(&limited(None), 0), None);
    for other in [
        PublishError::Unauthorized {
            message: String::new(),
        },
        PublishError::Forbidden {
            message: String::new(),
        },
        PublishError::Rejected {
            status: 400,
            message: String::new(),
        },
    ] {
        assert_eq!(retry_wait(&other, 0), None, "{other}");
    }
}
