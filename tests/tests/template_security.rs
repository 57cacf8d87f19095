//! The deployment's security properties, checked on `template.yaml` as
//! cfn-lint's decoder parses it (`cfn_decode.py`, run with the workspace's
//! virtualenv):
//!
//! - no key policy lets anyone but the broker's role sign (or grant), and
//!   the signing key denies signing to every other principal, so a broad
//!   `kms:Sign` in some IAM policy cannot mint assertions;
//! - every API Gateway method (REST, including SAM events and OpenAPI
//!   bodies) requires `AWS_IAM`, and there is no other way in (HTTP API,
//!   function URL without IAM);
//! - the broker's role can be assumed by Lambda only and its policies name
//!   the stack's resources: no `*` resource, no `service:*` action, no
//!   managed policy whose content the template cannot show.
//!
//! The checks fail closed: what they cannot verify (an external OpenAPI
//! file, a `Not*` element) is a violation. Each is shown to fail on a
//! template edited to break it.

use std::sync::OnceLock;

use serde_json::{Value, json};

const DECODE: &str = include_str!("cfn_decode.py");

/// What produces a signature, on any key.
const SIGNING_ACTIONS: [&str; 2] = ["kms:Sign", "kms:GenerateMac"];
/// On a signing key, a grant would hand signing to someone else. (An
/// encryption key keeps CreateGrant for the account: DynamoDB creates its
/// grants with the credentials of whoever creates the table.)
const SIGNING_KEY_ACTIONS: [&str; 3] = ["kms:Sign", "kms:GenerateMac", "kms:CreateGrant"];

/// The decoded template.yaml (decoded once: each test edits its own copy).
fn template() -> Value {
    static DECODED: OnceLock<Value> = OnceLock::new();
    DECODED
        .get_or_init(|| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
            serde_json::from_str(&aws2azure_tests::python::run(DECODE, &[path])).unwrap()
        })
        .clone()
}

/// A scalar or a list, as IAM policies and CloudFormation allow both.
fn items(value: &Value) -> Vec<&Value> {
    match value {
        Value::Null => vec![],
        Value::Array(list) => list.iter().collect(),
        other => vec![other],
    }
}

