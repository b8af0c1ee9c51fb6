//! `CONNECT` interception (reliability item 42): keygate opens a tunnel only to port
//! 443 of a host a route names, for a caller one of that host's routes admits, and with
//! `[server.intercept]` configured; everything else is 403 and nothing is connected
//! anywhere. Inside an accepted tunnel: TLS with the intercept certificate for a routed
//! SNI only, HTTP/1.1 and h2, and every request through the pipeline again.

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use rustls::pki_types::ServerName;

use crate::support::client::{Conn, IMPORT_JSON, Reply, request};
use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway};
use crate::support::keys::{CID, IMPORT_KEY};
use crate::support::tunnel::{IMPORT_HOST, Intercept, connect, import_host_route, name, open, rest, tls};
use crate::support::upstream::{FakeUpstream, ok};

fn authenticate_path() -> String {
    format!("/v2/client/{CID}/authenticate?apikey=placeholder")
}

/// A request inside a tunnel to [`IMPORT_HOST`]: origin-form with `Host` on HTTP/1.1,
/// the absolute URI (hence `:authority`) on h2.
fn tunnelled(method: Method, target: &str, h2: bool, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut req = request(method, target, headers, b"");
    if h2 {
        *req.uri_mut() = format!("https://{IMPORT_HOST}{target}").parse().unwrap();
        req.headers_mut().remove("host");
    } else {
        req.headers_mut().insert("host", http::HeaderValue::from_static(IMPORT_HOST));
    }
    req
}

async fn gateway(intercept: &Intercept, routes: Vec<RouteSpec>) -> TestGateway {
    let mut builder = intercept.configure(GatewayBuilder::new());
    for route in routes {
        builder = builder.route(route);
    }
    builder.start().await
}

#[tokio::test]
async fn connect_to_anything_but_a_routed_host_on_443_is_refused_and_connects_nowhere() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw = gateway(&intercept, vec![import_host_route(&upstream.url())]).await;
    let targets = [
        "api.rjmetrics.com:443".to_owned(),
        "evil.example:443".to_owned(),
        format!("{IMPORT_HOST}:8443"),
        format!("{IMPORT_HOST}:80"),
        IMPORT_HOST.to_owned(),
        "127.0.0.1:443".to_owned(),
        "[::1]:443".to_owned(),
        // What an open proxy would happily connect to: the upstream itself.
        upstream.addr.to_string(),
    ];
    for target in &targets {
        let mut refused = connect(gw.addr, target, &[]).await;
        assert_eq!(refused.status_line(), "HTTP/1.1 403 Forbidden", "CONNECT {target}: {}", refused.head);
        assert_eq!(refused.header("x-keygate-error").as_deref(), Some("no_route"), "CONNECT {target}");
        let body = rest(&mut refused).await;
        assert!(body.contains("\"error\":\"no_route\""), "CONNECT {target}: {body}");
    }
    assert_eq!(upstream.accepted(), 0, "a refused CONNECT reached the upstream");
    let denied = gw.metric("keygate_denied_total", &[("route", "-"), ("reason", "no_route")]);
    assert_eq!(denied, Some(targets.len() as f64));
}

#[tokio::test]
async fn without_server_intercept_every_connect_is_refused() {
    let upstream = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new().route(import_host_route(&upstream.url())).start().await;
    let refused = connect(gw.addr, &format!("{IMPORT_HOST}:443"), &[]).await;
    assert_eq!(refused.status_line(), "HTTP/1.1 403 Forbidden", "{}", refused.head);
    assert_eq!(refused.header("x-keygate-error").as_deref(), Some("no_route"));
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn requests_in_a_tunnel_run_the_pipeline_over_http1_and_h2() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw = gateway(&intercept, vec![import_host_route(&upstream.url())]).await;
    for h2 in [false, true] {
        let mut conn = open(gw.addr, &intercept.ca.pem(), IMPORT_HOST, h2).await;
        // Two requests on the one tunnel; the connection counts once while it is open.
        for _ in 0..2 {
            let reply = conn.send(tunnelled(Method::GET, &authenticate_path(), h2, &[])).await.unwrap();
            assert_eq!(reply.status, 200, "h2={h2}: {}", reply.text());
        }
        assert_eq!(gw.sample("keygate_connections_open"), Some(1.0), "h2={h2}");
        // Refused inside the tunnel: the pipeline's own answer, Import-shaped.
        let other_client = "/v2/client/999/authenticate?apikey=placeholder";
        let reply = conn.send(tunnelled(Method::GET, other_client, h2, &[])).await.unwrap();
        reply.assert_refusal(403, "client_mismatch");
        assert_eq!(reply.header("content-type").as_deref(), Some(IMPORT_JSON));
    }
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 4, "two authenticates per tunnel");
    for r in &recorded {
        assert_eq!(r.target(), format!("/v2/client/{CID}/authenticate?apikey={IMPORT_KEY}"), "one real key");
    }
}

