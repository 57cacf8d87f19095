//! `deploy/eks/deployment.yaml`: the sidecar in a Kubernetes pod (see the
//! crate's documentation).

use serde_json::{Value, json};

use super::{
    Env, Environment, SIDECAR, assert_found, check_app, check_config, check_serve,
    check_sidecar_env, python, repo_file,
};

const FILE: &str = "deploy/eks/deployment.yaml";

/// Native sidecars (an init container that keeps running) came with 1.29;
/// the newest version `kubernetes-validate` knows stands for the clusters
/// being made today.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "latest"];

/// The manifest's documents as JSON, parsed by PyYAML (safe loader).
const YAML_TO_JSON: &str = r#"
import json, sys, yaml
print(json.dumps(list(yaml.safe_load_all(sys.argv[1]))))
"#;

/// Each document against Kubernetes' own schema, strictly (unknown fields
/// refused), for each version given.
const KUBERNETES_VALIDATE: &str = r#"
import json, sys, kubernetes_validate
documents = json.loads(sys.argv[1])
for version in sys.argv[2:]:
    if version == "latest":
        version = kubernetes_validate.latest_version()
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            sys.exit(f"{version}: {document.get('kind')}: {e.path}: {e.message}")
"#;

fn documents() -> Value {
    let text = repo_file(FILE);
    let json = python(YAML_TO_JSON, &[&text]).unwrap_or_else(|e| panic!("{FILE}: {e}"));
    serde_json::from_str(&json).unwrap()
}

fn kubernetes_validate(documents: &Value) -> Result<String, String> {
    let mut args = vec![documents.to_string()];
    args.extend(KUBERNETES_VERSIONS.map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(KUBERNETES_VALIDATE, &args)
}

fn of_kind<'a>(documents: &'a Value, kind: &str) -> Vec<&'a Value> {
    documents
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn environment(container: &Value) -> Environment {
    let mut env = Environment::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let Some(name) = var["name"].as_str() else {
            continue;
        };
        let secret = &var["valueFrom"]["secretKeyRef"];
        let value = if let Some(value) = var["value"].as_str() {
            Env::Plain(value.into())
        } else if secret.is_object() {
            Env::Secret(format!("{}/{}", secret["name"], secret["key"]))
        } else {
            continue;
        };
        env.insert(name.into(), value);
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

fn violations(documents: &Value) -> Vec<String> {
    let mut found = vec![];
    let deployments = of_kind(documents, "Deployment");
    let [deployment] = deployments[..] else {
        found.push(format!(
            "{FILE}: {} Deployments, not one",
            deployments.len()
        ));
        return found;
    };
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == SIDECAR);
    let Some(sidecar) = sidecar else {
        found.push(format!("{FILE}: no init container {SIDECAR}"));
        return found;
    };
    let at = format!("{FILE}: {SIDECAR}");
    if sidecar["restartPolicy"] != "Always" {
        found.push(format!(
            "{at}: restartPolicy {} (Always makes it a sidecar that keeps serving)",
            sidecar["restartPolicy"]
        ));
    }
    let argv: Vec<String> = strings(&sidecar["command"])
        .into_iter()
        .chain(strings(&sidecar["args"]))
        .collect();
    let listen = check_serve(&at, &argv, &mut found);
    let secret = check_sidecar_env(&at, &environment(sidecar), &mut found);
    let all = pod["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["containers"].as_array())
        .flatten();
    for container in all {
        for port in container["ports"].as_array().into_iter().flatten() {
            let port = port["containerPort"].as_u64();
            if listen.is_some_and(|l| port == Some(u64::from(l.port()))) {
                found.push(format!(
                    "{FILE}: {}: exposes port {} (the endpoint is for the pod alone)",
                    container["name"].as_str().unwrap_or("?"),
                    port.unwrap_or_default()
                ));
            }
        }
    }
    let mut apps = 0;
    for container in pod["containers"].as_array().into_iter().flatten() {
        let env = environment(container);
        if env.contains_key(super::IDENTITY_ENDPOINT) {
            apps += 1;
            let at = format!("{FILE}: {}", container["name"].as_str().unwrap_or("?"));
            check_app(&at, &env, listen, secret.as_deref(), &mut found);
        }
    }
    if apps == 0 {
        found.push(format!(
            "{FILE}: no application container with {}",
            super::IDENTITY_ENDPOINT
        ));
    }
    let account = pod["serviceAccountName"].as_str().unwrap_or_default();
    let accounts = of_kind(documents, "ServiceAccount");
    if !accounts.iter().any(|a| a["metadata"]["name"] == account) {
        found.push(format!(
            "{FILE}: the pod's service account {account:?} is not in the file (its IAM role \
             calls the token API)"
        ));
    }
    if let Some(path) = super::flag(&argv, "--config") {
        config_map(documents, pod, sidecar, path, &mut found);
    }
    found
}

/// `--config` names a key of a ConfigMap mounted into the sidecar, and the
/// key's text is a configuration the endpoint accepts.
fn config_map(
    documents: &Value,
    pod: &Value,
    sidecar: &Value,
    path: &str,
    found: &mut Vec<String>,
) {
    let mount = sidecar["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| {
            let key = path
                .strip_prefix(m["mountPath"].as_str()?)?
                .strip_prefix('/')?;
            Some((m["name"].as_str()?, key))
        });
    let Some((volume, key)) = mount else {
        found.push(format!(
            "{FILE}: {SIDECAR} mounts no volume holding --config {path}"
        ));
        return;
    };
    let map_name = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["configMap"]["name"].as_str());
    let text = of_kind(documents, "ConfigMap")
        .into_iter()
        .find(|m| map_name.is_some_and(|n| m["metadata"]["name"] == n))
        .and_then(|m| m["data"][key].as_str());
    match text {
        Some(text) => check_config(&format!("{FILE}: ConfigMap {key}"), text, found),
        None => found.push(format!(
            "{FILE}: --config {path} is no key of a ConfigMap in the file"
        )),
    }
}

