//! The deployment's security properties, checked on `template.yaml` as
//! cfn-lint's decoder parses it (`cfn_decode.py`, run with the workspace's
//! virtualenv):
//!
//! - no key policy lets anyone but the broker's role sign (or grant): the
//!   template's keys, and the policy the rotation gives every signing key it
//!   creates (`aws2azure_keys::policy::signing_key_policy`), which denies
//!   signing to every other principal, so a broad `kms:Sign` in some IAM
//!   policy cannot mint assertions; the template manages no signing key or
//!   alias (the rotation does), and passes the rotation the broker's role;
//! - every API Gateway method (REST, including SAM events and OpenAPI
//!   bodies) requires `AWS_IAM`, and there is no other way in (HTTP API,
//!   function URL without IAM);
//! - the broker's role can be assumed by Lambda only and its policies name
//!   the stack's resources: no `*` resource, no `service:*` action, no
//!   managed policy whose content the template cannot show, and no action
//!   beyond the ones it had before the rotation came (its signing rights
//!   come from each key's policy), except `sts:GetWebIdentityToken` for
//!   profiles whose assertions AWS signs, and only for Entra's audience and
//!   tokens of at most 300 s;
//! - the rotation's role never signs, grants, rewrites a key policy or
//!   passes a role, creates only RSA signing keys, touches (tags included)
//!   only keys that already carry its ring's tag (a new key gets its tags
//!   through the key's own policy), disables and deletes only keys stamped
//!   retired, names only the stack's aliases and reads only the
//!   Cloudflare token's secret; one rotation runs at a time; every alarm
//!   notifies the alarm topic through its condition
//!   (`template_security/rotation.rs`);
//! - the credential endpoint's layer is the only layer, arm64, built by
//!   `identity/Makefile` as an external extension `aws2azure-identity`, kept
//!   on stack updates, its ARN an output but no export; no layer runs inside
//!   the broker or the rotation (a layer's code runs with the function's
//!   role), and no permission shares a layer with every AWS account
//!   (`template_security/layer.rs`).
//!
//! The API checks are in `template_security/api.rs`.
//!
//! The checks fail closed: what they cannot verify (an external OpenAPI
//! file, a `Not*` element) is a violation. Each is shown to fail on a
//! template edited to break it.

#[path = "template_security/api.rs"]
mod api;
#[path = "template_security/layer.rs"]
mod layer;
#[path = "template_security/rotation.rs"]
mod rotation;

use std::sync::OnceLock;

use aws2azure_keys::policy::signing_key_policy;
use serde_json::{Value, json};

const DECODE: &str = include_str!("cfn_decode.py");

/// The broker's and the rotation's role ARNs the generated key policy is
/// checked with.
const BROKER_ARN: &str = "arn:aws:iam::111122223333:role/stack-BrokerRole-ABC";
const ROTATION_ARN: &str = "arn:aws:iam::111122223333:role/stack-RotationRole-DEF";

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

/// The broker's role as a key policy names it: `!GetAtt ROLE.Arn` in the
/// template, its ARN in the policy the rotation generates.
#[derive(Clone, Copy)]
enum Broker<'a> {
    Role(&'a str),
    Arn(&'a str),
}

impl Broker<'_> {
    fn is(self, value: &Value) -> bool {
        match self {
            Broker::Role(role) => is_arn_of(value, role),
            Broker::Arn(arn) => value == arn,
        }
    }

    fn name(self) -> String {
        match self {
            Broker::Role(role) => role.to_string(),
            Broker::Arn(arn) => arn.to_string(),
        }
    }
}

