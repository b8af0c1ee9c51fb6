//! Metrics, readiness and the access log (`docs/metrics.md`): exact metric lines after
//! scripted traffic, label cardinality closed under random paths and methods, the scrape
//! passes `promtool check metrics`, `/readyz` and `/config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use crate::support::client::{Conn, Reply, request};
use crate::support::inprocess::TestGateway;
use crate::support::metrics::sample;
use crate::support::poll::eventually;
use crate::support::tools::have_promtool;
use crate::support::upstream::{Answer, FakeUpstream, Recorded, closed_port, status};

async fn send(to: SocketAddr, method: &str, path: &str) -> Reply {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    crate::support::client::send(to, request(method, path, &[], b"")).await
}

fn config(ok: &FakeUpstream, denied: &FakeUpstream, closed_port: u16, hang: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
level = "error"
access = false
[callers.groups.local]
cidrs = ["127.0.0.0/8"]
[secrets.k]
value = "observability-sentinel"
[[routes]]
name = "ok"
prefix = "/ok"
upstream = "http://{ok}"
inject = {{ header = "X-Api-Key" }}
secret = "k"
methods = ["GET", "POST"]
allow = ["local"]
[[routes]]
name = "revoked"
prefix = "/revoked"
upstream = "http://{denied}"
inject = {{ query = "key" }}
secret = "k"
allow = ["local"]
[[routes]]
name = "down"
prefix = "/down"
upstream = "http://127.0.0.1:{closed_port}"
inject = {{ query = "key" }}
secret = "k"
allow = ["local"]
[[routes]]
name = "hang"
prefix = "/hang"
upstream = "http://{hang}"
inject = {{ query = "key" }}
secret = "k"
allow = ["local"]
response_timeout = "2s"
[[routes]]
name = "nobody"
prefix = "/nobody"
upstream = "http://{ok}"
inject = {{ query = "key" }}
secret = "k"
allow = []
"#,
        ok = ok.addr,
        denied = denied.addr
    )
}

/// The gateway, and the upstreams it needs alive: 200, 401 and one that never answers.
async fn setup() -> (TestGateway, [FakeUpstream; 3]) {
    let ok = FakeUpstream::start(status(200)).await;
    let denied = FakeUpstream::start(status(401)).await;
    let hang = FakeUpstream::start(std::sync::Arc::new(|_: &Recorded| Answer::Hang)).await;
    let closed = closed_port().port();
    let gw = TestGateway::from_config(&config(&ok, &denied, closed, hang.addr)).await;
    (gw, [ok, denied, hang])
}

