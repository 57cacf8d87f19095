//! The `aws2azure dev` process under soak: started with the soak's
//! profiles, its standard output and error written to files (read at the
//! end for the log check), its resident memory read from `/proc`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The local credentials `aws2azure dev` prints as `export` lines.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

pub struct DevProcess {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT/dev`
    pub endpoint: String,
    /// The Entra stand-in, `http://127.0.0.1:PORT`
    pub entra: String,
    pub region: String,
    pub credentials: Credentials,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How long `aws2azure dev` may take to start and fetch its first token,
/// checked every 100 ms.
const STARTUP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

impl DevProcess {
    pub fn start(
        bin: &Path,
        config: &Path,
        token_lifetime: u64,
        dir: &Path,
    ) -> Result<Self, String> {
        let stdout = dir.join("dev.stdout");
        let stderr = dir.join("dev.stderr");
        let create =
            |p: &Path| File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()));
        let mut child = Command::new(bin)
            .args(["dev", "--edge", "127.0.0.1:0", "--gateway", "127.0.0.1:0"])
            .args([
                "--entra",
                "127.0.0.1:0",
                "--identity",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(config)
            .args(["--token-lifetime", &token_lifetime.to_string()])
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut transcript = None;
        for _ in 0..STARTUP.as_millis() / POLL.as_millis() {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("Running;")) {
                transcript = Some(text);
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "aws2azure dev exited ({status}) before serving:\n{text}\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                ));
            }
            std::thread::sleep(POLL);
        }
        let Some(transcript) = transcript else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "aws2azure dev did not start within {STARTUP:?}:\n{}",
                std::fs::read_to_string(&stdout).unwrap_or_default()
            ));
        };
        let parsed = Startup::parse(&transcript);
        let missing = |what: &str| format!("aws2azure dev did not print {what}:\n{transcript}");
        let export = |name: &str| {
            parsed
                .exports
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| missing(name))
        };
        Ok(Self {
            pid: child.id(),
            endpoint: parsed
                .endpoint
                .clone()
                .ok_or_else(|| missing("the token API"))?,
            entra: parsed
                .entra
                .clone()
                .ok_or_else(|| missing("the Entra stand-in"))?,
            region: export("AWS_REGION")?,
            credentials: Credentials {
                access_key_id: export("AWS_ACCESS_KEY_ID")?,
                secret_access_key: export("AWS_SECRET_ACCESS_KEY")?,
                session_token: export("AWS_SESSION_TOKEN")?,
            },
            child,
            stdout,
            stderr,
        })
    }

    /// Stops it as Ctrl-C would (SIGTERM), or kills it after 10 s.
    pub fn stop(mut self) -> Result<ExitStatus, String> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(|e| format!("SIGTERM to {}: {e}", self.pid))?;
        // 10 s, every 50 ms.
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("aws2azure dev did not stop within 10 s of SIGTERM; killed".into())
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `aws2azure dev` prints before it serves.
#[derive(Debug, Default, PartialEq)]
struct Startup {
    endpoint: Option<String>,
    entra: Option<String>,
    exports: Vec<(String, String)>,
}

impl Startup {
    fn parse(transcript: &str) -> Self {
        let mut out = Self::default();
        let first_word = |rest: &str| rest.split_whitespace().next().map(str::to_string);
        for line in transcript.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("token API") {
                out.endpoint = first_word(rest);
            } else if let Some(rest) = line.strip_prefix("Entra stand-in") {
                out.entra = first_word(rest);
            } else if let Some((k, v)) =
                line.strip_prefix("export ").and_then(|e| e.split_once('='))
            {
                out.exports.push((k.to_string(), v.to_string()));
            }
        }
        out
    }
}

/// Resident memory of process `pid` (`VmRSS`, KiB), `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_rss_kib(&status)
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_dev_prints() {
        let parsed = Startup::parse(
            "  token API         http://127.0.0.1:4000/dev   (SigV4-verifying gateway, region us-east-1)\n  Entra stand-in    http://127.0.0.1:4001   (trusts the issuer above)\nexport AWS_REGION=us-east-1\nexport AWS_SESSION_TOKEN=IQoJb3=x\n",
        );
        assert_eq!(
            parsed.endpoint.as_deref(),
            Some("http://127.0.0.1:4000/dev")
        );
        assert_eq!(parsed.entra.as_deref(), Some("http://127.0.0.1:4001"));
        assert_eq!(
            parsed.exports,
            vec![
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_SESSION_TOKEN".into(), "IQoJb3=x".into())
            ]
        );
        assert_eq!(
            vm_rss_kib("Name:\tx\nVmHWM:\t  9 kB\nVmRSS:\t   23456 kB\n"),
            Some(23456)
        );
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }
}
