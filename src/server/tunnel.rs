//! A `CONNECT` tunnel keygate accepted: the handler leaves it in the connection's
//! [`crate::conn::TunnelSlot`] with the TLS settings it must use; once the `200 Connection
//! established` has gone, the server completes TLS inside the tunnel (within the header
//! timeout; the settings refuse a server name no route names) and serves the requests in
//! it like those of any connection: the same handler, timeouts and drain, the outer
//! connection's caller. A tunnel never opens another tunnel.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::{Handler, Limits, Tunnels, serve_connection};
use crate::conn::{ConnInfo, Tunnel};

/// Serves the tunnel: TLS within the header timeout, then its requests.
pub(super) async fn serve<H: Handler>(
    handler: Arc<H>,
    tunnel: Tunnel,
    info: ConnInfo,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let peer = info.peer;
    let info = ConnInfo { tunnel_caller: Some(tunnel.caller), ..info };
    let handshake = async {
        let upgraded = tunnel.upgrade.await.map_err(|e| format!("the tunnel did not open: {e}"))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tunnel.tls);
        acceptor.accept(TokioIo::new(upgraded)).await.map_err(|e| format!("TLS in the tunnel failed: {e}"))
    };
    // The handshake counts against the header timeout, as on a TLS listener.
    match tokio::time::timeout(limits.header_timeout, handshake).await {
        Ok(Ok(stream)) => serve_connection(handler, stream, info, limits, shutdown, Tunnels::Closed).await,
        Ok(Err(why)) => tracing::debug!(peer = %peer, error = %why, "tunnel closed"),
        Err(_) => tracing::debug!(peer = %peer, "TLS in the tunnel timed out"),
    }
}
