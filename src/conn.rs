//! What a listener knows about the connection a request came on: the peer address and
//! the identities of a verified client certificate. The server fills it in; the
//! pipeline, the access log and the admin endpoints read it.

use std::net::SocketAddr;
use std::sync::Arc;

/// What the connection tells the pipeline about the caller.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// SAN URIs / DNS names of a verified client certificate (mTLS), else empty.
    pub identities: Arc<[String]>,
}
