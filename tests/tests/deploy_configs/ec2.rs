//! `deploy/ec2/aws2azure-serve.service`: the endpoint as a systemd service
//! on an instance (see the crate's documentation).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::{IDENTITY_HEADER, assert_found, check_serve, repo_file};

const FILE: &str = "deploy/ec2/aws2azure-serve.service";

/// Where the unit expects the binary.
const BINARY: &str = "/usr/local/bin/aws2azure";

/// section → key → values, in order (systemd keys may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// A unit file's assignments. Lines continued with `\` are not used in
/// the file and are refused, so nothing is silently misread.
fn parse(text: &str) -> Result<Unit, String> {
    let mut unit = Unit::new();
    let mut section = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!("line {}: a continued line", n + 1));
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let (Some(section), Some((key, value))) = (&section, line.split_once('=')) else {
            return Err(format!("line {}: not KEY=VALUE in a section", n + 1));
        };
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    Ok(unit)
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map_or(&[], Vec::as_slice)
}

fn violations(text: &str) -> Vec<String> {
    let mut found = vec![];
    let unit = match parse(text) {
        Ok(unit) => unit,
        Err(e) => return vec![format!("{FILE}: {e}")],
    };
    match values(&unit, "Service", "ExecStart") {
        [exec] => {
            let argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
            if argv.first().map(String::as_str) != Some(BINARY) {
                found.push(format!("{FILE}: ExecStart does not run {BINARY}"));
            }
            check_serve(&format!("{FILE}: ExecStart"), &argv, &mut found);
        }
        other => found.push(format!("{FILE}: ExecStart {other:?}, not one")),
    }
    // The header secret from a root-only file: an Environment= line is
    // shown to every local user by `systemctl show`.
    if values(&unit, "Service", "EnvironmentFile").is_empty() {
        found.push(format!(
            "{FILE}: no EnvironmentFile (AWS2AZURE_ENDPOINT, {IDENTITY_HEADER})"
        ));
    }
    if values(&unit, "Service", "Environment")
        .iter()
        .any(|e| e.contains(IDENTITY_HEADER))
    {
        found.push(format!(
            "{FILE}: {IDENTITY_HEADER} in Environment= (systemctl show prints it to anyone)"
        ));
    }
    // Not root: a user made for the service, with no way back up.
    let user = values(&unit, "Service", "User");
    let dynamic = values(&unit, "Service", "DynamicUser") == ["yes"];
    if !dynamic || !user.is_empty() {
        found.push(format!(
            "{FILE}: DynamicUser={:?} User={user:?} (must run as a user of its own: DynamicUser=yes)",
            values(&unit, "Service", "DynamicUser")
        ));
    }
    for (key, wanted) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
    ] {
        if values(&unit, "Service", key) != [wanted] {
            found.push(format!("{FILE}: {key} is not {wanted:?}"));
        }
    }
    if values(&unit, "Install", "WantedBy") != ["multi-user.target"] {
        found.push(format!(
            "{FILE}: not WantedBy=multi-user.target (it would not start at boot)"
        ));
    }
    found
}

/// `systemd-analyze verify` on the unit, the binary's path pointed at an
/// executable that exists (verify requires one). Any diagnostic counts:
/// verify exits 0 on unknown keys and bad values, which it only reports.
fn systemd_verify(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("aws2azure");
    std::fs::write(&binary, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let unit = dir.path().join("aws2azure-serve.service");
    let text = text.replace(BINARY, binary.to_str().unwrap());
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&unit)
        .output()
        .map_err(|e| {
            format!("systemd-analyze: {e} (Debian's systemd package; scripts/test installs it)")
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {stderr}", out.status))
    }
}

fn fails_with(expected: &str, edit: impl FnOnce(String) -> String) {
    let edited = edit(repo_file(FILE));
    assert_found(&violations(&edited), expected);
}

#[test]
fn the_unit_agrees_with_the_code_and_systemd_verifies_it() {
    let text = repo_file(FILE);
    assert_eq!(violations(&text), Vec::<String>::new());
    systemd_verify(&text).unwrap_or_else(|e| panic!("{FILE}: {e}"));
}

#[test]
fn systemd_refuses_a_broken_unit() {
    let text = repo_file(FILE);
    let typo = text.replace("ProtectSystem=strict", "ProtectSytem=strict");
    let error = systemd_verify(&typo).unwrap_err();
    assert!(error.contains("ProtectSytem"), "{error}");
    let bad_value = text.replace("ProtectSystem=strict", "ProtectSystem=very");
    assert!(systemd_verify(&bad_value).is_err());
}

#[test]
fn the_service_runs_aws2azure_serve_on_loopback_without_privileges() {
    fails_with("ExecStart does not run /usr/local/bin/aws2azure", |t| {
        t.replace(BINARY, "/opt/aws2azure")
    });
    fails_with("--listen 0.0.0.0:8791", |t| {
        t.replace("--listen 127.0.0.1:8791", "--listen 0.0.0.0:8791")
    });
    fails_with("no --config", |t| {
        t.replace("--config /etc/aws2azure/aws2azure.toml ", "")
    });
    fails_with("no EnvironmentFile", |t| {
        t.replace("EnvironmentFile=", "#EnvironmentFile=")
    });
    fails_with("IDENTITY_HEADER in Environment=", |t| {
        t.replace(
            "[Service]\n",
            "[Service]\nEnvironment=IDENTITY_HEADER=0123456789abcdef0123\n",
        )
    });
    fails_with("must run as a user of its own", |t| {
        t.replace("DynamicUser=yes", "User=root")
    });
    fails_with("NoNewPrivileges is not", |t| {
        t.replace("NoNewPrivileges=yes", "NoNewPrivileges=no")
    });
    fails_with("not WantedBy=multi-user.target", |t| {
        t.replace("WantedBy=multi-user.target", "")
    });
    fails_with("a continued line", |t| {
        t.replace("--listen", "\\\n  --listen")
    });
}
