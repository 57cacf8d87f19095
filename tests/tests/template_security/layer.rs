//! The credential endpoint's Lambda layer (see the crate's documentation):
//! what `sam build` makes of it and what a function that attaches it gets,
//! checked against `identity/Makefile`, which builds it.

use std::sync::OnceLock;

use serde_json::{Value, json};

use super::{fails_with, items, resources, template, violations};

/// The layer's logical id: `sam build` runs the Makefile target
/// `build-` + this id, so the two must agree.
const LAYER: &str = "IdentityExtensionLayer";
/// The extension's executable, `/opt/extensions/` + this in a function.
const EXTENSION: &str = "aws2azure-identity";
/// Lambda refuses more compatible runtimes than this.
const MAX_RUNTIMES: usize = 15;

/// `identity/Makefile` as committed (read once).
pub(super) fn makefile() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../identity/Makefile");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    })
}

pub(super) fn layers(template: &Value, makefile: &str, found: &mut Vec<String>) {
    no_layer_on_the_stacks_functions(template, found);
    public_layer_permissions(template, found);
    let others = resources(template, "AWS::Serverless::LayerVersion")
        .chain(resources(template, "AWS::Lambda::LayerVersion"))
        .filter(|(name, _)| *name != LAYER);
    for (name, _) in others {
        found.push(format!(
            "{name}: a layer other than {LAYER} (nothing builds or checks it)"
        ));
    }
    let resource = &template["Resources"][LAYER];
    if resource["Type"] != "AWS::Serverless::LayerVersion" {
        found.push(format!(
            "no {LAYER} (AWS::Serverless::LayerVersion): the credential endpoint's layer"
        ));
        return;
    }
    let props = &resource["Properties"];
    if props["CompatibleArchitectures"] != json!(["arm64"]) {
        found.push(format!(
            "{LAYER}: CompatibleArchitectures {} (must be [arm64], what identity/Makefile builds)",
            props["CompatibleArchitectures"]
        ));
    }
    let metadata = &resource["Metadata"];
    if metadata["BuildMethod"] != "makefile" || metadata["BuildArchitecture"] != "arm64" {
        found.push(format!(
            "{LAYER}: Metadata {metadata} (must be BuildMethod makefile, BuildArchitecture arm64)"
        ));
    }
    if props["ContentUri"] != "identity/" {
        found.push(format!(
            "{LAYER}: ContentUri {} (must be identity/, where its Makefile is)",
            props["ContentUri"]
        ));
    }
    let runtimes = items(&props["CompatibleRuntimes"]);
    if !runtimes.contains(&&json!("provided.al2023")) {
        found.push(format!(
            "{LAYER}: CompatibleRuntimes without provided.al2023"
        ));
    }
    if runtimes.len() > MAX_RUNTIMES {
        found.push(format!(
            "{LAYER}: {} CompatibleRuntimes (Lambda takes at most {MAX_RUNTIMES})",
            runtimes.len()
        ));
    }
    if props["RetentionPolicy"] != "Retain" {
        found.push(format!(
            "{LAYER}: RetentionPolicy {} (must be Retain: a stack update would delete the \
             version functions were deployed with)",
            props["RetentionPolicy"]
        ));
    }
    layer_output(template, found);
    makefile_builds_the_layer(makefile, found);
}

/// A layer's extension runs inside the function with the function's role:
/// on the broker it could sign, on the rotation delete keys.
fn no_layer_on_the_stacks_functions(template: &Value, found: &mut Vec<String>) {
    let functions = resources(template, "AWS::Serverless::Function")
        .chain(resources(template, "AWS::Lambda::Function"));
    for (name, function) in functions {
        if !items(&function["Layers"]).is_empty() {
            found.push(format!(
                "{name}: Layers {} (a layer's code runs with the function's role)",
                function["Layers"]
            ));
        }
    }
    if !items(&template["Globals"]["Function"]["Layers"]).is_empty() {
        found
            .push("Globals: Function Layers (a layer's code runs with the function's role)".into());
    }
}

/// Sharing the layer is the operator's choice, but never with every AWS
/// account: Principal `*` needs an OrganizationId.
fn public_layer_permissions(template: &Value, found: &mut Vec<String>) {
    for (name, permission) in resources(template, "AWS::Lambda::LayerVersionPermission") {
        if permission["Principal"] == "*" && permission["OrganizationId"].is_null() {
            found.push(format!(
                "{name}: shares a layer with every AWS account (Principal \"*\" without \
                 OrganizationId)"
            ));
        }
    }
}

