//! The files under `deploy/` that users copy to run the credential endpoint
//! beside a workload (`docs/credential-endpoint.md` describes them):
//!
//! - each is valid for the tool that reads it: the ECS task definition for
//!   `RegisterTaskDefinition` as botocore models it, the EKS manifests for
//!   Kubernetes' own schemas (`kubernetes-validate`, strict), the Lambda
//!   workload template through cfn-lint's decoder (`scripts/test` lints it),
//!   the systemd unit for `systemd-analyze verify`;
//! - each agrees with the code on what must match, so neither side drifts
//!   silently: the sidecar's command line is `aws2azure serve` as the
//!   binary's own parser takes it (`cli/Cargo.toml` names the binary), on
//!   the endpoint's default loopback address; every `IDENTITY_ENDPOINT` goes
//!   through [`EndpointSettings::from_identity_env`] and reaches that
//!   address at the protocol's path; the variables' names are the ones the
//!   code reads (`IDENTITY_HEADER` from the CLI's constant,
//!   `AWS2AZURE_ENDPOINT` from its `--help`, `AWS2AZURE_PROFILES` from the
//!   broker's); the header secret always comes from a secret store, within
//!   the lengths `IdentityHeader` accepts; the configuration goes through
//!   `CliConfig::parse` and `serve`'s resource map; the Lambda workload's
//!   architecture and runtime are among the layer's in `template.yaml`.
//!
//! Every check is shown to fail on a file edited to break it. The
//! `aws2azure` binary must be built (`cargo test --workspace` builds it).

#[path = "deploy_configs/ec2.rs"]
mod ec2;
#[path = "deploy_configs/ecs.rs"]
mod ecs;
#[path = "deploy_configs/eks.rs"]
mod eks;
#[path = "deploy_configs/lambda.rs"]
mod lambda;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use aws2azure_cli::config::CliConfig;
use aws2azure_identity::EndpointSettings;
use aws2azure_identity::settings::{DEFAULT_LISTEN, DEFAULT_PATH};

/// What Azure SDKs read: App Service's managed identity protocol. The
/// header secret's is also where `aws2azure serve` takes it from.
const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
const IDENTITY_HEADER: &str = aws2azure_cli::serve::IDENTITY_HEADER_ENV;
/// The token API's base URL, for `aws2azure serve` (its `--endpoint`) and
/// the Lambda extension.
const TOKEN_API: &str = "AWS2AZURE_ENDPOINT";
/// The profiles' JSON: the broker's variable, which the extension reads too.
const PROFILES: &str = aws2azure_signer::settings::PROFILES;
/// The sidecar's container name in ECS and EKS, as the documentation names it.
const SIDECAR: &str = "aws2azure-identity";
/// A header secret the settings accept, to parse an `IDENTITY_ENDPOINT`.
const SOME_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A file of the repository.
fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The command's binary name, as `cli/Cargo.toml` builds it.
fn cli_binary() -> String {
    let manifest: toml::Table = toml::from_str(&repo_file("cli/Cargo.toml")).unwrap();
    let bins = manifest["bin"]
        .as_array()
        .expect("cli/Cargo.toml has [[bin]]");
    assert_eq!(bins.len(), 1, "cli/Cargo.toml builds one binary");
    bins[0]["name"].as_str().unwrap().to_string()
}

