//! The rotation's function and role, and the alarms (see the crate's
//! documentation). The role's checks are an allow-list: an action not named
//! here, or one of them without the conditions that scope it, is a
//! violation.

use serde_json::{Value, json};

use super::{
    actions, fails_with, is_arn_of, items, lambda_role, resource_text, resources, role_documents,
    statements, wildcard_matches,
};

/// Never on the rotation's role, whatever the resource or condition.
const FORBIDDEN: [&str; 6] = [
    "kms:Sign",
    "kms:GenerateMac",
    "kms:PutKeyPolicy",
    "kms:CreateGrant",
    "iam:PassRole",
    "*",
];

/// Operations on keys that must stay within the ring (tag
/// `aws2azure:ring` = the stack's name).
const RING_KEY_ACTIONS: [&str; 5] = [
    "kms:DescribeKey",
    "kms:GetPublicKey",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
];
const ALIAS_ACTIONS: [&str; 3] = ["kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias"];
const RETIRE_ACTIONS: [&str; 2] = ["kms:DisableKey", "kms:ScheduleKeyDeletion"];

const KEYS: &str = "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/*";
const ALIAS_PREFIX: &str =
    "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:alias/${AWS::StackName}-";

fn stack_name() -> Value {
    json!({"Ref": "AWS::StackName"})
}

/// `Condition.OPERATOR.KEY` of a statement, if set.
fn condition<'a>(statement: &'a Value, operator: &str, key: &str) -> Option<&'a Value> {
    statement["Condition"][operator].get(key)
}

/// The key must be tagged with this stack's ring.
fn on_ring_keys(statement: &Value) -> bool {
    condition(statement, "StringEquals", "aws:ResourceTag/aws2azure:ring") == Some(&stack_name())
}

/// `StringEquals` `key` is exactly `value`: one value, so the condition
/// admits nothing else.
fn equals_only(statement: &Value, key: &str, value: &str) -> bool {
    condition(statement, "StringEquals", key)
        .is_some_and(|v| matches!(items(v)[..], [only] if only == value))
}

/// `kms:CreateKey` makes RSA 2048 signing keys only. (It carries no tags:
/// tags there would need `kms:TagResource` on keys with no tag yet, which
/// the tagging check refuses.)
fn creates_signing_keys_only(statement: &Value) -> bool {
    equals_only(statement, "kms:KeySpec", "RSA_2048")
        && equals_only(statement, "kms:KeyUsage", "SIGN_VERIFY")
}

/// Every tag key of the request is an `aws2azure:` one.
fn only_own_tag_keys(statement: &Value) -> bool {
    condition(statement, "ForAllValues:StringLike", "aws:TagKeys").is_some_and(|keys| {
        let keys = items(keys);
        !keys.is_empty()
            && keys.iter().all(|k| {
                k.as_str()
                    .is_some_and(|k| k.starts_with("aws2azure:") && k.len() > "aws2azure:".len())
            })
    })
}

fn retired_only(statement: &Value) -> bool {
    condition(statement, "Null", "aws:ResourceTag/aws2azure:retired-at") == Some(&json!("false"))
}

/// Resources are keys of this account and Region (a tag condition then
/// picks the ring's).
fn on_keys(statement: &Value) -> bool {
    let resources = items(&statement["Resource"]);
    !resources.is_empty() && resources.iter().all(|r| resource_text(r) == Some(KEYS))
}

