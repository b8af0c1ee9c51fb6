//! A local stand-in for the BI import and export APIs (`keygate sandbox`).
//!
//! One listener serves both APIs the way docs/vendor.md describes the real service: the
//! import API (`/`, `/v1|v2/client/{cid}/...`, key in the `apikey` query parameter) and
//! the export API (`/0.1/...`, key in the `X-RJM-API-Key` header, per-key IP
//! allowlist). It records every request it receives so gateway tests can assert exactly
//! what arrived. Behaviour chosen where the vendor's docs are silent is listed in
//! `docs/sandbox.md`.

mod cli;
pub(crate) use cli::generate_key;
mod clock;
mod export;
mod form;
mod import;
mod reports;
mod respond;
mod server;
mod store;
mod table_file;
mod tls;
pub(crate) use tls::issue_for_hosts;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::secret::Secret;

/// Requests kept by [`Sandbox::recorded`]; older ones are dropped first.
const RECORD_LIMIT: usize = 10_000;

/// Command-line flags of `keygate sandbox`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// The numeric client id both keys belong to.
    #[arg(long, default_value_t = 12345, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_id: u64,
    /// An import API key the sandbox accepts (`apikey` query parameter; repeatable:
    /// every one given is valid). One is generated and printed when none is given.
    #[arg(long, value_parser = cli::parse_secret)]
    pub import_key: Vec<Secret>,
    /// A file holding an accepted import API key (trailing whitespace trimmed; repeatable).
    #[arg(long)]
    pub import_key_file: Vec<PathBuf>,
    /// An export API key the sandbox accepts (`X-RJM-API-Key` header; repeatable).
    /// One is generated and printed when none is given.
    #[arg(long, value_parser = cli::parse_secret)]
    pub export_key: Vec<Secret>,
    /// A file holding an accepted export API key (trailing whitespace trimmed; repeatable).
    #[arg(long)]
    pub export_key_file: Vec<PathBuf>,
    /// Address or CIDR the export key may be used from (repeatable). Default: everyone.
    #[arg(long, value_parser = cli::parse_cidr)]
    pub export_allow: Vec<IpNet>,
    /// Serve HTTPS with a certificate generated at start (ALPN h2 and http/1.1).
    #[arg(long)]
    pub tls: bool,
}

/// What a running sandbox needs; built from [`Args`] by [`run`] or directly by tests.
/// More keys can be accepted, and keys revoked, while it runs ([`Sandbox::accept_keys`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The client id both keys belong to; other ids in paths are refused.
    pub client_id: u64,
    /// The import API key accepted at start (`apikey` query parameter).
    pub import_key: Secret,
    /// The export API key accepted at start (`X-RJM-API-Key` header).
    pub export_key: Secret,
    /// Peers allowed to use the export key. Empty means every address.
    pub export_allow: Vec<IpNet>,
    /// Serve HTTPS with a freshly generated certificate instead of plain HTTP.
    pub tls: bool,
}

/// One request as the sandbox received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method, e.g. `"POST"`.
    pub method: String,
    /// The path, still percent-encoded, without the query.
    pub path: String,
    /// The raw query string (without `?`), exactly as received.
    pub query: Option<String>,
    /// Header names lowercased, duplicates kept. Names appear in the order each was first
    /// seen; the values of one name stay in arrival order. Includes the real keys.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body bytes read (reading stops just past the 5 MiB cap).
    pub body_len: usize,
    /// The TCP peer.
    pub peer: SocketAddr,
}

/// Which of the two APIs a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The Data Import API (`apikey` query parameter).
    Import,
    /// The Export API (`X-RJM-API-Key` header).
    Export,
}

/// The keys each API accepts now.
struct Keys {
    import: Vec<Secret>,
    export: Vec<Secret>,
}

