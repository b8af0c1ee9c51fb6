//! `keygate demo`: the sandbox and a gateway pointed at it, on loopback, with a
//! copy-paste walkthrough. Needs no files, keys or network: keys are generated at start
//! and written to a private temporary directory that is removed on exit.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;

use crate::app::App;
use crate::config;
use crate::sandbox::{self, Sandbox};

/// The client id the demo's sandbox and routes use.
pub(crate) const CLIENT_ID: u64 = 12345;

/// `keygate demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Gateway port; admin on PORT+1, sandbox on PORT+2. 0 picks three free ports.
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
}

/// The three addresses the demo serves on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub sandbox: SocketAddr,
}

/// One walkthrough step: what to run and why.
#[derive(Debug, Clone)]
pub struct Step {
    pub title: &'static str,
    pub method: &'static str,
    /// A literal `http://127.0.0.1:PORT/...` URL.
    pub url: String,
    pub content_type: Option<&'static str>,
    pub body: Option<&'static str>,
    /// Save the response body to this file instead of printing it.
    pub output: Option<&'static str>,
    /// Show only the output lines holding this text.
    pub grep: Option<&'static str>,
    /// A shell command whose output is the body, piped into curl (`--data-binary @-`).
    pub body_command: Option<&'static str>,
    /// Print the response headers too (`curl -i`).
    pub headers: bool,
}

impl Step {
    /// The copy-paste `curl` command for this step.
    pub fn curl(&self) -> String {
        let mut cmd = match self.body_command {
            Some(command) => format!("{command} | curl -s"),
            None => String::from("curl -s"),
        };
        if self.headers {
            cmd.push_str(" -i");
        }
        if self.method != "GET" {
            let _ = write!(cmd, " -X {}", self.method);
        }
        if let Some(ct) = self.content_type {
            let _ = write!(cmd, " -H 'Content-Type: {ct}'");
        }
        if let Some(body) = self.body {
            let _ = write!(cmd, " -d '{body}'");
        }
        if self.body_command.is_some() {
            cmd.push_str(" --data-binary @-");
        }
        if let Some(out) = self.output {
            let _ = write!(cmd, " -o {out}");
        }
        let _ = write!(cmd, " '{}'", self.url);
        if let Some(pattern) = self.grep {
            let _ = write!(cmd, " | grep {pattern}");
        }
        cmd
    }
}

/// Rows the walkthrough pushes.
pub(crate) const ROWS: &str =
    r#"[{"keys":["id"],"id":1,"item":"lamp","total":19.5},{"keys":["id"],"id":2,"item":"desk","total":120}]"#;

/// Prints 1,050 rows for table `events`: more than one upsert may carry.
pub const BULK_ROWS: &str = r#"awk 'BEGIN { printf "["; for (i = 1; i <= 1050; i++) printf "%s{\"keys\":[\"id\"],\"id\":%d,\"kind\":\"click\"}", (i > 1 ? "," : ""), i; print "]" }'"#;

/// The walkthrough, in order. The end-to-end test runs exactly these steps.
pub fn walkthrough(ports: &Ports) -> Vec<Step> {
    let mut steps = basics(ports);
    steps.extend(vendor_limits(ports));
    steps
}

fn blank(title: &'static str, method: &'static str, url: String) -> Step {
    Step {
        title,
        method,
        url,
        content_type: None,
        body: None,
        output: None,
        grep: None,
        body_command: None,
        headers: false,
    }
}

/// The vendor's limits met by keygate: a push of 1,050 rows answered with its batches,
/// and update-status calls (one a minute upstream) served from the guard.
fn vendor_limits(ports: &Ports) -> Vec<Step> {
    let (gw, admin) = (format!("http://{}", ports.gateway), format!("http://{}", ports.admin));
    let status = format!("{gw}/export/0.1/client/{CLIENT_ID}/fullupdatestatus");
    vec![
        Step {
            content_type: Some("application/json"),
            body_command: Some(BULK_ROWS),
            ..blank(
                "Push 1,050 rows in one request. The vendor takes 100 per upsert: keygate sends 11 in order (retrying 429/5xx) and answers with the batches.",
                "POST",
                format!("{gw}/import/v2/client/{CLIENT_ID}/table/events/data"),
            )
        },
        Step {
            headers: true,
            ..blank(
                "Ask for the update-cycle status (the vendor allows one call a minute).",
                "GET",
                status.clone(),
            )
        },
        Step {
            headers: true,
            ..blank(
                "Ask again: keygate answers from its guard (see age and cache-control) instead of earning a 429.",
                "GET",
                status,
            )
        },
        Step {
            grep: Some("-E '^keygate_(import_batches|update_status_answers)_total'"),
            ..blank("What the batches and the guard did.", "GET", format!("{admin}/metrics"))
        },
    ]
}

