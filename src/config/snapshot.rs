//! One compiled configuration: everything a request, the admin endpoints and a reload
//! read, immutable once built.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{AdminSettings, LogSettings, Manifest, ReloadSettings, ServerSettings};
use crate::caller::Callers;
use crate::routes::RouteTable;
use crate::scrub::Scrubber;
use crate::secret::{Secret, Source};

/// A secret as loaded: shown by name and fingerprint, never by value.
#[derive(Debug, Clone)]
pub struct LoadedSecret {
    pub name: String,
    pub source: Source,
    pub fingerprint: String,
    pub loaded_at: SystemTime,
    pub value: Arc<Secret>,
}

/// One compiled, immutable configuration. Requests load it once and use that one
/// version throughout.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub path: PathBuf,
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub log: LogSettings,
    pub reload: ReloadSettings,
    pub callers: Callers,
    pub secrets: Vec<LoadedSecret>,
    /// Every loaded secret, found and redacted in whatever goes back to callers.
    pub scrub: Arc<Scrubber>,
    pub routes: RouteTable,
    /// The compiled `[server.tls]`, when callers speak TLS to keygate.
    pub tls: Option<crate::tls::ServerTls>,
    /// Files whose change triggers a reload.
    pub watched: Vec<PathBuf>,
    /// SHA-256 over every input; equal digests mean a no-op reload.
    pub digest: [u8; 32],
    /// What the config file named, to recompute `digest` without parsing it again.
    pub manifest: Manifest,
    /// Non-fatal findings (inline secrets, plain HTTP to remote hosts, …).
    pub warnings: Vec<String>,
}
