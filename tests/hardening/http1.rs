//! keygate's own HTTP/1.1 server (plain TCP, `src/server/h1`) and its hand-over to
//! hyper: pipelined requests in order, a head it does not serve handed to hyper on the
//! same connection (bytes already read included), heads and bodies arriving a byte at a
//! time, a body the pipeline never reads closing the connection, and the framing of
//! the answers it writes (docs/reliability.md row 46).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::client::Reply;
use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway, faults_config, faults_route};
use crate::support::raw::Raw;
use crate::support::upstream::{FakeUpstream, ok};

const QUIET: Duration = Duration::from_secs(1);

async fn setup() -> (FakeUpstream, TestGateway) {
    let stub = FakeUpstream::faults().await;
    let routes = faults_route("f", "/f", &stub.url(), "")
        + &faults_route("h", "/h", &stub.url(), "").replace("[\"GET\", \"POST\"]", "[\"HEAD\"]");
    let kg = TestGateway::from_config(&faults_config("", &routes)).await;
    (stub, kg)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: k\r\n\r\n")
}

fn post(path: &str, framing: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: k\r\n{framing}\r\n{body}")
}

/// The next answer on `raw`, which must be a 200 with body `body`.
async fn expect_ok(raw: &mut Raw, body: &str, case: &str) -> Reply {
    let reply = raw.response().await.unwrap_or_else(|| panic!("{case}: closed before an answer"));
    assert_eq!((reply.status, reply.text().as_str()), (200, body), "{case}: {}", reply.dump());
    reply
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_the_connection_stays_open() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    let burst = [get("/f/a"), post("/f/count", "content-length: 5\r\n", "hello"), get("/f/c")].concat();
    raw.send(burst.as_bytes()).await;
    let first = expect_ok(&mut raw, "ok", "first").await;
    expect_ok(&mut raw, "5", "second").await;
    expect_ok(&mut raw, "ok", "third").await;
    // Written the way hyper writes it: lower-case names, a date, a length.
    assert!(first.header("date").is_some_and(|d| httpdate::parse_http_date(&d).is_ok()), "{}", first.dump());
    assert_eq!(first.header("content-length").as_deref(), Some("2"));
    assert_eq!(first.header("connection"), None, "keep-alive is the default");
    // Still open, and still in order.
    raw.send(get("/f/d").as_bytes()).await;
    expect_ok(&mut raw, "ok", "after the burst").await;
    let paths: Vec<_> = stub.recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/a", "/count", "/c", "/d"]);
    assert_eq!(stub.recorded()[1].body, b"hello");
}

#[tokio::test]
async fn a_head_for_hyper_is_handed_over_with_the_bytes_already_read() {
    let (stub, kg) = setup().await;
    // Sent apart: keygate's server answers the first, then reads a chunked head it
    // hands to hyper, which serves it and the rest of the connection.
    let mut raw = Raw::connect(kg.addr).await;
    raw.send(get("/f/a").as_bytes()).await;
    expect_ok(&mut raw, "ok", "served by keygate").await;
    raw.send(post("/f/count", "transfer-encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n").as_bytes()).await;
    expect_ok(&mut raw, "5", "handed over").await;
    raw.send(get("/f/b").as_bytes()).await;
    expect_ok(&mut raw, "ok", "after the hand-over").await;

    // Sent together: the hand-over carries the chunked request, and the GET behind it.
    let mut raw = Raw::connect(kg.addr).await;
    let burst = [
        get("/f/c"),
        post("/f/count", "transfer-encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
        get("/f/d"),
    ]
    .concat();
    raw.send(burst.as_bytes()).await;
    expect_ok(&mut raw, "ok", "burst 1").await;
    expect_ok(&mut raw, "3", "burst 2").await;
    expect_ok(&mut raw, "ok", "burst 3").await;
    let paths: Vec<_> = stub.recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/a", "/count", "/b", "/c", "/count", "/d"]);
}

#[tokio::test]
async fn expect_continue_and_http_1_0_are_served_by_hyper() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    raw.send(get("/f/a").as_bytes()).await;
    expect_ok(&mut raw, "ok", "first").await;
    raw.send(post("/f/count", "content-length: 4\r\nexpect: 100-continue\r\n", "").as_bytes()).await;
    let text = raw.answer_text().await;
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n"), "{text}");
    raw.send(b"abcd").await;
    expect_ok(&mut raw, "4", "after 100 Continue").await;

    let mut raw = Raw::connect(kg.addr).await;
    raw.send(b"GET /f/e HTTP/1.0\r\nhost: k\r\n\r\n").await;
    let received = raw.read_until_close(Duration::from_secs(5)).await;
    assert!(received.closed, "HTTP/1.0 without keep-alive closes");
    assert!(received.text().starts_with("HTTP/1.0 200 OK\r\n"), "{}", received.text());
    assert_eq!(stub.recorded().len(), 3);
}

#[tokio::test]
async fn heads_and_bodies_a_byte_at_a_time_are_read_whole() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    raw.stream.set_nodelay(true).unwrap();
    let body = "x".repeat(300);
    let request = post("/f/count", &format!("content-length: {}\r\n", body.len()), &body);
    for byte in request.as_bytes() {
        raw.stream.write_all(&[*byte]).await.unwrap();
        raw.stream.flush().await.unwrap();
    }
    expect_ok(&mut raw, "300", "byte by byte").await;
    assert_eq!(stub.recorded()[0].body, body.as_bytes());
}