/// IAM's `*`/`?` wildcards, case-insensitive as action names are. Small
/// enough to write here rather than add a glob crate for one test.
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn actions(statement: &Value) -> Vec<&str> {
    items(&statement["Action"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect()
}

fn grants_any(statement: &Value, wanted: &[&str]) -> bool {
    actions(statement)
        .iter()
        .any(|p| wanted.iter().any(|a| wildcard_matches(p, a)))
}

fn resources<'a>(template: &'a Value, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> {
    template["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(move |(_, r)| r["Type"] == kind)
        .map(|(name, r)| (name.as_str(), &r["Properties"]))
}

/// `!GetAtt ROLE.Arn` in either of its decoded forms.
fn is_arn_of(value: &Value, role: &str) -> bool {
    value == &json!({"Fn::GetAtt": [role, "Arn"]})
        || value == &json!({"Fn::GetAtt": format!("{role}.Arn")})
}

fn statements(document: &Value) -> Vec<&Value> {
    items(&document["Statement"])
}

/// The role of the stack's one function, which must be a role of the stack.
fn broker_role(template: &Value, found: &mut Vec<String>) -> Option<String> {
    let functions: Vec<_> = resources(template, "AWS::Serverless::Function")
        .chain(resources(template, "AWS::Lambda::Function"))
        .collect();
    let [(name, function)] = functions[..] else {
        found.push(format!(
            "expected one function (the broker), found {}",
            functions.len()
        ));
        return None;
    };
    let role = match &function["Role"]["Fn::GetAtt"] {
        Value::Array(parts) if parts.get(1) == Some(&json!("Arn")) => {
            parts[0].as_str().map(str::to_string)
        }
        Value::String(dotted) => dotted.strip_suffix(".Arn").map(str::to_string),
        _ => None,
    };
    match role {
        Some(role) if template["Resources"][&role]["Type"] == "AWS::IAM::Role" => Some(role),
        _ => {
            found.push(format!(
                "{name}: Role must be !GetAtt of a role of the stack"
            ));
            None
        }
    }
}

fn key_policies(template: &Value, role: &str, found: &mut Vec<String>) {
    let keys =
        resources(template, "AWS::KMS::Key").chain(resources(template, "AWS::KMS::ReplicaKey"));
    for (key, props) in keys {
        let policy = &props["KeyPolicy"];
        if policy.is_null() {
            found.push(format!(
                "{key}: no KeyPolicy (the default gives the account kms:*)"
            ));
            continue;
        }
        let signs = matches!(
            props["KeyUsage"].as_str(),
            Some("SIGN_VERIFY" | "GENERATE_VERIFY_MAC")
        );
        let guarded: &[&str] = if signs {
            &SIGNING_KEY_ACTIONS
        } else {
            &SIGNING_ACTIONS
        };
        for statement in statements(policy) {
            let sid = statement["Sid"].as_str().unwrap_or("(no Sid)");
            let allow = statement["Effect"] == "Allow";
            if allow && (!statement["NotAction"].is_null() || !statement["NotPrincipal"].is_null())
            {
                found.push(format!("{key}/{sid}: Allow with NotAction/NotPrincipal"));
            }
            let only_broker = statement["Principal"]
                .get("AWS")
                .is_some_and(|p| items(p).len() == 1 && is_arn_of(items(p)[0], role))
                && statement["Principal"]
                    .as_object()
                    .is_some_and(|o| o.len() == 1);
            if allow && grants_any(statement, guarded) && !only_broker {
                found.push(format!(
                    "{key}/{sid}: grants signing or grants ({:?}) to {}",
                    actions(statement),
                    statement["Principal"]
                ));
            }
        }
        if signs {
            let all = statements(policy);
            if !all
                .iter()
                .any(|s| denies_all_but(s, "kms:Sign", Some(role)))
            {
                found.push(format!(
                    "{key}: no Deny of kms:Sign to every principal but {role} \
                     (Principal \"*\", Resource \"*\", one condition ArnNotEquals aws:PrincipalArn)"
                ));
            }
            if !all
                .iter()
                .any(|s| denies_all_but(s, "kms:CreateGrant", None))
            {
                found.push(format!("{key}: no unconditional Deny of kms:CreateGrant"));
            }
        }
    }
}

/// A Deny of `action` to every principal, with no condition (`except`
/// None) or exactly the one condition that exempts `except`'s role: any
/// further condition would narrow the Deny.
fn denies_all_but(statement: &Value, action: &str, except: Option<&str>) -> bool {
    let everyone = statement["Principal"] == "*" || statement["Principal"] == json!({"AWS": "*"});
    let shape = statement["Effect"] == "Deny"
        && everyone
        && statement["Resource"] == "*"
        && statement["NotAction"].is_null()
        && statement["NotResource"].is_null()
        && grants_any(statement, &[action]);
    let condition = &statement["Condition"];
    let exempt = match except {
        None => condition.is_null(),
        Some(role) => condition.as_object().is_some_and(|operators| {
            operators.len() == 1
                && operators.iter().all(|(operator, keys)| {
                    ["ArnNotEquals", "StringNotEquals"].contains(&operator.as_str())
                        && keys.as_object().is_some_and(|keys| {
                            keys.len() == 1
                                && keys.iter().all(|(k, v)| {
                                    k.eq_ignore_ascii_case("aws:PrincipalArn")
                                        && items(v).len() == 1
                                        && is_arn_of(items(v)[0], role)
                                })
                        })
                })
        }),
    };
    shape && exempt
}

fn apis(template: &Value, found: &mut Vec<String>) {
    for kind in [
        "AWS::Serverless::HttpApi",
        "AWS::ApiGatewayV2::Api",
        "AWS::ApiGatewayV2::Route",
    ] {
        for (name, _) in resources(template, kind) {
            found.push(format!("{name}: {kind} is not the IAM-authorized REST API"));
        }
    }
    for (name, url) in resources(template, "AWS::Lambda::Url") {
        if url["AuthType"] != "AWS_IAM" {
            found.push(format!("{name}: function URL without AWS_IAM"));
        }
    }
    for (name, api) in resources(template, "AWS::Serverless::Api") {
        if api["Auth"]["DefaultAuthorizer"] != "AWS_IAM" {
            found.push(format!("{name}: Auth.DefaultAuthorizer is not AWS_IAM"));
        }
        if !api["Cors"].is_null() && api["Auth"]["AddDefaultAuthorizerToCorsPreflight"] == false {
            found.push(format!("{name}: CORS preflight methods without AWS_IAM"));
        }
        if !api["DefinitionUri"].is_null() {
            found.push(format!("{name}: DefinitionUri cannot be checked here"));
        }
        openapi_operations(name, &api["DefinitionBody"], found);
    }
    for (name, api) in resources(template, "AWS::ApiGateway::RestApi") {
        if !api["BodyS3Location"].is_null() {
            found.push(format!("{name}: BodyS3Location cannot be checked here"));
        }
        openapi_operations(name, &api["Body"], found);
    }
    for (name, method) in resources(template, "AWS::ApiGateway::Method") {
        if method["AuthorizationType"] != "AWS_IAM" {
            found.push(format!("{name}: AuthorizationType is not AWS_IAM"));
        }
    }
    let functions = resources(template, "AWS::Serverless::Function")
        .chain(resources(template, "AWS::Lambda::Function"));
    for (name, function) in functions {
        let url_auth = &function["FunctionUrlConfig"]["AuthType"];
        if !url_auth.is_null() && url_auth != "AWS_IAM" {
            found.push(format!("{name}: function URL without AWS_IAM"));
        }
        for (event, spec) in function["Events"].as_object().into_iter().flatten() {
            let props = &spec["Properties"];
            match spec["Type"].as_str() {
                Some("Api") => {
                    let api = props["RestApiId"]["Ref"].as_str().unwrap_or_default();
                    if template["Resources"][api]["Type"] != "AWS::Serverless::Api" {
                        found.push(format!(
                            "{name}/{event}: no RestApiId of the stack's API (SAM would create an API without auth)"
                        ));
                    }
                    let authorizer = &props["Auth"]["Authorizer"];
                    if !authorizer.is_null() && authorizer != "AWS_IAM" {
                        found.push(format!("{name}/{event}: Auth.Authorizer {authorizer}"));
                    }
                }
                Some("HttpApi") => found.push(format!("{name}/{event}: an HTTP API event")),
                _ => {}
            }
        }
    }
}

/// Every operation of an OpenAPI/Swagger body requires SigV4: a security
/// requirement naming an `awsSigv4` scheme, or `x-amazon-apigateway-auth`
/// of type AWS_IAM.
fn openapi_operations(api: &str, body: &Value, found: &mut Vec<String>) {
    if body.is_null() {
        return;
    }
    let schemes = if body["securityDefinitions"].is_object() {
        &body["securityDefinitions"]
    } else {
        &body["components"]["securitySchemes"]
    };
    let sigv4 = |requirement: &Value| {
        requirement.as_object().is_some_and(|names| {
            !names.is_empty()
                && names
                    .keys()
                    .all(|n| schemes[n]["x-amazon-apigateway-authtype"] == "awsSigv4")
        })
    };
    const METHODS: [&str; 8] = [
        "get",
        "put",
        "post",
        "delete",
        "options",
        "head",
        "patch",
        "x-amazon-apigateway-any-method",
    ];
    for (path, item) in body["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            if !METHODS.contains(&method.to_ascii_lowercase().as_str()) {
                continue;
            }
            let iam = operation["x-amazon-apigateway-auth"]["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("AWS_IAM"));
            let security = if operation["security"].is_null() {
                &body["security"]
            } else {
                &operation["security"]
            };
            let requirements = items(security);
            if !iam && (requirements.is_empty() || !requirements.into_iter().all(&sigv4)) {
                found.push(format!("{api}: {method} {path} does not require AWS_IAM"));
            }
        }
    }
}

fn broker_policies(template: &Value, role: &str, found: &mut Vec<String>) {
    let props = &template["Resources"][role]["Properties"];
    if !items(&props["ManagedPolicyArns"]).is_empty() {
        found.push(format!(
            "{role}: managed policies (their content is not in the template)"
        ));
    }
    for statement in statements(&props["AssumeRolePolicyDocument"]) {
        let lambda_only = statement["Principal"] == json!({"Service": "lambda.amazonaws.com"})
            || statement["Principal"] == json!({"Service": ["lambda.amazonaws.com"]});
        if statement["Effect"] == "Allow" && !lambda_only {
            found.push(format!(
                "{role}: may be assumed by {} (it alone may sign)",
                statement["Principal"]
            ));
        }
    }
    let mut documents: Vec<(String, &Value)> = items(&props["Policies"])
        .into_iter()
        .map(|p| (format!("{role}/{}", p["PolicyName"]), &p["PolicyDocument"]))
        .collect();
    let attached = resources(template, "AWS::IAM::Policy")
        .chain(resources(template, "AWS::IAM::ManagedPolicy"))
        .filter(|(_, p)| items(&p["Roles"]).contains(&&json!({"Ref": role})));
    documents.extend(attached.map(|(name, p)| (name.to_string(), &p["PolicyDocument"])));
    for (name, document) in documents {
        for statement in statements(document) {
            if statement["Effect"] != "Allow" {
                continue;
            }
            if !statement["NotAction"].is_null() || !statement["NotResource"].is_null() {
                found.push(format!("{name}: Allow with NotAction/NotResource"));
            }
            for action in actions(statement) {
                if action == "*" || action.ends_with(":*") {
                    found.push(format!("{name}: action wildcard {action}"));
                }
            }
            for resource in items(&statement["Resource"]) {
                let text = resource
                    .as_str()
                    .or_else(|| resource["Fn::Sub"].as_str())
                    .or_else(|| resource["Fn::Sub"][0].as_str());
                if text.is_some_and(|t| t.contains('*')) {
                    found.push(format!("{name}: wildcard resource {resource}"));
                }
            }
        }
    }
}

/// Everything wrong with `template`, one line each.
fn violations(template: &Value) -> Vec<String> {
    let mut found = vec![];
    if let Some(role) = broker_role(template, &mut found) {
        key_policies(template, &role, &mut found);
        broker_policies(template, &role, &mut found);
    }
    apis(template, &mut found);
    found
}

#[test]
fn the_template_keeps_signing_to_the_broker_and_every_method_behind_iam() {
    let found = violations(&template());
    assert!(found.is_empty(), "template.yaml:\n{}", found.join("\n"));
}

/// `template.yaml` with `edit` applied must show a violation containing
/// `expected`: each check can fail.
fn fails_with(expected: &str, edit: impl FnOnce(&mut Value)) {
    let mut edited = template();
    edit(&mut edited);
    let found = violations(&edited);
    assert!(
        found.iter().any(|f| f.contains(expected)),
        "wanted a violation containing {expected:?}, got {found:#?}"
    );
}

fn statement_mut<'a>(template: &'a mut Value, key: &str, sid: &str) -> &'a mut Value {
    template["Resources"][key]["Properties"]["KeyPolicy"]["Statement"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("{key} has a statement {sid}"))
}