fn deployment_mut(documents: &mut Value) -> &mut Value {
    documents
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["kind"] == "Deployment")
        .unwrap()
}

fn pod_mut(documents: &mut Value) -> &mut Value {
    &mut deployment_mut(documents)["spec"]["template"]["spec"]
}

fn sidecar_mut(documents: &mut Value) -> &mut Value {
    &mut pod_mut(documents)["initContainers"][0]
}

fn app_mut(documents: &mut Value) -> &mut Value {
    &mut pod_mut(documents)["containers"][0]
}

fn fails_with(expected: &str, edit: impl FnOnce(&mut Value)) {
    let mut documents = documents();
    edit(&mut documents);
    assert_found(&violations(&documents), expected);
}

#[test]
fn the_manifests_agree_with_the_code_and_kubernetes_schemas() {
    let documents = documents();
    assert_eq!(violations(&documents), Vec::<String>::new());
    kubernetes_validate(&documents).unwrap_or_else(|e| panic!("{FILE}: {e}"));
}

#[test]
fn kubernetes_schemas_refuse_a_broken_manifest() {
    let mut documents = documents();
    sidecar_mut(&mut documents)["volumeMounts"][0]["mountPth"] = json!("/etc/aws2azure");
    let error = kubernetes_validate(&documents).unwrap_err();
    assert!(error.contains("mountPth"), "{error}");
    let mut documents = self::documents();
    app_mut(&mut documents)["env"][0]["value"] = json!(8791);
    let error = kubernetes_validate(&documents).unwrap_err();
    assert!(error.contains("8791"), "{error}");
}

#[test]
fn the_sidecar_runs_aws2azure_serve_on_loopback_only() {
    fails_with("restartPolicy null", |d| {
        sidecar_mut(d)
            .as_object_mut()
            .unwrap()
            .remove("restartPolicy");
    });
    fails_with("not `aws2azure serve`", |d| {
        sidecar_mut(d)["args"][0] = json!("dev");
    });
    fails_with("--listen 0.0.0.0:8791", |d| {
        sidecar_mut(d)["args"][4] = json!("0.0.0.0:8791");
    });
    fails_with("app: exposes port 8791", |d| {
        app_mut(d)["ports"] = json!([{"containerPort": 8791}]);
    });
    fails_with("no init container aws2azure-identity", |d| {
        sidecar_mut(d)["name"] = json!("identity");
    });
    fails_with("the pod's service account \"default\"", |d| {
        pod_mut(d)["serviceAccountName"] = json!("default");
    });
    fails_with(
        "aws2azure-identity: IDENTITY_HEADER written in the file",
        |d| {
            sidecar_mut(d)["env"][1] =
                json!({"name": "IDENTITY_HEADER", "value": "0123456789abcdef0123"});
        },
    );
}

#[test]
fn the_application_reaches_the_sidecar_with_its_secret() {
    fails_with("does not reach the sidecar at 127.0.0.1:8791", |d| {
        app_mut(d)["env"][0]["value"] = json!("http://localhost:9000/msi/token");
    });
    fails_with("not a plain http URL", |d| {
        app_mut(d)["env"][0]["value"] = json!("https://127.0.0.1:8791/msi/token");
    });
    fails_with("app: IDENTITY_HEADER written in the file", |d| {
        app_mut(d)["env"][1] = json!({"name": "IDENTITY_HEADER", "value": "0123456789abcdef0123"});
    });
    fails_with("the sidecar's from", |d| {
        app_mut(d)["env"][1]["valueFrom"]["secretKeyRef"]["name"] = json!("other");
    });
    fails_with("no application container with IDENTITY_ENDPOINT", |d| {
        app_mut(d)["env"] = json!([]);
    });
}

#[test]
fn the_configuration_is_a_mounted_config_map_the_endpoint_accepts() {
    fails_with("mounts no volume holding --config", |d| {
        sidecar_mut(d)["volumeMounts"][0]["mountPath"] = json!("/config");
    });
    fails_with("is no key of a ConfigMap", |d| {
        pod_mut(d)["volumes"][0]["configMap"]["name"] = json!("other");
    });
    fails_with(
        "ConfigMap aws2azure.toml: resources: `https://management.core.windows.net/` names profile `vault`",
        |d| {
            let map = d
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|m| m["kind"] == "ConfigMap")
                .unwrap();
            let text = map["data"]["aws2azure.toml"]
                .as_str()
                .unwrap()
                .replace("= \"arm\"", "= \"vault\"");
            map["data"]["aws2azure.toml"] = json!(text);
        },
    );
}
