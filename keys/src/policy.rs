//! The key policy of every signing key the rotation creates.
//!
//! Whoever can call `kms:Sign` with a signing key can mint a client
//! assertion for any subject, bypassing the token API, its IAM check per
//! profile and its audit line. So the account (its IAM administrators) only
//! administers the key, and an explicit Deny, which no IAM policy can
//! override (a broad `kms:Sign` on `"*"` in `PowerUserAccess` or a loose
//! custom policy), keeps signing to the broker's role. Nobody may create a
//! grant: a grant would be a way around the policy.
//!
//! The rotation's role gets only what it needs on a key the moment the key
//! exists (see [`signing_key_policy`]); everything else it does goes through
//! its IAM policy, where the conditions on the key's tags live.

use serde_json::{Value, json};

/// The only algorithm the broker signs with (RS256).
pub const SIGNING_ALGORITHM: &str = "RSASSA_PKCS1_V1_5_SHA_256";

/// Longest input shown in an error: the values are ARNs, but a wrong
/// setting can hold anything.
const SHOWN_CHARS: usize = 160;

/// Which input was refused, named as the rotation function's environment
/// sets it (template.yaml), so the message says what to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Broker,
    Rotation,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Broker => "the broker's role ARN (AWS2AZURE_BROKER_ROLE_ARN)",
            Role::Rotation => "the rotation's role ARN (AWS2AZURE_ROTATION_ROLE_ARN)",
        })
    }
}

/// Why the inputs of a key policy were refused. A key policy naming the
/// wrong principal either fails at `CreateKey` or, worse, admits someone
/// else to sign: nothing is created from inputs that fail these checks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the partition {0} is not an AWS partition (`aws`, `aws-cn`, `aws-us-gov`, …); pass the \
         partition of the account the keys live in"
    )]
    Partition(String),

    #[error("the account id {0} is not 12 digits; pass the id of the account the keys live in")]
    AccountId(String),

    #[error(
        "{role} {arn} is not an IAM role ARN ({reason}); it must read \
         arn:PARTITION:iam::ACCOUNT:role/NAME: set it to the role's ARN (the template passes \
         `!GetAtt ROLE.Arn`)"
    )]
    NotARole {
        role: Role,
        arn: String,
        reason: &'static str,
    },

    #[error(
        "{role} {arn} is in partition {found}, not {expected}: the keys, the broker and the \
         rotation must be in one partition"
    )]
    OtherPartition {
        role: Role,
        arn: String,
        found: String,
        expected: String,
    },

    #[error(
        "{role} {arn} is in account {found}, not {expected}: the key policy admits roles of the \
         key's own account only; deploy the broker and the rotation in that account"
    )]
    OtherAccount {
        role: Role,
        arn: String,
        found: String,
        expected: String,
    },

    #[error(
        "the broker's and the rotation's role are the same role ({0}): the rotation would be \
         able to sign; give each function its own role"
    )]
    SameRole(String),
}

/// The parts of an IAM role ARN, `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleArn<'a> {
    pub partition: &'a str,
    pub account_id: &'a str,
    /// Empty, or `a/b/` (without the leading `/`).
    pub path: &'a str,
    pub name: &'a str,
}

impl<'a> RoleArn<'a> {
    /// Reads a role ARN; the rotation function takes its partition and
    /// account from the broker's role ARN rather than from further settings.
    pub fn parse(role: Role, arn: &'a str) -> Result<Self, PolicyError> {
        let refuse = |reason| PolicyError::NotARole {
            role,
            arn: shown(arn),
            reason,
        };
        let mut parts = arn.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account_id),
            Some(rest),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(refuse("not six `:`-separated parts starting with `arn`"));
        };
        if service == "sts" && rest.starts_with("assumed-role/") {
            return Err(refuse(
                "a role session's ARN; the key policy needs the role's own ARN",
            ));
        }
        if service != "iam" {
            return Err(refuse("not of the `iam` service"));
        }
        if !region.is_empty() {
            return Err(refuse("IAM ARNs have no region"));
        }
        if !is_partition(partition) {
            return Err(refuse("no AWS partition"));
        }
        if !is_account_id(account_id) {
            return Err(refuse("the account is not 12 digits"));
        }
        let Some(path_and_name) = rest.strip_prefix("role/") else {
            return Err(refuse("not a role"));
        };
        let (path, name) = match path_and_name.rfind('/') {
            Some(slash) => path_and_name.split_at(slash + 1),
            None => ("", path_and_name),
        };
        // IAM: a path is `/` or `/…/` of printable ASCII, up to 512
        // characters; a name is 1–64 of `[A-Za-z0-9+=,.@_-]`.
        if path.len() > 511
            || path
                .split_terminator('/')
                .any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(refuse("the role's path is not an IAM path"));
        }
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
        if !name_ok {
            return Err(refuse("the role's name is not an IAM role name"));
        }
        Ok(Self {
            partition,
            account_id,
            path,
            name,
        })
    }
}

