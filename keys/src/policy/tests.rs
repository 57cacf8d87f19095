use serde_json::{Value, json};

use super::*;

const BROKER: &str = "arn:aws:iam::111122223333:role/stack-BrokerRole-ABC";
const ROTATION: &str = "arn:aws:iam::111122223333:role/stack-RotationRole-DEF";
const ROOT: &str = "arn:aws:iam::111122223333:root";

fn policy() -> Value {
    signing_key_policy("aws", "111122223333", BROKER, ROTATION)
}

fn statements(policy: &Value) -> &Vec<Value> {
    policy["Statement"].as_array().unwrap()
}

fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
    statements(policy)
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid}"))
}

fn actions(statement: &Value) -> Vec<&str> {
    match &statement["Action"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(list) => list.iter().map(|a| a.as_str().unwrap()).collect(),
        other => panic!("Action {other}"),
    }
}

/// IAM's `*` wildcard in action names, case-insensitive.
fn action_matches(pattern: &str, action: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(action),
        Some((prefix, "")) => action
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        Some(_) => panic!("a wildcard inside {pattern}"),
    }
}

fn allows(statement: &Value, action: &str) -> bool {
    statement["Effect"] == "Allow" && actions(statement).iter().any(|p| action_matches(p, action))
}

/// Who may sign: the broker's role alone, RS256 alone.
#[test]
fn only_the_broker_is_allowed_to_sign() {
    let policy = policy();
    for s in statements(&policy) {
        for action in ["kms:Sign", "kms:GenerateMac"] {
            if allows(s, action) {
                assert_eq!(s["Principal"], json!({"AWS": BROKER}), "{s}");
                assert_eq!(
                    s["Condition"],
                    json!({"StringEquals": {"kms:SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}})
                );
            }
        }
    }
    assert!(allows(statement(&policy, "BrokerSigns"), "kms:Sign"));
    let describes = statement(&policy, "BrokerDescribes");
    assert_eq!(describes["Principal"], json!({"AWS": BROKER}));
    assert_eq!(actions(describes), ["kms:GetPublicKey", "kms:DescribeKey"]);
}

#[test]
fn everyone_but_the_broker_is_denied_signing_and_nobody_may_grant() {
    let policy = policy();
    assert_eq!(
        statement(&policy, "OnlyTheBrokerSigns"),
        &json!({
            "Sid": "OnlyTheBrokerSigns",
            "Effect": "Deny",
            "Principal": "*",
            "Action": ["kms:Sign", "kms:GenerateMac"],
            "Resource": "*",
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": BROKER}},
        })
    );
    assert_eq!(
        statement(&policy, "NoGrants"),
        &json!({
            "Sid": "NoGrants",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:CreateGrant",
            "Resource": "*",
        })
    );
    assert!(
        !statements(&policy)
            .iter()
            .any(|s| allows(s, "kms:CreateGrant")),
        "{policy:#}"
    );
}

/// The account administers through IAM, including the key policy itself
/// (CreateKey's lockout check needs it), and never signs or grants.
#[test]
fn the_account_administers_and_keeps_the_key_policy() {
    let policy = policy();
    let admin = statement(&policy, "AccountAdministers");
    assert_eq!(admin["Principal"], json!({"AWS": ROOT}));
    for needed in [
        "kms:PutKeyPolicy",
        "kms:DescribeKey",
        "kms:GetPublicKey",
        "kms:ListResourceTags",
        "kms:CreateAlias",
        "kms:UpdateAlias",
        "kms:DeleteAlias",
        "kms:TagResource",
        "kms:UntagResource",
        "kms:DisableKey",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion",
    ] {
        assert!(allows(admin, needed), "the account may not {needed}");
    }
    for never in [
        "kms:Sign",
        "kms:GenerateMac",
        "kms:CreateGrant",
        "kms:Decrypt",
    ] {
        assert!(!allows(admin, never), "the account may {never}");
    }
}

/// What the rotation's role gets on the key itself: what it needs the
/// moment the key exists, never signing, grants, the policy, disabling or
/// deletion (those stay behind its IAM policy's tag conditions).
#[test]
fn the_rotation_only_describes_stamps_and_aliases_its_keys() {
    let policy = policy();
    let granted: Vec<&Value> = statements(&policy)
        .iter()
        .filter(|s| s["Principal"] == json!({"AWS": ROTATION}))
        .collect();
    assert_eq!(granted.len(), 2, "{policy:#}");
    for s in &granted {
        assert_eq!(s["Effect"], "Allow");
        for never in [
            "kms:Sign",
            "kms:GenerateMac",
            "kms:CreateGrant",
            "kms:PutKeyPolicy",
            "kms:DisableKey",
            "kms:ScheduleKeyDeletion",
            "kms:EnableKey",
            "kms:CancelKeyDeletion",
        ] {
            assert!(!allows(s, never), "the rotation may {never}: {s}");
        }
    }
    let stamps = statement(&policy, "RotationStampsItsKeys");
    assert_eq!(actions(stamps), ["kms:TagResource", "kms:UntagResource"]);
    assert_eq!(
        stamps["Condition"],
        json!({"ForAllValues:StringLike": {"aws:TagKeys": ["aws2azure:*"]}})
    );
    let manages = statement(&policy, "RotationManagesItsKeys");
    assert!(manages["Condition"].is_null());
    assert!(allows(manages, "kms:CreateAlias") && allows(manages, "kms:GetPublicKey"));
    // Nobody is denied the key policy: the lockout check would refuse the key.
    for s in statements(&policy) {
        assert!(
            s["Effect"] == "Allow" || !actions(s).contains(&"kms:PutKeyPolicy"),
            "{s}"
        );
    }
}

/// Only the account, the broker and the rotation are named; nothing is
/// allowed to `*`.
#[test]
fn no_other_principal_is_allowed_anything() {
    let policy = policy();
    for s in statements(&policy) {
        if s["Effect"] == "Allow" {
            let principal = s["Principal"]["AWS"].as_str().unwrap();
            assert!([ROOT, BROKER, ROTATION].contains(&principal), "{s}");
            assert!(s.get("NotAction").is_none() && s.get("NotPrincipal").is_none());
        }
    }
}

#[test]
fn the_partition_and_account_come_from_the_inputs() {
    let policy = signing_key_policy(
        "aws-cn",
        "444455556666",
        "arn:aws-cn:iam::444455556666:role/b",
        "arn:aws-cn:iam::444455556666:role/r",
    );
    assert_eq!(
        statement(&policy, "AccountAdministers")["Principal"],
        json!({"AWS": "arn:aws-cn:iam::444455556666:root"})
    );
    assert_eq!(
        statement(&policy, "OnlyTheBrokerSigns")["Condition"]["ArnNotEquals"]["aws:PrincipalArn"],
        "arn:aws-cn:iam::444455556666:role/b"
    );
}

#[test]
fn good_inputs_pass() {
    assert_eq!(
        validate_policy_inputs("aws", "111122223333", BROKER, ROTATION),
        Ok(())
    );
    assert_eq!(
        validate_policy_inputs(
            "aws-us-gov",
            "111122223333",
            "arn:aws-us-gov:iam::111122223333:role/service-role/a.b@c=d,e+f_g-h",
            "arn:aws-us-gov:iam::111122223333:role/x/y/rotation",
        ),
        Ok(())
    );
    let parsed = RoleArn::parse(Role::Broker, "arn:aws:iam::111122223333:role/a/b/name").unwrap();
    assert_eq!(
        parsed,
        RoleArn {
            partition: "aws",
            account_id: "111122223333",
            path: "a/b/",
            name: "name",
        }
    );
}

#[test]
fn bad_inputs_are_refused_with_their_cause() {
    let check = |partition, account, broker, rotation| {
        validate_policy_inputs(partition, account, broker, rotation).unwrap_err()
    };
    assert!(matches!(
        check("azure", "111122223333", BROKER, ROTATION),
        PolicyError::Partition(_)
    ));
    for partition in ["", "aws-", "aws--cn", "AWS", "awsx", "aws-c1"] {
        assert!(
            matches!(
                check(partition, "111122223333", BROKER, ROTATION),
                PolicyError::Partition(_)
            ),
            "{partition}"
        );
    }
    for account in ["11112222333", "1111222233334", "11112222333x", ""] {
        assert!(matches!(
            check("aws", account, BROKER, ROTATION),
            PolicyError::AccountId(_)
        ));
    }
    let not_a_role = |arn: &str, role: Role| match validate_policy_inputs(
        "aws",
        "111122223333",
        if role == Role::Broker { arn } else { BROKER },
        if role == Role::Rotation {
            arn
        } else {
            ROTATION
        },
    ) {
        Err(PolicyError::NotARole {
            role: r, reason, ..
        }) if r == role => reason,
        other => panic!("{arn}: {other:?}"),
    };
    for (arn, reason) in [
        ("stack-BrokerRole-ABC", "six"),
        ("arn:aws:iam::111122223333:user/alice", "not a role"),
        ("arn:aws:iam::111122223333:root", "not a role"),
        (
            "arn:aws:sts::111122223333:assumed-role/stack-BrokerRole-ABC/session",
            "session",
        ),
        ("arn:aws:lambda::111122223333:role/x", "iam"),
        ("arn:aws:iam:eu-west-1:111122223333:role/x", "region"),
        ("arn:aws:iam::1111:role/x", "12 digits"),
        ("arn:aws:iam::111122223333:role/", "name"),
        ("arn:aws:iam::111122223333:role/a b", "name"),
        ("arn:aws:iam::111122223333:role/*", "name"),
        (
            &format!("arn:aws:iam::111122223333:role/{}", "n".repeat(65)),
            "name",
        ),
        ("arn:aws:iam::111122223333:role//x", "path"),
        ("arn:aws:iam::111122223333:role/a\tb/x", "path"),
        ("arn:aws:iam::111122223333:role/é/x", "path"),
    ] {
        for role in [Role::Broker, Role::Rotation] {
            let got = not_a_role(arn, role);
            assert!(got.contains(reason), "{arn}: {got}");
        }
    }
    assert!(matches!(
        check(
            "aws",
            "111122223333",
            BROKER,
            "arn:aws-cn:iam::111122223333:role/r"
        ),
        PolicyError::OtherPartition {
            role: Role::Rotation,
            ..
        }
    ));
    assert!(matches!(
        check(
            "aws",
            "111122223333",
            "arn:aws:iam::999988887777:role/b",
            ROTATION
        ),
        PolicyError::OtherAccount {
            role: Role::Broker,
            ..
        }
    ));
    for same in [
        BROKER,
        "arn:aws:iam::111122223333:role/stack-brokerrole-abc",
        "arn:aws:iam::111122223333:role/other-path/stack-BrokerRole-ABC",
    ] {
        assert!(
            matches!(
                check("aws", "111122223333", BROKER, same),
                PolicyError::SameRole(_)
            ),
            "{same}"
        );
    }
}

/// Messages name the setting and the fix, and echo a bounded, escaped
/// copy of the value.
#[test]
fn messages_name_the_setting_and_stay_short() {
    let huge = format!("arn:aws:iam::111122223333:role/{}\n", "x".repeat(100_000));
    let err = validate_policy_inputs("aws", "111122223333", &huge, ROTATION).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("AWS2AZURE_BROKER_ROLE_ARN"), "{message}");
    assert!(message.contains("!GetAtt ROLE.Arn"), "{message}");
    assert!(message.len() < 600, "{} bytes", message.len());
    assert!(!message.contains('\n'), "{message}");

    let err = validate_policy_inputs("aws", "111122223333", BROKER, "x").unwrap_err();
    assert!(
        err.to_string().contains("AWS2AZURE_ROTATION_ROLE_ARN"),
        "{err}"
    );
    let err = validate_policy_inputs("aws", "111122223333", BROKER, BROKER).unwrap_err();
    assert!(err.to_string().contains("own role"), "{err}");
}
