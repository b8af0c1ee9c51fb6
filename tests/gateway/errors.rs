//! Every error of `docs/errors.md` that a request can reach, each with its exact status,
//! `x-keygate-error`, body shape `{"error","message"}`, and nothing sent upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::support::client::{get, post, request, send_on};
use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway, sandbox};
use crate::support::keys::assert_no_key;
use crate::support::poll::eventually;
use crate::support::raw::{Raw, raw_once};
use crate::support::upstream::{FakeUpstream, closed_port, ok};
use crate::{auth_path, data_path};
use http::Method;

async fn bi_gateway(sb: &keygate::sandbox::Sandbox) -> TestGateway {
    GatewayBuilder::new()
        .route(RouteSpec::import(&sb.base_url()).set("max_body_bytes", "1024"))
        .route(RouteSpec::export(&sb.base_url()))
        .start()
        .await
}

#[tokio::test]
async fn request_errors_have_their_documented_status_code_and_shape() {
    let sb = sandbox(false).await;
    let gw = bi_gateway(&sb).await;
    let json = [("content-type", "application/json")];
    let body = br#"{"keys":["id"],"id":1}"#;

    post(gw.addr, &data_path("bad-name"), &json, body).await.assert_refusal(400, "invalid_path");
    post(gw.addr, &data_path("t"), &json, b"{not json").await.assert_refusal(400, "invalid_body");
    let smuggled = format!("{}?a=1;apikey=evil", auth_path());
    get(gw.addr, &smuggled, &[]).await.assert_refusal(400, "bad_request");
    let get_with_body = send_on(
        tokio::net::TcpStream::connect(gw.addr).await.unwrap(),
        request(Method::GET, &auth_path(), &[], b"hello"),
    )
    .await;
    get_with_body.assert_refusal(400, "bad_request");
    let other_client = "/import/v2/client/999/authenticate";
    get(gw.addr, other_client, &[]).await.assert_refusal(403, "client_mismatch");
    get(gw.addr, "/export/0.1/client/999/table", &[]).await.assert_refusal(403, "client_mismatch");
    get(gw.addr, "/nowhere", &[]).await.assert_refusal(404, "no_route");
    get(gw.addr, "/", &[]).await.assert_refusal(404, "no_route");
    get(gw.addr, "/export/0.1/secrets", &[]).await.assert_refusal(404, "unknown_operation");
    get(gw.addr, "/import/v3/client/12345/authenticate", &[]).await.assert_refusal(404, "unknown_operation");

    let delete = send_on(
        tokio::net::TcpStream::connect(gw.addr).await.unwrap(),
        request(Method::DELETE, "/export/0.1/figure/9/info", &[], b""),
    )
    .await;
    delete.assert_refusal(405, "method_not_allowed");
    assert_eq!(delete.header("allow").as_deref(), Some("GET, POST"));
    let get_upsert = get(gw.addr, &data_path("t"), &[]).await;
    get_upsert.assert_refusal(405, "method_not_allowed");
    assert_eq!(get_upsert.header("allow").as_deref(), Some("POST"));

    assert!(sb.recorded().is_empty(), "forwarded: {:?}", sb.recorded());
    let denied = |reason| gw.metric("keygate_denied_total", &[("route", "bi-import"), ("reason", reason)]);
    assert_eq!(denied("bad_request"), Some(2.0));
    assert_eq!(gw.metric("keygate_denied_total", &[("route", "-"), ("reason", "no_route")]), Some(2.0));
    assert_eq!(
        gw.metric(
            "keygate_requests_total",
            &[("route", "-"), ("operation", "-"), ("caller", "-"), ("code", "404")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn caller_outside_the_allow_list_is_refused() {
    let sb = sandbox(false).await;
    let gw = bi_gateway(&sb).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let reply = send_on(stream, request(Method::GET, &auth_path(), &[], b"")).await;
    reply.assert_refusal(403, "caller_not_allowed");
    assert!(sb.recorded().is_empty());
    let reason = [("route", "bi-import"), ("reason", "caller_not_allowed")];
    assert_eq!(gw.metric("keygate_denied_total", &reason), Some(1.0));
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused_before_any_byte() {
    let sb = sandbox(false).await;
    let gw = bi_gateway(&sb).await;
    // Only the head is sent: the answer must not wait for the body.
    let mut raw = Raw::connect(gw.addr).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
        data_path("t")
    );
    raw.send(head.as_bytes()).await;
    let reply = raw.response_within(Duration::from_secs(5)).await.expect("answer");
    reply.assert_refusal(413, "body_too_large");
    assert!(sb.recorded().is_empty());
}

#[tokio::test]
async fn expect_continue_on_a_refused_request_gets_the_refusal_and_no_100() {
    let sb = sandbox(false).await;
    let gw = bi_gateway(&sb).await;
    for (path, length, status, code) in [
        ("/import/v2/client/999/table/t/data".to_owned(), 20, 403, "client_mismatch"),
        (data_path("t"), 5000, 413, "body_too_large"),
        ("/nowhere".to_owned(), 20, 404, "no_route"),
    ] {
        let mut raw = Raw::connect(gw.addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        );
        raw.send(head.as_bytes()).await;
        let reply = raw.response_within(Duration::from_secs(5)).await.expect("answer");
        assert_ne!(reply.status, 100, "sent 100 Continue for {path}");
        reply.assert_refusal(status, code);
    }
    assert!(sb.recorded().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_mid_stream() {
    let sb = sandbox(false).await;
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::import(&sb.base_url()).set("max_body_bytes", "1024"))
        .route(RouteSpec::generic(&up.url()).set("max_body_bytes", "1024"))
        .start()
        .await;
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    for path in [data_path("t"), "/generic/upload".to_owned()] {
        let mut raw = Raw::connect(gw.addr).await;
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        raw.send(head.as_bytes()).await;
        // The first KiB is within the limit; the next chunk crosses it.
        raw.send(chunk.as_bytes()).await;
        raw.send(chunk.as_bytes()).await;
        raw.send(b"0\r\n\r\n").await;
        let reply = raw.response().await.expect("answer");
        reply.assert_refusal(413, "body_too_large");
    }
    assert!(sb.recorded().is_empty(), "the upsert must not be forwarded");
    // The generic route streams: the upstream may have seen the start, never more
    // than the limit and never a complete body.
    for r in up.recorded() {
        assert!(r.body_len <= 1024, "{}", r.body_len);
    }
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let sb = sandbox(false).await;
    let gw = GatewayBuilder::new()
        .server("max_header_bytes = 1024")
        .route(RouteSpec::import(&sb.base_url()))
        .start()
        .await;
    let big = "v".repeat(2048);
    let reply = get(gw.addr, &auth_path(), &[("x-big", &big)]).await;
    reply.assert_refusal(431, "headers_too_large");
    // Far past the HTTP layer's buffer: refused there; still 431, never forwarded.
    let huge =
        format!("GET {} HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n", auth_path(), "h".repeat(70 * 1024));
    let mut raw = Raw::connect(gw.addr).await;
    raw.send(huge.as_bytes()).await;
    let reply = raw.response().await.expect("answer");
    assert_eq!(reply.status, 431);
    assert!(sb.recorded().is_empty());
}

#[tokio::test]
async fn closed_upstream_port_is_502_upstream_unavailable() {
    let port = closed_port();
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&format!("http://{port}"))).start().await;
    let reply = get(gw.addr, "/generic/x", &[]).await;
    reply.assert_refusal(502, "upstream_unavailable");
    assert_no_key(&reply.dump());
    let kind = [("route", "generic"), ("kind", "connect")];
    assert_eq!(gw.metric("keygate_upstream_errors_total", &kind), Some(1.0));
}

#[tokio::test]
async fn silent_upstream_is_504_at_response_timeout() {
    let silent = FakeUpstream::silent().await;
    let addr = silent.addr;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::generic(&format!("http://{addr}")).set("response_timeout", "\"300ms\""))
        .start()
        .await;
    let started = std::time::Instant::now();
    let reply = get(gw.addr, "/generic/x", &[]).await;
    let took = started.elapsed();
    reply.assert_refusal(504, "upstream_timeout");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    let kind = [("route", "generic"), ("kind", "timeout")];
    assert_eq!(gw.metric("keygate_upstream_errors_total", &kind), Some(1.0));
}

#[tokio::test]
async fn connections_past_max_connections_get_503_overloaded() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .server("max_connections = 1")
        .route(RouteSpec::generic(&up.url()))
        .start()
        .await;
    // A first connection that has been served and is kept alive holds the only slot.
    let mut held = Raw::connect(gw.addr).await;
    held.send(b"GET /generic/a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(held.response().await.expect("first").status, 200);

    let refused = raw_once(gw.addr, b"GET /generic/b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    refused.assert_refusal(503, "overloaded");
    assert_eq!(up.recorded().len(), 1);

    // The slot comes back when the first connection goes.
    drop(held);
    let addr = gw.addr;
    eventually("a freed slot", Duration::from_secs(5), || async move {
        raw_once(addr, b"GET /generic/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.status == 200
    })
    .await;
}

#[tokio::test]
async fn readyz_turns_503_shutting_down_as_soon_as_shutdown_starts() {
    let silent = FakeUpstream::silent().await;
    let addr = silent.addr;
    let mut gw = GatewayBuilder::new()
        .server("shutdown_grace = \"3s\"")
        .route(RouteSpec::generic(&format!("http://{addr}")).set("response_timeout", "\"30s\""))
        .start()
        .await;
    let ready = get(gw.admin, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");

    // A request in flight keeps the drain (and so the admin listener) going.
    let mut in_flight = Raw::connect(gw.addr).await;
    in_flight.send(b"GET /generic/slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let app = gw.take_app();
    let app_gw = app.gateway.clone();
    eventually("request in flight", Duration::from_secs(5), || {
        let g = app_gw.clone();
        async move { g.metrics.in_flight.get() == 1 }
    })
    .await;
    let shutdown = tokio::spawn(app.shutdown());

    let admin = gw.admin;
    eventually("readyz 503", Duration::from_secs(2), || async move {
        get(admin, "/readyz", &[]).await.status == 503
    })
    .await;
    let reply = get(gw.admin, "/readyz", &[]).await;
    reply.assert_refusal(503, "shutting_down");
    let addr = gw.addr;
    eventually("listener closed", Duration::from_secs(2), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    drop(in_flight);
    assert!(shutdown.await.unwrap(), "drained once the caller left");
}

#[tokio::test]
async fn shutdown_drains_the_admin_listener_too() {
    let up = FakeUpstream::start(ok()).await;
    let mut gw = GatewayBuilder::new()
        .server("shutdown_grace = \"3s\"")
        .route(RouteSpec::generic(&up.url()))
        .start()
        .await;
    // An idle keep-alive admin connection, after one answer.
    let mut idle = Raw::connect(gw.admin).await;
    idle.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(idle.response().await.expect("an answer").status, 200);
    assert!(gw.take_app().shutdown().await, "everything drained within the grace");
    assert!(idle.closes_within(Duration::from_secs(2)).await, "the idle admin connection outlived the drain");
    let admin = gw.admin;
    eventually("the admin listener closed", Duration::from_secs(2), || async move {
        tokio::net::TcpStream::connect(admin).await.is_err()
    })
    .await;
}
