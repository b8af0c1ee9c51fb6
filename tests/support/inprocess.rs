//! keygate started in this process on 127.0.0.1:0: a config builder ([`GatewayBuilder`],
//! [`RouteSpec`]), the config text of the fault suites ([`faults_config`]), the running
//! [`TestGateway`] with its metrics, and the BI sandbox as a recording upstream.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keygate::app::App;
use keygate::sandbox::{RecordedRequest, Sandbox, Settings};
use keygate::secret::Secret;
use tokio::net::TcpListener;

use super::files::write_private;
use super::keys::{CID, EXPORT_KEY, GENERIC_KEY, IMPORT_KEY, SECRET};
use super::metrics;

/// One `[[routes]]` table, built field by field; `set` replaces a field.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    fields: Vec<(String, String)>,
}

impl RouteSpec {
    /// A `rjmetrics-import` route on `/import`, allowing 127.0.0.1 only.
    pub fn import(upstream: &str) -> RouteSpec {
        RouteSpec::preset("bi-import", "/import", "rjmetrics-import", "bi_import", upstream)
    }

    /// A `rjmetrics-export` route on `/export`, allowing 127.0.0.1 only.
    pub fn export(upstream: &str) -> RouteSpec {
        RouteSpec::preset("bi-export", "/export", "rjmetrics-export", "bi_export", upstream)
    }

    fn preset(name: &str, prefix: &str, preset: &str, secret: &str, upstream: &str) -> RouteSpec {
        RouteSpec { fields: Vec::new() }
            .at(name, prefix)
            .set("preset", &format!("{preset:?}"))
            .set("client_id", &CID.to_string())
            .set("secret", &format!("{secret:?}"))
            .set("allow", "[\"127.0.0.1/32\"]")
            .set("upstream", &format!("{upstream:?}"))
    }

    /// A generic route on `/generic` injecting `Authorization: Bearer <key>`.
    pub fn generic(upstream: &str) -> RouteSpec {
        RouteSpec { fields: Vec::new() }
            .at("generic", "/generic")
            .set("secret", "\"generic\"")
            .set("allow", "[\"127.0.0.1/32\"]")
            .set("upstream", &format!("{upstream:?}"))
            .set("inject", "{ header = \"Authorization\", format = \"Bearer {secret}\" }")
    }

    /// Sets the route's `name` and `prefix`.
    pub fn at(self, name: &str, prefix: &str) -> RouteSpec {
        self.set("name", &format!("{name:?}")).set("prefix", &format!("{prefix:?}"))
    }

    /// Sets `key = value` (value is TOML source text).
    pub fn set(mut self, key: &str, value: &str) -> RouteSpec {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(field) => field.1 = value.to_owned(),
            None => self.fields.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    fn render(&self) -> String {
        let mut out = String::from("\n[[routes]]\n");
        for (k, v) in &self.fields {
            let _ = writeln!(out, "{k} = {v}");
        }
        out
    }
}

/// Builds a config in a temporary directory (with the sentinel keys in secret files)
/// and starts keygate on it in-process.
pub struct GatewayBuilder {
    dir: tempfile::TempDir,
    listen: String,
    server: Vec<String>,
    extra: String,
    routes: Vec<RouteSpec>,
}

impl GatewayBuilder {
    pub fn new() -> GatewayBuilder {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, key) in [("bi_import", IMPORT_KEY), ("bi_export", EXPORT_KEY), ("generic", GENERIC_KEY)] {
            write_private(&dir.path().join(format!("{name}.key")), &format!("{key}\n"));
        }
        GatewayBuilder {
            dir,
            listen: "\"127.0.0.1:0\"".to_owned(),
            server: Vec::new(),
            extra: String::new(),
            routes: Vec::new(),
        }
    }

    /// Replaces the gateway's `listen` value (TOML source text).
    pub fn listen(mut self, value: &str) -> GatewayBuilder {
        self.listen = value.to_owned();
        self
    }

    /// Adds a `[server]` line, e.g. `max_connections = 1`.
    pub fn server(mut self, line: &str) -> GatewayBuilder {
        self.server.push(line.to_owned());
        self
    }

    /// Adds top-level TOML (e.g. a `[callers]` section).
    pub fn extra(mut self, toml: &str) -> GatewayBuilder {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn route(mut self, route: RouteSpec) -> GatewayBuilder {
        self.routes.push(route);
        self
    }

    /// Writes a file into the config directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        super::files::write_file(self.dir.path(), name, contents)
    }

