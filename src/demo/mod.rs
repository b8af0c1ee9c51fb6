//! `keygate demo`: the sandbox and a gateway pointed at it, on loopback, with a
//! copy-paste walkthrough ([`walkthrough`]). Needs no files, keys or network: keys are
//! generated at start and written, with the gateway's config, to a private temporary
//! directory ([`files`]) that is removed on exit. Editing those files reloads the
//! gateway live, as in production. The walkthrough's last steps take the vendor's own
//! URLs through `HTTPS_PROXY`, with a throw-away CA made for the run ([`intercept`]).

mod files;
mod intercept;
mod walkthrough;

use std::fmt::Write as _;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config;
use crate::sandbox::{self, Sandbox};
pub use files::{REFUSED_CALLER, SHADOW_CALLER};
pub use intercept::{CA_FILE, VENDOR_HOSTS};
pub use walkthrough::{Command, Curl, Step, walkthrough};

/// The client id the demo's sandbox and routes use.
pub(crate) const CLIENT_ID: u64 = 12345;

/// `keygate demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Gateway port; admin on PORT+1, sandbox on PORT+2. 0 picks three free ports.
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
}

/// The three addresses the demo serves on (the gateway also on `[::1]` when it can).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub sandbox: SocketAddr,
}

async fn bind(port: u16, offset: u16) -> Result<TcpListener, String> {
    let port = if port == 0 { 0 } else { port.checked_add(offset).ok_or("--port is too large")? };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e} (try --port)"))
}

/// `[::1]` on the gateway's port, when it can be bound (`localhost` is `::1` first on
/// many systems); otherwise why not, for a warning: the demo then serves IPv4 only.
async fn ipv6_twin(gateway: SocketAddr) -> Result<SocketAddr, String> {
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, gateway.port()));
    match TcpListener::bind(addr).await {
        Ok(_) => Ok(addr),
        Err(e) => Err(format!("cannot listen on {addr} ({e}); the gateway serves 127.0.0.1 only")),
    }
}

/// Runs the demo until Ctrl-C.
pub(crate) async fn run(args: Args) -> Result<(), String> {
    let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let sandbox_listener = bind(args.port, 2).await?;
    // Reserve the gateway and admin ports, then release them for the gateway to bind.
    let (gateway, admin, gateway_v6) = {
        let g = bind(args.port, 0).await?;
        let a = bind(args.port, 1).await?;
        let gateway = local(&g)?;
        let v6 = ipv6_twin(gateway).await.map_err(|why| eprintln!("keygate demo: warning: {why}")).ok();
        (gateway, local(&a)?, v6)
    };
    let ports = Ports { gateway, admin, sandbox: local(&sandbox_listener)? };

    let import_key = sandbox::generate_key()?;
    let export_key = sandbox::generate_key()?;
    let dir = files::DemoDir::create()?;
    dir.write(files::IMPORT_KEY_FILE, import_key.expose())?;
    dir.write(files::EXPORT_KEY_FILE, export_key.expose())?;
    intercept::write_files(&dir)?;
    let config =
        files::config_text(&ports, gateway_v6, dir.path()) + &intercept::config_text(&ports, dir.path());
    let config_path = dir.write(files::CONFIG_FILE, &config)?;

    let settings = sandbox::Settings {
        client_id: CLIENT_ID,
        import_key,
        export_key,
        export_allow: vec!["127.0.0.0/8".parse().map_err(|_| "bad literal")?],
        tls: false,
    };
    let sandbox = Sandbox::start(sandbox_listener, settings).map_err(|e| format!("sandbox: {e}"))?;

    let snapshot = config::load(&config_path, 1, None).map_err(|p| p.to_string())?;
    let log = crate::telemetry::init(&snapshot.log);
    let fingerprints: Vec<String> =
        snapshot.secrets.iter().map(|s| format!("{} sha256:{}", s.name, s.fingerprint)).collect();
    let app = App::start(snapshot, Some(config_path.clone()), Some(log)).await.map_err(|e| e.to_string())?;

    println!("{}", banner(&ports, gateway_v6, dir.path(), &fingerprints));
    crate::signal::stop_requested().await;
    println!("stopping the demo");
    app.shutdown().await;
    sandbox.shutdown().await;
    Ok(())
}

