//! Upstream faults (`docs/reliability.md` rows 22–28): every way the upstream can fail maps quickly to
//! the right keygate answer and `kind` label, nothing is re-sent once written, a broken
//! body after the headers aborts the caller's response instead of hanging it, and no
//! error body or log line carries the upstream URL's query (which holds the key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::support::client::{Conn, get, post};
use crate::support::files::write_file;
use crate::support::inprocess::{TestGateway, faults_config, faults_route};
use crate::support::keys::{QUERY_SENTINEL, SECRET};
use crate::support::poll::eventually;
use crate::support::tls::{Ca, Flaw, server_config};
use crate::support::upstream::{FakeUpstream, closed_port};

/// A target under the test route, carrying the query sentinel.
fn target(path: &str) -> String {
    format!("/f{path}?q={QUERY_SENTINEL}")
}

/// keygate with one route `f` on `/f` to `upstream`; the response timeout and idle
/// timeout (which also bounds the wait for each body chunk) are both 600 ms.
async fn keygate_to(upstream: &str, extra: &str) -> TestGateway {
    let routes = faults_route(
        "f",
        "/f",
        upstream,
        &format!("response_timeout = \"600ms\"\nconnect_timeout = \"1s\"\n{extra}"),
    );
    TestGateway::from_config(&faults_config("idle_timeout = \"600ms\"", &routes)).await
}

#[tokio::test]
async fn refused_connection_is_a_fast_502_counted_as_connect() {
    let port = closed_port().port();
    let kg = keygate_to(&format!("http://127.0.0.1:{port}"), "").await;
    let started = Instant::now();
    let reply = get(kg.addr, &target("/x"), &[]).await;
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    reply.assert_refusal(502, "upstream_unavailable");
    assert_eq!(
        reply.text(),
        r#"{"error":"upstream_unavailable","message":"the upstream could not be reached (connect)"}"#
    );
    assert_eq!(kg.upstream_errors("f", "connect"), 1.0, "{}", kg.metrics());
    assert_eq!(kg.upstream_errors("f", "protocol"), 0.0);
}

#[tokio::test]
async fn hanging_upstream_is_a_504_at_response_timeout_and_its_connection_is_released() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    let started = Instant::now();
    let reply = get(kg.addr, &target("/hang"), &[]).await;
    let took = started.elapsed();
    reply.assert_refusal(504, "upstream_timeout");
    assert!(took >= Duration::from_millis(590) && took < Duration::from_millis(2000), "took {took:?}");
    assert_eq!(kg.upstream_errors("f", "timeout"), 1.0, "{}", kg.metrics());
    // The abandoned upstream request is dropped, so its connection closes.
    eventually("the stub sees keygate hang up", Duration::from_secs(3), || async {
        stub.recorded()[0].peer_gone
    })
    .await;
    assert_eq!(stub.recorded().len(), 1, "a timed-out request is never retried");
}

#[tokio::test]
async fn late_headers_are_a_504_but_headers_inside_the_timeout_pass() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    let on_time = get(kg.addr, &target("/delay/100"), &[]).await;
    assert_eq!((on_time.status, on_time.text().as_str()), (200, "delayed"));
    let started = Instant::now();
    get(kg.addr, &target("/delay/3000"), &[]).await.assert_refusal(504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2000), "took {:?}", started.elapsed());
    assert_eq!(kg.upstream_errors("f", "timeout"), 1.0);
}

/// Reads a response head, then its body until it ends or fails; returns the status,
/// the body bytes received and whether the body ended cleanly.
async fn read_streaming(addr: std::net::SocketAddr, target: &str) -> (u16, Vec<u8>, bool) {
    let mut conn = Conn::open(addr).await;
    let request = http::Request::get(target).header("host", "k").body(Empty::<Bytes>::new());
    let response = conn.respond(request.unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut got = Vec::new();
    loop {
        match body.frame().await {
            None => return (status, got, true),
            Some(Err(_)) => return (status, got, false),
            Some(Ok(frame)) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
        }
    }
}

#[tokio::test]
async fn a_steady_trickle_streams_but_a_stalled_body_aborts_the_callers_response() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    // 8 bytes, one per 150 ms: 1.2 s in all, yet never 600 ms without a byte.
    let (status, body, ended) = read_streaming(kg.addr, &target("/trickle/8/150")).await;
    assert_eq!((status, body.as_slice(), ended), (200, &b"tttttttt"[..], true));

    let started = Instant::now();
    let (status, body, ended) = read_streaming(kg.addr, &target("/stall/10")).await;
    let took = started.elapsed();
    assert_eq!((status, body.len(), ended), (200, 10, false), "the caller must see the body fail");
    assert!(took < Duration::from_millis(2500), "aborted after {took:?}");
    eventually("keygate drops the stalled upstream", Duration::from_secs(3), || async {
        stub.recorded().iter().any(|s| s.path == "/stall/10" && s.peer_gone)
    })
    .await;
    eventually("nothing left in flight", Duration::from_secs(3), || async { kg.in_flight() == 0.0 }).await;
}