/// The role of a function: `!GetAtt ROLE.Arn` of a role of the stack.
fn role_of(
    template: &Value,
    name: &str,
    function: &Value,
    found: &mut Vec<String>,
) -> Option<String> {
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

/// The stack's two functions, the broker and the rotation, and their
/// roles, which must be two different roles of the stack: `(broker,
/// rotation)`.
fn function_roles(template: &Value, found: &mut Vec<String>) -> Option<(String, String)> {
    let functions: Vec<_> = resources(template, "AWS::Serverless::Function")
        .chain(resources(template, "AWS::Lambda::Function"))
        .collect();
    for (name, _) in &functions {
        if !["BrokerFunction", "RotationFunction"].contains(name) {
            found.push(format!(
                "{name}: a function other than BrokerFunction and RotationFunction"
            ));
        }
    }
    let role = |wanted: &str, found: &mut Vec<String>| {
        let Some((name, function)) = functions.iter().find(|(n, _)| *n == wanted) else {
            found.push(format!("no {wanted}"));
            return None;
        };
        role_of(template, name, function, found)
    };
    let broker = role("BrokerFunction", found);
    let rotation = role("RotationFunction", found);
    match (broker, rotation) {
        (Some(broker), Some(rotation)) if broker == rotation => {
            found.push(format!(
                "BrokerFunction and RotationFunction share {broker}: the rotation could sign"
            ));
            None
        }
        (Some(broker), Some(rotation)) => Some((broker, rotation)),
        _ => None,
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
        if signs {
            found.push(format!(
                "{key}: a signing key managed by CloudFormation (RotationFunction creates them; \
                 the stack would move its alias back and delete the key with the stack)"
            ));
        }
        key_policy(key, policy, signs, Broker::Role(role), found);
    }
    for (alias, _) in resources(template, "AWS::KMS::Alias") {
        found.push(format!(
            "{alias}: an alias managed by CloudFormation (RotationFunction moves the aliases)"
        ));
    }
}

/// The rules of one key policy; a signing key's also needs the two Denies.
fn key_policy(key: &str, policy: &Value, signs: bool, broker: Broker<'_>, found: &mut Vec<String>) {
    let guarded: &[&str] = if signs {
        &SIGNING_KEY_ACTIONS
    } else {
        &SIGNING_ACTIONS
    };
    for statement in statements(policy) {
        let sid = statement["Sid"].as_str().unwrap_or("(no Sid)");
        let allow = statement["Effect"] == "Allow";
        if allow && (!statement["NotAction"].is_null() || !statement["NotPrincipal"].is_null()) {
            found.push(format!("{key}/{sid}: Allow with NotAction/NotPrincipal"));
        }
        let only_broker = statement["Principal"]
            .get("AWS")
            .is_some_and(|p| items(p).len() == 1 && broker.is(items(p)[0]))
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
            .any(|s| denies_all_but(s, "kms:Sign", Some(broker)))
        {
            found.push(format!(
                "{key}: no Deny of kms:Sign to every principal but {} \
                 (Principal \"*\", Resource \"*\", one condition ArnNotEquals aws:PrincipalArn)",
                broker.name()
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

/// What is wrong with the key policy the rotation gives a signing key.
fn generated_policy_violations(policy: &Value) -> Vec<String> {
    let mut found = vec![];
    key_policy(
        "signing_key_policy",
        policy,
        true,
        Broker::Arn(BROKER_ARN),
        &mut found,
    );
    found
}

fn generated_policy() -> Value {
    signing_key_policy("aws", "111122223333", BROKER_ARN, ROTATION_ARN)
}

/// A Deny of `action` to every principal, with no condition (`except`
/// None) or exactly the one condition that exempts `except`'s role: any
/// further condition would narrow the Deny.
fn denies_all_but(statement: &Value, action: &str, except: Option<Broker<'_>>) -> bool {
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
        Some(broker) => condition.as_object().is_some_and(|operators| {
            operators.len() == 1
                && operators.iter().all(|(operator, keys)| {
                    ["ArnNotEquals", "StringNotEquals"].contains(&operator.as_str())
                        && keys.as_object().is_some_and(|keys| {
                            keys.len() == 1
                                && keys.iter().all(|(k, v)| {
                                    k.eq_ignore_ascii_case("aws:PrincipalArn")
                                        && items(v).len() == 1
                                        && broker.is(items(v)[0])
                                })
                        })
                })
        }),
    };
    shape && exempt
}

/// The broker's IAM actions when the rotation came (template.yaml of
/// commit 69430f3): the cache table and its own log streams. Signing,
/// including with keys the rotation creates later, comes from each key's
/// policy, never from IAM: the role may narrow, never gain.
const BROKER_ACTIONS: [&str; 6] = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteItem",
    "dynamodb:DescribeTable",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
];

/// The one action the broker's role may gain, for profiles whose
/// assertions STS signs; it names no resource, so its conditions are what
/// bound it.
const WEB_IDENTITY_ACTION: &str = "sts:GetWebIdentityToken";
const AUDIENCE: &str = "api://AzureADTokenExchange";
const MAX_WEB_IDENTITY_SECS: u64 = 300;

/// `sts:GetWebIdentityToken` alone, for Entra's audience only and short
/// tokens only: every audience asked must be Entra's
/// (`ForAllValues:StringEquals`), and the lifetime is capped.
fn web_identity_for_entra(statement: &Value) -> bool {
    let only_action =
        matches!(actions(statement).as_slice(), [a] if a.eq_ignore_ascii_case(WEB_IDENTITY_ACTION));
    let condition = &statement["Condition"];
    let audience = &condition["ForAllValues:StringEquals"]["sts:IdentityTokenAudience"];
    let audience_ok = items(audience) == [&json!(AUDIENCE)]
        && condition["ForAllValues:StringEquals"]
            .as_object()
            .is_some_and(|keys| keys.len() == 1);
    let duration = &condition["NumericLessThanEquals"]["sts:DurationSeconds"];
    let duration_ok = duration
        .as_u64()
        .or_else(|| duration.as_str().and_then(|d| d.parse().ok()))
        .is_some_and(|secs| secs <= MAX_WEB_IDENTITY_SECS);
    only_action
        && audience_ok
        && duration_ok
        && statement["NotAction"].is_null()
        && statement["NotResource"].is_null()
}

/// A role's trust policy admits Lambda only, and it has no managed policy.
fn lambda_role(template: &Value, role: &str, why: &str, found: &mut Vec<String>) {
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
                "{role}: may be assumed by {} ({why})",
                statement["Principal"]
            ));
        }
    }
}

