//! One whole request through keygate, in process: a keep-alive HTTP/1.1 client sends
//! `GET /export/0.1/export` over loopback TCP to a gateway started by `App::start`
//! from a config text; the route's allow list holds 10k CIDRs whose last entry is the
//! client; keygate strips the caller's `X-RJM-API-Key`, injects the real one and
//! forwards to an in-process upstream that answers 200 only to the right key. The
//! `direct` case sends the same request straight to the upstream, so the difference
//! is keygate's share. The access log is off (no subscriber is installed either way).
//!
//! `cargo bench --bench pipeline`; for an instruction profile:
//! `valgrind --tool=callgrind target/release/deps/pipeline-* --bench --profile-time 5 keygate`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate::app::App;
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "bench-export-key-0123456789abcdef";

/// An upstream that answers 200 `{"ok":true}` when the injected key is right, else 403.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let ok = req.headers().get("x-rjm-api-key").is_some_and(|v| v == KEY);
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                    if !ok {
                        *resp.status_mut() = hyper::StatusCode::FORBIDDEN;
                    }
                    resp.headers_mut().insert("content-type", "application/json".parse().expect("static"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// `n - 1` /24s spread over 1.0.0.0–126.255.255.255 (never adjacent, never the client)
/// with the client's /32 last, as `bench/run.sh` builds them.
fn allow_list(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut list: Vec<String> = (0..n - 1)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // An even /24 slot in [1.0.0.0, 127.0.0.0).
            let slot = (1u64 << 15) + x % ((126u64 << 16) / 2);
            let net = (slot * 2) << 8;
            format!("\"{}.{}.{}.0/24\"", net >> 24, (net >> 16) & 255, (net >> 8) & 255)
        })
        .collect();
    list.push("\"127.0.0.1/32\"".to_owned());
    format!("[{}]", list.join(", "))
}

async fn gateway(upstream: SocketAddr, dir: &std::path::Path) -> App {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [secrets.bi_export]\nvalue = \"{KEY}\"\n\
         [[routes]]\nname = \"bi-export\"\nprefix = \"/export\"\npreset = \"rjmetrics-export\"\n\
         client_id = 12345\nsecret = \"bi_export\"\nupstream = \"http://{upstream}\"\nallow = {}\n",
        allow_list(10_000)
    );
    let path = dir.join("keygate.toml");
    std::fs::write(&path, config).expect("write config");
    let snapshot = keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("{p}"));
    App::start(snapshot, None, None).await.expect("start gateway")
}

async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// One request; `key` is what the caller sends (keygate replaces it, the upstream
/// checks it).
async fn one(sender: &mut SendRequest<Empty<Bytes>>, key: &'static str) {
    sender.ready().await.expect("connection alive");
    let req = hyper::Request::get("/export/0.1/export")
        .header("host", "127.0.0.1")
        .header("x-rjm-api-key", key)
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
}

fn pipeline(c: &mut Criterion) {
    // One thread, like a sidecar with `worker_threads = 1`: client, gateway and upstream
    // share it, so a number here is the CPU time of all three per request.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, app) = rt.block_on(async {
        let up = upstream().await;
        let app = gateway(up, dir.path()).await;
        (up, app)
    });
    let gw = app.local_addrs()[0];
    let mut via_keygate = rt.block_on(client(gw));
    let mut direct = rt.block_on(client(up));

    let mut group = c.benchmark_group("pipeline");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one(&mut direct, KEY).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("keygate", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one(&mut via_keygate, "caller-dummy-key").await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    drop((via_keygate, direct));
    rt.block_on(app.shutdown());
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
