//! `aws2azure keys`: the signing keys' lifecycle (`status`, `stage`,
//! `promote`, `retire`, `rotate`, `publish`) and the key document
//! (`export`). The lifecycle itself is the `aws2azure-keys` crate; this is
//! its command line: where the ring and the edge are, and how to print.

mod export;
mod lifecycle;
pub(crate) mod output;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use export::export;

use crate::{Error, ExitCode};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Each key: state, kid, key id, created, published since, seen publicly
    /// since, next step and when it is due; and whether the public key set
    /// matches.
    Status(RingArgs),
    /// Create the next key and publish it (its warm-up starts once the
    /// public key set lists it).
    Stage(RingArgs),
    /// Make the next key current and the current one previous. Refused until
    /// the next key has been served publicly for the warm-up (K1).
    Promote(ForceArgs),
    /// Take the previous key out of the document. Refused until it has been
    /// previous for the retention (K2).
    Retire(ForceArgs),
    /// Do every step that is due (stage, publish, promote, retire, delete):
    /// idempotent, safe to run hourly and to rerun after a crash.
    Rotate(RingArgs),
    /// Publish the ring's key document to Workers KV.
    Publish(RingArgs),
    /// Print the key document: the ring's (default), or of the KMS keys and
    /// PEM files named.
    #[command(
        after_help = "Examples:\n  aws2azure keys export --ring aws2azure > jwks.json\n  aws2azure keys export --kms-key alias/aws2azure-current --pem old.pem\n  npx wrangler kv key put --binding EDGE_KV jwks \"$(cat jwks.json)\""
    )]
    Export(ExportArgs),
    /// Print the key policy the rotation gives every key it creates (only
    /// the broker signs, nobody grants), e.g. to adopt a key made before.
    Policy(PolicyArgs),
}

#[derive(Args, Clone, Debug)]
pub struct PolicyArgs {
    #[arg(long, env = "AWS2AZURE_BROKER_ROLE_ARN")]
    pub broker_role_arn: String,
    #[arg(long, env = "AWS2AZURE_ROTATION_ROLE_ARN")]
    pub rotation_role_arn: String,
}