/// State shared by every connection of one sandbox.
pub(crate) struct State {
    settings: Settings,
    keys: Mutex<Keys>,
    store: Mutex<store::Store>,
    record: Mutex<VecDeque<RecordedRequest>>,
    started: SystemTime,
    /// When `fullupdatestatus` last answered 200: the vendor allows one call a minute.
    update_status_at: Mutex<Option<std::time::Instant>>,
}

impl State {
    fn push_record(&self, request: RecordedRequest) {
        let mut record = self.record.lock();
        if record.len() == RECORD_LIMIT {
            record.pop_front();
        }
        record.push_back(request);
    }

    fn store(&self) -> parking_lot::MutexGuard<'_, store::Store> {
        self.store.lock()
    }

    /// True when `presented` is one of the keys `api` accepts now (each compared in
    /// constant time).
    fn accepts(&self, api: Api, presented: &[u8]) -> bool {
        let keys = self.keys.lock();
        let list = match api {
            Api::Import => &keys.import,
            Api::Export => &keys.export,
        };
        list.iter().fold(false, |found, key| respond::same_key(presented, key.expose()) | found)
    }
}

/// A running sandbox bound to a listener.
pub struct Sandbox {
    addr: SocketAddr,
    ca_pem: Option<String>,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sandbox {
    /// Serves on the given listener (it binds nothing itself) until [`Sandbox::shutdown`].
    /// Spawns onto the current tokio runtime; fails when there is none, when the
    /// listener has no address, or when the TLS certificate cannot be generated.
    pub fn start(listener: TcpListener, settings: Settings) -> std::io::Result<Sandbox> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let addr = listener.local_addr()?;
        let (tls_config, ca_pem) = if settings.tls {
            let generated = tls::generate(addr.ip())?;
            (Some(generated.config), Some(generated.ca_pem))
        } else {
            (None, None)
        };
        let keys =
            Keys { import: vec![settings.import_key.clone()], export: vec![settings.export_key.clone()] };
        let state = Arc::new(State {
            keys: Mutex::new(keys),
            settings,
            store: Mutex::new(store::Store::default()),
            record: Mutex::new(VecDeque::new()),
            started: SystemTime::now(),
            update_status_at: Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(false);
        let task = runtime.spawn(server::accept_loop(listener, state.clone(), tls_config, stopped));
        Ok(Sandbox { addr, ca_pem, state, stop, task })
    }

    /// The address the sandbox listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` or `https://IP:PORT`; an unspecified listen address becomes loopback.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() { "https" } else { "http" };
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// PEM of the CA that signed the generated server certificate (only with TLS).
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Makes `keys` the keys `api` accepts from now on, as the vendor does when a key is
    /// created or revoked: a request carrying any other key is refused.
    pub fn accept_keys(&self, api: Api, keys: Vec<Secret>) {
        let mut all = self.state.keys.lock();
        match api {
            Api::Import => all.import = keys,
            Api::Export => all.export = keys,
        }
    }

    /// Every request received (the last 10,000), oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        let record = self.state.record.lock();
        record.iter().cloned().collect()
    }

    /// Stops accepting, lets requests in flight finish (a few seconds at most), returns.
    pub async fn shutdown(self) {
        // Err only when the accept loop already ended; nothing left to stop then.
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// `keygate sandbox` entry point: parses nothing (clap already did), runs until
/// Ctrl-C/SIGTERM. Prints where it listens and any key it generated, never a key it
/// was given.
pub(crate) async fn run(args: Args) -> Result<(), String> {
    let (settings, generated, accepted) = cli::settings_from_args(&args)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("sandbox: cannot listen on {}: {e}", args.listen))?;
    let sandbox =
        Sandbox::start(listener, settings.clone()).map_err(|e| format!("sandbox: cannot start: {e}"))?;
    println!("{}", cli::banner(&sandbox, &settings.client_id, &accepted, &generated));
    sandbox.accept_keys(Api::Import, accepted.import);
    sandbox.accept_keys(Api::Export, accepted.export);
    crate::signal::stop_requested().await;
    sandbox.shutdown().await;
    Ok(())
}