#[test]
fn signing_by_the_account_or_anyone_else_is_a_violation() {
    fails_with("SigningKey/AccountAdministers: grants signing", |t| {
        statement_mut(t, "SigningKey", "AccountAdministers")["Action"] = json!("kms:*");
    });
    fails_with("SigningKey/AccountAdministers: grants signing", |t| {
        statement_mut(t, "SigningKey", "AccountAdministers")["Action"] = json!(["kms:S*"]);
    });
    fails_with("SigningKey/AccountAdministers: grants signing", |t| {
        statement_mut(t, "SigningKey", "AccountAdministers")["Action"] = json!("kms:Create*");
    });
    fails_with("CacheKey/AccountAdministers: grants signing", |t| {
        statement_mut(t, "CacheKey", "AccountAdministers")["Action"] = json!("*");
    });
    fails_with("SigningKey/BrokerSigns: grants signing", |t| {
        statement_mut(t, "SigningKey", "BrokerSigns")["Principal"] = json!({"AWS": "*"});
    });
    fails_with("SigningKey: no KeyPolicy", |t| {
        t["Resources"]["SigningKey"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("KeyPolicy");
    });
}

#[test]
fn a_missing_or_narrowed_deny_is_a_violation() {
    let deny_missing = "SigningKey: no Deny of kms:Sign";
    fails_with(deny_missing, |t| {
        statement_mut(t, "SigningKey", "OnlyTheBrokerSigns")["Effect"] = json!("Allow");
    });
    fails_with(deny_missing, |t| {
        let deny = statement_mut(t, "SigningKey", "OnlyTheBrokerSigns");
        deny["Condition"]["StringEquals"] = json!({"aws:PrincipalAccount": "111122223333"});
    });
    fails_with(deny_missing, |t| {
        let deny = statement_mut(t, "SigningKey", "OnlyTheBrokerSigns");
        deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] = json!("arn:aws:iam::1:role/x");
    });
    fails_with(deny_missing, |t| {
        statement_mut(t, "SigningKey", "OnlyTheBrokerSigns")["Action"] = json!("kms:Verify");
    });
    fails_with(
        "SigningKey: no unconditional Deny of kms:CreateGrant",
        |t| {
            statement_mut(t, "SigningKey", "NoGrants")["Condition"] =
                json!({"Bool": {"kms:GrantIsForAWSResource": "false"}});
        },
    );
}

