//! `aws2azure keys` as a process, against KMS in moto server, the Cloudflare
//! API stand-in whose KV is a local edge's, and that edge's public discovery
//! document and key set: the guards refuse and explain, `--force` prints its
//! risk, `--json` is machine-readable, bad settings exit 2, and a refused
//! Cloudflare token changes nothing.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws2azure_devstack::cloudflare::{self, CloudflareConfig, CloudflareStandIn, Fault};
use aws2azure_devstack::edge_server::EdgeServer;
use aws2azure_devstack::fault_proxy::FaultProxy;
use aws2azure_devstack::moto::{self, MotoServer};
use aws2azure_devstack::{Server, loopback};
use aws2azure_shared::jwk::JwkSet;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aws2azure");
const TOKEN: &str = "cf-test-token-0123456789abcdef";

struct Rig {
    edge: EdgeServer,
    cloudflare: Server,
    stand_in: CloudflareStandIn,
    ring: String,
    /// Where the command's AWS calls go: moto, or a fault proxy in front.
    aws_endpoint: String,
}

impl Rig {
    async fn start(ring: &str) -> Rig {
        let edge = EdgeServer::start(loopback(), |a: SocketAddr| format!("http://{a}"), None)
            .await
            .unwrap();
        let config = CloudflareConfig {
            api_token: TOKEN.into(),
            account_id: "acct".into(),
            namespace_id: "ns".into(),
        };
        let stand_in = CloudflareStandIn::with_backend(config, Arc::new(edge.kv_backend("jwks")));
        let cloudflare = stand_in.clone().serve(loopback()).await.unwrap();
        Rig {
            edge,
            cloudflare,
            stand_in,
            ring: format!("{ring}-{}", fastrand::u32(..)),
            aws_endpoint: MotoServer::shared().endpoint(),
        }
    }

    /// Runs `aws2azure keys ARGS` with the settings in the environment and
    /// compressed timings that K2's arithmetic accepts.
    fn keys(&self, args: &[&str]) -> Output {
        self.keys_with(args, &[])
    }