    /// The config text this builder produces.
    pub fn config_text(&self) -> String {
        let d = self.dir.path().display();
        let mut text = format!("[server]\nlisten = {}\n", self.listen);
        for line in &self.server {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess = true\n\n");
        text.push_str(&self.extra);
        for name in ["bi_import", "bi_export", "generic"] {
            let _ = write!(text, "\n[secrets.{name}]\nfile = \"{d}/{name}.key\"\n");
        }
        for route in &self.routes {
            text.push_str(&route.render());
        }
        text
    }

    pub async fn start(self) -> TestGateway {
        let text = self.config_text();
        TestGateway::start_in(self.dir, &text, false).await
    }

    /// [`GatewayBuilder::start`], with keygate reloading the config and every file it
    /// names on change.
    pub async fn start_watched(self) -> TestGateway {
        let text = self.config_text();
        TestGateway::start_in(self.dir, &text, true).await
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A generic route `name` on `prefix` to `upstream` for the fault suites, injecting the
/// secret `key` as the `api_key` query parameter (so the upstream URL's query carries
/// it), plus `extra` TOML lines (timeouts, `ca_file`, `max_body_bytes`…).
pub fn faults_route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n\
         inject = {{ query = \"api_key\" }}\nsecret = \"key\"\nmethods = [\"GET\", \"POST\"]\n\
         allow = [\"127.0.0.0/8\"]\n{extra}\n"
    )
}

/// The fault suites' whole config file: `[server]` lines, an admin listener, debug
/// logging, the secret `key` ([`SECRET`]) and `routes`.
pub fn faults_config(server: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\nlevel = \"debug\"\n\n[secrets.key]\nvalue = \"{SECRET}\"\n\n{routes}"
    )
}

/// A running in-process keygate.
pub struct TestGateway {
    app: Option<App>,
    /// The first gateway listener.
    pub addr: SocketAddr,
    /// Every gateway listener, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener (0.0.0.0:0 when the config has no `[admin]`).
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts keygate in-process on a whole config text.
    pub async fn from_config(text: &str) -> TestGateway {
        TestGateway::start_in(tempfile::tempdir().expect("temp dir"), text, false).await
    }

    /// Writes `text` as `keygate.toml` in `dir` and starts keygate on it; with `watch`,
    /// keygate reloads it (and every file it names) on change.
    pub async fn start_in(dir: tempfile::TempDir, text: &str, watch: bool) -> TestGateway {
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).expect("write config");
        let snapshot = keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("config: {p}"));
        let app = App::start(snapshot, watch.then_some(path), None).await.expect("start keygate");
        let addrs = app.local_addrs().to_vec();
        let admin = app.admin_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        TestGateway { app: Some(app), addr: addrs[0], addrs, admin, dir }
    }

    /// The config directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running app.
    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// The Prometheus text of this gateway's registry.
    pub fn metrics(&self) -> String {
        self.app().gateway.metrics.render()
    }

    /// The value of one sample, matched by name and the given labels (others ignored).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metrics::metric_value(&self.metrics(), name, labels)
    }

    /// The value of the sample whose name and labels are exactly `series`
    /// (e.g. `keygate_upstream_errors_total{kind="connect",route="f"}`), if present.
    pub fn sample(&self, series: &str) -> Option<f64> {
        metrics::sample(&self.metrics(), series)
    }

    /// `keygate_upstream_errors_total` for `route` and `kind` (0 when absent).
    pub fn upstream_errors(&self, route: &str, kind: &str) -> f64 {
        self.sample(&format!("keygate_upstream_errors_total{{kind=\"{kind}\",route=\"{route}\"}}"))
            .unwrap_or(0.0)
    }

    /// `keygate_requests_in_flight` (-1 when absent).
    pub fn in_flight(&self) -> f64 {
        self.sample("keygate_requests_in_flight").unwrap_or(-1.0)
    }

    /// Takes the app out, e.g. to shut it down while the test keeps the addresses.
    pub fn take_app(&mut self) -> App {
        self.app.take().expect("running")
    }

    /// Drains as on SIGTERM; true when everything finished within the grace.
    pub async fn shutdown(&mut self) -> bool {
        self.take_app().shutdown().await
    }
}

/// Starts the BI sandbox with the sentinel keys, as a recording upstream.
pub async fn sandbox(tls: bool) -> Sandbox {
    sandbox_with(IMPORT_KEY, EXPORT_KEY, Vec::new(), tls).await
}

/// Starts the BI sandbox for client [`CID`] with these keys and export allow list.
pub async fn sandbox_with(
    import_key: &str,
    export_key: &str,
    export_allow: Vec<ipnet::IpNet>,
    tls: bool,
) -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sandbox");
    let settings = Settings {
        client_id: CID,
        import_key: Secret::new(import_key.to_owned()),
        export_key: Secret::new(export_key.to_owned()),
        export_allow,
        tls,
    };
    Sandbox::start(listener, settings).expect("start sandbox")
}

/// All values of a header in a sandbox record, as text.
pub fn recorded_header(r: &RecordedRequest, name: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Every `name=value` pair of a raw query whose name, percent-decoded, equals `name`
/// in any letter case (or is `name[...]`).
pub fn query_params(query: Option<&str>, name: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let raw = p.split('=').next().unwrap_or("");
            let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy().to_ascii_lowercase();
            decoded == name || decoded.starts_with(&format!("{name}["))
        })
        .map(str::to_owned)
        .collect()
}
