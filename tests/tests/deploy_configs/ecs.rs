//! `deploy/ecs/task-definition.json`: the sidecar in an ECS task (see the
//! crate's documentation).

use serde_json::{Value, json};

use super::{
    Env, Environment, SIDECAR, assert_found, check_app, check_config, check_serve,
    check_sidecar_env, python, repo_file,
};

const FILE: &str = "deploy/ecs/task-definition.json";

/// The container writing the configuration file reads it from this variable.
const CONFIG_ENV: &str = "AWS2AZURE_CONFIG";

/// The input of `RegisterTaskDefinition`, checked by botocore's own
/// validator against ECS's service model: unknown keys, wrong types and
/// missing required members are refused.
const BOTOCORE_VALIDATE: &str = r#"
import json, sys, botocore.session
from botocore.validate import ParamValidator
model = botocore.session.get_session().get_service_model("ecs")
shape = model.operation_model("RegisterTaskDefinition").input_shape
report = ParamValidator().validate(json.loads(sys.argv[1]), shape)
if report.has_errors():
    sys.exit(report.generate_report())
"#;

fn task_definition() -> Value {
    serde_json::from_str(&repo_file(FILE)).unwrap_or_else(|e| panic!("{FILE}: {e}"))
}

fn environment(container: &Value) -> Environment {
    let mut env = Environment::new();
    for var in container["environment"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
            env.insert(name.into(), Env::Plain(value.into()));
        }
    }
    for var in container["secrets"].as_array().into_iter().flatten() {
        if let (Some(name), Some(from)) = (var["name"].as_str(), var["valueFrom"].as_str()) {
            env.insert(name.into(), Env::Secret(from.into()));
        }
    }
    env
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// `container` waits for `other` to reach one of `conditions`.
fn waits_for(container: &Value, other: &str, conditions: &[&str]) -> bool {
    container["dependsOn"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| {
            d["containerName"] == other
                && d["condition"]
                    .as_str()
                    .is_some_and(|c| conditions.contains(&c))
        })
}

/// The mount of `container` holding `path`: (volume, containerPath).
fn mount_of(container: &Value, path: &str) -> Option<(String, String)> {
    container["mountPoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let dir = m["containerPath"].as_str()?;
            let inside = path
                .strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'));
            let volume = m["sourceVolume"].as_str()?;
            inside.then(|| (volume.to_string(), dir.to_string()))
        })
        .next()
}

fn violations(task: &Value) -> Vec<String> {
    let mut found = vec![];
    if task["networkMode"] != "awsvpc" {
        found.push(format!(
            "{FILE}: networkMode {} (only awsvpc gives a task's containers one loopback)",
            task["networkMode"]
        ));
    }
    let containers: Vec<&Value> = task["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let Some(sidecar) = containers.iter().find(|c| c["name"] == SIDECAR) else {
        found.push(format!("{FILE}: no container {SIDECAR}"));
        return found;
    };
    let at = format!("{FILE}: {SIDECAR}");
    let argv: Vec<String> = strings(&sidecar["entryPoint"])
        .into_iter()
        .chain(strings(&sidecar["command"]))
        .collect();
    let listen = check_serve(&at, &argv, &mut found);
    let secret = check_sidecar_env(&at, &environment(sidecar), &mut found);
    if sidecar["essential"] != true {
        found.push(format!(
            "{at}: not essential (the task would run on without its tokens)"
        ));
    }
    let mut apps = 0;
    for container in containers.iter().filter(|c| c["name"] != SIDECAR) {
        let name = container["name"].as_str().unwrap_or("?");
        let at = format!("{FILE}: {name}");
        for mapping in container["portMappings"].as_array().into_iter().flatten() {
            let port = mapping["containerPort"].as_u64();
            if listen.is_some_and(|l| port == Some(u64::from(l.port()))) {
                found.push(format!(
                    "{at}: maps port {} (the endpoint is for the task alone)",
                    mapping["containerPort"]
                ));
            }
        }
        let env = environment(container);
        if !env.contains_key(super::IDENTITY_ENDPOINT) {
            continue;
        }
        apps += 1;
        check_app(&at, &env, listen, secret.as_deref(), &mut found);
        if !waits_for(container, SIDECAR, &["START", "HEALTHY"]) {
            found.push(format!("{at}: does not wait for {SIDECAR} to start"));
        }
    }
    if apps == 0 {
        found.push(format!(
            "{FILE}: no application container with {}",
            super::IDENTITY_ENDPOINT
        ));
    }
    config_writer(sidecar, &argv, &containers, &mut found);
    found
}

