//! Slow and greedy clients against keygate in-process (`docs/reliability.md` rows 16, 17, 19, 21):
//! slowloris, stalled request bodies, oversized heads, too many headers, an oversized
//! request line, and more connections than `max_connections`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::get;
use crate::support::inprocess::{TestGateway, faults_config, faults_route};
use crate::support::poll::eventually;
use crate::support::raw::{Raw, exchange};
use crate::support::upstream::FakeUpstream;

const SECOND: Duration = Duration::from_secs(1);

async fn keygate(stub: &FakeUpstream, server: &str) -> TestGateway {
    TestGateway::from_config(&faults_config(server, &faults_route("f", "/f", &stub.url(), ""))).await
}

#[tokio::test]
async fn slowloris_is_closed_at_header_timeout_while_other_callers_are_served() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "header_timeout = \"500ms\"\nidle_timeout = \"5s\"").await;
    let stream = TcpStream::connect(kg.addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let started = Instant::now();
    // The slow caller: a byte every 40 ms, forever (bounded at 200 bytes).
    let trickle = tokio::spawn(async move {
        let head = format!("GET /f/slow HTTP/1.1\r\nhost: k\r\nx-slow: {}", "a".repeat(200));
        for byte in head.as_bytes() {
            if tx.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let closed_after = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let n = rx.read(&mut buf).await.unwrap_or(0);
        (started.elapsed(), n)
    });
    // Meanwhile other callers get quick answers, one after another.
    let mut served = 0;
    while !closed_after.is_finished() && served < 50 {
        let t = Instant::now();
        let reply = get(kg.addr, "/f/ok", &[]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
        assert!(t.elapsed() < Duration::from_millis(300), "a normal request took {:?}", t.elapsed());
        served += 1;
    }
    let (after, answered) = closed_after.await.unwrap();
    trickle.abort();
    assert_eq!(answered, 0, "the slow connection is closed without an answer");
    assert!(
        after >= Duration::from_millis(480) && after < Duration::from_millis(1500),
        "closed after {after:?}"
    );
    assert!(served >= 1);
    assert!(stub.recorded().iter().all(|s| s.path == "/ok"), "the slow head never reached the upstream");
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_header_timeout_but_an_idle_keep_alive_waits_for_idle_timeout() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "header_timeout = \"400ms\"\nidle_timeout = \"1200ms\"").await;
    let started = Instant::now();
    let mut silent = Raw::connect(kg.addr).await;
    let closed = silent.read_until_close(3 * SECOND).await;
    let after = started.elapsed();
    assert!(closed.closed && closed.bytes.is_empty(), "{closed:?}");
    assert!(
        after >= Duration::from_millis(380) && after < Duration::from_millis(1100),
        "closed after {after:?}"
    );

    // After one answered request, the header timeout no longer applies: idle does.
    let mut kept = Raw::connect(kg.addr).await;
    kept.send(b"GET /f/ok HTTP/1.1\r\nhost: k\r\n\r\n").await;
    let answer = kept.answer_text().await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let answered = Instant::now();
    let rest = kept.read_until_close(5 * SECOND).await;
    let idle = answered.elapsed();
    assert!(rest.closed && rest.bytes.is_empty(), "{rest:?}");
    assert!(
        idle >= Duration::from_millis(1150) && idle < Duration::from_millis(2500),
        "closed after {idle:?}"
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_at_the_idle_timeout_and_the_upstream_released() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "idle_timeout = \"600ms\"").await;
    let mut stream = Raw::connect(kg.addr).await;
    stream.send(b"POST /f/upload HTTP/1.1\r\nhost: k\r\ncontent-length: 1000\r\n\r\n0123456789").await;
    let started = Instant::now();
    let reply = stream.read_until_close(5 * SECOND).await;
    let took = started.elapsed();
    let text = reply.text();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("x-keygate-error: bad_request\r\n"), "{text}");
    assert!(text.ends_with(
        r#"{"error":"bad_request","message":"the request is malformed: the request body stalled"}"#
    ));
    assert!(reply.closed, "the caller's connection is closed after a stalled body");
    assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(2500), "took {took:?}");
    // The upstream saw the head and 10 bytes, then keygate hung up: its slot is free.
    eventually("the upstream connection is released", 3 * SECOND, || async {
        stub.recorded().first().is_some_and(|s| s.peer_gone && !s.body_complete && s.body == b"0123456789")
    })
    .await;
    eventually("nothing in flight", 3 * SECOND, || async { kg.in_flight() == 0.0 }).await;
}

fn head_with(extra_headers: &str) -> Vec<u8> {
    format!("GET /f/ok HTTP/1.1\r\nhost: k\r\n{extra_headers}\r\n").into_bytes()
}

