//! Inbound TLS and mTLS (`docs/configuration.md`: `[server.tls]`, how the caller is identified): client certificates
//! from a CA generated at test time; identities allowed on one route and refused on
//! another; a missing, foreign or expired client certificate fails the handshake; the
//! serving certificate rotates on disk for new connections while open ones keep working;
//! a mismatched certificate on reload keeps the old pair.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::client::Conn;
use crate::support::files::write_by_rename as write;
use crate::support::inprocess::TestGateway;
use crate::support::poll::{SOON, eventually};
use crate::support::tls::{Ca, Leaf, client_config, dns, uri};
use crate::support::upstream::{FakeUpstream, status};

fn server_leaf(ca: &Ca) -> Leaf {
    ca.issue(vec![dns("localhost")], false)
}

struct Setup {
    server_ca: Ca,
    client_ca: Ca,
    gw: TestGateway,
    addr: SocketAddr,
    _upstream: FakeUpstream,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.gw.dir().join(name)
    }

    async fn shutdown(mut self) {
        self.gw.shutdown().await;
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("keygate test server CA");
    let client_ca = Ca::new("keygate test client CA");
    let server = server_leaf(&server_ca);
    write(&dir.path().join("server.crt"), &server.cert_pem);
    write(&dir.path().join("server.key"), &server.key_pem);
    write(&dir.path().join("clients.crt"), &client_ca.pem());
    let upstream = FakeUpstream::start(status(200)).await;
    let up = upstream.addr;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[server.tls]
cert = "{d}/server.crt"
key = "{d}/server.key"
client_ca = "{d}/clients.crt"
[reload]
debounce = "20ms"
poll_interval = "1h"
[log]
level = "error"
access = true
[callers.groups.etl]
identities = ["spiffe://test/etl"]
[callers.groups.reports]
identities = ["spiffe://test/reports", "reports.internal"]
[secrets.k]
value = "tls-test-sentinel-key"
[[routes]]
name = "etl-only"
prefix = "/etl"
upstream = "http://{up}"
inject = {{ header = "X-Api-Key" }}
secret = "k"
allow = ["etl"]
[[routes]]
name = "reports-only"
prefix = "/reports"
upstream = "http://{up}"
inject = {{ header = "X-Api-Key" }}
secret = "k"
allow = ["reports"]
"#,
        d = dir.path().display()
    );
    let gw = TestGateway::start_in(dir, &config, true).await;
    let addr = gw.addr;
    Setup { server_ca, client_ca, gw, addr, _upstream: upstream }
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// A client trusting the server CA, presenting `client` when given.
fn client(s: &Setup, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    client_config(&s.server_ca.pem(), client, &[])
}

/// A request over a fresh mTLS connection: `Err` when the handshake or the first
/// exchange fails (TLS 1.3 reports a refused client certificate on the first read).
async fn request(s: &Setup, leaf: Option<&Leaf>, path: &str) -> Result<(u16, Option<String>), String> {
    let stream = connect(s.addr, client(s, leaf)).await.map_err(|e| e.to_string())?;
    let mut conn = Conn::over(stream).await?;
    Ok(conn.get(path).await?.code())
}

#[tokio::test]
async fn identity_is_allowed_on_its_route_and_refused_on_another() {
    let s = setup().await;
    let etl = s.client_ca.issue(vec![uri("spiffe://test/etl")], false);
    assert_eq!(request(&s, Some(&etl), "/etl/x").await, Ok((200, None)));
    assert_eq!(request(&s, Some(&etl), "/reports/x").await, Ok((403, Some("caller_not_allowed".into()))));
    // DNS-name identities count too.
    let reports = s.client_ca.issue(vec![dns("reports.internal")], false);
    assert_eq!(request(&s, Some(&reports), "/reports/x").await, Ok((200, None)));
    assert_eq!(request(&s, Some(&reports), "/etl/x").await, Ok((403, Some("caller_not_allowed".into()))));
    s.shutdown().await;
}

#[tokio::test]
async fn missing_foreign_or_expired_client_certificates_fail_the_handshake() {
    let s = setup().await;
    let foreign = Ca::new("someone else").issue(vec![uri("spiffe://test/etl")], false);
    let expired = s.client_ca.issue(vec![uri("spiffe://test/etl")], true);
    assert!(request(&s, None, "/etl/x").await.is_err(), "no certificate must fail");
    assert!(request(&s, Some(&foreign), "/etl/x").await.is_err(), "foreign CA must fail");
    assert!(request(&s, Some(&expired), "/etl/x").await.is_err(), "expired must fail");
    // And the listener is still fine afterwards.
    let etl = s.client_ca.issue(vec![uri("spiffe://test/etl")], false);
    assert_eq!(request(&s, Some(&etl), "/etl/x").await, Ok((200, None)));
    s.shutdown().await;
}

async fn served_certificate(s: &Setup, leaf: &Leaf) -> CertificateDer<'static> {
    let stream = connect(s.addr, client(s, Some(leaf))).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