pub(super) fn rotation_policies(template: &Value, role: &str, found: &mut Vec<String>) {
    lambda_role(template, role, "it creates and deletes the keys", found);
    let log_group =
        template["Resources"]["RotationFunction"]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
            .as_str()
            .unwrap_or_default();
    for (name, document) in role_documents(template, role) {
        for statement in statements(document) {
            if statement["Effect"] != "Allow" {
                continue;
            }
            let sid = statement["Sid"].as_str().unwrap_or("(no Sid)");
            let at = format!("{name}/{sid}");
            if !statement["NotAction"].is_null() || !statement["NotResource"].is_null() {
                found.push(format!("{at}: Allow with NotAction/NotResource"));
            }
            let resources = items(&statement["Resource"]);
            for action in actions(statement) {
                if action.contains(['*', '?']) {
                    found.push(format!("{at}: wildcard action {action}"));
                }
                if let Some(never) = FORBIDDEN.iter().find(|f| wildcard_matches(action, f)) {
                    found.push(format!("{at}: the rotation's role may {never} ({action})"));
                    continue;
                }
                let is = |list: &[&str]| list.iter().any(|a| a.eq_ignore_ascii_case(action));
                if action.eq_ignore_ascii_case("kms:CreateKey") {
                    if !creates_signing_keys_only(statement) {
                        found.push(format!(
                            "{at}: kms:CreateKey of keys other than RSA signing keys \
                             (StringEquals kms:KeySpec = RSA_2048 and kms:KeyUsage = \
                             SIGN_VERIFY)"
                        ));
                    }
                } else if action.eq_ignore_ascii_case("kms:ListAliases") {
                    // Names no resource; reveals alias names only.
                } else if is(&RETIRE_ACTIONS) {
                    if !(on_keys(statement) && on_ring_keys(statement) && retired_only(statement)) {
                        found.push(format!(
                            "{at}: {action} outside the ring's keys stamped retired \
                             (Null aws:ResourceTag/aws2azure:retired-at = \"false\")"
                        ));
                    }
                } else if is(&ALIAS_ACTIONS) {
                    for resource in &resources {
                        let alias = resource_text(resource).is_some_and(|t| {
                            t.strip_prefix(ALIAS_PREFIX)
                                .is_some_and(|rest| !rest.is_empty())
                        });
                        let ring_key =
                            resource_text(resource) == Some(KEYS) && on_ring_keys(statement);
                        if !alias && !ring_key {
                            found.push(format!(
                                "{at}: {action} on {resource}, beyond the stack's aliases \
                                 ({ALIAS_PREFIX}…) and the ring's keys"
                            ));
                        }
                    }
                } else if is(&RING_KEY_ACTIONS) {
                    let tagging = is(&["kms:TagResource", "kms:UntagResource"]);
                    // Only on a key that already carries the ring's tag, for
                    // tagging too: a key with no tag (a new one, or any
                    // other key of the account) could otherwise be tagged
                    // into the ring, stamped retired and deleted. The
                    // rotation tags its new keys through their key policy.
                    if !on_keys(statement) || !on_ring_keys(statement) {
                        found.push(format!(
                            "{at}: {action} beyond the ring's keys (only on {KEYS} with \
                             StringEquals aws:ResourceTag/aws2azure:ring = stack name)"
                        ));
                    }
                    if tagging && !only_own_tag_keys(statement) {
                        found.push(format!("{at}: {action} of tags other than aws2azure:"));
                    }
                } else if action.eq_ignore_ascii_case("secretsmanager:GetSecretValue") {
                    if resources != [&json!({"Ref": "CloudflareApiTokenSecretArn"})] {
                        found.push(format!(
                            "{at}: secrets beyond the Cloudflare API token's ({:?})",
                            statement["Resource"]
                        ));
                    }
                } else if is(&["logs:CreateLogStream", "logs:PutLogEvents"]) {
                    let own = resources.len() == 1 && is_arn_of(resources[0], log_group);
                    if !own {
                        found.push(format!(
                            "{at}: {action} beyond the rotation's log group {log_group}"
                        ));
                    }
                } else {
                    found.push(format!(
                        "{at}: {action} is not an action the rotation needs"
                    ));
                }
            }
        }
    }
}

/// One rotation at a time, and the roles the key policy names are the
/// stack's: the broker's (the only signer) and the rotation's own.
pub(super) fn rotation_function(
    template: &Value,
    broker: &str,
    rotation: &str,
    found: &mut Vec<String>,
) {
    let props = &template["Resources"]["RotationFunction"]["Properties"];
    if props["ReservedConcurrentExecutions"] != 1 {
        found.push(format!(
            "RotationFunction: ReservedConcurrentExecutions {} (must be 1: two runs would plan \
             from a ring the other changes)",
            props["ReservedConcurrentExecutions"]
        ));
    }
    let env = &props["Environment"]["Variables"];
    for (variable, role) in [
        ("AWS2AZURE_BROKER_ROLE_ARN", broker),
        ("AWS2AZURE_ROTATION_ROLE_ARN", rotation),
    ] {
        if !is_arn_of(&env[variable], role) {
            found.push(format!(
                "RotationFunction: {variable} is {}, not !GetAtt {role}.Arn (the keys' policy \
                 would name another role)",
                env[variable]
            ));
        }
    }
}