#[tokio::test]
async fn a_body_the_pipeline_never_reads_closes_the_connection_and_says_so() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    // No route: refused before the body is read; the 100 bytes announced are not all
    // sent, and what would follow them cannot be told from body bytes.
    raw.send(post("/nowhere", "content-length: 100\r\n", "only part").as_bytes()).await;
    let (replies, closed) = raw.responses_until_close(QUIET).await;
    assert_eq!(replies.len(), 1);
    assert_eq!((replies[0].status, replies[0].header("connection").as_deref()), (404, Some("close")));
    assert!(closed, "the connection must close");
    assert!(stub.recorded().is_empty());
}

#[tokio::test]
async fn a_refused_request_whose_body_came_whole_keeps_the_connection() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    // The body arrived with the head: nothing of it is left in the socket, so the next
    // request can follow on the same connection though nobody read the body.
    raw.send([post("/nowhere", "content-length: 5\r\n", "hello"), get("/f/a")].concat().as_bytes()).await;
    let refused = raw.response().await.expect("the refusal");
    assert_eq!((refused.status, refused.header("connection")), (404, None), "{}", refused.dump());
    expect_ok(&mut raw, "ok", "the request after it").await;
    let paths: Vec<_> = stub.recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/a"]);
}

#[tokio::test]
async fn answers_without_a_body_carry_no_body_framing() {
    let (_stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    raw.send(b"HEAD /h/a HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n").await;
    let received = raw.read_until_close(Duration::from_secs(5)).await;
    let text = received.text();
    assert!(received.closed && text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after a HEAD answer: {text:?}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
}

#[tokio::test]
async fn a_connection_close_request_gets_its_answer_then_the_end() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    let burst =
        ["GET /f/a HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n".to_owned(), get("/f/never")].concat();
    raw.send(burst.as_bytes()).await;
    let (replies, closed) = raw.responses_until_close(QUIET).await;
    assert!(closed);
    assert_eq!(replies.iter().map(|r| r.status).collect::<Vec<_>>(), [200]);
    assert_eq!(replies[0].header("connection").as_deref(), Some("close"));
    assert_eq!(stub.recorded().len(), 1, "nothing after the close is served");
}

#[tokio::test]
async fn answers_without_a_body_give_their_upstream_connection_back() {
    let stub = FakeUpstream::start(ok()).await;
    let kg = GatewayBuilder::new().route(RouteSpec::generic(&stub.url())).start().await;
    // One after another, so each finds the last one's upstream connection idle.
    for _ in 0..3 {
        let mut raw = Raw::connect(kg.addr).await;
        raw.send(b"HEAD /generic/a HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n").await;
        let received = raw.read_until_close(Duration::from_secs(5)).await;
        assert!(received.closed && received.text().starts_with("HTTP/1.1 200 OK\r\n"), "{}", received.text());
    }
    let mut raw = Raw::connect(kg.addr).await;
    raw.send(get("/generic/b").as_bytes()).await;
    assert_eq!(raw.response().await.expect("the GET").status, 200);
    assert_eq!(stub.recorded().len(), 4);
    assert_eq!(stub.accepted(), 1, "every request went over one pooled upstream connection");
}

#[tokio::test]
async fn after_an_http1_request_the_http2_preface_is_not_taken_up() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    // An HTTP/1.1 request, then the HTTP/2 preface and a SETTINGS frame on the same
    // connection: it stays HTTP/1.1, so the preface is a bad request line, not a switch.
    let mut bytes = get("/f/a").into_bytes();
    bytes.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    raw.send(&bytes).await;
    let received = raw.read_until_close(Duration::from_secs(5)).await;
    assert!(received.closed, "the connection must close: {:?}", received.text());
    assert_eq!(received.statuses().first(), Some(&200), "{:?}", received.text());
    let after = &received.bytes[received.text().find("\r\n\r\nok").unwrap() + 6..];
    assert!(after.is_empty() || after.starts_with(b"HTTP/1.1 "), "no HTTP/2 frame follows: {after:?}");
    assert_eq!(stub.recorded().len(), 1);
}

#[tokio::test]
async fn a_pipelined_request_is_answered_though_the_caller_then_closed_its_side() {
    let (stub, kg) = setup().await;
    let mut raw = Raw::connect(kg.addr).await;
    raw.send([get("/f/1"), get("/f/2")].concat().as_bytes()).await;
    raw.stream.shutdown().await.unwrap();
    let received = raw.read_until_close(Duration::from_secs(5)).await;
    assert!(received.closed);
    // As hyper does: the end of the caller's stream is not looked for while the next
    // request is buffered, so the first is answered; the last is the one the end
    // arrives behind, and a caller that closes its side is taken to have left.
    let statuses = received.statuses();
    assert_eq!(statuses.first(), Some(&200), "{}", received.text());
    assert!(statuses.len() <= 2, "{statuses:?}");
    assert_eq!(stub.recorded().first().map(|r| r.path.as_str()), Some("/1"));
}
