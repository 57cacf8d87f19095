use std::net::SocketAddr;
use std::path::PathBuf;
use std::process;
use std::time::Duration;

use aws2azure_cli::config::CliConfig;
use aws2azure_cli::{Error, ExitCode, allowlist, azure, dev, direct, doctor, keys, serve, token};
use aws2azure_shared::service_tags::DEFAULT_TAG;
use clap::{Args, Parser, Subcommand};

/// aws2azure: Entra ID access tokens for AWS workloads, with no Azure secret.
///
/// Exit codes: 0 success, 1 the operation ran and failed (a check failed,
/// the API refused), 2 wrong command line, input or local setup.
#[derive(Parser)]
#[command(name = "aws2azure", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Dev(DevArgs),
    Token(TokenArgs),
    Serve(ServeArgs),
    Doctor(DoctorArgs),
    Allowlist(AllowlistArgs),
    Azure(AzureArgs),
    /// The signing keys' lifecycle and the key document the edge serves.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// Run the whole federation loop on loopback and fetch a token through it.
///
/// The edge, the token API behind a SigV4-verifying gateway and an Entra
/// stand-in, with nothing to configure and no cloud account: a signing key is
/// generated for the run and the default profile `graph` is used unless
/// --config names others. Prints the local credentials to export, shows one
/// token's way through the loop, then serves until Ctrl-C.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  aws2azure dev\n  aws2azure dev --gateway 127.0.0.1:9000 --config aws2azure.toml"
)]
struct DevArgs {
    /// Address of the edge (the issuer is http://ADDR).
    #[arg(long, default_value = "127.0.0.1:8787")]
    edge: SocketAddr,
    /// Address of the token API gateway (endpoint http://ADDR/dev).
    #[arg(long, default_value = "127.0.0.1:8790")]
    gateway: SocketAddr,
    /// Address of the Entra-compatible endpoint.
    #[arg(long, default_value = "127.0.0.1:8788")]
    entra: SocketAddr,
    /// Address of the credential endpoint for Azure SDKs (IDENTITY_ENDPOINT).
    #[arg(long, default_value = "127.0.0.1:8791")]
    identity: SocketAddr,
    /// Address of the AWS STS stand-in (GetWebIdentityToken and the AWS
    /// issuer's documents), started when a profile has assertion = "sts".
    #[arg(long, default_value = "127.0.0.1:8789")]
    sts: SocketAddr,
    /// Region the gateway expects in signatures.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// A configuration file with [profiles.NAME] tables (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Lifetime in seconds of the tokens the Entra stand-in issues (Entra's
    /// are 60-90 minutes); shorter ones make refreshes and cache misses
    /// happen within minutes.
    #[arg(long, default_value_t = 3599, value_parser = clap::value_parser!(u64).range(30..=86_400))]
    token_lifetime: u64,
    /// Stop after fetching the demonstration token.
    #[arg(long)]
    once: bool,
    /// Rotate the signing key every SECONDS (at least 126) with the real
    /// rotation state machine, publishing to the local edge, while a
    /// workload keeps requesting fresh tokens; each step is narrated.
    #[arg(long, value_name = "SECONDS")]
    rotate_every: Option<u64>,
}

