//! CloudWatch metrics of a rotation run in the Embedded Metric Format (one
//! JSON line on standard output), which the template's alarms watch:
//! failed, overdue, or a next key not yet served when its promotion is due.

use serde_json::json;

use crate::rotation::Status;

pub use aws2azure_signer::metrics::NAMESPACE;

/// The EMF document for one run. `status` is `None` when it could not be
/// read (the run failed before or while reading the ring).
pub fn emf_line(ring: &str, succeeded: bool, status: Option<&Status>, timestamp_ms: u64) -> String {
    let flag = |b: bool| u8::from(b);
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Ring"]],
                "Metrics": [
                    {"Name": "RotationSucceeded", "Unit": "Count"},
                    {"Name": "RotationFailed", "Unit": "Count"},
                    {"Name": "RotationOverdue", "Unit": "Count"},
                    {"Name": "NextKeyNotPublic", "Unit": "Count"},
                ],
            }],
        },
        "Ring": ring,
        "RotationSucceeded": flag(succeeded),
        "RotationFailed": flag(!succeeded),
        "RotationOverdue": flag(status.is_some_and(|s| s.overdue)),
        "NextKeyNotPublic": flag(status.is_some_and(|s| s.next_not_public_when_due)),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_counts_as_failed_and_not_succeeded() {
        let line: serde_json::Value = serde_json::from_str(&emf_line("r", false, None, 7)).unwrap();
        assert_eq!(line["RotationFailed"], 1);
        assert_eq!(line["RotationSucceeded"], 0);
        assert_eq!(line["Ring"], "r");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "aws2azure"
        );
        let names: Vec<_> = line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_string())
            .collect();
        for name in &names {
            assert!(line.get(name).is_some(), "{name} has a value");
        }
    }
}
