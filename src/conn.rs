//! What a listener knows about the connection a request came on: the peer address and
//! the identities of a verified client certificate. The server fills it in; the
//! pipeline, the access log and the admin endpoints read it. And the way back: the
//! slot where a handler leaves a `CONNECT` tunnel it accepted, for the server to serve.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use parking_lot::Mutex;

/// What the connection tells the pipeline about the caller.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// SAN URIs / DNS names of a verified client certificate (mTLS), else empty.
    pub identities: Arc<[String]>,
    /// Inside a `CONNECT` tunnel: the caller's address as found on the `CONNECT` (behind
    /// a trusted proxy, from its `X-Forwarded-For`). A proxy in front of keygate passes
    /// the tunnel's bytes through unread, so it cannot add or clean `X-Forwarded-For` on
    /// the requests inside: they are never read there. `None` outside a tunnel.
    pub tunnel_caller: Option<TunnelCaller>,
}

/// Who a tunnel's requests come from: fixed when the tunnel was accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelCaller {
    /// `None` when the `CONNECT`'s forwarded address could not be read.
    pub addr: Option<IpAddr>,
}

/// An accepted `CONNECT`: the connection it takes over, and the TLS it speaks.
pub(crate) struct Tunnel {
    /// Resolves to the connection once the `200` has been written.
    pub upgrade: OnUpgrade,
    /// The `[server.intercept]` settings current when the tunnel was accepted.
    pub tls: Arc<rustls::ServerConfig>,
    /// The caller the `CONNECT` was admitted for: the caller of every request inside.
    pub caller: TunnelCaller,
}

/// Where a handler leaves the tunnel it accepts; the server puts one in the extensions
/// of each `CONNECT` it may open a tunnel for (none inside a tunnel).
#[derive(Clone, Default)]
pub(crate) struct TunnelSlot(Arc<Mutex<Option<Tunnel>>>);

impl TunnelSlot {
    /// Hands the accepted tunnel to the server.
    pub(crate) fn offer(&self, tunnel: Tunnel) {
        *self.0.lock() = Some(tunnel);
    }

    /// The tunnel a handler accepted, once.
    pub(crate) fn take(&self) -> Option<Tunnel> {
        self.0.lock().take()
    }
}
