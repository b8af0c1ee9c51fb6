//! Wiring: bind the listeners a snapshot asks for, start the gateway, admin and
//! reloader, and drain on shutdown. `main` and the in-process tests both use this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::Snapshot;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::server::{Listening, Server};
use crate::telemetry::LogHandle;

/// A running keygate.
pub struct App {
    pub gateway: Arc<Gateway>,
    server: Server,
    pub admin_addr: Option<SocketAddr>,
    reloader: Option<tokio::task::JoinHandle<()>>,
    admin: Option<Server>,
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
        let listening = Listening::gateway(&settings, gateway.metrics.connections_open.clone());
        let server = Server::start(gateway.clone(), listeners, listening, tls);
        for addr in server.local_addrs() {
            tracing::info!(listener = "gateway", addr = %addr, "listening");
        }
        let mut admin_addr = None;
        let mut admin = None;
        if let Some(listener) = admin_listener {
            let addr = listener.local_addr().ok();
            admin_addr = addr;
            admin = Some(crate::admin::start(gateway.clone(), listener, &settings));
            if let Some(addr) = addr {
                tracing::info!(listener = "admin", addr = %addr, "listening");
            }
        }
        Ok(App { gateway, server, admin_addr, reloader, admin })
    }

    /// The gateway's bound addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// Drains: readiness fails at once, the gateway's listeners stop, idle connections
    /// close, and requests in flight get `shutdown_grace` to finish. The admin listener
    /// drains last, so probes keep seeing `/readyz` answer 503 meanwhile; it gets what
    /// is left of the grace, and at least [`ADMIN_DRAIN`]. True when all finished.
    pub async fn shutdown(self) -> bool {
        self.gateway.begin_shutdown();
        if let Some(r) = &self.reloader {
            r.abort();
        }
        let grace = self.gateway.snapshot().server.shutdown_grace;
        let deadline = Instant::now() + grace;
        let drained = self.server.shutdown(grace).await;
        let admin_drained = match self.admin {
            Some(admin) => {
                admin.shutdown(deadline.saturating_duration_since(Instant::now()).max(ADMIN_DRAIN)).await
            }
            None => true,
        };
        drained && admin_drained
    }
}

/// The least time the admin listener gets to drain: its answers are immediate, so
/// only a connection that is still sending its head can take longer.
pub(crate) const ADMIN_DRAIN: Duration = Duration::from_secs(1);
