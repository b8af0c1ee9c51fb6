//! The compiled settings of the sections that are not routes: the gateway and admin
//! listeners, logging and reload timing.

use std::net::SocketAddr;
use std::time::Duration;

use super::schema;
use crate::caller::AddrSet;

/// Gateway listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    pub worker_threads: Option<usize>,
    pub tls: Option<schema::ServerTls>,
}

impl PartialEq for schema::ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.client_ca == other.client_ca
    }
}
impl Eq for schema::ServerTls {}

/// Admin listener settings.
#[derive(Debug, Clone)]
pub(crate) struct AdminSettings {
    pub listen: SocketAddr,
    pub allow: AddrSet,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Json,
    Text,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub(crate) struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

/// Reload timing, and how long key rotation waits and keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReloadSettings {
    pub poll_interval: Duration,
    pub debounce: Duration,
    /// How long a candidate key may take to be proven.
    pub verify_timeout: Duration,
    /// How long a replaced key is kept; zero keeps none.
    pub overlap: Duration,
}