#[test]
fn a_method_without_aws_iam_is_a_violation() {
    fails_with("TokenApi: Auth.DefaultAuthorizer is not AWS_IAM", |t| {
        t["Resources"]["TokenApi"]["Properties"]["Auth"]["DefaultAuthorizer"] = json!("NONE");
    });
    fails_with("BrokerFunction/Token: Auth.Authorizer", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["Events"]["Token"]["Properties"]["Auth"] =
            json!({"Authorizer": "NONE"});
    });
    fails_with("BrokerFunction/Token: no RestApiId", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["Events"]["Token"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("RestApiId");
    });
    fails_with("Open: AuthorizationType is not AWS_IAM", |t| {
        t["Resources"]["Open"] = json!({"Type": "AWS::ApiGateway::Method",
            "Properties": {"HttpMethod": "GET", "AuthorizationType": "NONE"}});
    });
    fails_with("BrokerFunction: function URL without AWS_IAM", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["FunctionUrlConfig"] =
            json!({"AuthType": "NONE"});
    });
    fails_with("Http: AWS::Serverless::HttpApi", |t| {
        t["Resources"]["Http"] = json!({"Type": "AWS::Serverless::HttpApi", "Properties": {}});
    });
}

#[test]
fn openapi_operations_need_a_sigv4_requirement() {
    let body = json!({
        "swagger": "2.0",
        "securityDefinitions": {"sigv4": {"type": "apiKey", "name": "Authorization",
            "in": "header", "x-amazon-apigateway-authtype": "awsSigv4"}},
        "paths": {"/token/{profile}": {
            "get": {"security": [{"sigv4": []}]},
            "options": {"x-amazon-apigateway-auth": {"type": "AWS_IAM"}},
        }},
    });
    let mut good = template();
    good["Resources"]["TokenApi"]["Properties"]["DefinitionBody"] = body.clone();
    assert_eq!(violations(&good), Vec::<String>::new());

    fails_with(
        "TokenApi: post /token/{profile} does not require AWS_IAM",
        |t| {
            let mut body = body.clone();
            body["paths"]["/token/{profile}"]["post"] = json!({});
            t["Resources"]["TokenApi"]["Properties"]["DefinitionBody"] = body;
        },
    );
    fails_with(
        "TokenApi: get /token/{profile} does not require AWS_IAM",
        |t| {
            let mut body = body.clone();
            body["paths"]["/token/{profile}"]["get"]["security"] = json!([{"api_key": []}]);
            t["Resources"]["TokenApi"]["Properties"]["DefinitionBody"] = body;
        },
    );
    fails_with("TokenApi: DefinitionUri cannot be checked here", |t| {
        t["Resources"]["TokenApi"]["Properties"]["DefinitionUri"] = json!("api.yaml");
    });
}