/// The alarms the rotation and the broker need, each notifying the alarm
/// topic exactly when one is set.
pub(super) fn alarms(template: &Value, found: &mut Vec<String>) {
    let topic_if_set = json!({"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}],
        {"Ref": "AWS::NoValue"}]});
    let condition = json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]});
    if template["Conditions"]["HasAlarmTopic"] != condition {
        found.push(format!(
            "Conditions: HasAlarmTopic is {}, not AlarmTopicArn ≠ \"\"",
            template["Conditions"]["HasAlarmTopic"]
        ));
    }
    let all: Vec<_> = resources(template, "AWS::CloudWatch::Alarm").collect();
    for (name, alarm) in &all {
        if alarm["AlarmActions"] != topic_if_set {
            found.push(format!(
                "{name}: AlarmActions {} (must be !If [HasAlarmTopic, [!Ref AlarmTopicArn], \
                 !Ref AWS::NoValue])",
                alarm["AlarmActions"]
            ));
        }
        if !alarm["OKActions"].is_null() && alarm["OKActions"] != topic_if_set {
            found.push(format!("{name}: OKActions {}", alarm["OKActions"]));
        }
    }
    for (namespace, metric) in [
        ("aws2azure", "RotationFailed"),
        ("aws2azure", "RotationSucceeded"),
        ("aws2azure", "RotationOverdue"),
        ("aws2azure", "NextKeyNotPublic"),
        ("aws2azure", "EntraRefused"),
        ("AWS/ApiGateway", "5XXError"),
    ] {
        let watched = all
            .iter()
            .any(|(_, a)| a["Namespace"] == namespace && a["MetricName"] == metric);
        if !watched {
            found.push(format!("no alarm on {namespace} {metric}"));
        }
    }
}

fn rotation_statement<'a>(template: &'a mut Value, sid: &str) -> &'a mut Value {
    template["Resources"]["RotationPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("RotationPolicy has a statement {sid}"))
}

fn add_statement(template: &mut Value, statement: Value) {
    template["Resources"]["RotationPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .unwrap()
        .push(statement);
}

#[test]
fn the_rotation_never_signs_grants_or_rewrites_a_key_policy() {
    for (action, expected) in [
        ("kms:*", "the rotation's role may kms:Sign (kms:*)"),
        ("*", "the rotation's role may kms:Sign (*)"),
        ("kms:Sign", "may kms:Sign"),
        ("kms:PutKeyPolicy", "may kms:PutKeyPolicy"),
        ("kms:Put*", "wildcard action kms:Put*"),
        ("kms:CreateGrant", "may kms:CreateGrant"),
        ("iam:PassRole", "may iam:PassRole"),
        (
            "kms:Decrypt",
            "kms:Decrypt is not an action the rotation needs",
        ),
    ] {
        fails_with(expected, |t| {
            rotation_statement(t, "ReadRingKeys")["Action"] = json!(["kms:DescribeKey", action]);
        });
    }
    fails_with(
        "RotationRole/\"extra\"/(no Sid): the rotation's role may kms:Sign",
        |t| {
            t["Resources"]["RotationRole"]["Properties"]["Policies"] = json!([{"PolicyName": "extra",
            "PolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "kms:Sign",
                "Resource": {"Fn::Sub": KEYS}}]}}]);
        },
    );
    fails_with("RotationRole: managed policies", |t| {
        t["Resources"]["RotationRole"]["Properties"]["ManagedPolicyArns"] =
            json!(["arn:aws:iam::aws:policy/AWSKeyManagementServicePowerUser"]);
    });
    fails_with("RotationRole: may be assumed by", |t| {
        t["Resources"]["RotationRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
            ["Principal"] = json!({"AWS": "arn:aws:iam::111122223333:root"});
    });
    fails_with("Allow with NotAction/NotResource", |t| {
        let statement = rotation_statement(t, "ReadRingKeys");
        statement["NotResource"] = statement["Resource"].take();
    });
}

#[test]
fn disabling_and_deletion_need_the_retired_stamp() {
    let outside = "outside the ring's keys stamped retired";
    fails_with(outside, |t| {
        rotation_statement(t, "RetireRetiredKeysOnly")["Condition"]
            .as_object_mut()
            .unwrap()
            .remove("Null");
    });
    fails_with(outside, |t| {
        rotation_statement(t, "RetireRetiredKeysOnly")["Condition"]["Null"]["aws:ResourceTag/aws2azure:retired-at"] =
            json!("true");
    });
    fails_with(outside, |t| {
        rotation_statement(t, "RetireRetiredKeysOnly")["Condition"]["StringEquals"]["aws:ResourceTag/aws2azure:ring"] =
            json!("*");
    });
    fails_with("kms:DisableKey outside", |t| {
        rotation_statement(t, "ReadRingKeys")["Action"] =
            json!(["kms:DescribeKey", "kms:DisableKey"]);
    });
    fails_with("kms:ScheduleKeyDeletion outside", |t| {
        add_statement(
            t,
            json!({"Sid": "Loose", "Effect": "Allow",
            "Action": "kms:ScheduleKeyDeletion", "Resource": "*"}),
        );
    });
}

