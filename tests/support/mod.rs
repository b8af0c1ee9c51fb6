//! Shared helpers for the gateway integration tests: a config builder that starts a
//! real keygate on 127.0.0.1:0, the BI sandbox as a recording upstream, a configurable
//! fake upstream ([`upstream`]), a test CA ([`tls`]), HTTP clients ([`client`]) and
//! small assertions.
//!
//! Every test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod client;
pub mod tls;
pub mod upstream;

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keygate::app::App;
use keygate::sandbox::{RecordedRequest, Sandbox, Settings};
use keygate::secret::Secret;
use tokio::net::TcpListener;

pub use client::Reply;

/// The BI client id of every preset route.
pub const CID: u64 = 12345;
/// Recognisable sentinel keys: a test that finds one where it must not be fails loudly.
pub const IMPORT_KEY: &str = "SENTINELimportKEY7f3a9c";
pub const EXPORT_KEY: &str = "SENTINELexportKEYb52e0d";
/// A generic route's key, with characters that must be percent-encoded in a query.
pub const GENERIC_KEY: &str = "SENTINELgenericKEY/+&=9c";

/// One `[[routes]]` table, built field by field; `set` replaces a field.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    fields: Vec<(String, String)>,
}

impl RouteSpec {
    /// A `rjmetrics-import` route on `/import`, allowing 127.0.0.1 only.
    pub fn import(upstream: &str) -> RouteSpec {
        RouteSpec { fields: Vec::new() }
            .set("name", "\"bi-import\"")
            .set("prefix", "\"/import\"")
            .set("preset", "\"rjmetrics-import\"")
            .set("client_id", &CID.to_string())
            .set("secret", "\"bi_import\"")
            .set("allow", "[\"127.0.0.1/32\"]")
            .set("upstream", &format!("{upstream:?}"))
    }

    /// A `rjmetrics-export` route on `/export`, allowing 127.0.0.1 only.
    pub fn export(upstream: &str) -> RouteSpec {
        RouteSpec { fields: Vec::new() }
            .set("name", "\"bi-export\"")
            .set("prefix", "\"/export\"")
            .set("preset", "\"rjmetrics-export\"")
            .set("client_id", &CID.to_string())
            .set("secret", "\"bi_export\"")
            .set("allow", "[\"127.0.0.1/32\"]")
            .set("upstream", &format!("{upstream:?}"))
    }

    /// A generic route on `/generic` injecting `Authorization: Bearer <key>`.
    pub fn generic(upstream: &str) -> RouteSpec {
        RouteSpec { fields: Vec::new() }
            .set("name", "\"generic\"")
            .set("prefix", "\"/generic\"")
            .set("secret", "\"generic\"")
            .set("allow", "[\"127.0.0.1/32\"]")
            .set("upstream", &format!("{upstream:?}"))
            .set("inject", "{ header = \"Authorization\", format = \"Bearer {secret}\" }")
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

/// Builds a config in a temporary directory and starts keygate on it in-process.
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
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
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
        TestGateway::launch(self.dir, &text).await
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A running in-process keygate.
pub struct TestGateway {
    app: Option<App>,
    /// The first gateway listener.
    pub addr: SocketAddr,
    /// Every gateway listener, in config order.
    pub addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts keygate in-process on a whole config text (which must have an `[admin]`).
    pub async fn from_config(text: &str) -> TestGateway {
        TestGateway::launch(tempfile::tempdir().expect("temp dir"), text).await
    }

    async fn launch(dir: tempfile::TempDir, text: &str) -> TestGateway {
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).expect("write config");
        let snapshot = keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("config: {p}"));
        let app = App::start(snapshot, None, None).await.expect("start keygate");
        let addrs = app.local_addrs().to_vec();
        let admin = app.admin_addr.expect("admin listener");
        TestGateway { app: Some(app), addr: addrs[0], addrs, admin, _dir: dir }
    }

    /// The running app.
    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// The Prometheus text of this gateway's registry.
    pub fn metrics(&self) -> String {
        self.app.as_ref().expect("running").gateway.metrics.render()
    }

    /// The value of one sample, matched by name and the given labels (others ignored).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// Takes the app out, e.g. to shut it down while the test keeps the addresses.
    pub fn take_app(&mut self) -> App {
        self.app.take().expect("running")
    }
}

/// Finds a sample by name and labels in Prometheus text; sums nothing, returns the first.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let present: Vec<(&str, &str)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|l| present.contains(l)) {
            return value.parse().ok();
        }
    }
    None
}

fn write_private(path: &std::path::Path, contents: &str) {
    std::fs::write(path, contents).expect("write secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// Starts the BI sandbox with the sentinel keys, as a recording upstream.
pub async fn sandbox(tls: bool) -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sandbox");
    let settings = Settings {
        client_id: CID,
        import_key: Secret::new(IMPORT_KEY.to_owned()),
        export_key: Secret::new(EXPORT_KEY.to_owned()),
        export_allow: Vec::new(),
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

/// Polls `check` until it is true or `within` has passed; panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts `reply` is keygate's own refusal: status, `x-keygate-error`, JSON content
/// type and exactly `{"error": code, "message": <non-empty sentence>}`.
#[track_caller]
pub fn assert_refusal(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "status for {code}; body: {}", reply.text());
    assert_eq!(reply.header("x-keygate-error").as_deref(), Some(code), "x-keygate-error");
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    let body = reply.json();
    let object = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message"], "body shape: {body}");
    assert_eq!(body["error"], code);
    let message = body["message"].as_str().expect("message is a string");
    assert!(!message.is_empty());
}

/// Asserts no sentinel key appears anywhere in `text` (raw or percent-encoded).
#[track_caller]
pub fn assert_no_key(text: &str) {
    for key in [IMPORT_KEY, EXPORT_KEY, GENERIC_KEY, "SENTINELgenericKEY%2F"] {
        assert!(!text.contains(key), "a key leaked: {text}");
    }
}

/// One GET from a client socket bound to `from` (any 127.0.0.0/8 address, or ::1).
pub async fn get_from(from: std::net::IpAddr, to: SocketAddr, target: &str) -> Reply {
    send_from(from, to, client::request(http::Method::GET, target, &[], b"")).await
}

/// One request from a client socket bound to `from`.
pub async fn send_from(
    from: std::net::IpAddr,
    to: SocketAddr,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Reply {
    let socket = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    let stream = socket.connect(to).await.expect("connect");
    client::send_on(stream, req).await
}

/// The value of the sample line `series`, matched exactly (name and full label set).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback port that nothing listens on (bound, read, released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}
