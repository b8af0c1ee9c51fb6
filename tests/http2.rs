//! HTTP/2 on both sides: callers speaking h2 with prior knowledge (plain) get the same
//! routing, refusals and key injection as HTTP/1.1 callers; upstreams that offer h2 by
//! ALPN are spoken to in h2.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::upstream::{FakeUpstream, ok};
use support::{GENERIC_KEY, GatewayBuilder, RouteSpec};

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2(addr: SocketAddr) -> H2 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut H2, uri: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut req = hyper::Request::get(uri);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let status = resp.status().as_u16();
    let code = resp.headers().get("x-keygate-error").map(|v| v.to_str().unwrap().to_owned());
    let _ = resp.into_body().collect().await.unwrap();
    (status, code)
}

#[tokio::test]
async fn h2_prior_knowledge_callers_are_routed_refused_and_injected_like_http1() {
    let upstream = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&upstream.url())).start().await;
    let mut sender = h2(gw.addr).await;
    let base = format!("http://{}", gw.addr);
    // Several streams on one connection, each decided on its own.
    let answers = [
        get(&mut sender, &format!("{base}/generic/a"), &[("authorization", "Bearer caller-copy")]).await,
        get(&mut sender, &format!("{base}/nowhere"), &[]).await,
        get(&mut sender, &format!("{base}/generic/../x"), &[]).await,
        get(&mut sender, &format!("{base}/generic/b"), &[]).await,
    ];
    assert_eq!(answers[0], (200, None));
    assert_eq!(answers[1], (404, Some("no_route".into())));
    assert_eq!(answers[2].0, 400);
    assert_eq!(answers[3], (200, None));
    let seen = upstream.recorded();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.header("authorization"), [format!("Bearer {GENERIC_KEY}")], "{}", r.dump());
    }
    assert_eq!(seen[0].path, "/a");
}

#[tokio::test]
async fn h2_upstream_is_used_when_alpn_offers_it() {
    // The sandbox offers h2 and http/1.1 by ALPN and records what it received.
    let sandbox = support::sandbox(true).await;
    let ca = sandbox.ca_pem().unwrap();
    let builder = GatewayBuilder::new();
    let ca_file = builder.file("sandbox-ca.pem", &ca);
    let route = RouteSpec::export(&sandbox.base_url())
        .set("ca_file", &format!("{:?}", ca_file.display().to_string()));
    let gw = builder.route(route).start().await;
    let reply = support::client::get(gw.addr, "/export/0.1/figure", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let recorded = sandbox.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(support::recorded_header(&recorded[0], "x-rjm-api-key"), [support::EXPORT_KEY]);
    // HTTP/2 has no Host header line: the authority travels as :authority instead, which
    // the sandbox sees as a missing `host` entry; HTTP/1.1 would always carry one.
    assert!(support::recorded_header(&recorded[0], "host").is_empty(), "h2 was negotiated upstream");
}