#[test]
fn keys_are_created_as_rsa_signing_keys_only() {
    let other_keys = "CreateRingKeys: kms:CreateKey of keys other than RSA signing keys";
    fails_with(other_keys, |t| {
        rotation_statement(t, "CreateRingKeys")["Condition"]["StringEquals"]
            .as_object_mut()
            .unwrap()
            .remove("kms:KeySpec");
    });
    fails_with(other_keys, |t| {
        rotation_statement(t, "CreateRingKeys")["Condition"]["StringEquals"]["kms:KeyUsage"] =
            json!("ENCRYPT_DECRYPT");
    });
    fails_with(other_keys, |t| {
        rotation_statement(t, "CreateRingKeys")["Condition"]["StringEquals"]["kms:KeySpec"] =
            json!(["RSA_2048", "RSA_4096"]);
    });
    fails_with(other_keys, |t| {
        let statement = rotation_statement(t, "CreateRingKeys");
        statement["Condition"] = json!({"StringLike": statement["Condition"]["StringEquals"]});
    });
    fails_with(other_keys, |t| {
        rotation_statement(t, "CreateRingKeys")
            .as_object_mut()
            .unwrap()
            .remove("Condition");
    });
}

/// `TagNewRingKeys` as it was: `kms:TagResource` on every key of the account
/// whenever the request sets the ring's tag, which `CreateKey` with tags
/// needs. It would let the role tag any key into its ring.
fn tag_new_ring_keys() -> Value {
    json!({
        "Sid": "TagNewRingKeys",
        "Effect": "Allow",
        "Action": "kms:TagResource",
        "Resource": {"Fn::Sub": KEYS},
        "Condition": {
            "StringEquals": {
                "aws:RequestTag/aws2azure:ring": {"Ref": "AWS::StackName"},
                "kms:KeySpec": "RSA_2048",
                "kms:KeyUsage": "SIGN_VERIFY",
            },
            "ForAllValues:StringLike": {"aws:TagKeys": ["aws2azure:*"]},
        },
    })
}

#[test]
fn keys_are_tagged_only_once_they_carry_the_ring_tag() {
    fails_with(
        "TagNewRingKeys: kms:TagResource beyond the ring's keys",
        |t| add_statement(t, tag_new_ring_keys()),
    );
    // A request tag is no substitute for the key's own tag, even beside it
    // under another operator.
    fails_with(
        "StampRingKeys: kms:TagResource beyond the ring's keys",
        |t| {
            let conditions = &mut rotation_statement(t, "StampRingKeys")["Condition"];
            let ring = conditions["StringEquals"]
                .as_object_mut()
                .unwrap()
                .remove("aws:ResourceTag/aws2azure:ring")
                .unwrap();
            conditions["StringEquals"]["aws:RequestTag/aws2azure:ring"] = ring.clone();
            conditions["StringEqualsIfExists"] = json!({"aws:ResourceTag/aws2azure:ring": ring});
        },
    );
    fails_with(
        "StampRingKeys: kms:UntagResource beyond the ring's keys",
        |t| {
            rotation_statement(t, "StampRingKeys")["Condition"]
                .as_object_mut()
                .unwrap()
                .remove("StringEquals");
        },
    );
    fails_with(
        "StampRingKeys: kms:TagResource beyond the ring's keys",
        |t| {
            rotation_statement(t, "StampRingKeys")["Resource"] = json!("*");
        },
    );
    fails_with("kms:TagResource of tags other than aws2azure:", |t| {
        rotation_statement(t, "StampRingKeys")["Condition"]
            .as_object_mut()
            .unwrap()
            .remove("ForAllValues:StringLike");
    });
    fails_with(
        "CreateRingKeys: kms:TagResource beyond the ring's keys",
        |t| {
            rotation_statement(t, "CreateRingKeys")["Action"] =
                json!(["kms:CreateKey", "kms:TagResource"]);
        },
    );
    fails_with(
        "ReadRingKeys: kms:GetPublicKey beyond the ring's keys",
        |t| {
            rotation_statement(t, "ReadRingKeys")["Resource"] = json!("*");
        },
    );
}

#[test]
fn aliases_stay_within_the_stacks_prefix() {
    let beyond = "beyond the stack's aliases";
    fails_with(beyond, |t| {
        rotation_statement(t, "RingAliases")["Resource"] = json!("*");
    });
    fails_with(beyond, |t| {
        rotation_statement(t, "RingAliases")["Resource"] = json!({"Fn::Sub":
            "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:alias/*"});
    });
    fails_with(beyond, |t| {
        rotation_statement(t, "RingAliases")["Resource"] = json!({"Fn::Sub":
            "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:alias/${AWS::StackName}*"});
    });
    fails_with(beyond, |t| {
        rotation_statement(t, "AliasRingKeys")["Condition"]
            .as_object_mut()
            .unwrap()
            .remove("StringEquals");
    });
}