/// The first part of the walkthrough: push, list, export, download, a refusal, metrics.
fn basics(ports: &Ports) -> Vec<Step> {
    let gw = format!("http://{}", ports.gateway);
    let admin = format!("http://{}", ports.admin);
    let step = |title, method, url: String| Step {
        title,
        method,
        url,
        content_type: None,
        body: None,
        output: None,
        grep: None,
        body_command: None,
        headers: false,
    };
    vec![
        Step {
            content_type: Some("application/json"),
            body: Some(ROWS),
            ..step(
                "Push two rows into table `orders` through the import route. The apikey here is a placeholder: keygate removes it and adds the real one.",
                "POST",
                format!("{gw}/import/v2/client/{CLIENT_ID}/table/orders/data?apikey=placeholder"),
            )
        },
        step(
            "List the warehouse tables through the export route (no key in the request).",
            "GET",
            format!("{gw}/export/0.1/client/{CLIENT_ID}/table"),
        ),
        step(
            "Start an export of the whole table; the answer holds its export_id (1).",
            "POST",
            format!("{gw}/export/0.1/client/{CLIENT_ID}/table/orders/export"),
        ),
        step(
            "Ask how the export is doing: the first poll says Pending, later ones Completed.",
            "GET",
            format!("{gw}/export/0.1/export/1/info"),
        ),
        Step {
            output: Some("orders.zip"),
            ..step(
                "Download the export: a zip holding orders.csv (try `unzip -p orders.zip`).",
                "GET",
                format!("{gw}/export/0.1/export/1"),
            )
        },
        step(
            "A refused request: another client id. keygate answers itself, with x-keygate-error.",
            "GET",
            format!("{gw}/export/0.1/client/999/table"),
        ),
        Step {
            grep: Some("^keygate_requests_total"),
            ..step(
                "What keygate counted: every request, by route, operation, caller group and status.",
                "GET",
                format!("{admin}/metrics"),
            )
        },
    ]
}

/// The embedded gateway config for the demo.
pub(crate) fn config_text(ports: &Ports, key_dir: &Path) -> String {
    format!(
        r#"[server]
listen = "{gateway}"
shutdown_grace = "2s"

[admin]
listen = "{admin}"

[log]
format = "text"
level = "warn"
access = true

[callers.groups.local]
cidrs = ["127.0.0.0/8", "::1/128"]

[secrets.bi_import]
file = "{dir}/bi-import-key"

[secrets.bi_export]
file = "{dir}/bi-export-key"

[[routes]]
name = "bi-import"
prefix = "/import"
preset = "rjmetrics-import"
client_id = {CLIENT_ID}
secret = "bi_import"
allow = ["local"]
upstream = "http://{sandbox}"

[[routes]]
name = "bi-export"
prefix = "/export"
preset = "rjmetrics-export"
client_id = {CLIENT_ID}
secret = "bi_export"
allow = ["local"]
upstream = "http://{sandbox}"
"#,
        gateway = ports.gateway,
        admin = ports.admin,
        sandbox = ports.sandbox,
        dir = key_dir.display(),
    )
}

/// A private directory removed on drop.
struct KeyDir(PathBuf);

impl KeyDir {
    fn create() -> Result<KeyDir, String> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let dir = base.join(format!("keygate-demo-{}-{attempt}", std::process::id()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            if builder.create(&dir).is_ok() {
                return Ok(KeyDir(dir));
            }
        }
        Err("cannot create a temporary directory for the demo keys".into())
    }

    fn write(&self, name: &str, value: &str) -> Result<(), String> {
        let path = self.0.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, value.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn bind(port: u16, offset: u16) -> Result<TcpListener, String> {
    let port = if port == 0 { 0 } else { port.checked_add(offset).ok_or("--port is too large")? };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e} (try --port)"))
}

/// Runs the demo until Ctrl-C.
pub(crate) async fn run(args: Args) -> Result<(), String> {
    let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let sandbox_listener = bind(args.port, 2).await?;
    // Reserve the gateway and admin ports, then release them for the gateway to bind.
    let (gateway, admin) = {
        let g = bind(args.port, 0).await?;
        let a = bind(args.port, 1).await?;
        (local(&g)?, local(&a)?)
    };
    let ports = Ports { gateway, admin, sandbox: local(&sandbox_listener)? };

    let import_key = sandbox::generate_key()?;
    let export_key = sandbox::generate_key()?;
    let keys = KeyDir::create()?;
    keys.write("bi-import-key", import_key.expose())?;
    keys.write("bi-export-key", export_key.expose())?;
    let config_path = keys.0.join("keygate.toml");
    std::fs::write(&config_path, config_text(&ports, &keys.0)).map_err(|e| e.to_string())?;

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

    println!("{}", banner(&ports, &keys.0, &fingerprints));
    crate::signal::stop_requested().await;
    println!("stopping the demo");
    app.shutdown().await;
    sandbox.shutdown().await;
    Ok(())
}

fn banner(ports: &Ports, key_dir: &Path, fingerprints: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "keygate demo is running. Ctrl-C stops it.\n");
    let _ = writeln!(
        out,
        "  gateway  http://{}   routes /import and /export, open to callers on loopback",
        ports.gateway
    );
    let _ = writeln!(out, "  admin    http://{}   /metrics /healthz /readyz /config", ports.admin);
    let _ =
        writeln!(out, "  sandbox  http://{}   a stand-in for the BI import and export APIs", ports.sandbox);
    let _ = writeln!(
        out,
        "\nThe keys were generated for this run ({}) and live in {}.",
        fingerprints.join(", "),
        key_dir.display()
    );
    let _ =
        writeln!(out, "None of the commands below carries a key: keygate injects the right one per route.\n");
    for (i, step) in walkthrough(ports).iter().enumerate() {
        let _ = writeln!(out, "{}. {}\n   {}\n", i + 1, step.title, step.curl());
    }
    let _ = writeln!(out, "Access log lines follow as requests arrive.");
    out
}