/// The configuration file: written by a container from its environment
/// into a volume the sidecar mounts where `--config` reads, before the
/// sidecar starts.
fn config_writer(sidecar: &Value, argv: &[String], containers: &[&Value], found: &mut Vec<String>) {
    let Some(path) = super::flag(argv, "--config") else {
        return;
    };
    let Some((volume, dir)) = mount_of(sidecar, path) else {
        found.push(format!(
            "{FILE}: {SIDECAR} mounts no volume holding --config {path}"
        ));
        return;
    };
    let writer = containers
        .iter()
        .find(|c| environment(c).contains_key(CONFIG_ENV));
    let Some(writer) = writer else {
        found.push(format!("{FILE}: no container with {CONFIG_ENV}"));
        return;
    };
    let name = writer["name"].as_str().unwrap_or("?");
    let at = format!("{FILE}: {name}");
    if mount_of(writer, path) != Some((volume, dir)) {
        found.push(format!(
            "{at}: does not mount the sidecar's volume where --config {path} is"
        ));
    }
    if !strings(&writer["command"]).iter().any(|c| c.contains(path)) {
        found.push(format!("{at}: does not write {path}"));
    }
    if writer["essential"] != false {
        found.push(format!(
            "{at}: essential (it exits once the file is written)"
        ));
    }
    if !waits_for(sidecar, name, &["SUCCESS", "COMPLETE"]) {
        found.push(format!(
            "{FILE}: {SIDECAR} does not wait for {name} to write the configuration"
        ));
    }
    match environment(writer).get(CONFIG_ENV) {
        Some(Env::Plain(text)) => check_config(&format!("{at}: {CONFIG_ENV}"), text, found),
        other => found.push(format!("{at}: {CONFIG_ENV} is {other:?}")),
    }
}

fn container_mut<'a>(task: &'a mut Value, name: &str) -> &'a mut Value {
    task["containerDefinitions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn fails_with(expected: &str, edit: impl FnOnce(&mut Value)) {
    let mut task = task_definition();
    edit(&mut task);
    assert_found(&violations(&task), expected);
}

#[test]
fn the_task_definition_agrees_with_the_code_and_ecs_accepts_it() {
    assert_eq!(violations(&task_definition()), Vec::<String>::new());
    python(BOTOCORE_VALIDATE, &[&repo_file(FILE)]).unwrap_or_else(|e| panic!("{FILE}: {e}"));
}

/// Runs the writer container's command with a POSIX shell, its mount
/// moved into a temporary folder, and returns the file `--config` would
/// read: what the sidecar gets, quoting and all.
fn written_config(task: &Value) -> String {
    let containers = task["containerDefinitions"].as_array().unwrap();
    let sidecar = containers.iter().find(|c| c["name"] == SIDECAR).unwrap();
    let writer = containers
        .iter()
        .find(|c| environment(c).contains_key(CONFIG_ENV))
        .unwrap();
    let argv: Vec<String> = strings(&sidecar["entryPoint"])
        .into_iter()
        .chain(strings(&sidecar["command"]))
        .collect();
    let path = super::flag(&argv, "--config").unwrap();
    let (_, dir) = mount_of(writer, path).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let moved = temp.path().to_str().unwrap();
    let command: Vec<String> = strings(&writer["entryPoint"])
        .into_iter()
        .chain(strings(&writer["command"]))
        .map(|a| a.replace(&dir, moved))
        .collect();
    assert_eq!(command[0], "sh", "{FILE}: the writer runs {command:?}");
    let Env::Plain(config) = &environment(writer)[CONFIG_ENV] else {
        panic!("{FILE}: {CONFIG_ENV} is not written in the file");
    };
    let status = std::process::Command::new("/bin/sh")
        .args(&command[1..])
        .env_clear()
        .env(CONFIG_ENV, config)
        .status()
        .unwrap();
    assert!(status.success(), "{FILE}: {command:?} failed: {status}");
    std::fs::read_to_string(path.replace(&dir, moved)).unwrap()
}

