//! What a `CONNECT` tunnel costs: the same request to the same route, over plain
//! HTTP/1.1 to keygate and over HTTP/1.1 inside TLS inside a `CONNECT` tunnel (what an
//! unmodified client behind `HTTPS_PROXY` sends), measured side by side in one run.
//!
//! Four modes, interleaved in each round (order rotated): `plain_keepalive` and
//! `tunnel_keepalive` (each connection opened once, then requests back to back: the
//! cost per request), `plain_new_conn` and `tunnel_new_conn` (a new connection per
//! request, no TLS session resumption: the cost per connection). keygate is the release
//! binary, started as a child with one worker thread, pinned to CPU 1 when `taskset` is
//! there; its CPU time per request is read from `/proc`. The load generator and the
//! upstream stub run in this process (run it pinned to CPU 0: `bench/tunnel.sh`).
//! Loopback only; every run is bounded by `--seconds`; the child is killed on exit.
//!
//! `bench/tunnel.sh [--rounds N] [--seconds S] [--conns C]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "connect.rjmetrics.com";
const MODES: [&str; 4] = ["plain_keepalive", "tunnel_keepalive", "plain_new_conn", "tunnel_new_conn"];

struct Args {
    rounds: usize,
    seconds: u64,
    conns: usize,
}

fn args() -> Args {
    let mut out = Args { rounds: 3, seconds: 3, conns: 16 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the flag");
        match a.as_str() {
            "--rounds" => out.rounds = value() as usize,
            "--seconds" => out.seconds = value().min(60),
            "--conns" => out.conns = value().clamp(1, 256) as usize,
            _ => {} // cargo passes --bench
        }
    }
    out
}

/// An upstream that answers 200 to everything, on this process's runtime.
async fn stub() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The child keygate, killed when dropped.
struct Keygate {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a CA-issued intercept certificate for [`HOST`] and a config with one generic
/// host route to `upstream`, and starts keygate on it. Returns it and the CA's PEM.
async fn start_keygate(upstream: SocketAddr) -> (Keygate, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec![HOST.to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let d = dir.path();
    std::fs::write(d.join("i.crt"), leaf.pem()).unwrap();
    std::fs::write(d.join("i.key"), key.serialize_pem()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[server]\nlisten = \"{addr}\"\nworker_threads = 1\nmax_connections = 20000\nidle_timeout = \"300s\"\n\
         [server.intercept]\ncert = \"{d}/i.crt\"\nkey = \"{d}/i.key\"\n[log]\nlevel = \"warn\"\naccess = false\n\
         [secrets.k]\nvalue = \"bench-key-0123456789abcdef\"\n[[routes]]\nname = \"vendor\"\nhost = \"{HOST}\"\n\
         upstream = \"http://{upstream}\"\ninject = {{ header = \"X-Api-Key\" }}\nsecret = \"k\"\nallow = [\"127.0.0.1/32\"]\n",
        d = d.display()
    );
    std::fs::write(d.join("keygate.toml"), config).unwrap();
    let bin = env!("CARGO_BIN_EXE_keygate");
    let config_path = d.join("keygate.toml");
    let pinned = Command::new("taskset").arg("-V").output().is_ok_and(|o| o.status.success());
    let mut command = if pinned { Command::new("taskset") } else { Command::new(bin) };
    if pinned {
        command.args(["-c", "1", bin]);
    }
    let child = command.arg("run").arg("-c").arg(&config_path).spawn().expect("start keygate");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "keygate did not start listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("keygate pid {pid} on {addr}{}", if pinned { ", pinned to CPU 1" } else { "" });
    (Keygate { child, pid, addr, _dir: dir }, ca.pem())
}

/// keygate's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based in stat(5)).
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// A new connection to keygate: plain, or a tunnel to [`HOST`] with TLS inside (no
/// session resumption: every tunnel pays a full handshake, as a new client would).
async fn connection(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> SendRequest<Empty<Bytes>> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    match tls {
        None => handshake(tcp).await,
        Some(config) => {
            let connect = format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n");
            tcp.write_all(connect.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "keygate closed the tunnel");
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&head));
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let stream = connector.connect(ServerName::try_from(HOST).unwrap(), tcp).await.unwrap();
            handshake(stream).await
        }
    }
}

