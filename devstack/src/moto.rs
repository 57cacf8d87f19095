//! moto server (PyPI `moto[server]`), started and stopped by the caller, as
//! the local KMS and DynamoDB.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// A running `moto_server`, killed on drop.
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

/// Credentials moto accepts (it does not check signatures).
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

impl MotoServer {
    /// Starts moto on a free loopback port and waits until it answers.
    ///
    /// The binary is `$AWS2AZURE_MOTO_SERVER`, else `.venv/bin/moto_server`
    /// of the workspace (what `scripts/test` installs), else `moto_server`
    /// on `PATH`.
    pub fn start() -> Result<Self, Error> {
        let binary = binary();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::Moto(format!("no free port: {e}")))?
            .port();
        // A watchdog shell runs moto and stops it when this process is gone,
        // so a server held in a static (never dropped) does not outlive the
        // test binary, and a crashed run leaves no orphan behind.
        const WATCHDOG: &str = r#"
"$1" -H 127.0.0.1 -p "$2" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; exit 0' TERM INT
while kill -0 "$3" 2>/dev/null && kill -0 $moto 2>/dev/null; do sleep 0.5; done
kill $moto 2>/dev/null
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("moto-watchdog")
            .arg(&binary)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Moto(format!(
                    "cannot start `{}` ({e}); run ./scripts/test once to install it into .venv",
                    binary.display()
                ))
            })?;
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        server.wait_ready(&binary, Duration::from_secs(30))?;
        Ok(server)
    }

    fn wait_ready(&mut self, binary: &Path, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(Error::Moto(format!(
                    "`{}` did not start; run ./scripts/test once to install moto into .venv, or \
                     set AWS2AZURE_MOTO_SERVER",
                    binary.display()
                )));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Moto(format!(
            "did not listen on {} within {timeout:?}",
            self.addr
        )))
    }

    /// One server for the whole process, started on first use; it stops
    /// when the process exits.
    pub fn shared() -> &'static MotoServer {
        static SHARED: std::sync::OnceLock<MotoServer> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| MotoServer::start().expect("moto server starts"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An SDK configuration pointing every client at this server.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config_for(&self.endpoint()).await
    }
}

/// An SDK configuration for a moto-compatible endpoint (moto itself or a
/// proxy in front of it), with moto's test credentials.
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    let credentials = aws_credential_types::Credentials::new(
        ACCESS_KEY_ID,
        SECRET_ACCESS_KEY,
        None,
        None,
        "devstack",
    );
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .load()
        .await
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // SIGTERM lets the watchdog stop moto before it exits itself.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AWS2AZURE_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

/// An RSA-2048 signing key with an alias, as template.yaml creates it;
/// returns the key id.
pub async fn create_signing_key(kms: &aws_sdk_kms::Client, alias: &str) -> String {
    create_key(kms, alias, aws_sdk_kms::types::KeySpec::Rsa2048).await
}

/// A `SIGN_VERIFY` key of `spec` with an alias; returns the key id.
pub async fn create_key(
    kms: &aws_sdk_kms::Client,
    alias: &str,
    spec: aws_sdk_kms::types::KeySpec,
) -> String {
    let key = kms
        .create_key()
        .key_spec(spec)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .description("aws2azure assertion signing key (devstack)")
        .send()
        .await
        .expect("CreateKey");
    let key_id = key
        .key_metadata()
        .expect("key metadata")
        .key_id()
        .to_string();
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(&key_id)
        .send()
        .await
        .expect("CreateAlias");
    key_id
}

/// The token cache table as template.yaml creates it: partition key `pk`.
pub async fn create_cache_table(ddb: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    ddb.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .send()
        .await
        .expect("CreateTable");
}

/// A DynamoDB client whose endpoint nothing listens on: DynamoDB down.
pub async fn unreachable_dynamodb() -> aws_sdk_dynamodb::Client {
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = sdk_config_for(&format!("http://{closed}")).await;
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
            .build(),
    )
}