#[test]
fn only_the_cloudflare_token_secret_is_readable() {
    let beyond = "secrets beyond the Cloudflare API token's";
    fails_with(beyond, |t| {
        rotation_statement(t, "CloudflareApiToken")["Resource"] = json!("*");
    });
    fails_with(beyond, |t| {
        rotation_statement(t, "CloudflareApiToken")["Resource"] = json!([
            {"Ref": "CloudflareApiTokenSecretArn"},
            {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:*"},
        ]);
    });
    fails_with(
        "secretsmanager:ListSecrets is not an action the rotation needs",
        |t| {
            rotation_statement(t, "CloudflareApiToken")["Action"] = json!([
                "secretsmanager:GetSecretValue",
                "secretsmanager:ListSecrets"
            ]);
        },
    );
    fails_with("beyond the rotation's log group RotationLogs", |t| {
        rotation_statement(t, "OwnLogs")["Resource"] = json!({"Fn::GetAtt": ["BrokerLogs", "Arn"]});
    });
}

#[test]
fn one_rotation_at_a_time_with_the_stacks_roles() {
    fails_with("RotationFunction: ReservedConcurrentExecutions 2", |t| {
        t["Resources"]["RotationFunction"]["Properties"]["ReservedConcurrentExecutions"] = json!(2);
    });
    fails_with("RotationFunction: ReservedConcurrentExecutions null", |t| {
        t["Resources"]["RotationFunction"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("ReservedConcurrentExecutions");
    });
    fails_with("RotationFunction: AWS2AZURE_BROKER_ROLE_ARN", |t| {
        t["Resources"]["RotationFunction"]["Properties"]["Environment"]["Variables"]["AWS2AZURE_BROKER_ROLE_ARN"] =
            json!({"Fn::GetAtt": ["RotationRole", "Arn"]});
    });
    fails_with("RotationFunction: AWS2AZURE_ROTATION_ROLE_ARN", |t| {
        t["Resources"]["RotationFunction"]["Properties"]["Environment"]["Variables"]
            .as_object_mut()
            .unwrap()
            .remove("AWS2AZURE_ROTATION_ROLE_ARN");
    });
    fails_with("share BrokerRole: the rotation could sign", |t| {
        t["Resources"]["RotationFunction"]["Properties"]["Role"] =
            json!({"Fn::GetAtt": ["BrokerRole", "Arn"]});
    });
    fails_with("no RotationFunction", |t| {
        t["Resources"]
            .as_object_mut()
            .unwrap()
            .remove("RotationFunction");
    });
    fails_with("Other: a function other than", |t| {
        t["Resources"]["Other"] = t["Resources"]["RotationFunction"].clone();
    });
}

#[test]
fn every_alarm_notifies_the_topic_through_its_condition() {
    fails_with("RotationFailedAlarm: AlarmActions null", |t| {
        t["Resources"]["RotationFailedAlarm"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("AlarmActions");
    });
    fails_with("EntraRefusedAlarm: AlarmActions", |t| {
        t["Resources"]["EntraRefusedAlarm"]["Properties"]["AlarmActions"] =
            json!([{"Ref": "AlarmTopicArn"}]);
    });
    fails_with("Api5xxAlarm: OKActions", |t| {
        t["Resources"]["Api5xxAlarm"]["Properties"]["OKActions"] =
            json!(["arn:aws:sns:eu-west-1:111122223333:elsewhere"]);
    });
    fails_with("Conditions: HasAlarmTopic", |t| {
        t["Conditions"]["HasAlarmTopic"] = json!({"Fn::Equals": ["a", "a"]});
    });
    for (alarm, metric) in [
        ("RotationFailedAlarm", "aws2azure RotationFailed"),
        ("RotationNotRunningAlarm", "aws2azure RotationSucceeded"),
        ("RotationOverdueAlarm", "aws2azure RotationOverdue"),
        ("NextKeyNotPublicAlarm", "aws2azure NextKeyNotPublic"),
        ("EntraRefusedAlarm", "aws2azure EntraRefused"),
        ("Api5xxAlarm", "AWS/ApiGateway 5XXError"),
    ] {
        fails_with(&format!("no alarm on {metric}"), |t| {
            t["Resources"].as_object_mut().unwrap().remove(alarm);
        });
    }
}
