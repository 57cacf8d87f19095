//! The soak of the dev stack, 30 seconds of it (`scripts/soak` runs the
//! 5-minute version): `aws2azure dev` under valid and hostile load with an
//! Entra fault window, every assertion of `src/bin/soak` held.
//!
//! It runs the `aws2azure` binary of this target directory, which
//! `cargo test --workspace` (`./scripts/test`) builds; alone, build it
//! first: `cargo build -p aws2azure-cli && cargo test -p aws2azure-tests --test soak`.

use std::path::Path;
use std::process::Command;

#[test]
fn thirty_seconds_of_mixed_load_and_an_entra_outage() {
    let soak = env!("CARGO_BIN_EXE_soak");
    let aws2azure =
        Path::new(soak).with_file_name(format!("aws2azure{}", std::env::consts::EXE_SUFFIX));
    assert!(
        aws2azure.is_file(),
        "{} is missing: build it with `cargo build -p aws2azure-cli` (cargo test --workspace does)",
        aws2azure.display()
    );
    let out = Command::new(soak)
        .args(["--duration", "30", "--aws2azure"])
        .arg(&aws2azure)
        .output()
        .expect("the soak driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "the soak failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("soak PASSED"), "{stdout}");
    // The window really made callers wait for Entra and told them when to
    // come back: at least one 503 with Retry-After (checked per answer).
    let window = stdout
        .lines()
        .find(|l| l.contains("429 Retry-After 2") && l.contains("faulted"))
        .expect("a fault window line");
    assert!(!window.contains(" 503 0,"), "{window}");
}