/// The layer's version ARN is an output, and not an export: every build
/// publishes a new version, and an export cannot change while another
/// stack imports it, so the next deploy would fail.
fn layer_output(template: &Value, found: &mut Vec<String>) {
    let reference = json!({"Ref": LAYER});
    let outputs: Vec<_> = template["Outputs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, o)| o["Value"] == reference)
        .collect();
    if outputs.is_empty() {
        found.push(format!("no output with the value !Ref {LAYER} (its ARN)"));
    }
    for (name, output) in outputs {
        if !output["Export"].is_null() {
            found.push(format!(
                "Outputs/{name}: exported (an imported export cannot change; every build \
                 makes a new layer version)"
            ));
        }
    }
}

/// The recipe `sam build` runs: the target named after the layer, an
/// external extension of that name, for arm64, into ARTIFACTS_DIR.
fn makefile_builds_the_layer(makefile: &str, found: &mut Vec<String>) {
    let target = format!("build-{LAYER}:");
    let Some(recipe) = makefile
        .split_once(&format!("\n{target}"))
        .map(|(_, after)| after)
    else {
        found.push(format!(
            "identity/Makefile: no target {target} (sam build runs build-LOGICAL_ID)"
        ));
        return;
    };
    // The recipe: its tab-indented lines, continuations included.
    let recipe: String = recipe
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('\t'))
        .collect::<Vec<_>>()
        .join("\n");
    let words: Vec<&str> = recipe
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter(|w| !w.is_empty())
        .collect();
    let has = |wanted: &[&str]| words.windows(wanted.len()).any(|w| w == wanted);
    for wanted in [
        &["cargo", "lambda", "build"][..],
        &["--extension"],
        &["--release"],
        &["--locked"],
        &["--bin", EXTENSION],
        &["--lambda-dir", "\"$(ARTIFACTS_DIR)\""],
    ] {
        if !has(wanted) {
            found.push(format!(
                "identity/Makefile: {target} does not run {}",
                wanted.join(" ")
            ));
        }
    }
    if has(&["--internal"]) {
        found.push(format!(
            "identity/Makefile: {target} builds an internal extension"
        ));
    }
    let arm64 = makefile
        .lines()
        .any(|l| l.starts_with("TARGET ?= aarch64-unknown-linux-gnu"));
    if !arm64 {
        found.push("identity/Makefile: TARGET is not aarch64-unknown-linux-gnu by default".into());
    }
}

#[test]
fn the_layer_is_arm64_built_by_its_makefile_and_kept() {
    fails_with("IdentityExtensionLayer: CompatibleArchitectures", |t| {
        t["Resources"][LAYER]["Properties"]["CompatibleArchitectures"] = json!(["x86_64"]);
    });
    fails_with("IdentityExtensionLayer: CompatibleArchitectures", |t| {
        t["Resources"][LAYER]["Properties"]["CompatibleArchitectures"] = json!(["arm64", "x86_64"]);
    });
    fails_with("IdentityExtensionLayer: Metadata", |t| {
        t["Resources"][LAYER]["Metadata"]["BuildArchitecture"] = json!("x86_64");
    });
    fails_with("IdentityExtensionLayer: Metadata", |t| {
        t["Resources"][LAYER]["Metadata"]["BuildMethod"] = json!("provided.al2023");
    });
    fails_with("IdentityExtensionLayer: ContentUri", |t| {
        t["Resources"][LAYER]["Properties"]["ContentUri"] = json!(".");
    });
    fails_with("IdentityExtensionLayer: RetentionPolicy", |t| {
        t["Resources"][LAYER]["Properties"]["RetentionPolicy"] = json!("Delete");
    });
    fails_with("IdentityExtensionLayer: RetentionPolicy null", |t| {
        t["Resources"][LAYER]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("RetentionPolicy");
    });
    fails_with("no IdentityExtensionLayer", |t| {
        t["Resources"].as_object_mut().unwrap().remove(LAYER);
    });
    fails_with("Other: a layer other than IdentityExtensionLayer", |t| {
        t["Resources"]["Other"] = json!({"Type": "AWS::Lambda::LayerVersion",
            "Properties": {"Content": {"S3Bucket": "b", "S3Key": "k"}}});
    });
}

