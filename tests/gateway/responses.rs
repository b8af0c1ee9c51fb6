//! The way down and the upstream connection: redirects are passed back (not followed)
//! without `apikey`, a key echoed by the upstream is redacted from headers and small
//! error bodies, HTTPS upstreams are verified against the route's `ca_file` (and
//! refused with `kind="tls"` otherwise), and upgrades are never tunnelled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::support::client::get;
use crate::support::inprocess::{GatewayBuilder, RouteSpec, query_params, recorded_header, sandbox};
use crate::support::keys::{EXPORT_KEY, IMPORT_KEY, assert_no_key};
use crate::support::raw::{Raw, raw_once};
use crate::support::tls::Ca;
use crate::support::upstream::{FakeUpstream, Recorded, ok, reply};
use crate::{auth_path, bi_gateway};

#[tokio::test]
async fn redirects_are_passed_back_unfollowed_without_apikey() {
    let up = FakeUpstream::start(Arc::new(|r: &Recorded| {
        let location = if r.path.ends_with("authenticate") {
            format!("http://other.example/login?a=1&apikey={IMPORT_KEY}&APIKEY=x&b=2#frag")
        } else {
            format!("/v2/next?%61pikey={IMPORT_KEY}")
        };
        reply(302, &[("location", &location)], "")
    }))
    .await;
    let gw = GatewayBuilder::new().route(RouteSpec::import(&up.url())).start().await;

    let absolute = get(gw.addr, &auth_path(), &[]).await;
    assert_eq!(absolute.status, 302);
    assert_eq!(absolute.header("location").as_deref(), Some("http://other.example/login?a=1&b=2#frag"));
    assert!(absolute.header("x-keygate-error").is_none(), "the upstream's answer, not keygate's");
    let relative = get(gw.addr, "/import/", &[]).await;
    assert_eq!(relative.status, 302);
    assert_eq!(relative.header("location").as_deref(), Some("/v2/next"));
    assert_eq!(up.recorded().len(), 2, "a redirect was followed");
}

#[tokio::test]
async fn key_echoed_in_response_headers_is_redacted() {
    let up = FakeUpstream::start(Arc::new(|r: &Recorded| {
        let query = r.query.clone().unwrap_or_default();
        let auth = r.header("authorization").join(",");
        let cookie = format!("session=1; echo={query}");
        reply(200, &[("x-echo-query", &query), ("x-echo-auth", &auth), ("set-cookie", &cookie)], "{}")
    }))
    .await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::import(&up.url()))
        .route(RouteSpec::generic(&up.url()))
        .route(
            RouteSpec::generic(&up.url()).at("generic-query", "/gq").set("inject", "{ query = \"api_key\" }"),
        )
        .start()
        .await;

    let import = get(gw.addr, &auth_path(), &[]).await;
    assert_eq!(import.status, 200);
    assert_eq!(import.header("x-echo-query").as_deref(), Some("apikey=[REDACTED]"));
    assert_eq!(import.header("set-cookie").as_deref(), Some("session=1; echo=apikey=[REDACTED]"));

    let header = get(gw.addr, "/generic/x", &[]).await;
    assert_eq!(header.header("x-echo-auth").as_deref(), Some("Bearer [REDACTED]"));

    // The generic key holds '/', '+', '&' and '=': it travels percent-encoded and is
    // still recognised on the way back.
    let query = get(gw.addr, "/gq/x?q=1", &[]).await;
    assert_eq!(query.header("x-echo-query").as_deref(), Some("q=1&api_key=[REDACTED]"));
    assert_eq!(up.recorded()[2].query.as_deref(), Some("q=1&api_key=SENTINELgenericKEY%2F%2B%26%3D9c"));
    for reply in [&import, &header, &query] {
        assert_no_key(&reply.dump());
    }
}

#[tokio::test]
async fn key_echoed_in_a_small_json_error_body_is_redacted() {
    let up = FakeUpstream::start(Arc::new(|r: &Recorded| {
        let body = serde_json::json!({"code": 401, "message": "bad key", "echo": r.query}).to_string();
        reply(401, &[("content-type", "application/json; charset=utf-8")], &body)
    }))
    .await;
    let gw = GatewayBuilder::new().route(RouteSpec::import(&up.url())).start().await;
    let reply = get(gw.addr, &format!("{}?apikey=dummy", auth_path()), &[]).await;
    assert_eq!(reply.status, 401);
    assert!(reply.header("x-keygate-error").is_none());
    assert_eq!(reply.json()["echo"], "apikey=[REDACTED]");
    assert_eq!(reply.json()["message"], "bad key");
    assert_no_key(&reply.dump());
    let auth = gw.metric("keygate_upstream_auth_failures_total", &[("route", "bi-import")]);
    assert_eq!(auth, Some(1.0));
}

#[tokio::test]
async fn https_upstream_is_verified_with_the_routes_ca_file() {
    let ca = Ca::new("keygate test CA");
    let up = FakeUpstream::start_tls(ok(), ca.server_config()).await;
    let builder = GatewayBuilder::new();
    let ca_file = builder.file("upstream-ca.pem", &ca.pem());
    let gw = builder
        .route(RouteSpec::import(&up.url()).set("ca_file", &format!("{:?}", ca_file.display().to_string())))
        .start()
        .await;
    let reply = get(gw.addr, &format!("{}?apikey=evil&apikey=evil2", auth_path()), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = up.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].query.as_deref(), Some(format!("apikey={IMPORT_KEY}").as_str()));
    assert_eq!(seen[0].header("host"), [up.addr.to_string()]);
    // The TLS connection is kept and carries the next requests: what arrives on it
    // while it is idle (TLS 1.3 session tickets) does not make it look closed.
    for _ in 0..2 {
        assert_eq!(get(gw.addr, &auth_path(), &[]).await.status, 200);
    }
    assert_eq!((up.recorded().len(), up.accepted()), (3, 1));
}

