//! Stopping long-running commands (`dev`, `serve`) the way their hosts ask.

/// Returns on Ctrl-C or SIGTERM (what `docker stop`, systemd and Kubernetes
/// send).
pub async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
