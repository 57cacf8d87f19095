use std::path::PathBuf;
use std::process;

use aws2azure_cli::{Error, ExitCode, allowlist};
use aws2azure_shared::service_tags::DEFAULT_TAG;
use clap::{Parser, Subcommand};

/// aws2azure: Entra ID access tokens for AWS workloads, with no Azure secret.
#[derive(Parser)]
#[command(name = "aws2azure", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn Microsoft's Service Tags download into the edge's allowlist document.
    ///
    /// Example:
    ///   aws2azure allowlist ServiceTags_Public_20261123.json --current allowlist.json --output allowlist.json
    #[command(verbatim_doc_comment)]
    Allowlist {
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
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    };
    process::exit(code as i32);
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Allowlist {
            service_tags_file,
            tag,
            current,
            output,
        } => {
            let doc = allowlist::from_service_tags(&service_tags_file, &tag)?;
            let change = match &current {
                Some(path) => Some(allowlist::Change::between(
                    &allowlist::read_current(path)?,
                    &doc,
                )),
                None => None,
            };
            let json = doc.to_json_pretty() + "\n";
            match &output {
                Some(path) => std::fs::write(path, json).map_err(|source| Error::Write {
                    path: path.display().to_string(),
                    source,
                })?,
                None => print!("{json}"),
            }
            eprint!("{}", allowlist::summary(&doc, change.as_ref()));
            Ok(ExitCode::Ok)
        }
    }
}
