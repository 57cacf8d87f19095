//! CloudWatch metrics in the Embedded Metric Format: one JSON line on
//! standard output per request, which CloudWatch Logs turns into metrics
//! without any API call from the function. Written by hand: the format is
//! one small JSON document, and the crates that wrap it pull in a metrics
//! framework for no gain here.

use serde_json::json;

use crate::audit::AuditRecord;
use crate::broker::CacheOutcome;

pub const NAMESPACE: &str = "aws2azure";
/// The `Profile` dimension of requests for no configured profile. Profile
/// names cannot contain parentheses, so it never collides with one.
pub const UNKNOWN_PROFILE: &str = "(unknown)";
/// The dimensionless count of requests Entra refused (template.yaml alarms
/// on it).
pub const ENTRA_REFUSED: &str = "EntraRefused";

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The EMF document for one request: cache hits and misses and Entra
/// latency by profile; errors by profile and code (the AADSTS code when
/// Entra gave one, else the API error code). The profile dimension is a
/// configured profile's name or [`UNKNOWN_PROFILE`]: each dimension value
/// is a separate (billed) metric, and the requested name is whatever the
/// caller sent.
///
/// Plus `EntraRefused` (1 when Entra answered with an AADSTS code, else 0)
/// without any dimension, in a directive of its own so that the metrics
/// above do not gain a dimensionless copy each: one alarm covers every
/// profile and code, including profiles added after the alarm.
pub fn emf_line(audit: &AuditRecord, timestamp_ms: u64) -> String {
    let hit = audit.cache.is_some_and(CacheOutcome::is_hit);
    let miss = audit.cache.is_some() && !hit;
    let error_code = match (audit.aadsts, audit.error) {
        (Some(code), _) => Some(format!("AADSTS{code}")),
        (None, Some(code)) => Some(code.to_string()),
        (None, None) => None,
    };
    let mut metrics = vec![
        json!({"Name": "CacheHit", "Unit": "Count"}),
        json!({"Name": "CacheMiss", "Unit": "Count"}),
        json!({"Name": "Error", "Unit": "Count"}),
    ];
    if audit.entra_calls > 0 {
        metrics.push(json!({"Name": "EntraLatency", "Unit": "Milliseconds"}));
        metrics.push(json!({"Name": "EntraCalls", "Unit": "Count"}));
    }
    let mut dimensions = vec![json!(["Profile"])];
    if error_code.is_some() {
        dimensions.push(json!(["Profile", "ErrorCode"]));
    }
    let mut doc = json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimensions,
                "Metrics": metrics,
            }, {
                "Namespace": NAMESPACE,
                "Dimensions": [[]],
                "Metrics": [{"Name": ENTRA_REFUSED, "Unit": "Count"}],
            }]
        },
        "Profile": if audit.profile_configured { audit.profile.as_str() } else { UNKNOWN_PROFILE },
        "CacheHit": u8::from(hit),
        "CacheMiss": u8::from(miss),
        "Error": u8::from(error_code.is_some()),
        "Status": audit.status,
        ENTRA_REFUSED: u8::from(audit.aadsts.is_some()),
    });
    if audit.entra_calls > 0 {
        doc["EntraLatency"] = json!(audit.entra_ms);
        doc["EntraCalls"] = json!(audit.entra_calls);
    }
    if let Some(code) = error_code {
        doc["ErrorCode"] = json!(code);
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_and_error_documents() {
        let hit = AuditRecord {
            profile: "graph".into(),
            profile_configured: true,
            status: 200,
            cache: Some(CacheOutcome::Hit),
            ..AuditRecord::default()
        };
        let v: serde_json::Value = serde_json::from_str(&emf_line(&hit, 42)).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 42);
        assert_eq!(v["Profile"], "graph");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "aws2azure");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Profile"]])
        );
        assert_eq!(
            (v["CacheHit"].as_u64(), v["CacheMiss"].as_u64()),
            (Some(1), Some(0))
        );
        assert!(v.get("EntraLatency").is_none());

        let refused = AuditRecord {
            profile: "graph".into(),
            profile_configured: true,
            status: 502,
            error: Some("entra_refused"),
            aadsts: Some(700213),
            entra_calls: 1,
            entra_ms: 87,
            ..AuditRecord::default()
        };
        let v: serde_json::Value = serde_json::from_str(&emf_line(&refused, 1)).unwrap();
        assert_eq!(v["ErrorCode"], "AADSTS700213");
        assert_eq!(v["EntraLatency"], 87);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][1],
            json!(["Profile", "ErrorCode"])
        );
        // Every metric named in a directive has a value in the document.
        for directive in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            for m in directive["Metrics"].as_array().unwrap() {
                assert!(v.get(m["Name"].as_str().unwrap()).is_some(), "{m}");
            }
        }
    }

    /// Each request counts in `EntraRefused`, without dimensions: 1 when
    /// Entra answered with an AADSTS code, 0 otherwise (a cache hit, or an
    /// error of the API itself). The per-profile directive stays as it was.
    #[test]
    fn entra_refusals_are_counted_without_dimensions() {
        let refused = AuditRecord {
            profile: "graph".into(),
            profile_configured: true,
            status: 502,
            error: Some("entra_refused"),
            aadsts: Some(700213),
            entra_calls: 1,
            entra_ms: 87,
            ..AuditRecord::default()
        };
        let hit = AuditRecord {
            profile: "graph".into(),
            profile_configured: true,
            status: 200,
            cache: Some(CacheOutcome::Hit),
            ..AuditRecord::default()
        };
        let unavailable = AuditRecord {
            profile: "graph".into(),
            profile_configured: true,
            status: 503,
            error: Some("entra_unavailable"),
            entra_calls: 3,
            entra_ms: 900,
            ..AuditRecord::default()
        };
        let unknown = AuditRecord {
            profile: "nope".into(),
            status: 404,
            error: Some("unknown_profile"),
            ..AuditRecord::default()
        };
        for (audit, expected) in [(&refused, 1), (&hit, 0), (&unavailable, 0), (&unknown, 0)] {
            let v: serde_json::Value = serde_json::from_str(&emf_line(audit, 5)).unwrap();
            let directives = v["_aws"]["CloudWatchMetrics"].as_array().unwrap();
            assert_eq!(directives.len(), 2, "{v}");
            assert_eq!(
                directives[1],
                json!({
                    "Namespace": "aws2azure",
                    "Dimensions": [[]],
                    "Metrics": [{"Name": "EntraRefused", "Unit": "Count"}],
                })
            );
            assert_eq!(v["EntraRefused"], expected, "{v}");
            // The per-profile metrics neither gain nor lose a member.
            let names: Vec<&str> = directives[0]["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["Name"].as_str().unwrap())
                .collect();
            let mut before = vec!["CacheHit", "CacheMiss", "Error"];
            if audit.entra_calls > 0 {
                before.extend(["EntraLatency", "EntraCalls"]);
            }
            assert_eq!(names, before);
            assert!(
                directives[0]["Dimensions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d[0] == "Profile"),
                "{v}"
            );
        }
    }

    /// A name the caller made up never becomes a dimension value: one
    /// caller could otherwise create any number of billed metrics.
    #[test]
    fn unconfigured_names_share_one_profile_value() {
        for (profile, status, error) in [
            ("graph-2024-guess", 404, "unknown_profile"),
            ("gr%61ph", 400, "invalid_request"),
            ("", 403, "access_denied"),
        ] {
            let audit = AuditRecord {
                profile: profile.into(),
                status,
                error: Some(error),
                ..AuditRecord::default()
            };
            let line = emf_line(&audit, 7);
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["Profile"], UNKNOWN_PROFILE, "{line}");
            assert_eq!(v["ErrorCode"], error);
            assert!(profile.is_empty() || !line.contains(profile), "{line}");
        }
    }
}
