//! `aws2azure allowlist` on Microsoft's real Service Tags data.

use assert_cmd::Command;
use aws2azure_shared::allowlist::AllowlistDocument;

const WHOLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/service-tags/ServiceTags_Public.AzureActiveDirectory-only.json"
);

fn aws2azure() -> Command {
    Command::cargo_bin("aws2azure").unwrap()
}

#[test]
fn writes_the_document_and_summarises_the_change() {
    let out = aws2azure().args(["allowlist", WHOLE]).output().unwrap();
    assert!(out.status.success());
    let doc = AllowlistDocument::from_json(&out.stdout).unwrap();
    assert_eq!(doc.source, "AzureActiveDirectory");
    assert_eq!(doc.change_number, Some(24));
    assert_eq!(doc.prefixes.len(), 216);
    let summary = String::from_utf8(out.stderr).unwrap();
    assert!(
        summary.contains("216 prefixes (201 IPv4, 15 IPv6)"),
        "{summary}"
    );

    // An older list: two prefixes missing, one that Microsoft dropped.
    let dir = tempfile::tempdir().unwrap();
    let mut older = doc.clone();
    let gone = older.prefixes.remove(5);
    older.prefixes.remove(0);
    older.prefixes.push("192.0.2.0/24".parse().unwrap());
    let current = dir.path().join("current.json");
    std::fs::write(&current, older.to_json_pretty()).unwrap();
    let output = dir.path().join("new.json");
    let out = aws2azure()
        .args(["allowlist", WHOLE, "--current"])
        .arg(&current)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "the document went to --output");
    let summary = String::from_utf8(out.stderr).unwrap();
    assert!(
        summary.contains("2 added, 1 removed, 214 unchanged"),
        "{summary}"
    );
    assert!(summary.contains(&format!("+ {gone}")), "{summary}");
    assert!(summary.contains("- 192.0.2.0/24"), "{summary}");
    assert_eq!(
        AllowlistDocument::from_json(&std::fs::read(&output).unwrap()).unwrap(),
        doc
    );
}

#[test]
fn unusable_input_exits_2_with_a_clear_message() {
    let out = aws2azure()
        .args(["allowlist", WHOLE, "--tag", "AzureFrontDoor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tag named `AzureFrontDoor`"));

    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("t.json");
    std::fs::write(&truncated, &std::fs::read(WHOLE).unwrap()[..3000]).unwrap();
    let out = aws2azure()
        .arg("allowlist")
        .arg(&truncated)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    assert!(out.stdout.is_empty(), "nothing is written on error");

    let out = aws2azure()
        .args(["allowlist", "/nonexistent.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
