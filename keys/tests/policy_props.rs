//! Properties of the key policy's inputs, read from the rotation function's
//! environment: whatever they hold, the check never panics and refuses with
//! a typed error of bounded length; a role ARN built from valid parts reads
//! back as those parts; and the policy written for valid inputs names the
//! broker alone as a signer.

#[path = "../../shared/tests/support/mod.rs"]
mod support;

use aws2azure_keys::policy::{
    PolicyError, Role, RoleArn, signing_key_policy, validate_policy_inputs,
};
use proptest::prelude::*;
use support::{arb_text, assert_clear_error, config};

fn arb_partition() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("aws".to_string()),
        Just("aws-cn".to_string()),
        Just("aws-us-gov".to_string()),
        "aws(-[a-z]{1,5}){0,3}",
    ]
}

fn arb_account() -> impl Strategy<Value = String> {
    "[0-9]{12}"
}

/// `(path, name)` as IAM allows them; the path without its leading `/`.
fn arb_role_parts() -> impl Strategy<Value = (String, String)> {
    (
        proptest::collection::vec("[!-.0-~]{1,12}", 0..4)
            .prop_map(|segments| segments.iter().map(|s| format!("{s}/")).collect::<String>()),
        "[A-Za-z0-9+=,.@_-]{1,64}",
    )
}

/// An input that is valid, damaged, or anything at all.
fn arb_input(valid: String) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(valid.clone()),
        2 => arb_text(),
        1 => (0..=valid.len()).prop_map(move |n| valid.chars().take(n).collect()),
        1 => "\\PC{0,4000}",
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn role_arns_read_back_as_their_parts(
        partition in arb_partition(),
        account in arb_account(),
        (path, name) in arb_role_parts(),
    ) {
        let arn = format!("arn:{partition}:iam::{account}:role/{path}{name}");
        let parsed = RoleArn::parse(Role::Broker, &arn).unwrap();
        prop_assert_eq!(parsed, RoleArn {
            partition: &partition,
            account_id: &account,
            path: &path,
            name: &name,
        });
    }

    #[test]
    fn any_input_is_checked_without_panic(
        (partition, account, broker, rotation) in (arb_partition(), arb_account(), arb_role_parts(), arb_role_parts())
            .prop_flat_map(|(partition, account, (bp, bn), (rp, rn))| {
                let role = |path: &str, name: &str| format!("arn:{partition}:iam::{account}:role/{path}{name}");
                (
                    arb_input(partition.clone()),
                    arb_input(account.clone()),
                    arb_input(role(&bp, &bn)),
                    arb_input(role(&rp, &format!("rot-{}", rn.chars().take(60).collect::<String>()))),
                )
            }),
    ) {
        match validate_policy_inputs(&partition, &account, &broker, &rotation) {
            Ok(()) => {
                let policy = signing_key_policy(&partition, &account, &broker, &rotation);
                let signers: Vec<_> = policy["Statement"].as_array().unwrap().iter()
                    .filter(|s| s["Effect"] == "Allow" && s["Action"] == "kms:Sign")
                    .map(|s| s["Principal"]["AWS"].clone())
                    .collect();
                prop_assert_eq!(signers, vec![serde_json::json!(broker)]);
            }
            Err(error) => {
                let message = assert_clear_error(&error);
                // A refused role ARN is named by the setting that holds it.
                if let PolicyError::NotARole { role, .. } = error {
                    let setting = match role {
                        Role::Broker => "AWS2AZURE_BROKER_ROLE_ARN",
                        Role::Rotation => "AWS2AZURE_ROTATION_ROLE_ARN",
                    };
                    prop_assert!(message.contains(setting), "{}", message);
                }
            }
        }
    }
}