/// Get an Entra access token for PROFILE from the token API (or, with
/// --direct, from AWS STS and Entra, with no broker).
///
/// The request is signed with the AWS credentials of the environment (env,
/// shared files, SSO, web identity, ECS or EC2 metadata). Prints the token
/// alone, or with --json the API's whole answer. Reuses a token cached on disk
/// while it has more than --min-validity seconds left.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  aws2azure token graph --endpoint https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod\n  export AWS2AZURE_ENDPOINT=https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod\n  curl -H \"Authorization: Bearer $(aws2azure token graph)\" https://graph.microsoft.com/v1.0/users\n  aws2azure token graph-sts --direct --config aws2azure.toml --region eu-west-1"
)]
struct TokenArgs {
    /// The profile to get a token for.
    profile: String,
    /// Base URL of the token API, stage included.
    #[arg(long, env = "AWS2AZURE_ENDPOINT", required_unless_present = "direct")]
    endpoint: Option<String>,
    /// No broker: ask AWS STS for the assertion with this workload's own role
    /// (GetWebIdentityToken; AssumeRole first into the profile's role_arn)
    /// and exchange it at Entra from here. For profiles with assertion =
    /// "sts" in --config.
    #[arg(long)]
    direct: bool,
    /// With --direct: the configuration file with the profile (TOML).
    #[arg(long, default_value = "aws2azure.toml", requires = "direct")]
    config: PathBuf,
    /// Region of the API (default: from the endpoint's host, else AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Seconds the token must stay valid; a cached token with more left is
    /// reused. Keep it below the broker's refresh margin (300 s) so that the
    /// broker can still serve its old token when a refresh fails.
    #[arg(long, default_value_t = 120)]
    min_validity: u64,
    /// Print the API's JSON answer instead of the bare token.
    #[arg(long)]
    json: bool,
    /// Do not read or write the on-disk cache.
    #[arg(long)]
    no_cache: bool,
    /// Where cached tokens live (default $XDG_CACHE_HOME/aws2azure).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

/// Serve Azure SDKs' managed-identity protocol in front of the token API.
///
/// Programs using DefaultAzureCredential or ManagedIdentityCredential (Python,
/// JavaScript, .NET, Java, Go) then get their Entra tokens from aws2azure
/// with no code change. Prints `export IDENTITY_ENDPOINT=...` and `export
/// IDENTITY_HEADER=...` for them, then serves until Ctrl-C or SIGTERM. The
/// header secret is random unless IDENTITY_HEADER is set. The token API is
/// called with the AWS credentials of the environment; tokens are cached in
/// memory and refreshed ahead, and none with under 5 minutes left is handed
/// out.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  aws2azure serve --endpoint https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod --config aws2azure.toml\n  IDENTITY_HEADER=$(openssl rand -hex 32) aws2azure serve --listen 127.0.0.1:8791\n\nAs a service (systemd, ECS and EKS sidecars, the Lambda extension): docs/credential-endpoint.md"
)]
struct ServeArgs {
    /// Base URL of the token API, stage included.
    #[arg(long, env = "AWS2AZURE_ENDPOINT", required_unless_present = "direct")]
    endpoint: Option<String>,
    /// No broker: get each token from AWS STS (GetWebIdentityToken with this
    /// workload's role, or the profile's role_arn) and Entra, from this
    /// process. Every profile in --config must have assertion = "sts".
    #[arg(long)]
    direct: bool,
    /// The configuration file with the profiles the token API serves
    /// (TOML: [profiles.NAME] tables, optional [resources] table).
    #[arg(long, default_value = "aws2azure.toml")]
    config: PathBuf,
    /// Region of the API (default: from the endpoint's host, else AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Address to listen on; port 0 picks a free one (the export line says
    /// which).
    #[arg(long, default_value = "127.0.0.1:8791")]
    listen: SocketAddr,
    /// Allow a non-loopback --listen address. Other hosts can then ask for
    /// tokens with the header secret alone.
    #[arg(long)]
    allow_remote: bool,
}