fn banner(ports: &Ports, gateway_v6: Option<SocketAddr>, dir: &Path, fingerprints: &[String]) -> String {
    let mut out = String::new();
    let pid = std::process::id();
    let _ = writeln!(out, "keygate demo is running (pid {pid}). Ctrl-C stops it.\n");
    let also = gateway_v6.map(|v6| format!(" (and http://{v6})")).unwrap_or_default();
    let _ = writeln!(out, "  gateway  http://{}   routes /import and /export{also}", ports.gateway);
    let _ = writeln!(out, "  admin    http://{}   /metrics /healthz /readyz /config", ports.admin);
    let _ =
        writeln!(out, "  sandbox  http://{}   a stand-in for the BI import and export APIs", ports.sandbox);
    let _ = writeln!(out, "  files    {}   removed when the demo stops:", dir.display());
    let _ = writeln!(
        out,
        "           {} (the gateway's config), {} and {}\n           (the keys made for this run: {}),\n           {}, {} and {} (the HTTPS_PROXY steps' certificates)",
        files::CONFIG_FILE,
        files::IMPORT_KEY_FILE,
        files::EXPORT_KEY_FILE,
        fingerprints.join(", "),
        CA_FILE,
        intercept::CERT_FILE,
        intercept::KEY_FILE,
    );
    let _ = writeln!(
        out,
        "  ca       {}   the CA the HTTPS_PROXY steps trust, made for this run (its key was never written)\n",
        dir.join(CA_FILE).display()
    );
    let _ = writeln!(
        out,
        "Edit or replace any of these files and the gateway reloads it live, without a restart\n\
         (`kill -HUP {pid}` re-reads them at once and logs what it found).\n"
    );
    let _ = writeln!(
        out,
        "Callers: group `local` (127.0.0.1 and ::1) may use both routes; {REFUSED_CALLER} may not. Linux\n\
         routes all of 127.0.0.0/8 to the loopback interface, so `curl --interface {REFUSED_CALLER}`\n\
         works without setup (macOS: `sudo ifconfig lo0 alias {REFUSED_CALLER}` first, and {SHADOW_CALLER}).\n\
         None of the commands below carries a key: keygate injects the right one per route.\n"
    );
    for (i, step) in walkthrough(ports, dir).iter().enumerate() {
        let _ = writeln!(out, "{}", wrap(&format!("{}. {}", i + 1, step.title), 90, "   "));
        for command in &step.commands {
            let _ = writeln!(out, "   {}", command.line());
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "An unmodified client needs only its environment, e.g. the vendor's Python client:\n   \
         HTTPS_PROXY={gw} HTTP_PROXY={gw} REQUESTS_CA_BUNDLE={ca} python your_script.py\n",
        gw = format_args!("http://{}", ports.gateway),
        ca = dir.join(CA_FILE).display(),
    );
    let _ = writeln!(out, "Log lines (access, reloads, SIGHUP, shadow_allow) follow as they happen.");
    out
}

/// `text` broken at spaces into lines of at most `width` characters (a longer word
/// stays whole), every line after the first starting with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split(' ') {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out.push('\n');
            out.push_str(indent);
            line_len = indent.len();
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_or_missing_ipv6_loopback_leaves_the_gateway_on_ipv4_with_a_reason() {
        let v4 = SocketAddr::from(([127, 0, 0, 1], 0));
        let Ok(held) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) else {
            // No ::1 on this machine: exactly the case the fallback is for.
            let why = ipv6_twin(SocketAddr::from(([127, 0, 0, 1], 9))).await.unwrap_err();
            assert!(why.contains("127.0.0.1 only"), "{why}");
            return;
        };
        let port = held.local_addr().unwrap().port();
        let why = ipv6_twin(SocketAddr::new(v4.ip(), port)).await.unwrap_err();
        assert!(why.starts_with(&format!("cannot listen on [::1]:{port}")), "{why}");
        assert!(why.ends_with("the gateway serves 127.0.0.1 only"), "{why}");
        drop(held);
        assert_eq!(
            ipv6_twin(SocketAddr::new(v4.ip(), port)).await,
            Ok(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
        );
    }

    #[test]
    fn titles_wrap_at_spaces_with_an_indent() {
        assert_eq!(wrap("1. aaa bbb ccc", 10, "   "), "1. aaa bbb\n   ccc");
        assert_eq!(wrap("1. aaa bbb ccc", 9, "   "), "1. aaa\n   bbb\n   ccc");
        assert_eq!(wrap("1. averyveryverylongword x", 9, "   "), "1.\n   averyveryverylongword\n   x");
        assert_eq!(wrap("short", 90, "   "), "short");
    }

    #[test]
    fn the_demo_config_admits_local_callers_refuses_the_second_loopback_and_shadows_the_third() {
        let ports = Ports {
            gateway: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            sandbox: "127.0.0.1:3".parse().unwrap(),
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(files::IMPORT_KEY_FILE), "i").unwrap();
        std::fs::write(dir.path().join(files::EXPORT_KEY_FILE), "e").unwrap();
        let text = files::config_text(&ports, Some("[::1]:1".parse().unwrap()), dir.path());
        let inputs = config::Inputs::parse(Path::new("demo.toml"), text.as_bytes()).unwrap();
        let snapshot = config::compile(&inputs, 1, None).unwrap();
        assert_eq!(snapshot.log.level, "info");
        assert_eq!(snapshot.server.listen.len(), 2, "both loopbacks");
        let group = &snapshot.callers.groups[0];
        for (addr, admitted) in
            [("127.0.0.1", true), ("::1", true), ("127.0.0.2", false), ("127.0.0.3", false)]
        {
            assert_eq!(group.cidrs.contains(addr.parse().unwrap()), admitted, "{addr}");
        }
        let export = snapshot.routes.routes().iter().find(|r| r.name == "bi-export").unwrap();
        assert!(export.shadow_allow.is_some());
    }
}