/// Where the ring lives and how the lifecycle is timed. The Cloudflare API
/// token is read only from the environment (`AWS2AZURE_CLOUDFLARE_API_TOKEN`)
/// or a file (`AWS2AZURE_CLOUDFLARE_API_TOKEN_FILE`), never from an
/// argument: arguments end up in shell history and process listings.
#[derive(Args, Clone, Debug)]
pub struct RingArgs {
    /// The ring: KMS aliases alias/RING-next, -current, -previous (the
    /// stack name in the SAM template).
    #[arg(long, env = "AWS2AZURE_KEY_RING", default_value = "aws2azure")]
    pub ring: String,
    /// The issuer whose public key set proves a key is served
    /// (discovery document, then its jwks_uri, as Entra reads them).
    #[arg(long, env = "AWS2AZURE_ISSUER")]
    pub issuer: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// The broker's role: keys created get the key policy that lets only it
    /// sign (with --rotation-role-arn). Without both, new keys get KMS's
    /// default key policy (for local stand-ins).
    #[arg(long, env = "AWS2AZURE_BROKER_ROLE_ARN")]
    pub broker_role_arn: Option<String>,
    /// The rotation function's role, which the key policy lets manage the
    /// keys it creates.
    #[arg(long, env = "AWS2AZURE_ROTATION_ROLE_ARN")]
    pub rotation_role_arn: Option<String>,
    #[arg(long, env = "AWS2AZURE_CLOUDFLARE_ACCOUNT_ID")]
    pub cloudflare_account: Option<String>,
    #[arg(long, env = "AWS2AZURE_CLOUDFLARE_NAMESPACE_ID")]
    pub cloudflare_namespace: Option<String>,
    /// The KV key of the key document (the edge's KEY_DOCUMENT_KV_KEY).
    #[arg(long, env = "AWS2AZURE_CLOUDFLARE_KV_KEY", default_value = "jwks")]
    pub cloudflare_kv_key: String,
    /// The Cloudflare API base URL (a local stand-in in tests).
    #[arg(
        long,
        env = "AWS2AZURE_CLOUDFLARE_API_BASE",
        default_value = "https://api.cloudflare.com/client/v4"
    )]
    pub cloudflare_api: String,
    /// How long a key is served publicly before it may sign (K1). Default:
    /// the rotation function's AWS2AZURE_WARM_UP_HOURS if set, else 24h.
    #[arg(long, env = "AWS2AZURE_WARM_UP", value_parser = duration)]
    pub warm_up: Option<Duration>,
    /// How long a key stays current. Default: the rotation function's
    /// AWS2AZURE_ROTATION_PERIOD_DAYS if set, else 90days.
    #[arg(long, env = "AWS2AZURE_ROTATION_PERIOD", value_parser = duration)]
    pub period: Option<Duration>,
    /// How long the previous key stays published (K2). Default: the rotation
    /// function's AWS2AZURE_PREVIOUS_RETENTION_HOURS if set, else the warm-up.
    #[arg(long, env = "AWS2AZURE_PREVIOUS_RETENTION", value_parser = duration)]
    pub retention: Option<Duration>,
    /// The longest a signer goes on with a key after the alias moved away
    /// from it (the broker: 900 s, three resolve intervals without KMS
    /// confirming the key). K2's least retention counts it.
    #[arg(long, env = "AWS2AZURE_SIGNER_RESOLVE_INTERVAL", default_value = "900s", value_parser = duration)]
    pub signer_resolve_interval: Duration,
    /// Edge caches plus Workers KV propagation. K2's least retention counts it.
    #[arg(long, env = "AWS2AZURE_EDGE_PROPAGATION", default_value = "180s", value_parser = duration)]
    pub edge_propagation: Duration,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ForceArgs {
    #[command(flatten)]
    pub ring: RingArgs,
    /// Skip the invariant's guard and print what that risks (an emergency
    /// rotation after a suspected key compromise).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// A KMS key id, ARN or alias (repeatable; the current key first).
    #[arg(long = "kms-key")]
    pub kms_keys: Vec<String>,
    /// A PEM public or private RSA key (repeatable).
    #[arg(long = "pem")]
    pub pem_files: Vec<PathBuf>,
    #[command(flatten)]
    pub ring: RingArgs,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: write a duration such as 30s, 15m, 24h or 90days"))
}

pub async fn run(command: KeysCommand) -> Result<ExitCode, Error> {
    match command {
        KeysCommand::Export(args) if !args.kms_keys.is_empty() || !args.pem_files.is_empty() => {
            let set = export(&args.kms_keys, &args.pem_files, args.ring.region.as_deref()).await?;
            println!("{}", set.to_json());
            Ok(ExitCode::Ok)
        }
        KeysCommand::Export(args) => lifecycle::export_ring(&args.ring).await,
        KeysCommand::Policy(args) => {
            let policy =
                aws2azure_keys::policy::for_roles(&args.broker_role_arn, &args.rotation_role_arn)
                    .map_err(aws2azure_keys::Error::from)?;
            println!("{policy}");
            Ok(ExitCode::Ok)
        }
        KeysCommand::Status(args) => lifecycle::status(&args).await,
        KeysCommand::Stage(args) => lifecycle::operate(&args, lifecycle::Operation::Stage).await,
        KeysCommand::Promote(args) => {
            lifecycle::operate(
                &args.ring,
                lifecycle::Operation::Promote { force: args.force },
            )
            .await
        }
        KeysCommand::Retire(args) => {
            lifecycle::operate(
                &args.ring,
                lifecycle::Operation::Retire { force: args.force },
            )
            .await
        }
        KeysCommand::Rotate(args) => lifecycle::operate(&args, lifecycle::Operation::Rotate).await,
        KeysCommand::Publish(args) => {
            lifecycle::operate(&args, lifecycle::Operation::Publish).await
        }
    }
}