/// Check an issuer the way Entra will use it.
///
/// Discovery document, byte-exact issuer, key set, each key, cache headers;
/// prints a PASS/WARN/FAIL table and exits 1 when a check fails.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  aws2azure doctor https://issuer.example.com --kid NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs\n  aws2azure doctor http://127.0.0.1:8787 --allow-http"
)]
struct DoctorArgs {
    /// The issuer URL exactly as in the federated credential.
    issuer_url: String,
    /// A key id that must be published.
    #[arg(long)]
    kid: Option<String>,
    /// Accept plain http on loopback (an `aws2azure dev` edge).
    #[arg(long)]
    allow_http: bool,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each request.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Turn Microsoft's Service Tags download into the edge's allowlist document.
///
/// Reports on standard error what changed against --current.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  aws2azure allowlist ServiceTags_Public_20261123.json --current allowlist.json --output allowlist.json\n  npx wrangler kv key put --binding EDGE_KV allowlist \"$(cat allowlist.json)\""
)]
struct AllowlistArgs {
    /// The Service Tags file (ServiceTags_Public_YYYYMMDD.json) or one tag's entry.
    service_tags_file: PathBuf,
    /// The service tag to take.
    #[arg(long, default_value = DEFAULT_TAG)]
    tag: String,
    /// The allowlist document in use now, to report what changes.
    #[arg(long)]
    current: Option<PathBuf>,
    /// Write the document here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Print the federated credential to create in Entra for a profile.
///
/// As the exact `az` command, Bicep or Terraform, with issuer, subject and
/// audience exactly as the assertions carry them.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  aws2azure azure graph --config aws2azure.toml\n  aws2azure azure graph --issuer https://issuer.example.com --format terraform"
)]
struct AzureArgs {
    /// The profile.
    profile: String,
    /// The configuration file with the profile (TOML).
    #[arg(long, default_value = "aws2azure.toml")]
    config: PathBuf,
    /// The issuer (default: `issuer` of the configuration file).
    #[arg(long)]
    issuer: Option<String>,
    #[arg(long, value_enum, default_value = "all")]
    format: azure::Format,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    };
    process::exit(code as i32);
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Dev(args) => {
            let profiles = args
                .config
                .as_deref()
                .map(CliConfig::load)
                .transpose()?
                .map(|c| c.profiles);
            dev::run(dev::DevOptions {
                edge: args.edge,
                gateway: args.gateway,
                entra: args.entra,
                identity: args.identity,
                sts: args.sts,
                region: args.region,
                profiles,
                token_lifetime_secs: args.token_lifetime,
                once: args.once,
                rotate_every: args.rotate_every,
            })
            .await?;
            Ok(ExitCode::Ok)
        }
        Command::Token(args) => {
            let cache_dir = if args.no_cache {
                None
            } else {
                args.cache_dir.or_else(token::default_cache_dir)
            };
            let token = match &args.endpoint {
                Some(endpoint) if !args.direct => {
                    token::TokenClient::from_env(endpoint, args.region.as_deref())
                        .await?
                        .with_cache_dir(cache_dir)
                        .token(&args.profile, args.min_validity)
                        .await?
                }
                _ => {
                    direct::token(direct::DirectOptions {
                        config: &args.config,
                        profile: &args.profile,
                        min_validity: args.min_validity,
                        region: args.region,
                        cache_dir,
                    })
                    .await?
                }
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&token).expect("serialises")
                );
            } else {
                println!("{}", token.access_token);
            }
            Ok(ExitCode::Ok)
        }
        Command::Serve(args) => {
            serve::run(serve::ServeOptions {
                endpoint: args.endpoint,
                direct: args.direct,
                region: args.region,
                config: args.config,
                listen: args.listen,
                allow_remote: args.allow_remote,
            })
            .await?;
            Ok(ExitCode::Ok)
        }
        Command::Doctor(args) => {
            let report = doctor::check(
                &args.issuer_url,
                &doctor::Options {
                    allow_http: args.allow_http,
                    kid: args.kid,
                    timeout: Duration::from_secs(args.timeout),
                },
            )
            .await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialises")
                );
            } else {
                print!("{}", report.table());
            }
            Ok(if report.passed() {
                ExitCode::Ok
            } else {
                ExitCode::Failed
            })
        }
        Command::Allowlist(args) => {
            let doc = allowlist::from_service_tags(&args.service_tags_file, &args.tag)?;
            let change = match &args.current {
                Some(path) => Some(allowlist::Change::between(
                    &allowlist::read_current(path)?,
                    &doc,
                )),
                None => None,
            };
            let json = doc.to_json_pretty() + "\n";
            match &args.output {
                Some(path) => std::fs::write(path, json).map_err(|source| Error::Write {
                    path: path.display().to_string(),
                    source,
                })?,
                None => print!("{json}"),
            }
            eprint!("{}", allowlist::summary(&doc, change.as_ref()));
            Ok(ExitCode::Ok)
        }
        Command::Azure(args) => {
            print!(
                "{}",
                azure::run(
                    &args.config,
                    &args.profile,
                    args.issuer.as_deref(),
                    args.format
                )?
            );
            Ok(ExitCode::Ok)
        }
        Command::Keys(command) => keys::run(command).await,
    }
}