async fn handshake<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: I) -> SendRequest<Empty<Bytes>> {
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>) {
    sender.ready().await.unwrap();
    let req = hyper::Request::get("/v2/ping").header("host", HOST).body(Empty::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
}

/// One bounded run of `mode` with `conns` workers: requests done and their latencies (µs).
async fn run(
    mode: &str,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    conns: usize,
    secs: u64,
) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tunnel = mode.starts_with("tunnel");
    let keepalive = mode.ends_with("keepalive");
    let mut workers = Vec::new();
    for _ in 0..conns {
        let tls = tls.clone();
        workers.push(tokio::spawn(async move {
            let tls = tunnel.then_some(&tls);
            let mut samples = Vec::new();
            let mut sender = if keepalive { Some(connection(addr, tls).await) } else { None };
            while Instant::now() < deadline {
                let started = Instant::now();
                match &mut sender {
                    Some(sender) => get(sender).await,
                    None => get(&mut connection(addr, tls).await).await,
                }
                samples.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let upstream = stub().await;
        let (keygate, ca_pem) = start_keygate(upstream).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let tls = Arc::new(config);
        let tick = clock_ticks_per_second();
        // Warm up both paths (pools, allocator) before anything is measured.
        for mode in MODES {
            run(mode, keygate.addr, &tls, 2, 1).await;
        }
        let mut results: Vec<Vec<Sample>> = MODES.iter().map(|_| Vec::new()).collect();
        for round in 0..args.rounds {
            for k in 0..MODES.len() {
                let i = (k + round) % MODES.len();
                let before = cpu_ticks(keygate.pid);
                let started = Instant::now();
                let mut lat = run(MODES[i], keygate.addr, &tls, args.conns, args.seconds).await;
                let elapsed = started.elapsed().as_secs_f64();
                let cpu = (cpu_ticks(keygate.pid) - before) as f64 / tick;
                lat.sort_unstable();
                let n = lat.len().max(1);
                let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0;
                let s = Sample {
                    rps: lat.len() as f64 / elapsed,
                    p50_ms: pct(0.50),
                    p99_ms: pct(0.99),
                    cpu_us: cpu * 1e6 / n as f64,
                };
                println!(
                    "round {} {:<17} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  keygate CPU {:>6.1} µs/req",
                    round + 1,
                    MODES[i],
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.cpu_us
                );
                results[i].push(s);
            }
        }
        report(&results, &args);
        drop(keygate);
    });
}

fn report(results: &[Vec<Sample>], args: &Args) {
    let med = |i: usize, f: fn(&Sample) -> f64| median(results[i].iter().map(f).collect());
    println!(
        "\n## CONNECT tunnel vs plain HTTP/1.1 ({} rounds x {} s, {} connections; medians)\n",
        args.rounds, args.seconds, args.conns
    );
    println!("| mode | req/s | p50 ms | p99 ms | keygate CPU µs/req |\n|---|---:|---:|---:|---:|");
    for (i, mode) in MODES.iter().enumerate() {
        println!(
            "| `{mode}` | {:.0} | {:.3} | {:.3} | {:.1} |",
            med(i, |s| s.rps),
            med(i, |s| s.p50_ms),
            med(i, |s| s.p99_ms),
            med(i, |s| s.cpu_us)
        );
    }
    // Ratios within each round (tunnel over plain), then the median over rounds.
    let ratio = |t: usize, p: usize, f: fn(&Sample) -> f64| {
        median(results[t].iter().zip(&results[p]).map(|(a, b)| f(a) / f(b).max(f64::MIN_POSITIVE)).collect())
    };
    println!("\n| tunnel / plain | throughput | p50 | keygate CPU per request |\n|---|---:|---:|---:|");
    for (label, t, p) in [("per request (keep-alive)", 1, 0), ("per new connection", 3, 2)] {
        println!(
            "| {label} | {:.2}x | {:.2}x | {:.2}x |",
            ratio(t, p, |s| s.rps),
            ratio(t, p, |s| s.p50_ms),
            ratio(t, p, |s| s.cpu_us)
        );
    }
}
