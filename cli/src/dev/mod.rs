//! `aws2azure dev`: the whole federation loop on loopback, nothing to
//! configure. The edge core serves the issuer; the broker signs with a key
//! generated for this run; the Entra-compatible endpoint trusts the local
//! issuer and really validates; a gateway verifies SigV4 like API Gateway.
//! It then fetches one token itself and narrates each step, never printing a
//! token or an assertion whole.

use std::net::SocketAddr;

use aws2azure_shared::profile::{ProfileConfig, Profiles};

use crate::Error;

mod narration;
mod rotation;
mod stack;

use stack::DevStack;

pub const STAGE: &str = "dev";
pub const DEFAULT_PROFILE: &str = "graph";

pub struct DevOptions {
    pub edge: SocketAddr,
    pub gateway: SocketAddr,
    pub entra: SocketAddr,
    /// Address of the credential endpoint for Azure SDKs.
    pub identity: SocketAddr,
    /// Address of the STS stand-in, started when a profile has
    /// `assertion = "sts"`.
    pub sts: SocketAddr,
    pub region: String,
    /// Profiles from a configuration file; `None`: the default profile.
    pub profiles: Option<Profiles>,
    /// `expires_in` of the stand-in's tokens (Entra's: 3599). Shorter makes
    /// refreshes and cache misses happen within minutes.
    pub token_lifetime_secs: u64,
    /// Stop after the demonstration instead of serving until interrupted.
    pub once: bool,
    /// Rotate the signing key on this period (seconds), with the real state
    /// machine against the in-process key store, while a workload keeps
    /// requesting tokens.
    pub rotate_every: Option<u64>,
}

/// The embedded default profile: obviously local values that pass every
/// validation rule.
pub fn default_profiles() -> Profiles {
    let mut raw = std::collections::BTreeMap::new();
    raw.insert(
        DEFAULT_PROFILE.to_string(),
        ProfileConfig {
            tenant_id: "11111111-2222-3333-4444-555555555555".into(),
            client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            scope: "https://graph.microsoft.com/.default".into(),
            subject: "aws2azure:dev:graph".into(),
            authority: None,
            allowed_principals: None,
            ..Default::default()
        },
    );
    Profiles::from_configs(raw).expect("the default profile is valid")
}

/// The first characters of a credential, enough to recognise its kind.
pub fn redacted(secret: &str) -> String {
    format!(
        "{}… (redacted, {} bytes)",
        &secret[..secret.len().min(12)],
        secret.len()
    )
}

/// Runs the loop; returns when interrupted (or after the demo with `once`).
pub async fn run(options: DevOptions) -> Result<(), Error> {
    let mut stack = DevStack::start(&options).await?;
    narration::introduce(&stack, &options);
    narration::demonstrate(&mut stack).await?;
    narration::suggest(&stack, &options);
    if !options.once
        && let Some(rotation) = stack.rotation.take()
    {
        narration::rotating(&rotation);
        stack.keep_rotating(rotation, options.token_lifetime_secs);
    }
    if options.once {
        println!("\nDone (--once).");
    } else {
        wait_for_interrupt().await;
    }
    stack.stop().await;
    Ok(())
}

/// Serves until Ctrl-C or SIGTERM.
async fn wait_for_interrupt() {
    let interrupted = crate::signal::interrupted();
    println!("\nRunning; press Ctrl-C to stop.");
    interrupted.await;
    println!("\nStopping.");
}
