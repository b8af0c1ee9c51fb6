//! A local stand-in for the BI import and export APIs (`keygate sandbox`).
//!
//! One listener serves both APIs the way `bi-api.md` describes the real service: the
//! import API (`/`, `/v1|v2/client/{cid}/...`, key in the `apikey` query parameter) and the
//! export API (`/0.1/...`, key in the `X-RJM-API-Key` header, per-key IP allowlist). It
//! records every request it receives so gateway tests can assert exactly what arrived.
//! Behaviour chosen where the vendor's docs are silent is listed in `docs/sandbox.md`.

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

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::secret::{self, Secret};

/// Requests kept by [`Sandbox::recorded`]; older ones are dropped first.
const RECORD_LIMIT: usize = 10_000;

/// Command-line flags of `keygate sandbox`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// The numeric client id both keys belong to.
    #[arg(long, default_value_t = 12345, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_id: u64,
    /// Import API key (`apikey` query parameter). Generated and printed when absent.
    #[arg(long, value_parser = parse_secret, conflicts_with = "import_key_file")]
    pub import_key: Option<Secret>,
    /// File holding the import API key (trailing whitespace trimmed).
    #[arg(long)]
    pub import_key_file: Option<PathBuf>,
    /// Export API key (`X-RJM-API-Key` header). Generated and printed when absent.
    #[arg(long, value_parser = parse_secret, conflicts_with = "export_key_file")]
    pub export_key: Option<Secret>,
    /// File holding the export API key (trailing whitespace trimmed).
    #[arg(long)]
    pub export_key_file: Option<PathBuf>,
    /// Address or CIDR the export key may be used from (repeatable). Default: everyone.
    #[arg(long, value_parser = parse_cidr)]
    pub export_allow: Vec<IpNet>,
    /// Serve HTTPS with a certificate generated at start (ALPN h2 and http/1.1).
    #[arg(long)]
    pub tls: bool,
}

/// What a running sandbox needs; built from [`Args`] by [`run`] or directly by tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The client id both keys belong to; other ids in paths are refused.
    pub client_id: u64,
    /// The import API key (`apikey` query parameter).
    pub import_key: Secret,
    /// The export API key (`X-RJM-API-Key` header).
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

/// State shared by every connection of one sandbox.
pub(crate) struct State {
    settings: Settings,
    store: Mutex<store::Store>,
    record: Mutex<VecDeque<RecordedRequest>>,
    started: SystemTime,
}

impl State {
    fn push_record(&self, request: RecordedRequest) {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        if record.len() == RECORD_LIMIT {
            record.pop_front();
        }
        record.push_back(request);
    }

    fn store(&self) -> std::sync::MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
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
        let state = Arc::new(State {
            settings,
            store: Mutex::new(store::Store::default()),
            record: Mutex::new(VecDeque::new()),
            started: SystemTime::now(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = runtime.spawn(server::accept_loop(
            listener,
            state.clone(),
            tls_config,
            stopped,
        ));
        Ok(Sandbox {
            addr,
            ca_pem,
            state,
            stop,
            task,
        })
    }

    /// The address the sandbox listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` or `https://IP:PORT`; an unspecified listen address becomes loopback.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
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

    /// Every request received (the last 10,000), oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        let record = self
            .state
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
pub async fn run(args: Args) -> Result<(), String> {
    let (settings, generated) = settings_from_args(&args)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("sandbox: cannot listen on {}: {e}", args.listen))?;
    let sandbox = Sandbox::start(listener, settings.clone())
        .map_err(|e| format!("sandbox: cannot start: {e}"))?;
    println!("{}", banner(&sandbox, &settings, &generated));
    wait_for_signal().await;
    sandbox.shutdown().await;
    Ok(())
}

/// Which keys [`settings_from_args`] generated (and so may print).
#[derive(Debug, Default)]
struct Generated {
    import: bool,
    export: bool,
}

fn settings_from_args(args: &Args) -> Result<(Settings, Generated), String> {
    let mut generated = Generated::default();
    let import_key = match (&args.import_key, &args.import_key_file) {
        (Some(key), _) => key.clone(),
        (None, Some(path)) => read_key(path, "--import-key-file")?,
        (None, None) => {
            generated.import = true;
            generate_key()?
        }
    };
    let export_key = match (&args.export_key, &args.export_key_file) {
        (Some(key), _) => key.clone(),
        (None, Some(path)) => read_key(path, "--export-key-file")?,
        (None, None) => {
            generated.export = true;
            generate_key()?
        }
    };
    let settings = Settings {
        client_id: args.client_id,
        import_key,
        export_key,
        export_allow: args.export_allow.clone(),
        tls: args.tls,
    };
    Ok((settings, generated))
}

fn read_key(path: &std::path::Path, flag: &str) -> Result<Secret, String> {
    secret::read_file(path)
        .map_err(|problem| format!("sandbox: {flag} {}: {problem}", path.display()))
}

/// 16 random bytes as 32 lowercase hex characters, the shape of the vendor's sample keys.
fn generate_key() -> Result<Secret, String> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes[..])
        .map_err(|_| "sandbox: no system randomness to generate a key".to_owned())?;
    Ok(Secret::new(hex::encode(bytes.as_ref())))
}