#[tokio::test]
async fn tls_in_a_tunnel_needs_a_routed_server_name() {
    let upstream = FakeUpstream::start(ok()).await;
    let other = "other.example";
    // The certificate names both, so only keygate's SNI check can refuse `other`.
    let intercept = Intercept::new(&[IMPORT_HOST, other]);
    let gw = gateway(&intercept, vec![import_host_route(&upstream.url())]).await;
    let ip: ServerName<'static> = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    for server_name in [name(other), ip] {
        let connected = connect(gw.addr, &format!("{IMPORT_HOST}:443"), &[]).await;
        assert_eq!(connected.status_line(), "HTTP/1.1 200 Connection established");
        let result = tls(connected, &intercept.ca.pem(), server_name.clone(), &[b"http/1.1"]).await;
        assert!(result.is_err(), "TLS with server name {server_name:?} must fail");
    }
    let connected = connect(gw.addr, &format!("{IMPORT_HOST}:443"), &[]).await;
    assert!(tls(connected, &intercept.ca.pem(), name(IMPORT_HOST), &[b"http/1.1"]).await.is_ok());
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn a_caller_no_route_of_the_host_admits_gets_no_tunnel() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let route = import_host_route(&upstream.url()).set("allow", "[\"127.0.0.2/32\"]");
    let gw = gateway(&intercept, vec![route]).await;
    let refused = connect(gw.addr, &format!("{IMPORT_HOST}:443"), &[]).await;
    assert_eq!(refused.status_line(), "HTTP/1.1 403 Forbidden", "{}", refused.head);
    assert_eq!(refused.header("x-keygate-error").as_deref(), Some("caller_not_allowed"));
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn each_request_in_a_tunnel_is_checked_against_its_own_route() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    // 127.0.0.1 may use the generic route of the host, and so open a tunnel, but not
    // the import route.
    let import = import_host_route(&upstream.url()).set("allow", "[\"127.0.0.2/32\"]");
    let generic = RouteSpec::generic(&upstream.url()).set("host", &format!("{IMPORT_HOST:?}"));
    let gw = gateway(&intercept, vec![import, generic]).await;
    let mut conn = open(gw.addr, &intercept.ca.pem(), IMPORT_HOST, false).await;
    let reply = conn.send(tunnelled(Method::GET, &authenticate_path(), false, &[])).await.unwrap();
    reply.assert_refusal(403, "caller_not_allowed");
    let reply = conn.send(tunnelled(Method::GET, "/generic/x", false, &[])).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let recorded = upstream.recorded();
    assert_eq!(recorded.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/x"]);
}