#[test]
fn the_layers_runtimes_include_al2023_and_stay_within_lambdas_limit() {
    fails_with("CompatibleRuntimes without provided.al2023", |t| {
        t["Resources"][LAYER]["Properties"]["CompatibleRuntimes"] = json!(["python3.13"]);
    });
    fails_with("16 CompatibleRuntimes (Lambda takes at most 15)", |t| {
        let runtimes = t["Resources"][LAYER]["Properties"]["CompatibleRuntimes"]
            .as_array_mut()
            .unwrap();
        while runtimes.len() < 16 {
            runtimes.push(json!("java8.al2"));
        }
    });
}

#[test]
fn the_layers_arn_is_an_output_and_not_an_export() {
    fails_with(
        "no output with the value !Ref IdentityExtensionLayer",
        |t| {
            t["Outputs"]
                .as_object_mut()
                .unwrap()
                .retain(|_, o| o["Value"] != json!({"Ref": LAYER}));
        },
    );
    fails_with("Outputs/IdentityExtensionLayerArn: exported", |t| {
        t["Outputs"]["IdentityExtensionLayerArn"]["Export"] =
            json!({"Name": {"Fn::Sub": "${AWS::StackName}-identity-layer"}});
    });
}

#[test]
fn no_layer_runs_inside_the_broker_or_the_rotation() {
    fails_with("BrokerFunction: Layers", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["Layers"] = json!([{"Ref": LAYER}]);
    });
    fails_with("RotationFunction: Layers", |t| {
        t["Resources"]["RotationFunction"]["Properties"]["Layers"] =
            json!(["arn:aws:lambda:us-east-1:111122223333:layer:other:1"]);
    });
    fails_with("Globals: Function Layers", |t| {
        t["Globals"] = json!({"Function": {"Layers": [{"Ref": LAYER}]}});
    });
}

#[test]
fn the_layer_is_never_shared_with_every_account() {
    let permission = |org: Option<&str>| {
        let mut props = json!({"Action": "lambda:GetLayerVersion",
            "LayerVersionArn": {"Ref": LAYER}, "Principal": "*"});
        if let Some(org) = org {
            props["OrganizationId"] = json!(org);
        }
        json!({"Type": "AWS::Lambda::LayerVersionPermission", "Properties": props})
    };
    fails_with("Everyone: shares a layer with every AWS account", |t| {
        t["Resources"]["Everyone"] = permission(None);
    });
    let mut shared = template();
    shared["Resources"]["Organization"] = permission(Some("o-a1b2c3d4e5"));
    assert_eq!(violations(&shared), Vec::<String>::new());
}

/// `layers` on the committed template with `makefile` instead of the
/// committed Makefile.
fn makefile_fails_with(expected: &str, makefile: &str) {
    let mut found = vec![];
    layers(&template(), makefile, &mut found);
    assert!(
        found.iter().any(|f| f.contains(expected)),
        "wanted a violation containing {expected:?}, got {found:#?}"
    );
}

#[test]
fn the_makefile_builds_the_extension_the_layer_ships() {
    let committed = makefile();
    let mut found = vec![];
    makefile_builds_the_layer(committed, &mut found);
    assert_eq!(found, Vec::<String>::new());

    makefile_fails_with(
        "no target build-IdentityExtensionLayer:",
        &committed.replace("build-IdentityExtensionLayer:", "build-Layer:"),
    );
    makefile_fails_with(
        "does not run --extension",
        &committed.replace("--extension", ""),
    );
    makefile_fails_with(
        "does not run --bin aws2azure-identity",
        &committed.replace("--bin aws2azure-identity", "--bin bootstrap"),
    );
    makefile_fails_with(
        "does not run --lambda-dir \"$(ARTIFACTS_DIR)\"",
        &committed.replace("--lambda-dir \"$(ARTIFACTS_DIR)\"", "--lambda-dir out"),
    );
    makefile_fails_with("does not run --locked", &committed.replace("--locked", ""));
    makefile_fails_with(
        "builds an internal extension",
        &committed.replace("--extension", "--extension --internal"),
    );
    makefile_fails_with(
        "TARGET is not aarch64-unknown-linux-gnu",
        &committed.replace(
            "TARGET ?= aarch64-unknown-linux-gnu",
            "TARGET ?= x86_64-unknown-linux-gnu",
        ),
    );
}