    fn keys_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.command(args, env).output().unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
            "the API token leaked:\n{stdout}\n{stderr}"
        );
        out
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("keys")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY)
            .env("AWS_REGION", moto::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS2AZURE_KEY_RING", &self.ring)
            .env("AWS2AZURE_ISSUER", self.edge.issuer().as_str())
            .env("AWS2AZURE_CLOUDFLARE_ACCOUNT_ID", "acct")
            .env("AWS2AZURE_CLOUDFLARE_NAMESPACE_ID", "ns")
            .env(
                "AWS2AZURE_CLOUDFLARE_API_BASE",
                cloudflare::api_base(&self.cloudflare),
            )
            .env("AWS2AZURE_CLOUDFLARE_API_TOKEN", TOKEN)
            .env("AWS2AZURE_WARM_UP", "2s")
            .env("AWS2AZURE_ROTATION_PERIOD", "700s")
            .env("AWS2AZURE_PREVIOUS_RETENTION", "610s")
            .env("AWS2AZURE_SIGNER_RESOLVE_INTERVAL", "1s")
            .env("AWS2AZURE_EDGE_PROPAGATION", "1s");
        // An empty value unsets the variable.
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd
    }

    /// Runs `aws2azure keys ARGS` with the `nth` call (1-based) of the KMS
    /// operation `target` held back at the proxy, and kills the process
    /// (SIGKILL: no cleanup of any kind) while that call is held: the call
    /// never reaches KMS, so the process dies between the step before it and
    /// that step. Returns whether the call was reached (a run that needs no
    /// such call finishes normally).
    async fn killed_before(
        &self,
        proxy: &FaultProxy,
        args: &[&str],
        target: &str,
        nth: usize,
    ) -> bool {
        let seen = proxy.calls(target);
        if nth > 1 {
            proxy.delay(target, Duration::ZERO, nth - 1);
        }
        proxy.delay(target, Duration::from_secs(30), 1);
        let mut child = self
            .command(args, &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let reached = loop {
            if proxy.calls(target) >= seen + nth as u64 {
                break true;
            }
            if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(20) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let _ = child.kill();
        let _ = child.wait();
        if !reached {
            // Nothing was held: drop the delays this run did not use.
            proxy.clear_delays();
        }
        reached
    }

    /// Nothing half-done: every key an alias names is in the document the
    /// edge serves (publication always comes before the alias moves).
    async fn assert_every_aliased_key_is_served(&self, after: &str) {
        let served = self.served_kids().await;
        for (state, kid) in states(&status_json(self)) {
            if matches!(state.as_str(), "next" | "current" | "previous") {
                assert!(
                    served.contains(&kid),
                    "{after}: the {state} key {kid} is not served ({served:?})"
                );
            }
        }
    }

    async fn served_kids(&self) -> Vec<String> {
        let body = reqwest::get(self.edge.issuer().jwks_uri())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        JwkSet::from_json(&body)
            .map(|set| set.keys().iter().map(|k| k.kid().to_string()).collect())
            .unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status_json(rig: &Rig) -> Value {
    let out = rig.keys(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn states(status: &Value) -> Vec<(String, String)> {
    status["status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["state"].as_str().unwrap().to_string(),
                k["kid"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lifecycle_from_the_command_line_with_its_guards() {
    let rig = Rig::start("cli").await;

    // An empty ring: nothing to show, nothing served.
    let status = status_json(&rig);
    assert!(states(&status).is_empty(), "{status}");

    // Stage: a next key, published through the Cloudflare API to the edge.
    let out = rig.keys(&["stage"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("staged kid"),
        "{}",
        text(&out.stdout)
    );
    let status = status_json(&rig);
    let keys = states(&status);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, "next");
    let first = keys[0].1.clone();
    assert_eq!(rig.served_kids().await, vec![first.clone()]);
    assert_eq!(status["status"]["public_matches"], true, "{status}");

    // K1: never seen publicly before this run and not warm yet.
    let out = rig.keys(&["promote"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("K1 refuses the promotion"), "{err}");
    assert!(err.contains("--force"), "{err}");

    // --force says what it risks, on standard error, and does it.
    let out = rig.keys(&["promote", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("RISK (--force)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        states(&status_json(&rig))[0],
        ("current".into(), first.clone())
    );

    // K2 has nothing to retire yet.
    let out = rig.keys(&["retire"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no previous key"),
        "{}",
        text(&out.stderr)
    );

    // A second key: staged, seen publicly by `rotate`, warm 3 s later.
    let out = rig.keys(&["stage", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"], Value::Null);
    // Published first, then staged: publication before the alias moves.
    let actions = report["report"]["actions"].as_array().unwrap();
    let kinds: Vec<&Value> = actions.iter().map(|a| &a["action"]).collect();
    assert_eq!(kinds, ["published", "staged"], "{report}");
    let second = actions[1]["kid"].as_str().unwrap().to_string();
    let out = rig.keys(&["rotate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("kid {second} is served publicly")),
        "{}",
        text(&out.stdout)
    );
    // Warm from the first sighting + edge propagation (1 s) + warm-up (2 s).
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let out = rig.keys(&["promote"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("RISK"), "{}", text(&out.stderr));
    let keys = states(&status_json(&rig));
    assert_eq!(
        keys,
        vec![
            ("current".to_string(), second.clone()),
            ("previous".to_string(), first.clone())
        ]
    );
    // The document lists the current key first.
    assert_eq!(rig.served_kids().await, vec![second.clone(), first.clone()]);

    // K2: the previous key was demoted a moment ago.
    let out = rig.keys(&["retire"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("K2 refuses the retirement"), "{err}");
    assert_eq!(states(&status_json(&rig)).len(), 2);

    // `export` prints the ring's document, current first.
    let out = rig.keys(&["export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let set = JwkSet::from_json(&out.stdout).unwrap();
    let kids: Vec<_> = set.keys().iter().map(|k| k.kid().to_string()).collect();
    assert_eq!(kids, vec![second, first]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_or_bad_settings_change_nothing() {
    let rig = Rig::start("cli-faults").await;
    let out = rig.keys(&["stage"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let served = rig.served_kids().await;
    assert_eq!(served.len(), 1);

    // A wrong API token: 401, named with its fix; the edge keeps its document.
    let out = rig.keys_with(
        &["publish"],
        &[("AWS2AZURE_CLOUDFLARE_API_TOKEN", "not-the-token-0123456789")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("Workers KV Storage: Edit"), "{err}");
    assert!(
        !err.contains("not-the-token"),
        "the refused token is echoed: {err}"
    );
    assert_eq!(rig.served_kids().await, served);

    // 429 with a long Retry-After: reported, not waited for.
    rig.stand_in.fail_next(
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(120),
        },
    );
    let out = rig.keys(&["publish"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("retry after 120 s"),
        "{}",
        text(&out.stderr)
    );

    // Without its own timing settings the command times the lifecycle as
    // the rotation function with the stack's variables does.
    let out = rig.keys_with(
        &["status", "--json"],
        &[
            ("AWS2AZURE_WARM_UP", ""),
            ("AWS2AZURE_ROTATION_PERIOD", ""),
            ("AWS2AZURE_PREVIOUS_RETENTION", ""),
            ("AWS2AZURE_WARM_UP_HOURS", "72"),
            ("AWS2AZURE_ROTATION_PERIOD_DAYS", "30"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"]["timings"]["warm_up"], 72 * 3600);
    assert_eq!(status["status"]["timings"]["period"], 30 * 86400);
    assert_eq!(status["status"]["timings"]["previous_retention"], 72 * 3600);

    // A retention too short for K2: refused before anything runs, exit 2.
    let out = rig.keys_with(&["rotate"], &[("AWS2AZURE_PREVIOUS_RETENTION", "10s")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("previous retention"),
        "{}",
        text(&out.stderr)
    );

    // No API token at all for a command that publishes: exit 2, naming it.
    let out = rig.keys_with(&["publish"], &[("AWS2AZURE_CLOUDFLARE_API_TOKEN", "")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AWS2AZURE_CLOUDFLARE_API_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(rig.served_kids().await, served);
    assert_eq!(states(&status_json(&rig)).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_between_any_two_steps_leaves_nothing_half_done_and_the_rerun_converges() {
    let mut rig = Rig::start("cli-killed").await;
    let proxy = FaultProxy::new(MotoServer::shared().endpoint());
    let proxy_server = proxy.clone().serve(loopback()).await.unwrap();
    rig.aws_endpoint = proxy_server.url();

    // `stage`: create, tag, member alias, (publish), point `next`. Killed
    // before each of its KMS calls, each in a ring of its own.
    let stage_steps = [
        ("TrentService.CreateKey", 1),
        ("TrentService.TagResource", 1),
        ("TrentService.CreateAlias", 1),
        ("TrentService.UpdateAlias", 1),
        ("TrentService.CreateAlias", 2),
    ];
    for (target, nth) in stage_steps {
        rig.ring = format!("cli-killed-{}", fastrand::u32(..));
        assert!(
            rig.killed_before(&proxy, &["stage"], target, nth).await,
            "stage never reached {target} #{nth}"
        );
        let left = states(&status_json(&rig));
        eprintln!("stage killed before {target} #{nth} left {left:?}");
        rig.assert_every_aliased_key_is_served(&format!("stage killed before {target} #{nth}"))
            .await;
        let out = rig.keys(&["rotate"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let keys = states(&status_json(&rig));
        let next = keys.iter().filter(|(s, _)| s == "next").count();
        assert_eq!(next, 1, "one next key after the rerun: {keys:?}");
        assert!(
            keys.iter().all(|(s, _)| s == "next" || s == "unstaged"),
            "{keys:?}"
        );
        rig.assert_every_aliased_key_is_served("the rerun").await;
    }

    // `promote`: `previous` → current key, `current` → next key, remove
    // `next`, two stamps, (publish). Killed before each KMS call.
    let out = rig.keys(&["promote", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let promote_steps = [
        ("TrentService.UpdateAlias", 1),
        ("TrentService.CreateAlias", 1),
        ("TrentService.UpdateAlias", 2),
        ("TrentService.DeleteAlias", 1),
        ("TrentService.TagResource", 1),
        ("TrentService.TagResource", 2),
    ];
    for (target, nth) in promote_steps {
        // The previous key has to go first; K2 is not the subject here.
        let _ = rig.keys(&["retire", "--force"]);
        let out = rig.keys(&["stage"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        rig.keys(&["rotate"]);
        // Warm: edge propagation (1 s) + warm-up (2 s).
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let before = states(&status_json(&rig));
        let staged = before.iter().find(|(s, _)| s == "next").unwrap().1.clone();
        assert!(
            rig.killed_before(&proxy, &["promote"], target, nth).await,
            "promote never reached {target} #{nth}"
        );
        let left = states(&status_json(&rig));
        eprintln!("promote killed before {target} #{nth} left {left:?}");
        rig.assert_every_aliased_key_is_served(&format!("promote killed before {target} #{nth}"))
            .await;
        let out = rig.keys(&["rotate"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        if states(&status_json(&rig)).iter().any(|(s, _)| s == "next") {
            let out = rig.keys(&["promote"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let after = states(&status_json(&rig));
        let current: Vec<_> = after.iter().filter(|(s, _)| s == "current").collect();
        assert_eq!(current.len(), 1, "{after:?}");
        assert_eq!(
            current[0].1, staged,
            "the staged key ends current: {after:?}"
        );
        assert_eq!(
            after.iter().filter(|(s, _)| s == "previous").count(),
            1,
            "{after:?}"
        );
        assert!(!after.iter().any(|(s, _)| s == "next"), "{after:?}");
        rig.assert_every_aliased_key_is_served(&format!("promote rerun after {target} #{nth}"))
            .await;
    }
    drop(proxy_server);
}

#[test]
fn the_key_policy_for_an_adopted_key_lets_only_the_broker_sign() {
    let out = Command::new(BIN)
        .args([
            "keys",
            "policy",
            "--broker-role-arn",
            "arn:aws:iam::123456789012:role/stack-BrokerRole-1",
            "--rotation-role-arn",
            "arn:aws:iam::123456789012:role/stack-RotationRole-1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let policy: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sids: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Sid"].as_str())
        .collect();
    for sid in ["BrokerSigns", "OnlyTheBrokerSigns", "NoGrants"] {
        assert!(sids.contains(&sid), "{sid} in {sids:?}");
    }
    // The same role twice would let the rotation sign: refused, exit 2.
    let out = Command::new(BIN)
        .args([
            "keys",
            "policy",
            "--broker-role-arn",
            "arn:aws:iam::123456789012:role/same",
            "--rotation-role-arn",
            "arn:aws:iam::123456789012:role/same",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