/// Checks the inputs of [`signing_key_policy`] before any key is created:
/// an AWS partition, a 12-digit account, two different role ARNs of that
/// partition and account.
pub fn validate_policy_inputs(
    partition: &str,
    account_id: &str,
    broker_role_arn: &str,
    rotation_role_arn: &str,
) -> Result<(), PolicyError> {
    if !is_partition(partition) {
        return Err(PolicyError::Partition(shown(partition)));
    }
    if !is_account_id(account_id) {
        return Err(PolicyError::AccountId(shown(account_id)));
    }
    let mut names = vec![];
    for (role, arn) in [
        (Role::Broker, broker_role_arn),
        (Role::Rotation, rotation_role_arn),
    ] {
        let parsed = RoleArn::parse(role, arn)?;
        if parsed.partition != partition {
            return Err(PolicyError::OtherPartition {
                role,
                arn: shown(arn),
                found: parsed.partition.to_string(),
                expected: partition.to_string(),
            });
        }
        if parsed.account_id != account_id {
            return Err(PolicyError::OtherAccount {
                role,
                arn: shown(arn),
                found: parsed.account_id.to_string(),
                expected: account_id.to_string(),
            });
        }
        names.push(parsed.name);
    }
    // IAM keeps role names unique in an account case-insensitively, whatever
    // the path: the same name is the same role.
    if names[0].eq_ignore_ascii_case(names[1]) {
        return Err(PolicyError::SameRole(shown(broker_role_arn)));
    }
    Ok(())
}

/// The key policy for keys whose signer is the broker's role and whose
/// manager is the rotation's role, as the JSON `CreateKey` takes; the
/// partition and account are the broker role's.
pub fn for_roles(broker_role_arn: &str, rotation_role_arn: &str) -> Result<String, PolicyError> {
    let broker = RoleArn::parse(Role::Broker, broker_role_arn)?;
    validate_policy_inputs(
        broker.partition,
        broker.account_id,
        broker_role_arn,
        rotation_role_arn,
    )?;
    Ok(signing_key_policy(
        broker.partition,
        broker.account_id,
        broker_role_arn,
        rotation_role_arn,
    )
    .to_string())
}

