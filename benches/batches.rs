//! The cost per record of pushing 1,000 records, in process over loopback TCP:
//!
//! - `direct_10x100`: what the vendor's clients do, 10 upserts of 100 records straight
//!   to the upstream;
//! - `keygate_10x100`: the same 10 upserts through keygate (each checked and passed
//!   through whole);
//! - `keygate_1x1000`: one upsert of 1,000 records to keygate, which checks every
//!   record and sends the 10 batches itself.
//!
//! The upstream reads each body and answers 201 (only when the real key came). One
//! current-thread runtime runs client, gateway and upstream, so a time here is the CPU
//! of all three for 1,000 records; divide by 1,000 for the cost per record.
//!
//! `cargo bench --bench batches`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate::app::App;
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "bench-import-key-0123456789abcdef";
const PATH: &str = "/v2/client/12345/table/orders/data";

/// Reads the upsert and answers 201 `{"code":201,…}` when the key is right, else 401.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let ok = req.uri().query().is_some_and(|q| q == format!("apikey={KEY}"));
                    let _ = req.into_body().collect().await;
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                        b"{\"code\":201,\"message\":\"created\"}",
                    )));
                    *resp.status_mut() =
                        if ok { hyper::StatusCode::CREATED } else { hyper::StatusCode::UNAUTHORIZED };
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

async fn gateway(upstream: SocketAddr, dir: &std::path::Path) -> App {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [secrets.bi_import]\nvalue = \"{KEY}\"\n\
         [[routes]]\nname = \"bi-import\"\nprefix = \"/import\"\npreset = \"rjmetrics-import\"\n\
         client_id = 12345\nsecret = \"bi_import\"\nupstream = \"http://{upstream}\"\nallow = [\"127.0.0.1/32\"]\n"
    );
    let path = dir.join("keygate.toml");
    std::fs::write(&path, config).expect("write config");
    let snapshot = keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("{p}"));
    App::start(snapshot, None, None).await.expect("start gateway")
}

async fn client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// A new connection when keygate closed the last one (idle while another case ran).
async fn reconnect(sender: &mut SendRequest<Full<Bytes>>, addr: SocketAddr) {
    if sender.is_closed() || sender.ready().await.is_err() {
        *sender = client(addr).await;
    }
}

/// `[{"keys":["id"],"id":…,"name":"row …","total":…}, …]` for ids `from..to`.
fn rows(from: usize, to: usize) -> Bytes {
    let rows: Vec<String> = (from..to)
        .map(|i| format!(r#"{{"keys":["id"],"id":{i},"name":"row {i}","total":{}.25}}"#, i / 4))
        .collect();
    Bytes::from(format!("[{}]", rows.join(",")))
}

async fn push(sender: &mut SendRequest<Full<Bytes>>, target: &str, body: Bytes, want: u16) {
    sender.ready().await.expect("connection alive");
    let req = hyper::Request::post(target)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), want);
    resp.into_body().collect().await.expect("body");
}

fn batches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, app) = rt.block_on(async {
        let up = upstream().await;
        (up, gateway(up, dir.path()).await)
    });
    let gw = app.local_addrs()[0];
    let tens: Vec<Bytes> = (0..10).map(|b| rows(b * 100, b * 100 + 100)).collect();
    let thousand = rows(0, 1000);
    let direct_target = format!("{PATH}?apikey={KEY}");
    let keygate_target = format!("/import{PATH}?apikey=caller");
    let mut direct = rt.block_on(client(up));
    let mut via_keygate = rt.block_on(client(gw));

    let mut group = c.benchmark_group("push_1000_records");
    group.throughput(Throughput::Elements(1000));
    group.measurement_time(Duration::from_secs(8));
    let mut run = |name: &str, f: &mut dyn FnMut() -> Duration| {
        group.bench_function(name, |b| b.iter_custom(|iters| (0..iters).map(|_| f()).sum()));
    };
    run("direct_10x100", &mut || {
        rt.block_on(async {
            let start = Instant::now();
            for body in &tens {
                push(&mut direct, &direct_target, body.clone(), 201).await;
            }
            start.elapsed()
        })
    });
    run("keygate_10x100", &mut || {
        rt.block_on(async {
            reconnect(&mut via_keygate, gw).await;
            let start = Instant::now();
            for body in &tens {
                push(&mut via_keygate, &keygate_target, body.clone(), 201).await;
            }
            start.elapsed()
        })
    });
    run("keygate_1x1000", &mut || {
        rt.block_on(async {
            reconnect(&mut via_keygate, gw).await;
            let start = Instant::now();
            push(&mut via_keygate, &keygate_target, thousand.clone(), 201).await;
            start.elapsed()
        })
    });
    group.finish();
    drop((direct, via_keygate));
    rt.block_on(app.shutdown());
}

criterion_group!(benches, batches);
criterion_main!(benches);
