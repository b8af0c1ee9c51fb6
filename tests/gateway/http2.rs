//! HTTP/2 on both sides: callers speaking h2 with prior knowledge (plain) get the same
//! routing, refusals and key injection as HTTP/1.1 callers; upstreams that offer h2 by
//! ALPN are spoken to in h2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::support::client::{Conn, get as get_h1};
use crate::support::inprocess::{GatewayBuilder, RouteSpec, recorded_header, sandbox};
use crate::support::keys::{EXPORT_KEY, GENERIC_KEY};
use crate::support::upstream::{FakeUpstream, ok};

async fn get(conn: &mut Conn, uri: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut req = hyper::Request::get(uri);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = conn.respond(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
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
    let mut sender = Conn::open_h2(gw.addr).await;
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
    let sandbox = sandbox(true).await;
    let ca = sandbox.ca_pem().unwrap();
    let builder = GatewayBuilder::new();
    let ca_file = builder.file("sandbox-ca.pem", &ca);
    let route = RouteSpec::export(&sandbox.base_url())
        .set("ca_file", &format!("{:?}", ca_file.display().to_string()));
    let gw = builder.route(route).start().await;
    let reply = get_h1(gw.addr, "/export/0.1/figure", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let recorded = sandbox.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded_header(&recorded[0], "x-rjm-api-key"), [EXPORT_KEY]);
    // HTTP/2 has no Host header line: the authority travels as :authority instead, which
    // the sandbox sees as a missing `host` entry; HTTP/1.1 would always carry one.
    assert!(recorded_header(&recorded[0], "host").is_empty(), "h2 was negotiated upstream");
}

/// One HTTP/2 frame on the wire: length, type, flags, stream 0, payload.
fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const SETTINGS: u8 = 0x4;

#[tokio::test]
async fn an_h2_connection_kept_busy_by_pings_alone_is_closed_at_idle_timeout() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = FakeUpstream::start(ok()).await;
    let idle = Duration::from_millis(800);
    let gw = GatewayBuilder::new()
        .server("idle_timeout = \"800ms\"")
        .route(RouteSpec::generic(&upstream.url()))
        .start()
        .await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let started = Instant::now();
    tx.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tx.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    // A PING every 100 ms, for at most 6 s: past the read deadline below, so a keygate
    // that counts PINGs as activity never closes the connection before it.
    let pinger = tokio::spawn(async move {
        for i in 0..60u64 {
            if tx.write_all(&frame(PING, 0, &i.to_be_bytes())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Read frames until keygate closes the connection (or 5 s pass). After the GOAWAY
    // keygate waits up to a second for its own PING's answer, which this peer never sends.
    let (mut acks, mut goaway, mut buf) = (0, false, Vec::new());
    let closed = loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at((started + Duration::from_secs(5)).into(), rx.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            match (buf[3], buf[4] & 1) {
                (PING, 1) => acks += 1,
                (GOAWAY, _) => goaway = true,
                _ => {}
            }
            buf.drain(..9 + len);
        }
    };
    let after = started.elapsed();
    pinger.abort();
    assert!(acks >= 3, "keygate answered {acks} PINGs: the test did not keep the connection busy");
    assert!(closed, "the connection was still open after {after:?} of PINGs only");
    assert!(goaway, "closed without a GOAWAY");
    assert!(after >= idle, "closed after {after:?}, before the idle timeout of {idle:?}");
}