/// Every policy document of `role`: inline, or a policy of the stack that
/// names the role.
fn role_documents<'a>(template: &'a Value, role: &str) -> Vec<(String, &'a Value)> {
    let props = &template["Resources"][role]["Properties"];
    let mut documents: Vec<(String, &Value)> = items(&props["Policies"])
        .into_iter()
        .map(|p| (format!("{role}/{}", p["PolicyName"]), &p["PolicyDocument"]))
        .collect();
    let attached = resources(template, "AWS::IAM::Policy")
        .chain(resources(template, "AWS::IAM::ManagedPolicy"))
        .filter(|(_, p)| items(&p["Roles"]).contains(&&json!({"Ref": role})));
    documents.extend(attached.map(|(name, p)| (name.to_string(), &p["PolicyDocument"])));
    documents
}

/// The text of a resource: a literal, or a `!Sub` template.
fn resource_text(resource: &Value) -> Option<&str> {
    resource
        .as_str()
        .or_else(|| resource["Fn::Sub"].as_str())
        .or_else(|| resource["Fn::Sub"][0].as_str())
}

fn broker_policies(template: &Value, role: &str, found: &mut Vec<String>) {
    lambda_role(template, role, "it alone may sign", found);
    for (name, document) in role_documents(template, role) {
        for statement in statements(document) {
            if statement["Effect"] != "Allow" {
                continue;
            }
            if !statement["NotAction"].is_null() || !statement["NotResource"].is_null() {
                found.push(format!("{name}: Allow with NotAction/NotResource"));
            }
            if web_identity_for_entra(statement) {
                continue;
            }
            for action in actions(statement) {
                if action == "*" || action.ends_with(":*") {
                    found.push(format!("{name}: action wildcard {action}"));
                }
                if action.eq_ignore_ascii_case(WEB_IDENTITY_ACTION) {
                    found.push(format!(
                        "{name}: {action} without the conditions that keep it to Entra \
                         (alone in its statement, audience exactly {AUDIENCE}, \
                         sts:DurationSeconds at most {MAX_WEB_IDENTITY_SECS})"
                    ));
                    continue;
                }
                if !BROKER_ACTIONS
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(action))
                {
                    found.push(format!(
                        "{name}: the broker's role gained {action} (it may keep or drop \
                         {BROKER_ACTIONS:?}, nothing more)"
                    ));
                }
            }
            for resource in items(&statement["Resource"]) {
                if resource_text(resource).is_some_and(|t| t.contains('*')) {
                    found.push(format!("{name}: wildcard resource {resource}"));
                }
            }
        }
    }
}

