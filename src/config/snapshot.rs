//! One compiled configuration: everything a request, the admin endpoints and a reload
//! read, immutable once built.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{AdminSettings, LogSettings, Manifest, ReloadSettings, ServerSettings};
use crate::caller::Callers;
pub(crate) use crate::rotation::LoadedSecret;
use crate::routes::RouteTable;
use crate::scrub::Scrubber;

/// One compiled, immutable configuration. Requests load it once and use that one
/// version throughout.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) loaded_at: SystemTime,
    pub(crate) path: PathBuf,
    pub(crate) server: ServerSettings,
    pub(crate) admin: Option<AdminSettings>,
    pub(crate) log: LogSettings,
    pub(crate) reload: ReloadSettings,
    pub(crate) callers: Callers,
    /// Every secret, sorted by name: the value in use, and what rotation keeps beside it.
    pub(crate) secrets: Vec<LoadedSecret>,
    /// Every loaded secret, found and redacted in whatever goes back to callers.
    pub(crate) scrub: Arc<Scrubber>,
    pub routes: RouteTable,
    /// `[coordination]`: where update-status answers are shared across processes.
    pub(crate) coordination: Option<super::CoordinationSettings>,
    /// The compiled `[server.tls]`, when callers speak TLS to keygate.
    pub(crate) tls: Option<crate::tls::ServerTls>,
    /// The compiled `[server.intercept]`, when keygate accepts `CONNECT` for routed hosts.
    pub(crate) intercept: Option<crate::tls::InterceptTls>,
    /// Files whose change triggers a reload.
    pub(crate) watched: Vec<PathBuf>,
    /// SHA-256 over every input; equal digests mean a no-op reload.
    pub digest: [u8; 32],
    /// What the config file named, to recompute `digest` without parsing it again.
    pub(crate) manifest: Manifest,
    /// Non-fatal findings (inline secrets, plain HTTP to remote hosts, …).
    pub warnings: Vec<String>,
    /// Compiled without reading secret, TLS or CA files (`check --no-secrets`): shown,
    /// never served. Such secrets have an empty fingerprint.
    pub(crate) structure_only: bool,
}

impl Snapshot {
    /// The secret named `name`.
    pub(crate) fn secret(&self, name: &str) -> Option<&LoadedSecret> {
        self.secrets.iter().find(|s| s.name == name)
    }
}