#[test]
fn the_writer_container_writes_a_configuration_serve_reads() {
    let task = task_definition();
    let written = written_config(&task);
    let Env::Plain(given) = &environment(
        task["containerDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "aws2azure-config")
            .unwrap(),
    )[CONFIG_ENV] else {
        unreachable!()
    };
    assert_eq!(&written, given, "the file differs from the variable");
    let config = aws2azure_cli::config::CliConfig::parse(&written).unwrap();
    let resources = aws2azure_cli::serve::resource_map(&config).unwrap();
    assert!(
        resources
            .served()
            .contains("https://management.core.windows.net")
    );
}

#[test]
fn botocore_refuses_what_ecs_would() {
    let mut task = task_definition();
    task["cpu"] = json!(512);
    let error = python(BOTOCORE_VALIDATE, &[&task.to_string()]).unwrap_err();
    assert!(error.contains("cpu"), "{error}");
    let mut task = task_definition();
    container_mut(&mut task, SIDECAR)["listen"] = json!("127.0.0.1:8791");
    let error = python(BOTOCORE_VALIDATE, &[&task.to_string()]).unwrap_err();
    assert!(error.contains("Unknown parameter"), "{error}");
}

#[test]
fn the_sidecar_runs_aws2azure_serve_on_loopback_only() {
    fails_with("networkMode \"bridge\"", |t| {
        t["networkMode"] = json!("bridge")
    });
    fails_with("not `aws2azure serve`", |t| {
        container_mut(t, SIDECAR)["entryPoint"] = json!(["aws2azure-identity"]);
    });
    fails_with("--listen 0.0.0.0:8791", |t| {
        container_mut(t, SIDECAR)["command"][4] = json!("0.0.0.0:8791");
    });
    fails_with("--allow-remote", |t| {
        container_mut(t, SIDECAR)["command"]
            .as_array_mut()
            .unwrap()
            .push(json!("--allow-remote"));
    });
    fails_with("app: maps port 8791", |t| {
        container_mut(t, "app")["portMappings"] = json!([{"containerPort": 8791}]);
    });
    fails_with("aws2azure-identity: not essential", |t| {
        container_mut(t, SIDECAR)["essential"] = json!(false);
    });
    fails_with("no container aws2azure-identity", |t| {
        container_mut(t, SIDECAR)["name"] = json!("identity");
    });
    fails_with("AWS2AZURE_ENDPOINT is None", |t| {
        container_mut(t, SIDECAR)["environment"] = json!([]);
    });
}

#[test]
fn the_application_reaches_the_sidecar_with_its_secret() {
    fails_with("does not reach the sidecar at 127.0.0.1:8791", |t| {
        container_mut(t, "app")["environment"][0]["value"] =
            json!("http://127.0.0.1:8792/msi/token");
    });
    fails_with("asks /token, not the endpoint's /msi/token", |t| {
        container_mut(t, "app")["environment"][0]["value"] = json!("http://127.0.0.1:8791/token");
    });
    fails_with("not a loopback address", |t| {
        container_mut(t, "app")["environment"][0]["value"] =
            json!("http://169.254.170.2:8791/msi/token");
    });
    fails_with("app: IDENTITY_HEADER written in the file", |t| {
        let app = container_mut(t, "app");
        app["secrets"] = json!([]);
        app["environment"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "IDENTITY_HEADER", "value": "0123456789abcdef0123"}));
    });
    fails_with(
        "aws2azure-identity: IDENTITY_HEADER written in the file",
        |t| {
            let sidecar = container_mut(t, SIDECAR);
            sidecar["secrets"] = json!([]);
            sidecar["environment"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "IDENTITY_HEADER", "value": "0123456789abcdef0123"}));
        },
    );
    fails_with("the sidecar's from", |t| {
        container_mut(t, "app")["secrets"][0]["valueFrom"] =
            json!("arn:aws:secretsmanager:us-east-1:111122223333:secret:other-AbCdEf");
    });
    fails_with("app: does not wait for aws2azure-identity", |t| {
        container_mut(t, "app")["dependsOn"] = json!([]);
    });
    fails_with("no application container with IDENTITY_ENDPOINT", |t| {
        container_mut(t, "app")["environment"] = json!([]);
    });
}

#[test]
fn the_configuration_is_written_where_the_sidecar_reads_it() {
    fails_with("does not wait for aws2azure-config", |t| {
        container_mut(t, SIDECAR)["dependsOn"] = json!([]);
    });
    fails_with("mounts no volume holding --config", |t| {
        container_mut(t, SIDECAR)["mountPoints"][0]["containerPath"] = json!("/etc/other");
    });
    fails_with(
        "aws2azure-config: does not mount the sidecar's volume",
        |t| {
            container_mut(t, "aws2azure-config")["mountPoints"][0]["sourceVolume"] = json!("other");
        },
    );
    fails_with("aws2azure-config: does not write", |t| {
        container_mut(t, "aws2azure-config")["command"] = json!(["true"]);
    });
    fails_with("aws2azure-config: essential", |t| {
        container_mut(t, "aws2azure-config")["essential"] = json!(true);
    });
    fails_with(
        "AWS2AZURE_CONFIG: resources: `https://management.core.windows.net/` names profile `vault`",
        |t| {
            let value = &mut container_mut(t, "aws2azure-config")["environment"][0]["value"];
            *value = json!(value.as_str().unwrap().replace("= \"arm\"", "= \"vault\""));
        },
    );
    fails_with("unknown field `sub`", |t| {
        let value = &mut container_mut(t, "aws2azure-config")["environment"][0]["value"];
        *value = json!(value.as_str().unwrap().replace("subject", "sub"));
    });
}
