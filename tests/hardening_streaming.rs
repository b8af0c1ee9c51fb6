//! Memory and file descriptors, measured on the built binary (reliability 18, 20, 21):
//! big bodies stream through with a bounded RSS, a slow reader does not make keygate
//! buffer the download, and running out of file descriptors makes the accept loop back
//! off instead of spinning, then recover.
//!
//! `KEYGATE_STREAM_MIB` sets the transfer size (default 256 MiB each way; the
//! reliability catalogue's 1 GiB run is `KEYGATE_STREAM_MIB=1024`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod faults;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use faults::{Process, Stub, config_text, eventually, get, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;
const SECOND: Duration = Duration::from_secs(1);
/// How much keygate's resident memory may grow while a big body streams through.
const RSS_BUDGET_KIB: u64 = 8 * 1024;

fn stream_bytes() -> u64 {
    std::env::var("KEYGATE_STREAM_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) * MIB
}

async fn spawn(stub: &Stub) -> (Process, SocketAddr) {
    let routes = route("f", "/f", &stub.url(), "max_body_bytes = 4294967296\nresponse_timeout = \"30s\"");
    let process = Process::spawn(&config_text("", &routes), None);
    let (gateway, _) = process.addrs().await;
    // Warm up: pools, buffers and the first connection exist before the baseline.
    assert_eq!(get(gateway, "/f/warm").await.status, 200);
    (process, gateway)
}

/// Sends `GET target` and returns the stream positioned at the start of the body.
async fn open_download(gateway: SocketAddr, target: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream.write_all(format!("GET {target} HTTP/1.1\r\nhost: k\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed in the head");
        head.push(byte[0]);
    }
    (stream, head)
}

#[tokio::test]
async fn a_big_download_streams_through_with_bounded_memory() {
    let stub = Stub::start().await;
    let (process, gateway) = spawn(&stub).await;
    let total = stream_bytes();
    let baseline = process.rss_kib();
    let (mut stream, head) = open_download(gateway, &format!("/f/big/{total}")).await;
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&head));
    let mut buf = vec![0u8; 256 * 1024];
    let (mut got, mut peak, mut next_sample) = (0u64, baseline, 0u64);
    while got < total {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {got} bytes");
        assert!(buf[..n].iter().all(|b| *b == b'b'));
        got += n as u64;
        if got >= next_sample {
            peak = peak.max(process.rss_kib());
            next_sample += 16 * MIB;
        }
    }
    assert_eq!(got, total);
    let growth = peak.saturating_sub(baseline);
    assert!(growth < RSS_BUDGET_KIB, "RSS grew by {growth} KiB streaming {total} bytes");
}

#[tokio::test]
async fn a_big_upload_streams_through_with_bounded_memory() {
    let stub = Stub::start().await;
    let (process, gateway) = spawn(&stub).await;
    let total = stream_bytes();
    let baseline = process.rss_kib();
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let head = format!("POST /f/count HTTP/1.1\r\nhost: k\r\ncontent-length: {total}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'u'; 256 * 1024];
    let (mut sent, mut peak, mut next_sample) = (0u64, baseline, 0u64);
    while sent < total {
        let take = (total - sent).min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..take]).await.unwrap();
        sent += take as u64;
        if sent >= next_sample {
            peak = peak.max(process.rss_kib());
            next_sample += 16 * MIB;
        }
    }
    let answer = faults::read_answer(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with(&format!("\r\n\r\n{total}")),
        "{answer}"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(growth < RSS_BUDGET_KIB, "RSS grew by {growth} KiB streaming {total} bytes up");
}

#[tokio::test]
async fn a_slow_reader_does_not_make_keygate_buffer_the_download() {
    let stub = Stub::start().await;
    let (process, gateway) = spawn(&stub).await;
    let total = 1024 * MIB;
    let baseline = process.rss_kib();
    let (mut stream, _) = open_download(gateway, &format!("/f/big/{total}")).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < MIB as usize {
        got += stream.read(&mut buf).await.unwrap();
    }
    // The caller stops reading. Once every buffer on the way is full the stub is stuck:
    // wait until its count stops moving (checked 5 times 100 ms apart, within 10 s).
    let deadline = Instant::now() + 10 * SECOND;
    let (mut last, mut still) = (stub.written(), 0);
    while still < 5 {
        assert!(Instant::now() < deadline, "the upstream never stopped: {} bytes", stub.written());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stub.written();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    // What left the stub sits in kernel socket buffers (up to tcp_rmem/tcp_wmem max on
    // each of the four sockets), not in keygate: its RSS barely moves.
    let growth = process.rss_kib().saturating_sub(baseline);
    assert!(growth < RSS_BUDGET_KIB, "RSS grew by {growth} KiB while the caller was not reading");
    assert!(last < total / 4, "keygate pulled {last} of {total} bytes for a caller that reads nothing");
    // The caller goes away: keygate drops the upstream connection too.
    drop(stream);
    eventually("the upstream is released", 5 * SECOND, || {
        stub.seen().iter().any(|s| s.path().starts_with("/big/") && s.peer_gone)
    })
    .await;
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let stub = Stub::start().await;
    let routes = route("f", "/f", &stub.url(), "");
    // 64 descriptors: enough to start, soon exhausted by idle connections.
    let process = Process::spawn(&config_text("header_timeout = \"60s\"", &routes), Some(64));
    let (gateway, admin) = process.addrs().await;
    let mut held = Vec::new();
    let backoffs = || -> Vec<u64> {
        process.messages("accept failed").iter().filter_map(|l| l["backoff_ms"].as_u64()).collect()
    };
    // Open connections (bounded) until keygate's accept fails with EMFILE.
    let deadline = Instant::now() + 10 * SECOND;
    while backoffs().is_empty() {
        assert!(
            held.len() < 200 && Instant::now() < deadline,
            "no accept failure after {} connections",
            held.len()
        );
        held.push(TcpStream::connect(gateway).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Backing off, not spinning: each retry waits twice as long as the one before.
    eventually("five accept retries", 5 * SECOND, || backoffs().len() >= 5).await;
    let seen = backoffs();
    assert_eq!(&seen[..5], [5, 10, 20, 40, 80], "{seen:?}");
    let failure = &process.messages("accept failed")[0];
    assert!(failure["error"].as_str().unwrap().contains("Too many open files"), "{failure}");
    // Free the descriptors: the queued connections are accepted, then new ones served.
    held.clear();
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let mut s = TcpStream::connect(gateway).await.unwrap();
        s.write_all(b"GET /f/back HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n").await.unwrap();
        let reply = faults::read_until_close(&mut s, 3 * SECOND).await;
        if reply.statuses() == [200] {
            break;
        }
        assert!(Instant::now() < deadline, "keygate did not recover: {reply:?}");
    }
    assert_eq!(get(admin, "/healthz").await.status, 200);
}