/// The key policy of a signing key of the ring (pass inputs checked by
/// [`validate_policy_inputs`]).
///
/// - `AccountAdministers`: the account, that is IAM policies, only
///   administers the key (describe, export the public key, aliases, tags,
///   enable/disable, deletion, the key policy itself); neither Sign nor
///   CreateGrant. `kms:PutKeyPolicy` must stay: `CreateKey` refuses a policy
///   that does not let its caller change the policy later (the lockout
///   safety check), and the rotation's role passes it through this
///   delegation.
/// - `BrokerSigns` / `BrokerDescribes`: the broker's role signs, RS256 only,
///   and resolves the key.
/// - `OnlyTheBrokerSigns`: a Deny of `kms:Sign` and `kms:GenerateMac` to
///   every principal whose `aws:PrincipalArn` is not the broker's role (it
///   is the role's ARN for every session of the role, and absent, so the
///   Deny applies, for anything that is not an IAM principal).
/// - `NoGrants`: a Deny of `kms:CreateGrant` to everyone.
/// - `RotationManagesItsKeys` / `RotationStampsItsKeys`: the rotation's role
///   may describe the key, read its public key and tags, tag it
///   (`aws2azure:*` tags only) and point aliases at it. Its IAM policy
///   grants the same on the ring's keys, but through the key's
///   `aws2azure:ring` tag, and a tag may take minutes to count for
///   authorization: the run that creates a key must be able to stamp it,
///   alias it and publish it right away. For the first tags this is the
///   only way: the key is created without tags and IAM lets the role tag
///   only keys that already carry the ring's tag (tagging at `CreateKey`
///   would need `kms:TagResource` on every key of the account, and with it
///   the power to tag any key into the ring). Disabling and deleting are
///   deliberately not here: they stay with the IAM policy, which allows
///   them only on keys tagged retired (`aws:ResourceTag` exists in IAM
///   policies only, and an Allow here would suffice on its own). Nor is the
///   role denied `kms:PutKeyPolicy`: the lockout check would then refuse
///   the key; its IAM policy grants no `PutKeyPolicy`.
pub fn signing_key_policy(
    partition: &str,
    account_id: &str,
    broker_role_arn: &str,
    rotation_role_arn: &str,
) -> Value {
    let account = format!("arn:{partition}:iam::{account_id}:root");
    json!({
        "Version": "2012-10-17",
        "Id": "aws2azure-signing-key",
        "Statement": [
            {
                "Sid": "AccountAdministers",
                "Effect": "Allow",
                "Principal": {"AWS": account},
                "Action": [
                    "kms:Describe*",
                    "kms:Get*",
                    "kms:List*",
                    "kms:CreateAlias",
                    "kms:UpdateAlias",
                    "kms:DeleteAlias",
                    "kms:UpdateKeyDescription",
                    "kms:Enable*",
                    "kms:Disable*",
                    "kms:PutKeyPolicy",
                    "kms:TagResource",
                    "kms:UntagResource",
                    "kms:RevokeGrant",
                    "kms:ScheduleKeyDeletion",
                    "kms:CancelKeyDeletion",
                ],
                "Resource": "*",
            },
            {
                "Sid": "BrokerSigns",
                "Effect": "Allow",
                "Principal": {"AWS": broker_role_arn},
                "Action": "kms:Sign",
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:SigningAlgorithm": SIGNING_ALGORITHM}},
            },
            {
                "Sid": "BrokerDescribes",
                "Effect": "Allow",
                "Principal": {"AWS": broker_role_arn},
                "Action": ["kms:GetPublicKey", "kms:DescribeKey"],
                "Resource": "*",
            },
            {
                "Sid": "OnlyTheBrokerSigns",
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["kms:Sign", "kms:GenerateMac"],
                "Resource": "*",
                "Condition": {"ArnNotEquals": {"aws:PrincipalArn": broker_role_arn}},
            },
            {
                "Sid": "NoGrants",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:CreateGrant",
                "Resource": "*",
            },
            {
                "Sid": "RotationManagesItsKeys",
                "Effect": "Allow",
                "Principal": {"AWS": rotation_role_arn},
                "Action": [
                    "kms:DescribeKey",
                    "kms:GetPublicKey",
                    "kms:ListResourceTags",
                    "kms:CreateAlias",
                    "kms:UpdateAlias",
                    "kms:DeleteAlias",
                ],
                "Resource": "*",
            },
            {
                "Sid": "RotationStampsItsKeys",
                "Effect": "Allow",
                "Principal": {"AWS": rotation_role_arn},
                "Action": ["kms:TagResource", "kms:UntagResource"],
                "Resource": "*",
                "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": ["aws2azure:*"]}},
            },
        ],
    })
}

fn is_partition(partition: &str) -> bool {
    let words = |rest: &str| {
        rest.split('-')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
    };
    partition.len() <= 32
        && partition
            .strip_prefix("aws")
            .is_some_and(|rest| rest.is_empty() || rest.strip_prefix('-').is_some_and(words))
}

fn is_account_id(account_id: &str) -> bool {
    account_id.len() == 12 && account_id.bytes().all(|b| b.is_ascii_digit())
}

/// `value` for a message: quoted and escaped, and cut to a bounded length.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(SHOWN_CHARS).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests;
