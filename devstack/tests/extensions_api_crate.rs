//! The Extensions API stand-in driven by awslabs' `lambda-extension` crate,
//! the client the credential endpoint's extension is built on: it registers,
//! parks in `next`, takes an INVOKE and a SHUTDOWN and ends.
//!
//! The crate finds the API in the process environment
//! (`AWS_LAMBDA_RUNTIME_API`), which a test cannot set for itself without
//! `unsafe`: the extension runs in a child process, this test binary run
//! again for [`child_extension`] alone.

use std::process::Stdio;
use std::time::Duration;

use aws2azure_devstack::extensions_api::ExtensionsApi;
use aws2azure_devstack::loopback;
use lambda_extension::{Extension, LambdaEvent, NextEvent, service_fn};
use tokio::io::AsyncReadExt;

/// Set in the child's environment: run the extension.
const CHILD: &str = "AWS2AZURE_EXTENSIONS_API_CHILD";
const NAME: &str = "crate-driven";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_extension_crate_registers_takes_an_invoke_and_a_shutdown_and_ends() {
    let api = ExtensionsApi::default();
    let server = api.serve(loopback()).await.unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_extension", "--ignored", "--nocapture"])
        .env(CHILD, "1")
        .env("AWS_LAMBDA_RUNTIME_API", server.addr().to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    api.wait_for_next(1, WAIT).await.unwrap();
    let registered = api.registered();
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0].name, NAME);
    assert_eq!(registered[0].events, ["INVOKE", "SHUTDOWN"]);
    assert_eq!(registered[0].accept_feature.as_deref(), Some("accountId"));

    let request_id = api.push_invoke(Duration::from_secs(30)).unwrap();
    api.wait_for_next(2, WAIT).await.unwrap();
    api.push_shutdown().unwrap();

    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the extension did not end after SHUTDOWN")
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    assert!(status.success(), "{status}\n{stdout}");
    let said: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("extension:"))
        .collect();
    assert_eq!(
        said,
        [
            "extension: registered with account 111122223333".to_string(),
            format!("extension: INVOKE {request_id}"),
            "extension: SHUTDOWN spindown".to_string(),
            "extension: ending".to_string(),
        ],
        "{stdout}"
    );
    let seen = &api.registered()[0];
    assert_eq!(seen.events_received, 2);
    assert!(seen.next_calls >= 2, "{seen:?}");
    assert!(api.errors().is_empty(), "{:?}", api.errors());
    assert!(api.refused().is_empty(), "{:?}", api.refused());
}

/// The extension: reports what it gets on stdout and ends on SHUTDOWN (the
/// crate's own loop would ask for another event).
#[tokio::test]
#[ignore = "the child process of the test above, which sets its environment"]
async fn child_extension() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let processor = service_fn(move |event: LambdaEvent| {
        match event.next {
            NextEvent::Invoke(invoke) => println!("extension: INVOKE {}", invoke.request_id),
            NextEvent::Shutdown(shutdown) => {
                println!("extension: SHUTDOWN {}", shutdown.shutdown_reason);
                let _ = shutdown_tx.send(true);
            }
        }
        async { Ok::<(), lambda_extension::Error>(()) }
    });
    let registered = Extension::new()
        .with_extension_name(NAME)
        .with_events(&["INVOKE", "SHUTDOWN"])
        .with_events_processor(processor)
        .register()
        .await
        .unwrap();
    println!(
        "extension: registered with account {}",
        registered.account_id.as_deref().unwrap_or("-")
    );
    let mut shutdown = shutdown_rx;
    tokio::select! {
        ran = registered.run() => panic!("the extension's loop ended: {ran:?}"),
        _ = shutdown.wait_for(|done| *done) => println!("extension: ending"),
    }
}
