//! Stopping long-running commands (`dev`, `serve`) the way their hosts ask.

use std::future::Future;

/// Completes on Ctrl-C or SIGTERM (what `docker stop`, systemd and
/// Kubernetes send). The handlers are installed when this is called, not
/// when the future is first polled: a command calls it before it announces
/// that it is ready, so a signal sent right after the announcement is
/// handled rather than killing the process.
pub fn interrupted() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(e) => {
                // The default action (exit) stays in force.
                eprintln!("warning: cannot handle {name} ({e})");
                None
            }
        };
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let term = received(install(SignalKind::terminate(), "SIGTERM"));
        let int = received(install(SignalKind::interrupt(), "SIGINT"));
        async move {
            tokio::select! {
                _ = term => {}
                _ = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