#[tokio::test]
async fn oversized_heads_get_431_and_a_huge_request_line_414_or_431_without_reaching_the_upstream() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "max_header_bytes = 4096").await;

    // Over max_header_bytes: keygate's own JSON answer.
    let big = head_with(&format!("x-big: {}\r\n", "b".repeat(6000)));
    let reply = exchange(kg.addr, &big, 3 * SECOND).await;
    let text = reply.text();
    assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
    assert!(text.contains("x-keygate-error: headers_too_large\r\n"), "{text}");
    assert!(text.contains(r#"{"error":"headers_too_large","message":"the request headers are too large"}"#));

    // Far past it (beyond hyper's read buffer of 2 × max_header_bytes): the parser
    // refuses with a bare 431 and closes.
    let huge = head_with(&format!("x-big: {}\r\n", "b".repeat(64 * 1024)));
    let reply = exchange(kg.addr, &huge, 3 * SECOND).await;
    assert_eq!(reply.statuses(), [431], "{}", reply.text());
    assert!(reply.closed);

    // A 70 KiB request line.
    let line = format!("GET /f/{} HTTP/1.1\r\nhost: k\r\n\r\n", "l".repeat(70 * 1024));
    let reply = exchange(kg.addr, line.as_bytes(), 3 * SECOND).await;
    let status = reply.statuses();
    assert!(status == [414] || status == [431], "{}", reply.text());
    assert!(reply.closed);

    // 101 headers refused; 100 (98 + host + connection) are still fine.
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let reply = exchange(kg.addr, &head_with(&many), 3 * SECOND).await;
    assert_eq!(reply.statuses(), [431], "{}", reply.text());
    assert!(reply.closed);
    let fine = (0..98).map(|i| format!("x-h{i}: v\r\n")).collect::<String>() + "connection: close\r\n";
    let reply = exchange(kg.addr, &head_with(&fine), 3 * SECOND).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());

    assert_eq!(stub.recorded().len(), 1, "only the last, acceptable request was forwarded");
    assert!(kg.metrics().contains("keygate_denied_total{reason=\"headers_too_large\",route=\"-\"} 1"));
}

#[tokio::test]
async fn over_max_connections_is_a_503_overloaded_and_service_recovers() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "max_connections = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = Raw::connect(kg.addr).await;
        s.send(b"GET /f/ok HTTP/1.1\r\nhost: k\r\n\r\n").await;
        assert!(s.answer_text().await.starts_with("HTTP/1.1 200 OK"));
        held.push(s);
    }
    assert_eq!(kg.sample("keygate_connections_open"), Some(3.0));
    let reply = exchange(kg.addr, b"GET /f/excess HTTP/1.1\r\nhost: k\r\n\r\n", 3 * SECOND).await;
    let text = reply.text();
    assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
    assert!(
        text.contains("x-keygate-error: overloaded\r\n") && text.contains("connection: close\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with(r#"{"error":"overloaded","message":"keygate is at its connection limit"}"#),
        "{text}"
    );
    assert!(reply.closed);
    assert!(stub.recorded().iter().all(|s| s.path != "/excess"));

    drop(held.pop());
    eventually("a connection slot frees up", 3 * SECOND, || async {
        kg.sample("keygate_connections_open") == Some(2.0)
    })
    .await;
    let reply = get(kg.addr, "/f/again", &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
}

#[tokio::test]
async fn bodies_over_max_body_bytes_get_413_declared_or_streamed() {
    let stub = FakeUpstream::faults().await;
    let routes = faults_route("f", "/f", &stub.url(), "max_body_bytes = 1024");
    let kg = TestGateway::from_config(&faults_config("", &routes)).await;
    // Declared too long: refused before a byte is read or forwarded.
    let head = b"POST /f/declared HTTP/1.1\r\nhost: k\r\ncontent-length: 2048\r\n\r\n";
    let reply = exchange(kg.addr, head, 3 * SECOND).await;
    assert_eq!(reply.statuses(), [413], "{}", reply.text());
    assert!(reply.text().contains("x-keygate-error: body_too_large\r\n"), "{}", reply.text());
    // Chunked, so only counting can tell: cut off at the limit.
    let chunk = "a".repeat(512);
    let body: String = (0..4).map(|_| format!("200\r\n{chunk}\r\n")).collect::<String>() + "0\r\n\r\n";
    let bytes = format!("POST /f/streamed HTTP/1.1\r\nhost: k\r\ntransfer-encoding: chunked\r\n\r\n{body}");
    let reply = exchange(kg.addr, bytes.as_bytes(), 3 * SECOND).await;
    assert_eq!(reply.statuses(), [413], "{}", reply.text());
    assert!(reply.text().contains("x-keygate-error: body_too_large\r\n"), "{}", reply.text());
    let seen = stub.recorded();
    assert!(
        seen.iter().all(|s| s.path == "/streamed" && !s.body_complete && s.body_len <= 1024),
        "{seen:#?}"
    );
    assert_eq!(kg.upstream_errors("f", "protocol"), 0.0);
    assert!(
        kg.metrics().contains("keygate_denied_total{reason=\"body_too_large\",route=\"f\"} 2"),
        "{}",
        kg.metrics()
    );
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_at_idle_timeout_after_its_last_answer_not_its_first() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "header_timeout = \"400ms\"\nidle_timeout = \"1200ms\"").await;
    let mut kept = Raw::connect(kg.addr).await;
    kept.send(b"GET /f/ok HTTP/1.1\r\nhost: k\r\n\r\n").await;
    assert!(kept.answer_text().await.starts_with("HTTP/1.1 200 OK"));
    let first = Instant::now();
    // Two thirds of the idle timeout later, a second request.
    let idle = kept.read_until_close(Duration::from_millis(800)).await;
    assert!(!idle.closed && idle.bytes.is_empty(), "{idle:?}");
    kept.send(b"GET /f/ok HTTP/1.1\r\nhost: k\r\n\r\n").await;
    assert!(kept.answer_text().await.starts_with("HTTP/1.1 200 OK"));
    let last = Instant::now();
    let rest = kept.read_until_close(5 * SECOND).await;
    assert!(rest.closed && rest.bytes.is_empty(), "{rest:?}");
    // Timed from the last answer (a timer left at the first one's deadline fires early
    // and waits on), not closed 1.2 s after the first.
    let (after_first, after_last) = (first.elapsed(), last.elapsed());
    assert!(after_last >= Duration::from_millis(1150), "closed {after_last:?} after the last answer");
    assert!(after_first >= Duration::from_millis(1900), "closed {after_first:?} after the first answer");
}

