//! `deploy/lambda/template.yaml`: a workload function with the extension's
//! layer (see the crate's documentation).

use serde_json::{Value, json};

use aws2azure_identity::IdentityHeader;

use super::{
    Env, Environment, IDENTITY_ENDPOINT, IDENTITY_HEADER, PROFILES, TOKEN_API, assert_found,
    check_app,
};

const FILE: &str = "deploy/lambda/template.yaml";
const DECODE: &str = include_str!("../cfn_decode.py");
/// The stack's layer, in `template.yaml`.
const LAYER: &str = "IdentityExtensionLayer";

/// A template as cfn-lint's decoder reads it.
fn decode(path: &str) -> Value {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&aws2azure_tests::python::run(DECODE, &[&full])).unwrap()
}

/// The `!Ref`'d parameter of a value, if it is one.
fn parameter<'a>(template: &'a Value, value: &Value) -> Option<(&'a str, &'a Value)> {
    let name = value["Ref"].as_str()?;
    let (name, parameter) = template["Parameters"].as_object()?.get_key_value(name)?;
    Some((name.as_str(), parameter))
}

fn violations(workload: &Value, stack: &Value) -> Vec<String> {
    let mut found = vec![];
    let functions: Vec<(&String, &Value)> = workload["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .collect();
    let [(name, function)] = functions[..] else {
        found.push(format!("{FILE}: {} functions, not one", functions.len()));
        return found;
    };
    let at = format!("{FILE}: {name}");
    let props = &function["Properties"];
    let layer = &stack["Resources"][LAYER]["Properties"];

    let layers: Vec<&Value> = props["Layers"].as_array().into_iter().flatten().collect();
    if !layers
        .iter()
        .any(|l| parameter(workload, l).is_some_and(|(n, _)| n == "IdentityLayerArn"))
    {
        found.push(format!(
            "{at}: Layers {} without !Ref IdentityLayerArn (the stack's output {LAYER}Arn)",
            props["Layers"]
        ));
    }
    if props["Architectures"] != layer["CompatibleArchitectures"] {
        found.push(format!(
            "{at}: Architectures {} but the layer is built for {}",
            props["Architectures"], layer["CompatibleArchitectures"]
        ));
    }
    let runtimes = layer["CompatibleRuntimes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !runtimes.contains(&props["Runtime"]) {
        found.push(format!(
            "{at}: Runtime {} is not among the layer's CompatibleRuntimes",
            props["Runtime"]
        ));
    }

    let variables = props["Environment"]["Variables"].as_object();
    let mut env = Environment::new();
    for (name, value) in variables.into_iter().flatten() {
        let value = match (value.as_str(), parameter(workload, value)) {
            (Some(text), _) => Env::Plain(text.into()),
            // A NoEcho parameter is the closest to a secret store a
            // function's environment has: not shown by CloudFormation.
            (None, Some((p, spec))) if spec["NoEcho"] == true => Env::Secret(p.into()),
            (None, Some((p, _))) => Env::Plain(format!("!Ref {p}")),
            (None, None) => Env::Plain(value.to_string()),
        };
        env.insert(name.clone(), value);
    }
    check_app(&at, &env, None, None, &mut found);
    for variable in [TOKEN_API, PROFILES] {
        let given = variables.and_then(|v| v.get(variable));
        if given.and_then(|v| parameter(workload, v)).is_none() {
            found.push(format!(
                "{at}: {variable} is {given:?}, not a parameter (the stack's output or Profiles)"
            ));
        }
    }
    header_parameter(
        workload,
        &at,
        variables.and_then(|v| v.get(IDENTITY_HEADER)),
        &mut found,
    );
    invoke_permission(&at, props, &mut found);
    found
}

/// The header secret's parameter allows exactly the lengths the endpoint
/// accepts ([`IdentityHeader::parse`], asked here rather than copied).
fn header_parameter(workload: &Value, at: &str, value: Option<&Value>, found: &mut Vec<String>) {
    let Some((name, spec)) = value.and_then(|v| parameter(workload, v)) else {
        return;
    };
    let accepts = |len: u64| {
        usize::try_from(len)
            .is_ok_and(|len| IdentityHeader::parse(IDENTITY_HEADER, &"x".repeat(len)).is_ok())
    };
    let exact = match (spec["MinLength"].as_u64(), spec["MaxLength"].as_u64()) {
        (Some(min), Some(max)) => {
            min > 0 && !accepts(min - 1) && accepts(min) && accepts(max) && !accepts(max + 1)
        }
        _ => false,
    };
    if !exact {
        found.push(format!(
            "{at}: parameter {name} allows {}..{} characters, not the lengths the endpoint accepts",
            spec["MinLength"], spec["MaxLength"]
        ));
    }
}

/// `execute-api:Invoke` on named profiles' token paths, never the whole API.
fn invoke_permission(at: &str, props: &Value, found: &mut Vec<String>) {
    let statements = props["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["Statement"].as_array().into_iter().flatten());
    let mut paths = vec![];
    for statement in statements {
        if statement["Effect"] != "Allow" || statement["Action"] != "execute-api:Invoke" {
            continue;
        }
        for resource in statement["Resource"].as_array().into_iter().flatten() {
            let text = resource["Fn::Sub"]
                .as_str()
                .or(resource.as_str())
                .unwrap_or("");
            match text.split_once("/GET/token/") {
                Some((_, profile)) if !profile.is_empty() && !profile.contains('*') => {
                    paths.push(text.to_string());
                }
                _ => found.push(format!(
                    "{at}: execute-api:Invoke on {resource} (name each profile's GET /token/PROFILE)"
                )),
            }
        }
    }
    if paths.is_empty() {
        found.push(format!(
            "{at}: no execute-api:Invoke on a profile's token path (the extension calls the \
             token API with the function's role)"
        ));
    }
}

fn fails_with(expected: &str, edit: impl FnOnce(&mut Value)) {
    let mut workload = decode(FILE);
    edit(&mut workload);
    assert_found(&violations(&workload, &decode("template.yaml")), expected);
}

fn props_mut(workload: &mut Value) -> &mut Value {
    &mut workload["Resources"]["AppFunction"]["Properties"]
}

fn variables_mut(workload: &mut Value) -> &mut Value {
    &mut props_mut(workload)["Environment"]["Variables"]
}

#[test]
fn the_workload_template_agrees_with_the_code_and_the_layer() {
    let found = violations(&decode(FILE), &decode("template.yaml"));
    assert_eq!(found, Vec::<String>::new());
    // And it reads as the Lambda extension's contract says.
    let variables =
        &decode(FILE)["Resources"]["AppFunction"]["Properties"]["Environment"]["Variables"];
    for name in [IDENTITY_ENDPOINT, IDENTITY_HEADER, TOKEN_API, PROFILES] {
        assert!(!variables[name].is_null(), "{FILE}: no {name}");
    }
}

#[test]
fn the_function_attaches_the_layer_it_can_run() {
    fails_with("without !Ref IdentityLayerArn", |w| {
        props_mut(w)["Layers"] = json!([]);
    });
    fails_with(
        "Architectures [\"x86_64\"] but the layer is built for [\"arm64\"]",
        |w| {
            props_mut(w)["Architectures"] = json!(["x86_64"]);
        },
    );
    fails_with("Runtime \"python3.9\" is not among", |w| {
        props_mut(w)["Runtime"] = json!("python3.9");
    });
    fails_with("2 functions, not one", |w| {
        let function = w["Resources"]["AppFunction"].clone();
        w["Resources"]["Other"] = function;
    });
}

#[test]
fn the_environment_reaches_the_extension_with_a_hidden_secret() {
    fails_with("not a loopback address", |w| {
        variables_mut(w)[IDENTITY_ENDPOINT] = json!("http://10.0.0.1:8791/msi/token");
    });
    fails_with("asks /token, not the endpoint's /msi/token", |w| {
        variables_mut(w)[IDENTITY_ENDPOINT] = json!("http://127.0.0.1:8791/token");
    });
    fails_with("IDENTITY_HEADER written in the file", |w| {
        variables_mut(w)[IDENTITY_HEADER] = json!("0123456789abcdef0123");
    });
    fails_with("IDENTITY_HEADER written in the file", |w| {
        w["Parameters"]["IdentityHeader"]
            .as_object_mut()
            .unwrap()
            .remove("NoEcho");
    });
    fails_with("allows 8..256 characters, not the lengths", |w| {
        w["Parameters"]["IdentityHeader"]["MinLength"] = json!(8);
    });
    fails_with("allows 16..1024 characters, not the lengths", |w| {
        w["Parameters"]["IdentityHeader"]["MaxLength"] = json!(1024);
    });
    fails_with("allows 16..null characters, not the lengths", |w| {
        w["Parameters"]["IdentityHeader"]
            .as_object_mut()
            .unwrap()
            .remove("MaxLength");
    });
    fails_with("AWS2AZURE_ENDPOINT is", |w| {
        variables_mut(w)[TOKEN_API] =
            json!("https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/prod");
    });
    fails_with("AWS2AZURE_PROFILES is None", |w| {
        variables_mut(w).as_object_mut().unwrap().remove(PROFILES);
    });
}

#[test]
fn the_role_invokes_named_profiles_only() {
    fails_with("execute-api:Invoke on", |w| {
        props_mut(w)["Policies"][0]["Statement"][0]["Resource"] = json!(["*"]);
    });
    fails_with("execute-api:Invoke on", |w| {
        props_mut(w)["Policies"][0]["Statement"][0]["Resource"] = json!([{"Fn::Sub":
            "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${TokenApiId}/${StageName}/GET/token/*"}]);
    });
    fails_with("no execute-api:Invoke on a profile's token path", |w| {
        props_mut(w)["Policies"] = json!([]);
    });
}
