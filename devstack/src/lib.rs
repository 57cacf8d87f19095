//! Local stand-ins for the cloud, over real sockets, for `aws2azure dev` and
//! the tests: the edge core serving discovery and keys ([`edge_server`]), an
//! Entra-compatible token endpoint ([`entra`]), a SigV4-verifying API
//! Gateway ([`gateway`], its verifier in [`sigv4`]), a Lambda Runtime API
//! ([`lambda_runtime_api`]) and its Extensions API ([`extensions_api`]),
//! with the Lambda binaries they run as processes ([`lambda_binary`]),
//! moto server for KMS and DynamoDB ([`moto`]),
//! a proxy that injects AWS faults in front of it ([`fault_proxy`]), AWS
//! STS's outbound identity federation, which moto lacks ([`sts`]), and the
//! Cloudflare API's Workers KV calls ([`cloudflare`]).
//! Never used by the Lambda or the Worker.

pub mod cloudflare;
pub mod edge_server;
pub mod entra;
pub mod extensions_api;
pub mod fault_proxy;
pub mod gateway;
pub mod lambda_binary;
pub mod lambda_runtime_api;
pub mod moto;
pub mod sigv4;
pub mod sts;

use std::net::SocketAddr;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("moto server: {0}")]
    Moto(String),
    #[error("edge: {0}")]
    Edge(String),
    #[error("KV: {0}")]
    Kv(String),
    #[error("extensions API: {0}")]
    ExtensionsApi(String),
    #[error("STS stand-in: {0}")]
    Sts(String),
}

/// Binds `addr` and says which address it got (port 0 picks a free one),
/// for a server whose configuration names its own URL.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    Ok((listener, bound))
}

/// An HTTP server on a real socket, stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(addr: SocketAddr, router: axum::Router) -> Result<Self, Error> {
        Self::launch(addr, router, false).await
    }

    /// Like [`Server::start`], with each request's peer address available
    /// to handlers as `ConnectInfo<SocketAddr>`.
    pub async fn start_with_peers(addr: SocketAddr, router: axum::Router) -> Result<Self, Error> {
        Self::launch(addr, router, true).await
    }

    async fn launch(addr: SocketAddr, router: axum::Router, peers: bool) -> Result<Self, Error> {
        let (listener, _) = bind(addr).await?;
        Self::from_listener(listener, router, peers)
    }

    /// Serves on a listener the caller bound (to know its port first).
    pub fn from_listener(
        listener: tokio::net::TcpListener,
        router: axum::Router,
        peers: bool,
    ) -> Result<Self, Error> {
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            let served = if peers {
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop)
                .await
            } else {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "devstack server stopped");
            }
        });
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets open requests finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Loopback on a free port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