#[tokio::test]
async fn a_keep_alive_connection_that_starts_a_head_gets_header_timeout_not_idle_timeout() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "header_timeout = \"400ms\"\nidle_timeout = \"20s\"").await;
    let mut kept = Raw::connect(kg.addr).await;
    kept.send(b"GET /f/ok HTTP/1.1\r\nhost: k\r\n\r\n").await;
    assert!(kept.answer_text().await.starts_with("HTTP/1.1 200 OK"));
    // Idle for a second, over twice `header_timeout`: an idle keep-alive is not timed by
    // it (this observation window also lets keygate settle into timing idleness).
    let idle = kept.read_until_close(SECOND).await;
    assert!(!idle.closed && idle.bytes.is_empty(), "{idle:?}");
    // The first bytes of a next request that never ends: the head is timed from here.
    kept.send(b"GET /f/slow HTTP/1.1\r\nhost: k\r\n").await;
    let started = Instant::now();
    let rest = kept.read_until_close(5 * SECOND).await;
    let after = started.elapsed();
    assert!(rest.closed, "still open after {after:?}: idle_timeout applied to a head");
    assert!(rest.bytes.is_empty(), "{rest:?}");
    assert!(after >= Duration::from_millis(380), "closed after {after:?}");
    assert!(stub.recorded().iter().all(|s| s.path == "/ok"));
}

/// Admin connections above this are answered 503 (`keygate::admin::MAX_CONNECTIONS`).
const ADMIN_CAP: usize = keygate::admin::MAX_CONNECTIONS;

#[tokio::test]
async fn slow_headers_on_the_admin_port_are_capped_and_closed_while_the_gateway_answers() {
    let stub = FakeUpstream::faults().await;
    let kg = keygate(&stub, "header_timeout = \"1500ms\"\nidle_timeout = \"30s\"").await;
    // 200 connections, each sending part of a head and then nothing.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = Raw::connect(kg.admin).await;
        // Over the cap keygate may answer and close before reading: not our error.
        let _ = s.stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: k\r\nx-slow: 1").await;
        slow.push(s);
    }
    let opened = started.elapsed();
    // Meanwhile the gateway answers, promptly.
    for _ in 0..20 {
        let t = Instant::now();
        let reply = get(kg.addr, "/f/ok", &[]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
        assert!(t.elapsed() < Duration::from_millis(500), "a gateway request took {:?}", t.elapsed());
    }
    // Each slow connection either got the over-cap 503 or was closed, unanswered, by the
    // header timeout.
    let mut overloaded = 0;
    for (i, mut s) in slow.into_iter().enumerate() {
        let rest = s.read_until_close(10 * SECOND).await;
        assert!(rest.closed, "admin connection {i} was still open after {:?}", started.elapsed());
        if rest.bytes.is_empty() {
            assert!(started.elapsed() >= Duration::from_millis(1400), "{i} closed before the header timeout");
        } else {
            let text = rest.text();
            assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
            assert!(text.contains("x-keygate-error: overloaded\r\n"), "{text}");
            overloaded += 1;
        }
    }
    // Opened well within the header timeout, no slot was freed meanwhile: at most the cap
    // were held, the rest refused.
    if opened < Duration::from_millis(750) {
        assert_eq!(200 - overloaded, ADMIN_CAP, "connections held at once (opened in {opened:?})");
    }
    assert!(overloaded > 0, "no admin connection was refused over the cap");
    // Once they are gone, the admin port answers again.
    let reply = get(kg.admin, "/healthz", &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok\n"));
    assert_eq!(get(kg.addr, "/f/ok", &[]).await.status, 200);
}
