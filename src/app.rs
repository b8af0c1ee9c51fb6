//! Wiring: bind the listeners a snapshot asks for, start the gateway, admin and
//! reloader, and drain on shutdown. `main` and the in-process tests both use this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Snapshot;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::server::Server;
use crate::telemetry::LogHandle;

/// A running keygate.
pub struct App {
    pub gateway: Arc<Gateway>,
    server: Server,
    pub admin_addr: Option<SocketAddr>,
    reloader: Option<tokio::task::JoinHandle<()>>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

/// Why keygate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl App {
    /// Binds every listener first (so a busy port fails before anything serves), then
    /// starts serving. With `config_path`, the reloader watches it.
    pub async fn start(
        snapshot: Snapshot,
        config_path: Option<PathBuf>,
        log: Option<LogHandle>,
    ) -> Result<App, StartError> {
        let mut listeners = Vec::new();
        for addr in &snapshot.server.listen {
            listeners.push(bind(*addr).await?);
        }
        let admin_listener = match &snapshot.admin {
            Some(a) => Some(bind(a.listen).await?),
            None => None,
        };
        let settings = snapshot.server.clone();
        let tls = snapshot.tls.clone();
        for w in &snapshot.warnings {
            tracing::warn!(warning = %w, "config warning");
        }
        let gateway = Gateway::new(snapshot, Arc::new(Metrics::new()));
        // Watches and the SIGHUP handler are in place before anything says "listening".
        let reloader = config_path.map(|path| Reloader::new(gateway.clone(), path, log).spawn());
        let server = Server::start(gateway.clone(), listeners, &settings, tls);
        for addr in server.local_addrs() {
            tracing::info!(listener = "gateway", addr = %addr, "listening");
        }
        let mut admin_addr = None;
        let mut admin_task = None;
        if let Some(listener) = admin_listener {
            let addr = listener.local_addr().ok();
            admin_addr = addr;
            admin_task = Some(crate::admin::start(gateway.clone(), listener));
            if let Some(addr) = addr {
                tracing::info!(listener = "admin", addr = %addr, "listening");
            }
        }
        Ok(App { gateway, server, admin_addr, reloader, admin_task })
    }

    /// The gateway's bound addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// Drains: readiness fails at once, listeners stop, idle connections close, and
    /// requests in flight get `shutdown_grace` to finish. True when all finished.
    pub async fn shutdown(self) -> bool {
        self.gateway.begin_shutdown();
        if let Some(r) = &self.reloader {
            r.abort();
        }
        let grace = self.gateway.snapshot().server.shutdown_grace;
        let drained = self.server.shutdown(grace).await;
        if let Some(a) = &self.admin_task {
            a.abort();
        }
        drained
    }
}
