//! Helpers for the callers and observability tests: a recording upstream, a gateway
//! started in-process from a config text, clients that connect from a chosen source
//! address, and `eventually`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate::app::App;
use tokio::net::{TcpListener, TcpSocket};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// An upstream that records every request and answers `status` with a small body.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start(status: u16) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.as_str().to_owned(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            record.lock().unwrap().push(Seen {
                                method: req.method().to_string(),
                                path: req.uri().path().to_owned(),
                                query: req.uri().query().map(str::to_owned),
                                headers,
                            });
                            let _ = req.into_body().collect().await;
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A gateway running in-process from `config`, plus its temporary directory.
pub struct Gateway {
    pub app: App,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, config).unwrap();
        let snapshot = keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("{p}"));
        let app = App::start(snapshot, None, None).await.unwrap();
        Gateway { app, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.app.local_addrs()[0]
    }

    pub fn metrics(&self) -> String {
        self.app.gateway.metrics.render()
    }
}

/// A response, reduced to what the tests look at.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub error: Option<String>,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// Sends one request over a new connection from `source` (an address on loopback).
pub async fn send_from(
    source: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let socket = if source.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", "keygate.test");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let error = resp.headers().get("x-keygate-error").map(|v| v.to_str().unwrap().to_owned());
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, error, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// `send_from` 127.0.0.1.
pub async fn send(to: SocketAddr, method: &str, path: &str) -> Answer {
    send_from("127.0.0.1".parse().unwrap(), to, method, path, &[]).await
}

/// Polls `check` until it holds, failing after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the sample line `series` (exact match of name and labels) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