#[tokio::test]
async fn rotated_certificate_serves_new_connections_while_open_ones_keep_working() {
    let s = setup().await;
    let etl = s.client_ca.issue(vec![uri("spiffe://test/etl")], false);
    let old = served_certificate(&s, &etl).await;

    // A keep-alive connection opened before the rotation.
    let mut open = Conn::over(connect(s.addr, client(&s, Some(&etl))).await.unwrap()).await.unwrap();
    assert_eq!(open.get("/etl/before").await.unwrap().status, 200);

    let new = server_leaf(&s.server_ca);
    // Key first, then certificate: the pair is briefly mismatched, which must not apply.
    write(&s.path("server.key"), &new.key_pem);
    write(&s.path("server.crt"), &new.cert_pem);
    eventually("new connections get the new certificate", SOON, || async {
        served_certificate(&s, &etl).await == new.der
    })
    .await;
    assert_ne!(old, new.der);

    // The old connection still works, with the certificate it started with.
    assert_eq!(open.get("/etl/after").await.unwrap().status, 200);

    let expiry = rcgen_not_after(&new.der);
    let metrics = s.gw.metrics();
    assert!(
        metrics.contains(&format!("keygate_tls_cert_expiry_timestamp_seconds {expiry}")),
        "expiry metric must follow the new certificate:\n{metrics}"
    );
    s.shutdown().await;
}

fn rcgen_not_after(der: &CertificateDer<'_>) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.validity().not_after.timestamp()
}

#[tokio::test]
async fn mismatched_certificate_on_reload_keeps_the_old_pair() {
    let s = setup().await;
    let etl = s.client_ca.issue(vec![uri("spiffe://test/etl")], false);
    let old = served_certificate(&s, &etl).await;
    let other = server_leaf(&s.server_ca);
    // A new certificate without its key: the pair does not match.
    write(&s.path("server.crt"), &other.cert_pem);
    eventually("the failed reload is counted", SOON, || async {
        s.gw.metrics().contains("keygate_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert_eq!(served_certificate(&s, &etl).await, old);
    assert!(s.gw.metrics().contains("keygate_config_last_reload_successful 0"));
    assert_eq!(request(&s, Some(&etl), "/etl/x").await, Ok((200, None)));
    s.shutdown().await;
}

#[test]
fn bad_certificate_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("a");
    let one = server_leaf(&server_ca);
    let two = server_leaf(&server_ca);
    write(&dir.path().join("s.crt"), &one.cert_pem);
    write(&dir.path().join("s.key"), &two.key_pem);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{d}/s.crt\"\nkey = \"{d}/s.key\"\n\
         [secrets.k]\nvalue = \"v\"\n[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject = {{ query = \"k\" }}\nsecret = \"k\"\nallow = [\"127.0.0.1\"]\n",
        d = dir.path().display()
    );
    let path = dir.path().join("k.toml");
    write(&path, &config);
    let problems = keygate::config::load(&path, 1, None).unwrap_err().to_string();
    assert!(problems.contains("server.tls: the certificate does not match the key"), "{problems}");

    write(&dir.path().join("s.crt"), "not a certificate");
    let problems = keygate::config::load(&path, 1, None).unwrap_err().to_string();
    assert!(problems.contains("server.tls: cert: holds no PEM certificate"), "{problems}");
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line this test binary writes, in JSON. Installed once as the global
/// subscriber: a thread-local one races with other tests registering callsites.
fn captured_logs() -> &'static Captured {
    static CAPTURE: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("keygate::access", tracing::Level::INFO),
            )
            .with(keygate::telemetry::json_layer(move || sink.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        captured
    })
}

/// The access log line (`docs/metrics.md#access-log`) names the mTLS identity, the caller group and the
/// path without its query.
#[tokio::test]
async fn access_log_names_identity_group_and_path_without_query() {
    let captured = captured_logs();
    let s = setup().await;
    let etl = s.client_ca.issue(vec![uri("spiffe://test/etl")], false);
    let probe = "/etl/access-log-probe";
    let refused = "/reports/access-log-probe";
    let target = format!("{probe}?token=query-must-not-be-logged");
    assert_eq!(request(&s, Some(&etl), &target).await, Ok((200, None)));
    assert_eq!(request(&s, Some(&etl), refused).await, Ok((403, Some("caller_not_allowed".into()))));
    let line_for = |path: &str| {
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("query-must-not-be-logged"), "{text}");
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["path"] == path)
    };
    eventually("both access lines", SOON, || async {
        line_for(probe).is_some() && line_for(refused).is_some()
    })
    .await;
    let ok = line_for(probe).unwrap();
    assert_eq!(ok["message"], "request");
    assert!(ok["timestamp"].is_string());
    assert_eq!(ok["identity"], "spiffe://test/etl");
    assert_eq!(ok["caller"], "127.0.0.1");
    assert_eq!(ok["caller_group"], "etl");
    assert_eq!(ok["route"], "etl-only");
    assert_eq!(ok["operation"], "get");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["bytes_in"], 0);
    assert_eq!(ok["bytes_out"], 11);
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok.get("error").is_none(), "{ok}");
    let denied = line_for(refused).unwrap();
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["error"], "caller_not_allowed");
    assert_eq!(denied["route"], "reports-only");
    assert_eq!(denied["operation"], "-");
    assert!(denied.get("upstream_status").is_none(), "{denied}");
    s.shutdown().await;
}