#[tokio::test]
async fn scripted_traffic_gives_exact_metric_lines() {
    let (gw, _upstreams) = setup().await;
    let to = gw.addr;
    assert_eq!(send(to, "GET", "/ok/a").await.status, 200);
    assert_eq!(send(to, "GET", "/ok/b").await.status, 200);
    assert_eq!(send(to, "POST", "/ok/c").await.status, 200);
    assert_eq!(send(to, "DELETE", "/ok/c").await.status, 405);
    assert_eq!(send(to, "GET", "/revoked/x").await.status, 401);
    assert_eq!(send(to, "GET", "/down/x").await.status, 502);
    assert_eq!(send(to, "GET", "/nobody/x").await.status, 403);
    assert_eq!(send(to, "GET", "/elsewhere").await.status, 404);
    assert_eq!(send(to, "GET", "/ok/../x").await.status, 400);

    // The access guard finishes when the body is done; the last one may lag a hair.
    eventually("in-flight back to zero", Duration::from_secs(10), || async {
        gw.metrics().contains("keygate_requests_in_flight 0")
    })
    .await;
    let m = gw.metrics();
    let expect = [
        (r#"keygate_requests_total{caller="local",code="200",operation="get",route="ok"}"#, 2.0),
        (r#"keygate_requests_total{caller="local",code="200",operation="post",route="ok"}"#, 1.0),
        (r#"keygate_requests_total{caller="local",code="405",operation="-",route="ok"}"#, 1.0),
        (r#"keygate_requests_total{caller="local",code="401",operation="get",route="revoked"}"#, 1.0),
        (r#"keygate_requests_total{caller="local",code="502",operation="get",route="down"}"#, 1.0),
        (r#"keygate_requests_total{caller="local",code="403",operation="-",route="nobody"}"#, 1.0),
        (r#"keygate_requests_total{caller="-",code="404",operation="-",route="-"}"#, 1.0),
        (r#"keygate_requests_total{caller="-",code="400",operation="-",route="-"}"#, 1.0),
        (r#"keygate_denied_total{reason="method_not_allowed",route="ok"}"#, 1.0),
        (r#"keygate_denied_total{reason="upstream_unavailable",route="down"}"#, 1.0),
        (r#"keygate_denied_total{reason="caller_not_allowed",route="nobody"}"#, 1.0),
        (r#"keygate_denied_total{reason="no_route",route="-"}"#, 1.0),
        (r#"keygate_denied_total{reason="invalid_path",route="-"}"#, 1.0),
        (r#"keygate_upstream_errors_total{kind="connect",route="down"}"#, 1.0),
        (r#"keygate_upstream_errors_total{kind="timeout",route="down"}"#, 0.0),
        (r#"keygate_upstream_auth_failures_total{route="revoked"}"#, 1.0),
        (r#"keygate_upstream_auth_failures_total{route="ok"}"#, 0.0),
        (r#"keygate_request_duration_seconds_count{operation="get",route="ok"}"#, 2.0),
        (r#"keygate_upstream_duration_seconds_count{operation="get",route="ok"}"#, 2.0),
        (r#"keygate_upstream_duration_seconds_count{operation="get",route="down"}"#, 1.0),
        (r#"keygate_request_duration_seconds_bucket{operation="get",route="ok",le="60"}"#, 2.0),
        ("keygate_config_generation", 1.0),
        ("keygate_config_last_reload_successful", 1.0),
        (r#"keygate_config_reloads_total{result="success"}"#, 0.0),
        (r#"keygate_config_reloads_total{result="failure"}"#, 0.0),
        (r#"keygate_build_info{version=""#, f64::NAN),
    ];
    for (series, want) in expect {
        if want.is_nan() {
            assert!(m.contains(series), "missing {series}");
            continue;
        }
        assert_eq!(sample(&m, series), Some(want), "{series}\n{m}");
    }
    // Buckets run from 100 µs to 60 s.
    assert!(m.contains(r#"keygate_request_duration_seconds_bucket{operation="get",route="ok",le="0.0001"}"#));
    assert!(m.contains("# HELP keygate_requests_total "));
    assert!(m.contains("process_resident_memory_bytes"), "process collector present");
    let loaded = sample(&m, r#"keygate_secret_loaded_timestamp_seconds{secret="k"}"#).unwrap();
    assert!(loaded > 1.7e9, "{loaded}");
    assert!(m.contains("keygate_connections_open"));
    assert!(!m.contains("keygate_tls_cert_expiry_timestamp_seconds"), "absent without [server.tls]");
}

fn series_count(scrape: &str) -> usize {
    scrape.lines().filter(|l| !l.starts_with('#') && !l.starts_with("process_")).count()
}

/// 10,000 requests with random paths and methods over a few keep-alive connections.
async fn random_requests(to: SocketAddr, seed: u64, n: usize) {
    let mut x = seed;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", "X-CUSTOM"];
    let prefixes = ["/ok", "/revoked", "/nobody", "/elsewhere", "/ok/..", "", "/OK", "/okay"];
    let mut conn = Conn::open(to).await;
    for _ in 0..n {
        let method = methods[(rand() % methods.len() as u64) as usize];
        let prefix = prefixes[(rand() % prefixes.len() as u64) as usize];
        let path = format!("{prefix}/{:x}/{:x}", rand(), rand() % 1000);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "k")
            .body(Full::new(Bytes::new()))
            .unwrap();
        conn.send(req).await.unwrap();
    }
}

#[tokio::test]
async fn random_paths_and_methods_do_not_grow_label_sets() {
    let (gw, _upstreams) = setup().await;
    random_requests(gw.addr, 0x1234_5678, 10_000).await;
    let after_first = gw.metrics();
    let count = series_count(&after_first);
    random_requests(gw.addr, 0x8765_4321, 10_000).await;
    let after_second = gw.metrics();
    assert_eq!(series_count(&after_second), count, "new series appeared:\n{after_second}");
    // Unknown routes collapse to "-", and no raw path or method leaks into a label.
    for line in after_second.lines().filter(|l| l.starts_with("keygate_")) {
        assert!(!line.contains("elsewhere") && !line.contains("BREW") && !line.contains("okay"), "{line}");
    }
}

#[tokio::test]
async fn scrape_passes_promtool_check_metrics() {
    let (gw, _upstreams) = setup().await;
    let to = gw.addr;
    send(to, "GET", "/ok/a").await;
    send(to, "GET", "/down/a").await;
    let admin = gw.admin;
    let scrape = send(admin, "GET", "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    if !have_promtool("scrape_passes_promtool_check_metrics") {
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &scrape.body).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics failed:\n{report}");
    assert!(report.trim().is_empty(), "promtool found problems:\n{report}");
}

#[tokio::test]
async fn readyz_turns_503_at_once_on_shutdown_and_config_shows_fingerprints() {
    let (gw, _upstreams) = setup().await;
    let admin = gw.admin;
    let ready = send(admin, "GET", "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(send(admin, "GET", "/healthz").await.status, 200);

    let config = send(admin, "GET", "/config").await;
    assert_eq!(config.status, 200);
    let doc = config.json();
    assert_eq!(doc["generation"], 1);
    assert_eq!(doc["routes"][0]["name"], "ok");
    assert_eq!(doc["routes"][0]["operations"], serde_json::json!(["GET", "POST"]));
    assert_eq!(doc["secrets"][0]["name"], "k");
    let fingerprint = doc["secrets"][0]["fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint, keygate::secret::Secret::parse("observability-sentinel").unwrap().fingerprint());
    assert!(!config.text().contains("observability-sentinel"));

    // A request in flight keeps the drain (and the admin listener) going meanwhile.
    let to = gw.addr;
    let in_flight = tokio::spawn(async move { send(to, "GET", "/hang/x").await });
    eventually("the request is in flight", Duration::from_secs(10), || async {
        sample(&gw.metrics(), "keygate_requests_in_flight") == Some(1.0)
    })
    .await;
    let mut gw = gw;
    let app = gw.take_app();
    let gateway = app.gateway.clone();
    let draining = tokio::spawn(app.shutdown());
    eventually("readyz says shutting_down", Duration::from_secs(10), || async {
        send(admin, "GET", "/readyz").await.code() == (503, Some("shutting_down".into()))
    })
    .await;
    assert!(gateway.is_shutting_down());
    // The in-flight request finishes on its own terms (its upstream timeout), then the
    // drain completes well within shutdown_grace.
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.code(), (504, Some("upstream_timeout".into())));
    assert!(draining.await.unwrap(), "the drain completes once the request is done");
}

#[tokio::test]
async fn a_caller_that_leaves_before_the_answer_is_recorded_and_leaves_nothing_in_flight() {
    use crate::support::inprocess::{GatewayBuilder, RouteSpec};
    use crate::support::keys::CID;
    use crate::support::raw::Raw;
    // `/gate` holds every request until released; the caller leaves while it is held.
    let upstream = FakeUpstream::faults().await;
    let gw =
        GatewayBuilder::new().route(RouteSpec::import(&format!("{}/gate", upstream.url()))).start().await;
    let mut caller = Raw::connect(gw.addr).await;
    let head = format!("GET /import/v2/client/{CID}/authenticate HTTP/1.1\r\nhost: keygate\r\n\r\n");
    caller.send(head.as_bytes()).await;
    eventually("the request is held upstream", Duration::from_secs(5), || async {
        upstream.recorded().len() == 1
    })
    .await;
    assert_eq!(gw.metric("keygate_requests_in_flight", &[]), Some(1.0));
    drop(caller);
    eventually("the abandoned request leaves the in-flight gauge", Duration::from_secs(5), || async {
        gw.metric("keygate_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    let gone = [("route", "bi-import"), ("operation", "authenticate"), ("code", "499")];
    assert_eq!(gw.metric("keygate_requests_total", &gone), Some(1.0), "{}", gw.metrics());
    upstream.release();
}