#[tokio::test]
async fn an_upstream_connection_is_reused_only_after_its_body_was_read_whole() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    for _ in 0..3 {
        assert_eq!(get(kg.addr, &target("/ok"), &[]).await.text(), "ok");
    }
    assert_eq!(stub.accepted(), 1, "sequential requests share one upstream connection");

    // A body cut by the idle timeout: its connection is closed, not pooled.
    let (status, body, ended) = read_streaming(kg.addr, &target("/stall/10")).await;
    assert_eq!((status, body.len(), ended), (200, 10, false));
    assert_eq!(get(kg.addr, &target("/ok"), &[]).await.text(), "ok");
    assert_eq!(stub.accepted(), 2, "the stalled connection must not serve the next request");

    // A caller that walks away mid-body (served on the pooled second connection): same.
    let mut conn = Conn::open(kg.addr).await;
    let request = http::Request::get(target("/big/50000000")).header("host", "k");
    let response = conn.respond(request.body(Empty::<Bytes>::new()).unwrap()).await;
    let mut body = response.unwrap().into_body();
    assert!(body.frame().await.unwrap().unwrap().data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    conn.abort();
    eventually("keygate hangs up on the abandoned answer", Duration::from_secs(3), || async {
        stub.recorded().iter().any(|s| s.path == "/big/50000000" && s.peer_gone)
    })
    .await;
    assert_eq!(get(kg.addr, &target("/ok"), &[]).await.text(), "ok");
    assert_eq!(stub.accepted(), 3, "the abandoned connection must not serve the next request");
}

#[tokio::test]
async fn reset_mid_body_aborts_the_callers_response_at_once() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    let started = Instant::now();
    let (status, body, ended) = read_streaming(kg.addr, &target("/reset-mid-body")).await;
    assert_eq!((status, body.len(), ended), (200, 100, false));
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn reset_or_close_before_headers_is_a_502_protocol_and_never_resent() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    get(kg.addr, &target("/reset-before-headers"), &[]).await.assert_refusal(502, "upstream_unavailable");
    get(kg.addr, &target("/eof-before-headers"), &[]).await.assert_refusal(502, "upstream_unavailable");
    let reply = post(kg.addr, &target("/reset-before-headers"), &[], b"payload").await;
    reply.assert_refusal(502, "upstream_unavailable");
    assert!(reply.text().contains("(protocol)"), "{}", reply.text());
    assert_eq!(kg.upstream_errors("f", "protocol"), 3.0, "{}", kg.metrics());
    let paths: Vec<(String, String)> =
        stub.recorded().iter().map(|s| (s.method.clone(), s.path.to_owned())).collect();
    assert_eq!(
        paths,
        [("GET", "/reset-before-headers"), ("GET", "/eof-before-headers"), ("POST", "/reset-before-headers")]
            .map(|(m, p)| (m.to_owned(), p.to_owned())),
        "each request reached the upstream exactly once"
    );
}

#[tokio::test]
async fn malformed_responses_are_502_protocol_and_the_connection_is_dropped() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    for path in ["/bad-status", "/cl-te", "/cr-header"] {
        let reply = get(kg.addr, &target(path), &[]).await;
        reply.assert_refusal(502, "upstream_unavailable");
        assert!(reply.text().contains("(protocol)"), "{path}: {}", reply.text());
        assert!(!reply.text().contains("hello") && reply.headers.get("set-cookie").is_none(), "{path}");
    }
    assert_eq!(kg.upstream_errors("f", "protocol"), 3.0, "{}", kg.metrics());
    eventually("keygate hangs up on the CL+TE answer", Duration::from_secs(3), || async {
        stub.recorded().iter().any(|s| s.path == "/cl-te" && s.peer_gone)
    })
    .await;
    // None of those connections went back to the pool: a healthy request needs a new one.
    let before = stub.accepted();
    assert_eq!(get(kg.addr, &target("/ok"), &[]).await.status, 200);
    assert_eq!(stub.accepted(), before + 1);
}

