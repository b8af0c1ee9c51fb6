//! Memory and file descriptors, measured on the built binary (`docs/reliability.md` rows 18, 20, 21):
//! big bodies stream through with a bounded RSS, a slow reader does not make keygate
//! buffer the download, running out of file descriptors makes the accept loop back
//! off instead of spinning, then recover, and the allocator is the one the binary is
//! built with.
//!
//! `KEYGATE_STREAM_MIB` sets the transfer size (default 256 MiB each way; the
//! catalogue's 1 GiB run is `KEYGATE_STREAM_MIB=1024`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SERIAL;
use crate::support::client::get;
use crate::support::inprocess::{faults_config, faults_route};
use crate::support::poll::eventually;
use crate::support::process::{Keygate, Launch};
use crate::support::raw::Raw;
use crate::support::upstream::FakeUpstream;

const MIB: u64 = 1024 * 1024;
const SECOND: Duration = Duration::from_secs(1);
/// How much keygate's resident memory may grow while a big body streams through.
const RSS_BUDGET_KIB: u64 = 8 * 1024;

fn stream_bytes() -> u64 {
    std::env::var("KEYGATE_STREAM_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) * MIB
}

async fn spawn(stub: &FakeUpstream) -> (Keygate, SocketAddr) {
    let routes =
        faults_route("f", "/f", &stub.url(), "max_body_bytes = 4294967296\nresponse_timeout = \"30s\"");
    let process = Launch::with_config(&faults_config("", &routes)).start().await;
    let gateway = process.gateway;
    // Warm up: pools, buffers and the first connection exist before the baseline.
    assert_eq!(get(gateway, "/f/warm", &[]).await.status, 200);
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
    let _serial = SERIAL.lock().await;
    let stub = FakeUpstream::faults().await;
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
    let _serial = SERIAL.lock().await;
    let stub = FakeUpstream::faults().await;
    let (process, gateway) = spawn(&stub).await;
    let total = stream_bytes();
    let baseline = process.rss_kib();
    let mut stream = Raw::connect(gateway).await;
    let head = format!("POST /f/count HTTP/1.1\r\nhost: k\r\ncontent-length: {total}\r\n\r\n");
    stream.send(head.as_bytes()).await;
    let chunk = vec![b'u'; 256 * 1024];
    let (mut sent, mut peak, mut next_sample) = (0u64, baseline, 0u64);
    while sent < total {
        let take = (total - sent).min(chunk.len() as u64) as usize;
        stream.send(&chunk[..take]).await;
        sent += take as u64;
        if sent >= next_sample {
            peak = peak.max(process.rss_kib());
            next_sample += 16 * MIB;
        }
    }
    let answer = stream.answer_text().await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with(&format!("\r\n\r\n{total}")),
        "{answer}"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(growth < RSS_BUDGET_KIB, "RSS grew by {growth} KiB streaming {total} bytes up");
}

#[tokio::test]
async fn a_slow_reader_does_not_make_keygate_buffer_the_download() {
    let _serial = SERIAL.lock().await;
    let stub = FakeUpstream::faults().await;
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
    eventually("the upstream is released", 5 * SECOND, || async {
        stub.recorded().iter().any(|s| s.path.starts_with("/big/") && s.peer_gone)
    })
    .await;
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let stub = FakeUpstream::faults().await;
    let routes = faults_route("f", "/f", &stub.url(), "");
    // 64 descriptors: enough to start, soon exhausted by idle connections.
    let process =
        Launch::with_config(&faults_config("header_timeout = \"60s\"", &routes)).nofile(64).start().await;
    let (gateway, admin) = (process.gateway, process.admin);
    let mut held = Vec::new();
    let backoffs = || -> Vec<u64> {
        process.logs("accept failed").iter().filter_map(|l| l["backoff_ms"].as_u64()).collect()
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
    eventually("five accept retries", 5 * SECOND, || async { backoffs().len() >= 5 }).await;
    let seen = backoffs();
    assert_eq!(&seen[..5], [5, 10, 20, 40, 80], "{seen:?}");
    let failure = &process.logs("accept failed")[0];
    assert!(failure["error"].as_str().unwrap().contains("Too many open files"), "{failure}");
    // Free the descriptors: the queued connections are accepted, then new ones served.
    held.clear();
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let mut s = Raw::connect(gateway).await;
        s.send(b"GET /f/back HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n").await;
        let reply = s.read_until_close(3 * SECOND).await;
        if reply.statuses() == [200] {
            break;
        }
        assert!(Instant::now() < deadline, "keygate did not recover: {reply:?}");
    }
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
}

/// The binary allocates with jemalloc and the options `.cargo/config.toml` builds in:
/// its background thread runs (it is what hands freed pages back, BENCHMARKS.md round
/// 7), and one arena serves the process.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[tokio::test]
async fn the_binary_runs_jemalloc_with_its_background_thread() {
    let _serial = SERIAL.lock().await;
    let stub = FakeUpstream::faults().await;
    let (process, _gateway) = spawn(&stub).await;
    let tasks = format!("/proc/{}/task", process.pid());
    let threads = || {
        let names = std::fs::read_dir(&tasks).into_iter().flatten().flatten();
        names.filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok()).collect::<Vec<_>>()
    };
    eventually("jemalloc's background thread", 10 * SECOND, || async {
        threads().iter().any(|name| name.trim() == "jemalloc_bg_thd")
    })
    .await;
    let binary = std::fs::read(env!("CARGO_BIN_EXE_keygate")).expect("the binary");
    let built_in = b"background_thread:true,narenas:1,dirty_decay_ms:500,muzzy_decay_ms:0";
    assert!(memchr::memmem::find(&binary, built_in).is_some(), "jemalloc built without its options");
}
