//! The credential endpoint as a Lambda external extension: deployed as
//! `/opt/extensions/aws2azure-identity` (a layer), it serves Azure SDKs'
//! managed-identity requests at `IDENTITY_ENDPOINT` for the function.
//! Everything is in [`aws2azure_identity::extension`].

// One thread: the extension shares the function's sandbox and CPU, and its
// work (one HTTP server, token loads) is all waiting on I/O.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    aws2azure_identity::extension::run().await
}