#[test]
fn broad_or_unverifiable_broker_permissions_are_violations() {
    fn first_statement(t: &mut Value) -> &mut Value {
        &mut t["Resources"]["BrokerPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    }
    fails_with("BrokerPolicy: wildcard resource \"*\"", |t| {
        first_statement(t)["Resource"] = json!("*");
    });
    fails_with("BrokerPolicy: wildcard resource", |t| {
        first_statement(t)["Resource"] =
            json!({"Fn::Sub": "arn:${AWS::Partition}:dynamodb:*:*:table/*"});
    });
    fails_with("BrokerPolicy: action wildcard dynamodb:*", |t| {
        first_statement(t)["Action"] = json!("dynamodb:*");
    });
    fails_with("BrokerPolicy: action wildcard kms:*", |t| {
        first_statement(t)["Action"] = json!(["dynamodb:GetItem", "kms:*"]);
    });
    fails_with("BrokerRole: managed policies", |t| {
        t["Resources"]["BrokerRole"]["Properties"]["ManagedPolicyArns"] =
            json!(["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]);
    });
    fails_with("BrokerRole/\"extra\": wildcard resource", |t| {
        t["Resources"]["BrokerRole"]["Properties"]["Policies"] = json!([{"PolicyName": "extra",
            "PolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "kms:Sign", "Resource": "*"}]}}]);
    });
    fails_with("BrokerRole: may be assumed by", |t| {
        t["Resources"]["BrokerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] =
            json!({"AWS": "arn:aws:iam::111122223333:root"});
    });
}

#[test]
fn wildcards_match_as_iam_does() {
    assert!(wildcard_matches("kms:*", "kms:Sign"));
    assert!(wildcard_matches("KMS:sign", "kms:Sign"));
    assert!(wildcard_matches("kms:Si?n", "kms:Sign"));
    assert!(wildcard_matches("*", "kms:CreateGrant"));
    assert!(!wildcard_matches("kms:Get*", "kms:Sign"));
    assert!(!wildcard_matches("kms:Sign", "kms:SignX"));
}
