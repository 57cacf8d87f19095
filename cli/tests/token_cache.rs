//! `aws2azure token`'s on-disk cache against a planted token: the command
//! runs against `aws2azure dev` (the real token API loop on loopback), a
//! first call caches a real token, then the cache is tampered with as
//! another local user could, and the next call must print the API's token,
//! never the planted one, and say why on standard error.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aws2azure");
const PLANTED: &str = "planted-by-another-local-user";
/// The owner of a planted file: `nobody` on most systems. Only root can
/// give a file away; the ownership test needs it.
const OTHER_UID: u32 = 65534;

/// `aws2azure dev` serving on free loopback ports, stopped on drop.
struct Dev {
    child: Child,
    endpoint: String,
    env: Vec<(String, String)>,
}

impl Dev {
    fn start() -> Self {
        let mut child = Command::new(BIN)
            .args(["dev", "--edge", "127.0.0.1:0", "--gateway", "127.0.0.1:0"])
            .args(["--entra", "127.0.0.1:0", "--identity", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut endpoint, mut env, mut transcript) = (None, vec![], String::new());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "dev exited early:\n{transcript}"
            );
            transcript.push_str(&line);
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("token API") {
                endpoint = rest.split_whitespace().next().map(str::to_string);
            } else if let Some((k, v)) = l.strip_prefix("export ").and_then(|e| e.split_once('=')) {
                env.push((k.to_string(), v.to_string()));
            } else if l.starts_with("Running;") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            child,
            endpoint: endpoint.expect("endpoint printed"),
            env,
        }
    }

    /// `aws2azure token graph` with exactly dev's credentials.
    fn token(&self, cache: &Path) -> Output {
        Command::new(BIN)
            .args([
                "token",
                "graph",
                "--endpoint",
                &self.endpoint,
                "--cache-dir",
            ])
            .arg(cache)
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().cloned())
            .output()
            .unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dev loop, a cache folder holding one real token, that token and the
/// cache file's path.
struct Cached {
    dev: Dev,
    dir: tempfile::TempDir,
    token: String,
    file: PathBuf,
}

impl Cached {
    fn new() -> Self {
        let dev = Dev::start();
        let dir = tempfile::tempdir().unwrap();
        let out = dev.token(dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "one cache file, no leftovers: {files:?}");
        let file = files.pop().unwrap();
        Self {
            dev,
            dir,
            token,
            file,
        }
    }

    /// The cached entry with the planted token, valid for an hour.
    fn planted_entry(&self) -> Value {
        let mut entry: Value = serde_json::from_slice(&std::fs::read(&self.file).unwrap()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        entry["access_token"] = PLANTED.into();
        entry["expires_on"] = (now + 3600).into();
        entry
    }

    /// Writes the planted entry over the cache file (which keeps its mode).
    fn plant(&self, entry: &Value) {
        std::fs::write(&self.file, entry.to_string()).unwrap();
    }

    /// Runs the command again: it must succeed with the API's token, and
    /// warn with every piece of `warning`.
    fn assert_refused(&self, warning: &[&str]) -> String {
        let out = self.dev.token(self.dir.path());
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        let printed = String::from_utf8(out.stdout).unwrap();
        assert!(!printed.contains(PLANTED), "the planted token was used");
        assert_eq!(
            printed.trim(),
            self.token,
            "the API's (broker-cached) token"
        );
        for piece in warning {
            assert!(err.contains(piece), "warning lacks `{piece}`: {err}");
        }
        assert!(!err.contains(&self.token), "no token on stderr: {err}");
        err
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn a_token_planted_in_a_world_writable_folder_is_not_used() {
    let cached = Cached::new();
    cached.plant(&cached.planted_entry());
    chmod(cached.dir.path(), 0o777);
    let dir = cached.dir.path().display().to_string();
    cached.assert_refused(&[&dir, "mode 0777", &format!("chmod 700 {dir}")]);
    // Nothing is written into a folder others can write either.
    let left = std::fs::read_to_string(&cached.file).unwrap();
    assert!(left.contains(PLANTED), "{left}");

    // Once fixed as the warning says, the cache works again (here: the
    // planted entry is a well-formed one of ours, so it is what is read).
    chmod(cached.dir.path(), 0o700);
    let out = cached.dev.token(cached.dir.path());
    let err = stderr(&out);
    assert!(err.is_empty(), "{err}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), PLANTED);
}

#[test]
fn a_cache_folder_of_another_user_is_not_used() {
    let cached = Cached::new();
    cached.plant(&cached.planted_entry());
    if std::os::unix::fs::chown(cached.dir.path(), Some(OTHER_UID), None).is_err() {
        eprintln!("skipped: only root can give a folder to uid {OTHER_UID}");
        return;
    }
    let dir = cached.dir.path().display().to_string();
    cached.assert_refused(&[&dir, &format!("uid {OTHER_UID}")]);
}

#[test]
fn a_cache_file_of_another_user_is_not_used() {
    let cached = Cached::new();
    cached.plant(&cached.planted_entry());
    if std::os::unix::fs::chown(&cached.file, Some(OTHER_UID), None).is_err() {
        eprintln!("skipped: only root can give a file to uid {OTHER_UID}");
        return;
    }
    let file = cached.file.display().to_string();
    cached.assert_refused(&[&file, &format!("uid {OTHER_UID}")]);
    // The fresh token replaced it: ours, private.
    let meta = std::fs::symlink_metadata(&cached.file).unwrap();
    assert_eq!(
        meta.uid(),
        std::fs::metadata(cached.dir.path()).unwrap().uid()
    );
    assert_eq!(mode(&cached.file), 0o600);
}

#[test]
fn a_symlink_planted_as_the_cache_file_is_not_followed() {
    let cached = Cached::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("planted.json");
    std::fs::write(&target, cached.planted_entry().to_string()).unwrap();
    chmod(&target, 0o600);
    std::fs::remove_file(&cached.file).unwrap();
    std::os::unix::fs::symlink(&target, &cached.file).unwrap();
    let file = cached.file.display().to_string();
    cached.assert_refused(&[&file, "symbolic link"]);
    // The link itself was replaced; what it pointed at is untouched.
    assert!(std::fs::symlink_metadata(&cached.file).unwrap().is_file());
    assert!(std::fs::read_to_string(&target).unwrap().contains(PLANTED));
}

#[test]
fn a_group_writable_cache_file_is_not_used() {
    let cached = Cached::new();
    cached.plant(&cached.planted_entry());
    chmod(&cached.file, 0o620);
    let file = cached.file.display().to_string();
    cached.assert_refused(&[&file, "mode 0620", &format!("rm {file}")]);
    assert_eq!(mode(&cached.file), 0o600, "replaced by a private file");
}

#[test]
fn a_cache_entry_for_another_profile_or_endpoint_is_not_used() {
    let cached = Cached::new();
    let file = cached.file.display().to_string();

    let mut entry = cached.planted_entry();
    entry["profile"] = "admin".into();
    cached.plant(&entry);
    cached.assert_refused(&[&file, "another profile"]);

    let mut entry = cached.planted_entry();
    entry["endpoint"] = "https://tokens.example.com/prod".into();
    cached.plant(&entry);
    cached.assert_refused(&[&file, "another endpoint"]);
}