/// That binary, built beside this test (`cargo test --workspace` builds it).
fn cli_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(format!("{}{}", cli_binary(), std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p aws2azure-cli` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The command's own parser takes `args` (after the binary's name): with
/// `--help` last it parses every flag and value before it, then stops.
fn cli_accepts(args: &[String]) -> Result<(), String> {
    let out = Command::new(cli_path())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// How an environment variable gets its value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Env {
    /// Written in the file.
    Plain(String),
    /// Read from a secret store: the reference (an ARN, a Secret's name and key).
    Secret(String),
}

type Environment = BTreeMap<String, Env>;

/// `--name value` of a command line.
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

/// The sidecar's command line: `aws2azure serve --config FILE --listen
/// ADDR`, on loopback at the default address. Returns the address.
fn check_serve(at: &str, argv: &[String], found: &mut Vec<String>) -> Option<SocketAddr> {
    let binary = argv
        .first()
        .map(|b| b.rsplit('/').next().unwrap_or(b).to_string());
    if binary != Some(cli_binary()) || argv.get(1).map(String::as_str) != Some("serve") {
        found.push(format!("{at}: runs {argv:?}, not `{} serve`", cli_binary()));
    }
    if argv.iter().any(|a| a == "--allow-remote") {
        found.push(format!(
            "{at}: --allow-remote (the endpoint must stay on loopback)"
        ));
    }
    if flag(argv, "--config").is_none() {
        found.push(format!("{at}: no --config FILE (the profiles)"));
    }
    if let Err(e) = cli_accepts(argv.get(1..).unwrap_or_default()) {
        found.push(format!("{at}: the command refuses {argv:?}: {e}"));
    }
    let Some(listen) = flag(argv, "--listen") else {
        found.push(format!("{at}: no --listen {DEFAULT_LISTEN}"));
        return None;
    };
    match listen.parse::<SocketAddr>() {
        Ok(addr) if addr == DEFAULT_LISTEN => Some(addr),
        Ok(addr) => {
            found.push(format!(
                "{at}: --listen {addr}, not the endpoint's default {DEFAULT_LISTEN} \
                 (loopback; the documentation and the other files use it)"
            ));
            None
        }
        Err(e) => {
            found.push(format!("{at}: --listen {listen}: {e}"));
            None
        }
    }
}

/// The sidecar's environment: the token API's URL, and the header secret
/// from a secret store. Returns the secret's reference.
fn check_sidecar_env(at: &str, env: &Environment, found: &mut Vec<String>) -> Option<String> {
    match env.get(TOKEN_API) {
        Some(Env::Plain(url)) if url.starts_with("https://") => {}
        other => found.push(format!(
            "{at}: {TOKEN_API} is {other:?}, not the token API's https URL"
        )),
    }
    header_secret(at, env, found)
}

fn header_secret(at: &str, env: &Environment, found: &mut Vec<String>) -> Option<String> {
    match env.get(IDENTITY_HEADER) {
        Some(Env::Secret(reference)) => Some(reference.clone()),
        Some(Env::Plain(_)) => {
            found.push(format!(
                "{at}: {IDENTITY_HEADER} written in the file (it must come from a secret)"
            ));
            None
        }
        None => {
            found.push(format!("{at}: no {IDENTITY_HEADER}"));
            None
        }
    }
}

/// An application: `IDENTITY_ENDPOINT` as the endpoint's settings accept it,
/// reaching the sidecar's address at the protocol's path, and the sidecar's
/// header secret.
fn check_app(
    at: &str,
    env: &Environment,
    listen: Option<SocketAddr>,
    secret: Option<&str>,
    found: &mut Vec<String>,
) {
    match env.get(IDENTITY_ENDPOINT) {
        Some(Env::Plain(url)) => match EndpointSettings::from_identity_env(url, SOME_SECRET) {
            Ok(settings) => {
                if let Some(listen) = listen.filter(|l| *l != settings.listen) {
                    found.push(format!(
                        "{at}: {IDENTITY_ENDPOINT} {url} does not reach the sidecar at {listen}"
                    ));
                }
                if settings.path != DEFAULT_PATH {
                    found.push(format!(
                        "{at}: {IDENTITY_ENDPOINT} {url} asks {}, not the endpoint's {DEFAULT_PATH}",
                        settings.path
                    ));
                }
            }
            Err(e) => found.push(format!("{at}: {e}")),
        },
        other => found.push(format!(
            "{at}: {IDENTITY_ENDPOINT} is {other:?}, not a URL in the file"
        )),
    }
    let app_secret = header_secret(at, env, found);
    if secret.is_some() && app_secret.is_some() && app_secret.as_deref() != secret {
        found.push(format!(
            "{at}: {IDENTITY_HEADER} from {app_secret:?}, the sidecar's from {secret:?}"
        ));
    }
}

/// `aws2azure serve`'s configuration file (`--config`): `[profiles.NAME]`
/// tables and an optional `[resources]` table, read by the code `serve`
/// reads it with.
fn check_config(at: &str, text: &str, found: &mut Vec<String>) {
    match CliConfig::parse(text) {
        Ok(config) => {
            if let Err(e) = aws2azure_cli::serve::resource_map(&config) {
                found.push(format!("{at}: {e}"));
            }
        }
        Err(e) => found.push(format!("{at}: {e}")),
    }
}

/// Runs a Python script with the test virtualenv's interpreter; stdout, or
/// stderr when it fails.
fn python(script: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(aws2azure_tests::python::interpreter())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs (./scripts/test installs .venv)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else if stderr.contains("ModuleNotFoundError") {
        panic!("{stderr}: ./scripts/test installs requirements-test.txt into .venv")
    } else {
        Err(stderr)
    }
}

/// `found` holds a violation containing `expected`.
fn assert_found(found: &[String], expected: &str) {
    assert!(
        found.iter().any(|f| f.contains(expected)),
        "wanted a violation containing {expected:?}, got {found:#?}"
    );
}

#[test]
fn the_documentation_links_every_deployment_file() {
    let doc = repo_file("docs/credential-endpoint.md");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let mut files = vec![];
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let name = file.unwrap().file_name().into_string().unwrap();
            files.push(format!(
                "deploy/{}/{name}",
                dir.file_name().into_string().unwrap()
            ));
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        assert!(
            doc.contains(&format!("](../{file})")),
            "docs/credential-endpoint.md does not link {file}"
        );
    }
}

#[test]
fn the_command_reads_the_token_api_from_its_variable_and_refuses_unknown_flags() {
    let out = Command::new(cli_path())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains(&format!("[env: {TOKEN_API}=]")), "{help}");

    let argv = |args: &str| -> Vec<String> { args.split(' ').map(str::to_string).collect() };
    let mut found = vec![];
    let good = "aws2azure serve --config c.toml --listen 127.0.0.1:8791";
    check_serve("good", &argv(good), &mut found);
    assert_eq!(found, Vec::<String>::new());
    for (args, expected) in [
        (format!("{good} --port 1"), "the command refuses"),
        (good.replace("serve", "sevre"), "the command refuses"),
        (good.replace("--config c.toml ", ""), "no --config"),
        (
            good.replace("127.0.0.1", "localhost"),
            "--listen localhost:8791",
        ),
    ] {
        let mut found = vec![];
        check_serve("edited", &argv(&args), &mut found);
        assert_found(&found, expected);
    }
}

#[test]
fn a_config_the_endpoint_refuses_is_a_violation() {
    let good = r#"
        [profiles.graph]
        tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
        client_id = "00000000-1111-2222-3333-444444444444"
        scope = "https://graph.microsoft.com/.default"
        subject = "aws2azure:graph"
    "#;
    let mut found = vec![];
    check_config("good", good, &mut found);
    assert_eq!(found, Vec::<String>::new());
    for (text, expected) in [
        (good.replace("72f988bf", "not-a-guid"), "tenant"),
        (good.replace("/.default", ""), "scope"),
        (
            format!("{good}\n[resources]\n\"https://vault.azure.net\" = \"vault\"\n"),
            "profile `vault`",
        ),
        (format!("{good}\n[extra]\n"), "extra"),
    ] {
        let mut found = vec![];
        check_config("edited", &text, &mut found);
        assert_found(&found, expected);
    }
}