fn banner(sandbox: &Sandbox, settings: &Settings, generated: &Generated) -> String {
    let base = sandbox.base_url();
    let mut lines = vec![
        format!("keygate sandbox listening on {base}"),
        format!("  import API: {base}/v2/client/{}/...", settings.client_id),
        format!("  export API: {base}/0.1/..."),
        format!("  client id:  {}", settings.client_id),
    ];
    for (name, key, was_generated) in [
        ("import key", &settings.import_key, generated.import),
        ("export key", &settings.export_key, generated.export),
    ] {
        // Only generated keys are shown: a key the operator supplied stays unprinted.
        if was_generated {
            lines.push(format!("  {name}: {} (generated)", key.expose()));
        } else {
            lines.push(format!("  {name}: fingerprint {}", key.fingerprint()));
        }
    }
    if let Some(pem) = sandbox.ca_pem() {
        lines.push("  CA certificate (trust it to call the sandbox over HTTPS):".to_owned());
        lines.push(pem.trim_end().to_owned());
    }
    lines.join("\n")
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    // Without a SIGTERM handler, Ctrl-C still stops the sandbox; if even that cannot be
    // installed, stopping right away beats running with no way to stop.
    let _ = tokio::signal::ctrl_c().await;
}

fn parse_secret(raw: &str) -> Result<Secret, String> {
    Secret::parse(raw).map_err(|problem| format!("the key {problem}"))
}

fn parse_cidr(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{raw}` is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let mut all = vec!["sandbox"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).map(|cli| cli.args)
    }

    #[test]
    fn defaults_generate_both_keys() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(args.client_id, 12345);
        let (settings, generated) = settings_from_args(&args).unwrap();
        assert!(generated.import && generated.export);
        for key in [&settings.import_key, &settings.export_key] {
            assert_eq!(key.expose().len(), 32);
            assert!(
                key.expose()
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        assert_ne!(settings.import_key, settings.export_key);
    }

    #[test]
    fn given_keys_are_used_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.key");
        std::fs::write(&file, "export-secret-from-file\n").unwrap();
        let args = parse(&[
            "--import-key",
            "import-secret-on-cli",
            "--export-key-file",
            file.to_str().unwrap(),
            "--export-allow",
            "10.0.0.0/8",
            "--export-allow",
            "192.0.2.7",
            "--client-id",
            "7",
        ])
        .unwrap();
        assert!(!format!("{args:?}").contains("import-secret-on-cli"));
        let (settings, generated) = settings_from_args(&args).unwrap();
        assert!(!generated.import && !generated.export);
        assert_eq!(settings.import_key.expose(), "import-secret-on-cli");
        assert_eq!(settings.export_key.expose(), "export-secret-from-file");
        assert_eq!(settings.export_allow.len(), 2);
        assert_eq!(
            settings.export_allow[1],
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn refuses_conflicting_or_bad_flags() {
        assert!(parse(&["--import-key", "a", "--import-key-file", "f"]).is_err());
        assert!(parse(&["--export-allow", "not-a-cidr"]).is_err());
        assert!(parse(&["--client-id", "0"]).is_err());
        assert!(parse(&["--export-key", ""]).is_err());
    }

    #[tokio::test]
    async fn run_reports_unreadable_key_file() {
        let args = parse(&["--import-key-file", "/nonexistent/keygate/key"]).unwrap();
        let err = run(args).await.unwrap_err();
        assert!(err.contains("--import-key-file"), "{err}");
    }

    #[tokio::test]
    async fn run_reports_address_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let args = parse(&["--listen", &addr]).unwrap();
        let err = run(args).await.unwrap_err();
        assert!(err.contains("cannot listen"), "{err}");
    }
}
