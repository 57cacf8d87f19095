//! How `aws2azure keys` prints: a short human report, or JSON (`--json`)
//! with the same facts for scripts and alarms.

use aws2azure_keys::plan::at;
use aws2azure_keys::rotation::{Action, Report, Status};
use serde_json::json;

fn when(t: Option<u64>) -> String {
    t.map_or_else(|| "-".into(), at)
}

fn span(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

pub fn status_text(status: &Status, ring: &str) -> String {
    let t = &status.timings;
    let mut out = format!(
        "ring {ring} at {}\ntimings: warm-up {}, period {}, previous retention {} (K2 needs at least {})\n",
        at(status.now),
        span(t.warm_up),
        span(t.period),
        span(t.previous_retention),
        span(t.min_retention()),
    );
    match &status.public_kids {
        Ok(kids) => out.push_str(&format!(
            "public key set: {} key(s), {}\n",
            kids.len(),
            if status.public_matches {
                "exactly the ring's document"
            } else {
                "NOT the ring's document (publish, or wait for KV to propagate)"
            }
        )),
        Err(e) => out.push_str(&format!("public key set: unreadable: {e}\n")),
    }
    if status.overdue {
        out.push_str("WARNING: the rotation is overdue: the current key is past its period plus the warm-up\n");
    }
    if status.next_not_public_when_due {
        out.push_str(
            "WARNING: the next key is due for promotion but the public key set does not list it\n",
        );
    }
    if status.keys.is_empty() {
        out.push_str("\nno keys: run `aws2azure keys stage` (or `rotate`)\n");
    }
    for k in &status.keys {
        out.push_str(&format!(
            "\n{:<9} kid {}\n          key {} ({:?})\n          created {}, published {}, seen publicly {}\n",
            k.state.to_string(),
            k.kid,
            k.key_id,
            k.usability,
            when(Some(k.created_at)),
            when(k.published_at),
            when(k.seen_public_at),
        ));
        if k.promoted_at.is_some() || k.demoted_at.is_some() || k.retired_at.is_some() {
            out.push_str(&format!(
                "          promoted {}, demoted {}, retired {}\n",
                when(k.promoted_at),
                when(k.demoted_at),
                when(k.retired_at)
            ));
        }
        out.push_str(&format!(
            "          next: {}{}\n",
            k.next_step,
            k.due_at
                .map(|d| format!(" (due {})", at(d)))
                .unwrap_or_default()
        ));
    }
    out
}

pub fn action_text(action: &Action) -> String {
    match action {
        Action::Repaired { repair } => format!("repaired a half-done step: {repair:?}"),
        Action::Staged {
            kid,
            key_id,
            adopted,
        } => format!(
            "staged kid {kid} (key {key_id}){}",
            if *adopted {
                ", a key an interrupted run had created"
            } else {
                ""
            }
        ),
        Action::Published { version, kids, to } => {
            format!(
                "published document {version} with {} key(s) to {to}",
                kids.len()
            )
        }
        Action::SeenPublic { kid } => format!("kid {kid} is served publicly: warm-up starts"),
        Action::LostPublic { kid } => {
            format!("kid {kid} is no longer served publicly: its warm-up starts again")
        }
        Action::Promoted { kid, demoted } => format!(
            "promoted kid {kid} to current{}",
            demoted
                .as_ref()
                .map(|d| format!("; kid {d} is previous"))
                .unwrap_or_default()
        ),
        Action::Retired { kid } => format!("retired kid {kid}: out of the document"),
        Action::Unlisted { kid } => format!("kid {kid} is no longer served publicly"),
        Action::Disabled { kid } => format!("disabled kid {kid}: it can no longer sign"),
        Action::DeletionScheduled { kid, days } => {
            format!("scheduled kid {kid} for deletion in {days} days")
        }
    }
}

/// The steps taken and what is still waiting; the risks of a `--force` are
/// printed apart, on standard error.
pub fn report_text(report: &Report) -> String {
    let mut out = String::new();
    if report.actions.is_empty() {
        out.push_str("nothing to do\n");
    }
    for action in &report.actions {
        out.push_str(&format!("- {}\n", action_text(action)));
    }
    for waiting in &report.waiting {
        out.push_str(&format!("waiting: {waiting}\n"));
    }
    out
}

pub fn report_json(report: &Report, error: Option<&str>) -> String {
    json!({ "report": report, "error": error }).to_string()
}
