//! Request smuggling and malformed framing over raw sockets (`docs/reliability.md` rows 1–5): each
//! case sends exact bytes, checks the exact status, and checks what the fake upstream
//! saw — nothing, or exactly one request with exactly one framing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::support::inprocess::{TestGateway, faults_config, faults_route};
use crate::support::raw::{Received, exchange};
use crate::support::upstream::FakeUpstream;

const LIMIT: Duration = Duration::from_secs(3);

async fn setup() -> (FakeUpstream, TestGateway) {
    let stub = FakeUpstream::faults().await;
    let routes = faults_route("f", "/f", &stub.url(), "")
        + "[[routes]]\nname = \"imp\"\nprefix = \"/import\"\npreset = \"rjmetrics-import\"\nclient_id = 7\n"
        + &format!("upstream = \"{}\"\nsecret = \"key\"\nallow = [\"127.0.0.0/8\"]\n", stub.url());
    let kg = TestGateway::from_config(&faults_config("", &routes)).await;
    (stub, kg)
}

/// A POST head to `/f/p` with `framing` (header lines, each ending in CRLF), then `body`.
fn post(framing: &str, body: &str) -> Vec<u8> {
    format!("POST /f/p HTTP/1.1\r\nhost: k\r\n{framing}\r\n{body}").into_bytes()
}

fn assert_400(reply: &Received, case: &str) {
    assert_eq!(reply.statuses(), [400], "{case}: {}", reply.text());
    assert!(reply.closed, "{case}: the connection must be closed");
}

#[tokio::test]
async fn content_length_with_chunked_honours_chunked_only_and_closes() {
    let (stub, kg) = setup().await;
    for framing in [
        "content-length: 4\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 4\r\n",
    ] {
        // By Content-Length the body is "5\r\nh"; by chunked it is "hello", and what
        // follows would be a second, smuggled request.
        let bytes = post(framing, "5\r\nhello\r\n0\r\n\r\nGET /f/smuggled HTTP/1.1\r\nhost: k\r\n\r\n");
        let reply = exchange(kg.addr, &bytes, LIMIT).await;
        assert_eq!(reply.statuses(), [200], "{framing:?}: {}", reply.text());
        assert!(reply.closed, "{framing:?}: the connection must be closed after the answer");
    }
    let seen = stub.recorded();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for s in &seen {
        assert_eq!((s.path.as_str(), s.body.as_slice(), s.body_complete), ("/p", &b"hello"[..], true));
        let framings = s.header("content-length").len() + s.header("transfer-encoding").len();
        assert_eq!(framings, 1, "exactly one framing upstream: {:?}", s.headers);
    }
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused() {
    let (stub, kg) = setup().await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for framing in [
        "transfer-encoding: chunked, identity\r\n",
        "transfer-encoding: xchunked\r\n",
        "transfer-encoding: identity\r\n",
        "transfer-encoding : chunked\r\n",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: identity\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: gzip, chunked\r\n",
        // A line starting with a tab continues the previous one (obs-fold).
        "x-a: b\r\n\ttransfer-encoding: chunked\r\n",
        "transfer-encoding:\r\n chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 5\r\ntransfer-encoding: identity\r\n",
    ] {
        let reply = exchange(kg.addr, &post(framing, body), LIMIT).await;
        assert_400(&reply, framing);
    }
    assert!(stub.recorded().is_empty(), "{:#?}", stub.recorded());
    // The control: plain chunked (any case, tab before the value is valid whitespace) passes.
    for framing in ["transfer-encoding: chunked\r\n", "Transfer-Encoding:\tCHUNKED\r\n"] {
        let reply = exchange(kg.addr, &post(&format!("{framing}connection: close\r\n"), body), LIMIT).await;
        assert_eq!(reply.statuses(), [200], "{framing:?}: {}", reply.text());
    }
    assert_eq!(stub.recorded().len(), 2);
}

#[tokio::test]
async fn bad_content_lengths_are_refused() {
    let (stub, kg) = setup().await;
    for framing in [
        "content-length: 5\r\ncontent-length: 6\r\n",
        "content-length: 5, 6\r\n",
        "content-length: +5\r\n",
        "content-length: 0x5\r\n",
        "content-length: -5\r\n",
        "content-length: 5 5\r\n",
        "content-length: 18446744073709551616\r\n",
        "content-length: 99999999999999999999999\r\n",
    ] {
        let reply = exchange(kg.addr, &post(framing, "hello"), LIMIT).await;
        assert_400(&reply, framing);
    }
    assert!(stub.recorded().is_empty(), "{:#?}", stub.recorded());
}

#[tokio::test]
async fn broken_chunking_never_forwards_a_complete_request() {
    let (stub, kg) = setup().await;
    let cases = [
        "5\nhello\r\n0\r\n\r\n",                   // lone LF after the size
        "5\r\nhello world\r\n0\r\n\r\n",           // chunk longer than its size
        "fffffffffffffffff\r\nhello\r\n0\r\n\r\n", // size overflows u64
        "5\r\nhello0\r\n\r\n",                     // missing CRLF after the data
        "zz\r\nhello\r\n0\r\n\r\n",                // not hex
    ];
    let upsert = r#"{"keys":["id"],"id":1}"#;
    for body in cases {
        let reply = exchange(kg.addr, &post("transfer-encoding: chunked\r\n", body), LIMIT).await;
        assert_400(&reply, body);
        assert!(reply.text().contains("x-keygate-error: bad_request\r\n"), "{body:?}: {}", reply.text());
        // On a validated upsert the body is read whole first: nothing reaches the upstream.
        let broken = body.replacen("hello", &upsert[..5], 1);
        let head =
            "POST /import/v2/client/7/table/t/data HTTP/1.1\r\nhost: k\r\ntransfer-encoding: chunked\r\n\r\n";
        let reply = exchange(kg.addr, format!("{head}{broken}").as_bytes(), LIMIT).await;
        assert_400(&reply, &broken);
    }
    // A streamed body may have started upstream, but never as a complete request.
    let seen = stub.recorded();
    assert!(seen.iter().all(|s| s.path == "/p" && !s.body_complete), "{seen:#?}");
    assert_eq!(kg.upstream_errors("f", "protocol"), 0.0, "a caller's broken body is not an upstream fault");
}

#[tokio::test]
async fn malformed_header_lines_are_refused() {
    let (stub, kg) = setup().await;
    for header in [
        "x-a : b\r\n",      // space before the colon
        "x-a\t: b\r\n",     // tab before the colon
        "x-a: b\0c\r\n",    // NUL in a value
        "x-a: b\x01c\r\n",  // CTL in a value
        "x-a: b\x7fc\r\n",  // DEL in a value
        "x-a: b\r\n c\r\n", // obs-fold
        "x-a: b\rc\r\n",    // bare CR
        ": novalue\r\n",    // empty name
        "x a: b\r\n",       // space in the name
        "x-\"a\": b\r\n",   // quote in the name
    ] {
        let bytes = format!("GET /f/h HTTP/1.1\r\nhost: k\r\n{header}\r\n");
        let reply = exchange(kg.addr, bytes.as_bytes(), LIMIT).await;
        assert_400(&reply, header);
    }
    assert!(stub.recorded().is_empty(), "{:#?}", stub.recorded());
}
