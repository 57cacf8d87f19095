//! Parsing the IAM ARNs a profile names: the principals allowed its tokens
//! and the role whose ARN an `sts` profile's assertions carry.

use super::{PrincipalArn, RoleArn, printable, reason_only};
use crate::Error;

impl PrincipalArn {
    pub fn parse(arn: &str) -> Result<Self, Error> {
        let fail = |reason: &str| {
            reason_only(
                "allowed_principals",
                format!("`{}` {reason}", printable(arn)),
            )
        };
        let expected = "is not an IAM role or user ARN; write e.g. \
                        arn:aws:iam::111122223333:role/NAME or arn:aws:iam::111122223333:user/NAME";
        if arn.contains(['*', '?']) {
            return Err(fail(
                "has a wildcard: principals are compared exactly, so list each one",
            ));
        }
        let Some(parts) = ArnParts::split(arn) else {
            return Err(fail(expected));
        };
        let ArnParts {
            partition,
            account,
            resource,
            ..
        } = parts;
        if parts.service == "sts" && resource.starts_with("assumed-role/") {
            return Err(fail(&format!(
                "is a role session; callers are matched by their role, whatever the session: \
                 write arn:{partition}:iam::{account}:role/ROLE_NAME"
            )));
        }
        if parts.service != "iam" || !parts.region.is_empty() {
            return Err(fail(expected));
        }
        if !is_account_id(account) {
            return Err(fail("must name a 12-digit AWS account id"));
        }
        if let Some(role) = resource.strip_prefix("role/") {
            if role.contains('/') {
                return Err(fail(&format!(
                    "has a role path: an assumed-role caller carries none, so write the role \
                     without it, arn:{partition}:iam::{account}:role/{}",
                    printable(role.rsplit('/').next().unwrap_or_default())
                )));
            }
            if !is_iam_name(role) {
                return Err(fail("has an invalid role name"));
            }
        } else if let Some(user) = resource.strip_prefix("user/") {
            if !user.split('/').all(is_iam_name) {
                return Err(fail("has an invalid user name or path"));
            }
        } else {
            return Err(fail(expected));
        }
        Ok(Self(arn.to_string()))
    }
}

impl RoleArn {
    /// `arn:PARTITION:iam::ACCOUNT:role/NAME`, with the role's path if it
    /// has one (`role/PATH/NAME`): AssumeRole needs the whole ARN.
    pub fn parse(field: &'static str, arn: &str) -> Result<Self, Error> {
        let fail = |reason: &str| reason_only(field, format!("`{}` {reason}", printable(arn)));
        let expected = "is not an IAM role ARN; write e.g. arn:aws:iam::111122223333:role/NAME";
        let Some(parts) = ArnParts::split(arn) else {
            return Err(fail(expected));
        };
        if parts.service != "iam" || !parts.region.is_empty() {
            return Err(fail(expected));
        }
        if !is_account_id(parts.account) {
            return Err(fail("must name a 12-digit AWS account id"));
        }
        let Some(path_and_name) = parts.resource.strip_prefix("role/") else {
            return Err(fail(expected));
        };
        if !path_and_name.split('/').all(is_iam_name) {
            return Err(fail("has an invalid role name or path"));
        }
        Ok(Self(arn.to_string()))
    }
}

/// The fields of `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE` with an AWS
/// partition; what each ARN type requires beyond that is its own.
#[derive(Clone, Copy)]
struct ArnParts<'a> {
    partition: &'a str,
    service: &'a str,
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

impl<'a> ArnParts<'a> {
    fn split(arn: &'a str) -> Option<Self> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let ["arn", partition, service, region, account, resource] = parts.as_slice() else {
            return None;
        };
        let aws_partition = partition.starts_with("aws")
            && partition
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        aws_partition.then_some(Self {
            partition,
            service,
            region,
            account,
            resource,
        })
    }
}

fn is_account_id(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// An IAM role or user name, or a segment of a path: 1 to 64 of IAM's
/// characters.
fn is_iam_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}