/// Everything wrong with `template`, one line each.
fn violations(template: &Value) -> Vec<String> {
    let mut found = vec![];
    if let Some((broker, rotation)) = function_roles(template, &mut found) {
        key_policies(template, &broker, &mut found);
        broker_policies(template, &broker, &mut found);
        rotation::rotation_function(template, &broker, &rotation, &mut found);
        rotation::rotation_policies(template, &rotation, &mut found);
    }
    rotation::alarms(template, &mut found);
    api::apis(template, &mut found);
    layer::layers(template, layer::makefile(), &mut found);
    found
}

#[test]
fn the_template_keeps_signing_to_the_broker_and_every_method_behind_iam() {
    let found = violations(&template());
    assert!(found.is_empty(), "template.yaml:\n{}", found.join("\n"));
}

#[test]
fn the_rotations_key_policy_keeps_signing_to_the_broker() {
    let found = generated_policy_violations(&generated_policy());
    assert!(
        found.is_empty(),
        "signing_key_policy:\n{}",
        found.join("\n")
    );
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

/// Likewise for the key policy the rotation generates.
fn policy_fails_with(expected: &str, edit: impl FnOnce(&mut Value)) {
    let mut edited = generated_policy();
    edit(&mut edited);
    let found = generated_policy_violations(&edited);
    assert!(
        found.iter().any(|f| f.contains(expected)),
        "wanted a violation containing {expected:?}, got {found:#?}"
    );
}

fn sid_mut<'a>(policy: &'a mut Value, sid: &str) -> &'a mut Value {
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid}"))
}

fn statement_mut<'a>(template: &'a mut Value, key: &str, sid: &str) -> &'a mut Value {
    sid_mut(
        &mut template["Resources"][key]["Properties"]["KeyPolicy"],
        sid,
    )
}

#[test]
fn signing_by_the_account_or_anyone_else_is_a_violation() {
    let by_account = "signing_key_policy/AccountAdministers: grants signing";
    policy_fails_with(by_account, |p| {
        sid_mut(p, "AccountAdministers")["Action"] = json!("kms:*");
    });
    policy_fails_with(by_account, |p| {
        sid_mut(p, "AccountAdministers")["Action"] = json!(["kms:S*"]);
    });
    policy_fails_with(by_account, |p| {
        sid_mut(p, "AccountAdministers")["Action"] = json!("kms:Create*");
    });
    policy_fails_with("signing_key_policy/BrokerSigns: grants signing", |p| {
        sid_mut(p, "BrokerSigns")["Principal"] = json!({"AWS": "*"});
    });
    policy_fails_with("signing_key_policy/BrokerSigns: grants signing", |p| {
        sid_mut(p, "BrokerSigns")["Principal"] = json!({"AWS": [BROKER_ARN, ROTATION_ARN]});
    });
    policy_fails_with(
        "signing_key_policy/RotationManagesItsKeys: grants signing",
        |p| {
            sid_mut(p, "RotationManagesItsKeys")["Action"] = json!(["kms:DescribeKey", "kms:Sign"]);
        },
    );
    policy_fails_with(
        "signing_key_policy/RotationStampsItsKeys: grants signing or grants",
        |p| {
            sid_mut(p, "RotationStampsItsKeys")["Action"] = json!("kms:CreateGrant");
        },
    );
    fails_with("CacheKey/AccountAdministers: grants signing", |t| {
        statement_mut(t, "CacheKey", "AccountAdministers")["Action"] = json!("*");
    });
    fails_with("CacheKey: no KeyPolicy", |t| {
        t["Resources"]["CacheKey"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("KeyPolicy");
    });
}

#[test]
fn a_missing_or_narrowed_deny_is_a_violation() {
    let deny_missing = "signing_key_policy: no Deny of kms:Sign";
    policy_fails_with(deny_missing, |p| {
        sid_mut(p, "OnlyTheBrokerSigns")["Effect"] = json!("Allow");
    });
    policy_fails_with(deny_missing, |p| {
        let deny = sid_mut(p, "OnlyTheBrokerSigns");
        deny["Condition"]["StringEquals"] = json!({"aws:PrincipalAccount": "111122223333"});
    });
    policy_fails_with(deny_missing, |p| {
        let deny = sid_mut(p, "OnlyTheBrokerSigns");
        deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] = json!(ROTATION_ARN);
    });
    policy_fails_with(deny_missing, |p| {
        sid_mut(p, "OnlyTheBrokerSigns")["Action"] = json!("kms:Verify");
    });
    policy_fails_with(deny_missing, |p| {
        sid_mut(p, "OnlyTheBrokerSigns")["Resource"] = json!("arn:aws:kms:*:*:key/other");
    });
    policy_fails_with(
        "signing_key_policy: no unconditional Deny of kms:CreateGrant",
        |p| {
            sid_mut(p, "NoGrants")["Condition"] =
                json!({"Bool": {"kms:GrantIsForAWSResource": "false"}});
        },
    );
    policy_fails_with(
        "signing_key_policy: no unconditional Deny of kms:CreateGrant",
        |p| {
            let statements = p["Statement"].as_array_mut().unwrap();
            statements.retain(|s| s["Sid"] != "NoGrants");
        },
    );
}