#[tokio::test]
async fn a_stale_pooled_connection_leaves_the_pool_and_the_request_still_succeeds() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    // The stub closes the connection right after answering, while keygate pools it.
    assert_eq!(get(kg.addr, &target("/close-after"), &[]).await.text(), "closing");
    let reply = get(kg.addr, &target("/after"), &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert_eq!(stub.accepted(), 2, "the closed connection was not reused");
    assert_eq!(stub.recorded().len(), 2);
    assert_eq!(kg.upstream_errors("f", "protocol"), 0.0);
}

#[tokio::test]
async fn a_pooled_connection_dying_after_the_request_was_written_is_a_502_never_a_resend() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate_to(&stub.url(), "").await;
    for (method, body) in [("GET", &b""[..]), ("POST", &b"one-shot"[..])] {
        // Arm a pooled connection: the next request on it is read whole, then reset.
        assert_eq!(get(kg.addr, &target("/arm-reset"), &[]).await.text(), "armed");
        let reply = if method == "GET" {
            get(kg.addr, &target("/victim"), &[]).await
        } else {
            post(kg.addr, &target("/victim"), &[], b"one-shot").await
        };
        reply.assert_refusal(502, "upstream_unavailable");
        let victims: Vec<_> =
            stub.recorded().into_iter().filter(|s| s.path == "/victim" && s.method == method).collect();
        assert_eq!(victims.len(), 1, "{method} was written once and must not be re-sent");
        assert_eq!(victims[0].body, body);
    }
    assert_eq!(kg.upstream_errors("f", "protocol"), 2.0, "{}", kg.metrics());
}

#[tokio::test(flavor = "current_thread")]
async fn dns_failure_is_a_fast_502_and_does_not_block_the_runtime() {
    let kg = keygate_to("http://nonexistent.invalid:8080", "").await;
    // Everything (keygate, this client, the ticker) shares one thread: a resolver that
    // blocked it would stall the ticker for as long as the lookup took.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let ticker = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stopped => return worst,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            worst = worst.max(last.elapsed());
            last = Instant::now();
        }
    });
    let started = Instant::now();
    for _ in 0..3 {
        let reply = get(kg.addr, &target("/x"), &[]).await;
        reply.assert_refusal(502, "upstream_unavailable");
    }
    let took = started.elapsed();
    stop.send(()).unwrap();
    let worst = ticker.await.unwrap();
    assert!(took < Duration::from_secs(3), "three failed lookups took {took:?}");
    assert!(worst < Duration::from_millis(250), "the runtime thread was blocked for {worst:?}");
    assert_eq!(kg.upstream_errors("f", "connect"), 3.0, "{}", kg.metrics());
}

#[tokio::test]
async fn bad_upstream_certificates_fail_closed_as_502_tls() {
    let ca = Ca::new("keygate test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    for flaw in [Flaw::None, Flaw::WrongName, Flaw::Expired, Flaw::UnknownCa, Flaw::SelfSigned] {
        let stub = FakeUpstream::faults_tls(server_config(&ca, flaw)).await;
        let upstream = format!("https://127.0.0.1:{}", stub.addr.port());
        let kg = keygate_to(&upstream, &format!("ca_file = \"{}\"", ca_file.display())).await;
        let reply = get(kg.addr, &target("/x"), &[]).await;
        if flaw == Flaw::None {
            // The control: the same setup with a valid certificate works.
            assert_eq!((reply.status, reply.text().as_str()), (200, "ok"), "{flaw:?}");
            assert_eq!(stub.recorded()[0].target(), format!("/x?q={QUERY_SENTINEL}&api_key={SECRET}"));
            continue;
        }
        reply.assert_refusal(502, "upstream_unavailable");
        assert!(reply.text().contains("(tls)"), "{flaw:?}: {}", reply.text());
        assert_eq!(kg.upstream_errors("f", "tls"), 1.0, "{flaw:?}: {}", kg.metrics());
        assert!(stub.recorded().is_empty(), "{flaw:?}: nothing may be sent over an unverified connection");
        eventually("the stub sees the handshake fail", Duration::from_secs(3), || async {
            stub.handshakes_failed() == 1
        })
        .await;
    }
}
