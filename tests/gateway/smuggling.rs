//! Request smuggling and malformed framing on raw sockets (`docs/reliability.md` rows 1–5):
//! ambiguous or broken framing is refused (400) or, where the HTTP layer settles on one
//! reading, the connection is closed after the answer; the upstream never sees a
//! smuggled request, never both framings, and never a request from a broken message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway};
use crate::support::raw::Raw;
use crate::support::upstream::{FakeUpstream, ok};

async fn setup() -> (FakeUpstream, TestGateway) {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&up.url())).start().await;
    (up, gw)
}

/// Sends `bytes` and collects every answer's status until keygate closes the
/// connection; a connection left open (quiet for a second) is marked with a final 0.
async fn exchange(gw: &TestGateway, bytes: &[u8]) -> Vec<u16> {
    let mut raw = Raw::connect(gw.addr).await;
    raw.send(bytes).await;
    let (replies, closed) = raw.responses_until_close(Duration::from_secs(1)).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    if !closed {
        statuses.push(0);
    }
    statuses
}

/// Nothing the upstream saw came from a smuggled request or carried two framings.
#[track_caller]
fn assert_nothing_smuggled(up: &FakeUpstream) {
    for r in up.recorded() {
        assert!(!r.path.contains("smuggled"), "smuggled request reached the upstream: {}", r.dump());
        let both = !r.header("content-length").is_empty() && !r.header("transfer-encoding").is_empty();
        assert!(!both, "both framings upstream: {}", r.dump());
    }
}

const SMUGGLED: &str = "GET /generic/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn content_length_with_chunked_is_refused_or_closed_after_one_answer() {
    let (up, gw) = setup().await;
    let request = format!(
        "POST /generic/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n{SMUGGLED}"
    );
    let statuses = exchange(&gw, request.as_bytes()).await;
    // [200] means: chunked honoured, then the connection closed (0 would mark it open).
    assert!(statuses == [400] || statuses == [200], "{statuses:?}");
    assert_nothing_smuggled(&up);
    assert!(up.recorded().len() <= 1);
    for r in up.recorded() {
        assert!(r.body_complete && r.body_len == 0, "{}", r.dump());
    }
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused() {
    let (up, gw) = setup().await;
    for te in [
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        " Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding:\x0bchunked\r\n",
    ] {
        let request =
            format!("POST /generic/a HTTP/1.1\r\nHost: x\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        let statuses = exchange(&gw, request.as_bytes()).await;
        assert_eq!(statuses, [400], "{te:?}");
    }
    assert!(up.recorded().is_empty(), "{:?}", up.recorded());
}

#[tokio::test]
async fn leading_tab_in_transfer_encoding_is_refused_or_read_as_chunked_only() {
    let (up, gw) = setup().await;
    // A tab is legal whitespace before a field value: reading it as chunked is correct.
    let request = format!(
        "POST /generic/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let statuses = exchange(&gw, request.as_bytes()).await;
    assert!(statuses == [400] || statuses == [200], "{statuses:?}");
    assert_nothing_smuggled(&up);
    for r in up.recorded() {
        assert_eq!(r.body_len, 5);
    }
}

#[tokio::test]
async fn bad_content_lengths_are_refused() {
    let (up, gw) = setup().await;
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 99999999999999999999999\r\n",
        "Content-Length: 18446744073709551616\r\n",
    ] {
        let request = format!("POST /generic/a HTTP/1.1\r\nHost: x\r\n{cl}\r\nhello!{SMUGGLED}");
        let statuses = exchange(&gw, request.as_bytes()).await;
        assert_eq!(statuses, [400], "{cl:?}");
    }
    assert!(up.recorded().is_empty(), "{:?}", up.recorded());
}

#[tokio::test]
async fn broken_chunking_is_refused_and_nothing_whole_is_forwarded() {
    let (up, gw) = setup().await;
    for body in [
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "zz\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
    ] {
        let request = format!(
            "POST /generic/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"
        );
        let mut raw = Raw::connect(gw.addr).await;
        raw.send(request.as_bytes()).await;
        let (replies, closed) = raw.responses_until_close(Duration::from_secs(1)).await;
        assert!(closed, "{body:?}: connection left open");
        assert_eq!(replies.len(), 1, "{body:?}");
        // The caller's framing broke: keygate's 400, never blamed on the upstream.
        replies[0].assert_refusal(400, "bad_request");
    }
    assert_nothing_smuggled(&up);
    // keygate streams bodies, so the upstream may have seen the start of a request: it
    // must never see one end cleanly.
    for r in up.recorded() {
        assert!(!r.body_complete && r.body_len <= 5, "{}", r.dump());
    }
    assert_eq!(
        gw.metric("keygate_upstream_errors_total", &[("route", "generic"), ("kind", "protocol")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn malformed_header_lines_are_refused() {
    let (up, gw) = setup().await;
    for header in [
        "X-Space : 1\r\n",
        "X-Nul: a\0b\r\n",
        "X-Ctl: a\x01b\r\n",
        "X-Folded: a\r\n b\r\n",
        "X-Lone: a\rb\r\n",
        "Bad Name: 1\r\n",
        ": empty\r\n",
    ] {
        let request = format!("GET /generic/a HTTP/1.1\r\nHost: x\r\n{header}\r\n{SMUGGLED}");
        let statuses = exchange(&gw, request.as_bytes()).await;
        assert_eq!(statuses, [400], "{header:?}");
    }
    assert!(up.recorded().is_empty(), "{:?}", up.recorded());
}