/// The keys and their aliases belong to the rotation: a signing key or an
/// alias managed by CloudFormation is a violation, whatever its policy.
#[test]
fn a_signing_key_or_alias_in_the_template_is_a_violation() {
    let key = json!({"Type": "AWS::KMS::Key", "Properties": {
        "KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY",
        "KeyPolicy": generated_policy(),
    }});
    fails_with("SigningKey: a signing key managed by CloudFormation", |t| {
        t["Resources"]["SigningKey"] = key;
    });
    fails_with("SigningKeyAlias: an alias managed by CloudFormation", |t| {
        t["Resources"]["SigningKeyAlias"] = json!({"Type": "AWS::KMS::Alias", "Properties": {
            "AliasName": {"Fn::Sub": "alias/${AWS::StackName}-current"},
            "TargetKeyId": {"Ref": "SigningKey"},
        }});
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
    fails_with("BrokerPolicy: the broker's role gained kms:Sign", |t| {
        first_statement(t)["Action"] = json!(["dynamodb:GetItem", "kms:Sign"]);
    });
    fails_with(
        "BrokerPolicy: the broker's role gained kms:GetPublicKey",
        |t| {
            let statements =
                t["Resources"]["BrokerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                    .as_array_mut()
                    .unwrap();
            statements.push(json!({"Effect": "Allow", "Action": "kms:GetPublicKey",
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:alias/${AWS::StackName}-current"}}));
        },
    );
    fails_with("Extra: the broker's role gained dynamodb:Scan", |t| {
        t["Resources"]["Extra"] = json!({"Type": "AWS::IAM::Policy", "Properties": {
            "PolicyName": "extra", "Roles": [{"Ref": "BrokerRole"}],
            "PolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "dynamodb:Scan",
                "Resource": {"Fn::GetAtt": ["TokenCache", "Arn"]}}]}}});
    });
    fails_with("BrokerRole: may be assumed by", |t| {
        t["Resources"]["BrokerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] =
            json!({"AWS": "arn:aws:iam::111122223333:root"});
    });
}

#[test]
fn web_identity_tokens_only_for_entra_and_short_lived() {
    fn sts_statement(t: &mut Value) -> &mut Value {
        &mut t["Resources"]["BrokerStsPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    }
    // As shipped it passes (the whole-template test), and its shape is
    // what the check expects.
    let t = template();
    assert_eq!(t["Resources"]["BrokerStsPolicy"]["Condition"], "UsesSts");
    let violation = "BrokerStsPolicy: sts:GetWebIdentityToken without the conditions";
    fails_with(violation, |t| {
        sts_statement(t)["Condition"]
            .as_object_mut()
            .unwrap()
            .remove("ForAllValues:StringEquals");
    });
    fails_with(violation, |t| {
        sts_statement(t)["Condition"]["ForAllValues:StringEquals"]["sts:IdentityTokenAudience"] =
            json!([AUDIENCE, "https://api.example.com"]);
    });
    fails_with(violation, |t| {
        sts_statement(t)["Condition"]["NumericLessThanEquals"]["sts:DurationSeconds"] = json!(3600);
    });
    fails_with(violation, |t| {
        sts_statement(t)["Condition"]
            .as_object_mut()
            .unwrap()
            .remove("NumericLessThanEquals");
    });
    fails_with(
        "BrokerStsPolicy: the broker's role gained sts:AssumeRole",
        |t| {
            sts_statement(t)["Action"] = json!(["sts:GetWebIdentityToken", "sts:AssumeRole"]);
        },
    );
    fails_with("BrokerStsPolicy: action wildcard sts:*", |t| {
        sts_statement(t)["Action"] = json!("sts:*");
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
