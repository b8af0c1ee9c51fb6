//! Large bodies stream through keygate with bounded memory: a 256 MiB download and a
//! 256 MiB upload, generated on the fly by the fake upstream / the client and verified
//! byte for byte against the pattern as they arrive (nothing holds a whole body), while
//! the test process's resident set size is sampled. keygate, the upstream and the
//! client share this process, so the bound covers all three.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;

use crate::SERIAL;
use crate::support::client::Conn;
use crate::support::inprocess::{GatewayBuilder, RouteSpec};
use crate::support::keys::GENERIC_KEY;
use crate::support::process::self_rss_kib as rss_kib;
use crate::support::upstream::pattern::{CHUNK, PatternBody, Verifier};
use crate::support::upstream::{Answer, FakeUpstream, Recorded, ok};

/// The size of each transfer. The full 256 MiB is kept in debug builds: each direction
/// takes under a second here (each test prints its time and RSS rise with --nocapture).
const STREAM_BYTES: u64 = 256 * 1024 * 1024;
/// How far the process's RSS may rise above its level before the transfer.
const RSS_BUDGET_KIB: u64 = 32 * 1024;

/// Samples RSS every few milliseconds until stopped; returns the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start() -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_kib()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        RssWatch { peak, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.fetch_max(rss_kib(), Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// A small exchange first, so pools, buffers and lazy statics exist before the baseline.
async fn warm_up(conn: &mut Conn<PatternBody>, method: &str, path: &str) {
    let req = Request::builder().method(method).uri(path).header("host", "x").body(PatternBody::new(1 << 20));
    let response = conn.respond(req.unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_download_streams_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let up = FakeUpstream::start(Arc::new(|r: &Recorded| {
        let len = if r.path == "/big" { STREAM_BYTES } else { 1 << 20 };
        Answer::Stream { len }
    }))
    .await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&up.url())).start().await;
    let mut sender = Conn::open(gw.addr).await;
    warm_up(&mut sender, "POST", "/generic/warm").await;

    let baseline = rss_kib();
    let watch = RssWatch::start();
    let started = Instant::now();
    let req = Request::get("/generic/big").header("host", "x").body(PatternBody::new(0)).unwrap();
    let response = sender.respond(req).await.expect("connection kept alive");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    // The upstream's length, carried by the streamed body (not the answer's map) to the
    // caller: framed by it, not re-chunked.
    assert_eq!(response.headers()["content-length"], STREAM_BYTES.to_string());
    assert!(!response.headers().contains_key("transfer-encoding"));
    let mut body = response.into_body();
    let mut verifier = Verifier::default();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("body frame").data_ref() {
            verifier.feed(data);
        }
    }
    let took = started.elapsed();
    let peak = watch.finish().await;

    assert_eq!(verifier.offset, STREAM_BYTES, "bytes received");
    assert_eq!(verifier.first_mismatch, None, "corrupted at this offset");
    let grew = peak.saturating_sub(baseline);
    eprintln!("download: {} MiB in {took:?}; RSS {baseline} KiB, peak +{grew} KiB", STREAM_BYTES >> 20);
    assert!(grew < RSS_BUDGET_KIB, "RSS grew by {grew} KiB during the download");
    let up_seen = up.recorded();
    assert_eq!(up_seen.last().unwrap().header("authorization"), [format!("Bearer {GENERIC_KEY}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_upload_streams_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::generic(&up.url()).set("max_body_bytes", &(2 * STREAM_BYTES).to_string()))
        .start()
        .await;
    let mut sender = Conn::open(gw.addr).await;
    warm_up(&mut sender, "POST", "/generic/warm").await;

    let baseline = rss_kib();
    let watch = RssWatch::start();
    let started = Instant::now();
    let req = Request::post("/generic/upload")
        .header("host", "x")
        .header("content-type", "application/octet-stream")
        .body(PatternBody::new(STREAM_BYTES))
        .unwrap();
    let response = sender.respond(req).await.expect("connection kept alive");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    let peak = watch.finish().await;

    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["body_len"], STREAM_BYTES, "bytes the upstream received");
    assert_eq!(answer["pattern"], true, "the upstream received the bytes unchanged");
    let seen = up.recorded();
    let last = seen.last().unwrap();
    assert_eq!(last.header("content-length"), [STREAM_BYTES.to_string()]);
    let grew = peak.saturating_sub(baseline);
    eprintln!("upload: {} MiB in {took:?}; RSS {baseline} KiB, peak +{grew} KiB", STREAM_BYTES >> 20);
    assert!(grew < RSS_BUDGET_KIB, "RSS grew by {grew} KiB during the upload");
}

#[test]
fn the_verifier_catches_a_changed_byte_and_a_repeated_chunk() {
    let mut body = Vec::new();
    let mut pattern = PatternBody::new(3 * CHUNK as u64);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    while let std::task::Poll::Ready(Some(Ok(frame))) =
        http_body::Body::poll_frame(std::pin::Pin::new(&mut pattern), &mut cx)
    {
        body.extend_from_slice(frame.data_ref().unwrap());
    }
    let mut intact = Verifier::default();
    // Fed in odd-sized pieces so checks straddle chunk boundaries.
    body.chunks(7777).for_each(|piece| intact.feed(piece));
    assert_eq!((intact.offset, intact.first_mismatch), (3 * CHUNK as u64, None));

    let mut flipped = body.clone();
    flipped[CHUNK + 100] ^= 1;
    let mut v = Verifier::default();
    v.feed(&flipped);
    assert_eq!(v.first_mismatch, Some(CHUNK as u64));

    let mut repeated = body[..CHUNK].to_vec();
    repeated.extend_from_slice(&body[..CHUNK]);
    let mut v = Verifier::default();
    v.feed(&repeated);
    assert_eq!(v.first_mismatch, Some(CHUNK as u64));
}