#[tokio::test]
async fn proxy_authorization_is_never_forwarded() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw = gateway(&intercept, vec![import_host_route(&upstream.url())]).await;
    let proxy_auth = "Proxy-Authorization: Basic c2VjcmV0OnByb3h5";
    let connected = connect(gw.addr, &format!("{IMPORT_HOST}:443"), &[proxy_auth]).await;
    assert_eq!(connected.status_line(), "HTTP/1.1 200 Connection established");
    let stream = tls(connected, &intercept.ca.pem(), name(IMPORT_HOST), &[b"http/1.1"]).await.unwrap();
    let mut conn: Conn = Conn::over(stream).await.unwrap();
    let headers = [("proxy-authorization", "Basic aW5uZXI6Y29weQ=="), ("proxy-connection", "keep-alive")];
    let reply: Reply =
        conn.send(tunnelled(Method::GET, &authenticate_path(), false, &headers)).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 1);
    let dump = recorded[0].dump().to_ascii_lowercase();
    assert!(!dump.contains("proxy-"), "a proxy header went upstream:\n{dump}");
    assert!(
        !dump.contains("c2vjcmv0") && !dump.contains("aw5uzxi6"),
        "proxy credentials went upstream:\n{dump}"
    );
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_until_it_closes_and_drains_on_shutdown() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let mut gw = intercept
        .configure(GatewayBuilder::new().server("max_connections = 1").server("shutdown_grace = \"5s\""))
        .route(import_host_route(&upstream.url()))
        .start()
        .await;
    let mut conn = open(gw.addr, &intercept.ca.pem(), IMPORT_HOST, false).await;
    let reply = conn.send(tunnelled(Method::GET, &authenticate_path(), false, &[])).await.unwrap();
    assert_eq!(reply.status, 200);
    // The tunnel holds the one connection permit: another caller is turned away.
    let mut second = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut second, &mut answer);
    tokio::time::timeout(crate::support::client::READ_LIMIT, read).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 ") && answer.contains("overloaded"), "{answer}");
    assert_eq!(gw.sample("keygate_connections_open"), Some(1.0));
    // An idle tunnel is closed by the drain; shutdown then completes within the grace.
    assert!(gw.shutdown().await, "the idle tunnel was not drained");
}

#[tokio::test]
async fn behind_a_trusted_proxy_a_tunnels_caller_is_the_one_its_connect_named() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    // 127.0.0.1 is a trusted proxy: the CONNECT's X-Forwarded-For names the caller,
    // 10.9.9.9, whom the host's generic route admits. The import route admits only
    // 10.0.0.5, which the requests inside the tunnel claim to be.
    let import = import_host_route(&upstream.url()).set("allow", "[\"10.0.0.5/32\"]");
    let generic = RouteSpec::generic(&upstream.url())
        .set("host", &format!("{IMPORT_HOST:?}"))
        .set("allow", "[\"10.9.9.9/32\"]");
    let gw = intercept
        .configure(GatewayBuilder::new())
        .extra("[callers]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .route(import)
        .route(generic)
        .start()
        .await;
    let connected = connect(gw.addr, &format!("{IMPORT_HOST}:443"), &["X-Forwarded-For: 10.9.9.9"]).await;
    assert_eq!(connected.status_line(), "HTTP/1.1 200 Connection established", "{}", connected.head);
    let stream = tls(connected, &intercept.ca.pem(), name(IMPORT_HOST), &[b"http/1.1"]).await.unwrap();
    let mut conn = Conn::over(stream).await.unwrap();
    let claimed = [("x-forwarded-for", "10.0.0.5")];
    let reply = conn.send(tunnelled(Method::GET, &authenticate_path(), false, &claimed)).await.unwrap();
    reply.assert_refusal(403, "caller_not_allowed");
    let reply = conn.send(tunnelled(Method::GET, "/generic/x", false, &claimed)).await.unwrap();
    assert_eq!(reply.status, 200, "the tunnel's caller, 10.9.9.9, is still admitted: {}", reply.text());
    let recorded = upstream.recorded();
    assert_eq!(
        recorded.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/x"],
        "no key went upstream for 10.0.0.5"
    );
}

#[tokio::test]
async fn a_connect_target_with_user_information_is_refused() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw = gateway(&intercept, vec![import_host_route(&upstream.url())]).await;
    let mut refused = connect(gw.addr, &format!("apikey:SENTINELSECRET@{IMPORT_HOST}:443"), &[]).await;
    assert_eq!(refused.status_line(), "HTTP/1.1 403 Forbidden", "{}", refused.head);
    assert_eq!(refused.header("x-keygate-error").as_deref(), Some("no_route"));
    let body = rest(&mut refused).await;
    assert!(!body.contains("SENTINELSECRET"), "{body}");
    assert_eq!(upstream.accepted(), 0);
}