#[tokio::test]
async fn sandbox_over_https_gets_each_key_exactly_once() {
    let sb = sandbox(true).await;
    let builder = GatewayBuilder::new();
    let ca_file = builder.file("sandbox-ca.pem", &sb.ca_pem().expect("tls sandbox"));
    let ca = format!("{:?}", ca_file.display().to_string());
    let gw = builder
        .route(RouteSpec::import(&sb.base_url()).set("ca_file", &ca))
        .route(RouteSpec::export(&sb.base_url()).set("ca_file", &ca))
        .start()
        .await;
    let import = get(gw.addr, &format!("{}?APIKEY=x&%61pikey=y", auth_path()), &[]).await;
    assert_eq!(import.status, 200, "{}", import.text());
    let export =
        get(gw.addr, "/export/0.1/figure", &[("x-rjm-api-key", "evil"), ("X-RJM-API-KEY", "e2")]).await;
    assert_eq!(export.status, 200, "{}", export.text());
    let seen = sb.recorded();
    assert_eq!(seen.len(), 2);
    assert_eq!(query_params(seen[0].query.as_deref(), "apikey"), [format!("apikey={IMPORT_KEY}")]);
    assert_eq!(recorded_header(&seen[1], "x-rjm-api-key"), [EXPORT_KEY]);
}

#[tokio::test]
async fn https_upstream_signed_by_an_unknown_ca_is_refused_as_tls() {
    let trusted = Ca::new("trusted CA");
    let foreign = Ca::new("foreign CA");
    let up = FakeUpstream::start_tls(ok(), foreign.server_config()).await;
    let builder = GatewayBuilder::new();
    let ca_file = builder.file("trusted.pem", &trusted.pem());
    let gw = builder
        .route(RouteSpec::generic(&up.url()).set("ca_file", &format!("{:?}", ca_file.display().to_string())))
        .route(RouteSpec::import(&up.url()))
        .start()
        .await;
    get(gw.addr, "/generic/x", &[]).await.assert_refusal(502, "upstream_unavailable");
    get(gw.addr, &auth_path(), &[]).await.assert_refusal(502, "upstream_unavailable");
    assert!(up.recorded().is_empty(), "a request went over an unverified connection");
    for route in ["generic", "bi-import"] {
        let kind = [("route", route), ("kind", "tls")];
        assert_eq!(gw.metric("keygate_upstream_errors_total", &kind), Some(1.0), "{route}");
    }
}

#[tokio::test]
async fn websocket_and_h2c_upgrades_are_not_tunnelled() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&up.url())).start().await;
    let websocket = "GET /generic/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let h2c = "GET /generic/h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    for request in [websocket, h2c] {
        let mut raw = Raw::connect(gw.addr).await;
        raw.send(request.as_bytes()).await;
        let reply = raw.response().await.expect("answer");
        assert_eq!(reply.status, 200, "{request}");
        assert!(reply.header("upgrade").is_none());
        // The connection still speaks HTTP/1.1 afterwards.
        raw.send(b"GET /generic/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(raw.response().await.expect("second answer").status, 200);
    }
    for r in up.recorded() {
        for name in ["upgrade", "connection", "http2-settings"] {
            assert!(r.header(name).is_empty(), "{name} forwarded: {}", r.dump());
        }
    }
    assert_eq!(up.recorded().len(), 4);
}

#[tokio::test]
async fn upstream_switching_protocols_is_not_tunnelled() {
    let up = FakeUpstream::start(Arc::new(|_: &Recorded| reply(101, &[("upgrade", "websocket")], ""))).await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&up.url())).start().await;
    let request = "GET /generic/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut raw = Raw::connect(gw.addr).await;
    raw.send(request.as_bytes()).await;
    let reply = raw.response().await.expect("answer");
    reply.assert_refusal(502, "upstream_unavailable");
    let kind = [("route", "generic"), ("kind", "protocol")];
    assert_eq!(gw.metric("keygate_upstream_errors_total", &kind), Some(1.0));
}

#[tokio::test]
async fn connect_is_refused_and_never_tunnels() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&up.url()).at("all", "/")).start().await;
    let target = up.addr;
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let reply = raw_once(gw.addr, request.as_bytes()).await;
    assert!((400..500).contains(&reply.status), "{}", reply.status);
    assert!(up.recorded().is_empty());
}

#[tokio::test]
async fn admin_endpoints_show_fingerprints_never_keys() {
    let (_sb, gw) = bi_gateway().await;
    assert_eq!(get(gw.addr, &format!("{}?apikey={IMPORT_KEY}", auth_path()), &[]).await.status, 200);
    assert_eq!(get(gw.addr, "/export/0.1/chart", &[]).await.status, 200);
    let metrics = get(gw.admin, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("keygate_requests_total"));
    let config = get(gw.admin, "/config", &[]).await;
    assert_eq!(config.status, 200);
    let fingerprint = keygate::secret::Secret::new(IMPORT_KEY.to_owned()).fingerprint();
    let secrets = config.json()["secrets"].clone();
    assert!(
        secrets
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "bi_import" && s["fingerprint"] == fingerprint),
        "{secrets}"
    );
    for reply in [&metrics, &config] {
        assert_no_key(&reply.dump());
    }
}
