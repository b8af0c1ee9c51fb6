//! A fault-injecting stub upstream for the hardening suites, plus (in `harness`) the
//! helpers that start keygate in-process against it and talk to keygate over raw
//! sockets.
//!
//! The stub speaks just enough HTTP/1.1 by hand to misbehave on purpose. The first path
//! segment of each request picks what it does:
//!
//! | path | behaviour |
//! |---|---|
//! | anything else | `200`, body `ok`, keep-alive |
//! | `/count` | `200`, body = the number of request body bytes received |
//! | `/hang` | reads the request, never answers |
//! | `/delay/{ms}` | answers `200` after `ms` milliseconds |
//! | `/gate` | answers `200 released` once the test calls [`Stub::release`] |
//! | `/trickle/{n}/{ms}` | `content-length: n`, then one byte every `ms` |
//! | `/stall/{n}` | `content-length: 1000`, `n` bytes, then nothing more |
//! | `/big/{n}` | `n` body bytes as fast as the reader takes them ([`Stub::written`]) |
//! | `/reset-before-headers` | reads the request, then resets the connection |
//! | `/eof-before-headers` | reads the request, then closes cleanly without answering |
//! | `/reset-mid-body` | `content-length: 1000`, 100 bytes, then a reset |
//! | `/bad-status` | a malformed status line |
//! | `/cl-te` | a response with both `Content-Length` and `Transfer-Encoding: chunked` |
//! | `/cr-header` | a response header whose value holds a bare CR |
//! | `/close-after` | `200` without `connection: close`, then closes the idle connection |
//! | `/arm-reset` | `200` keep-alive; the *next* request on that connection is read whole, then the connection is reset |
//!
//! Every request head is recorded ([`Stub::seen`]) as soon as it arrives, and updated as
//! its body comes in, so tests can assert exactly what reached the upstream.
#![allow(dead_code)]

mod harness;
pub mod tls;

pub use harness::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How much of each request body the stub keeps (it counts all of it).
const KEEP_BODY: usize = 64 * 1024;

/// One request as the stub received it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Which accepted connection (0-based) carried it.
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    pub body_len: u64,
    /// The whole body arrived, as framed.
    pub complete: bool,
    /// The peer (keygate) went away while the stub was reading, waiting or writing.
    pub peer_gone: bool,
}

impl Seen {
    /// The values of header `name` (any case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    accepted: AtomicUsize,
    written: AtomicU64,
    handshakes_failed: AtomicUsize,
}

/// A running stub upstream on 127.0.0.1.
pub struct Stub {
    pub addr: SocketAddr,
    state: Arc<State>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The transport under a stub connection: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes the next close send a TCP reset instead of a FIN.
    fn arm_reset(&self);
}

impl Io for TcpStream {
    fn arm_reset(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Io for tokio_rustls::server::TlsStream<TcpStream> {
    fn arm_reset(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

impl Stub {
    /// A plain-HTTP stub.
    pub async fn start() -> Stub {
        Stub::start_with(None).await
    }

    /// A stub that speaks TLS with `config` (handshake failures are counted).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Stub {
        Stub::start_with(Some(config)).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (gate, _) = watch::channel(false);
        let (st, gate_rx) = (state.clone(), gate.subscribe());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let conn = st.accepted.fetch_add(1, Ordering::SeqCst);
                let (st, gate_rx) = (st.clone(), gate_rx.clone());
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, conn, st, gate_rx));
                    }
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        tokio::spawn(async move {
                            match acceptor.accept(stream).await {
                                Ok(stream) => serve(stream, conn, st, gate_rx).await,
                                Err(_) => {
                                    st.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        });
                    }
                }
            }
        });
        Stub { addr, state, gate, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Body bytes written so far by `/big`.
    pub fn written(&self) -> u64 {
        self.state.written.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed.
    pub fn handshakes_failed(&self) -> usize {
        self.state.handshakes_failed.load(Ordering::SeqCst)
    }

    /// Lets every `/gate` request (waiting or future) answer.
    pub fn release(&self) {
        let _ = self.gate.send(true);
    }
}

/// Serves one connection: requests in sequence until the peer closes or a fault ends it.
async fn serve<S: Io>(mut io: S, conn: usize, state: Arc<State>, mut gate: watch::Receiver<bool>) {
    let mut buf = Vec::new();
    let mut armed = false;
    loop {
        let Some(index) = read_request(&mut io, &mut buf, conn, &state).await else { return };
        let seen = state.seen.lock().unwrap()[index].clone();
        if !seen.complete {
            return;
        }
        if armed {
            // A reused connection dies after the request was written to it.
            io.arm_reset();
            return;
        }
        let segments: Vec<&str> = seen.path().trim_start_matches('/').split('/').collect();
        let arg = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let gone = || state.seen.lock().unwrap()[index].peer_gone = true;
        match segments[0] {
            "count" => {
                let body = seen.body_len.to_string();
                if answer(&mut io, "200 OK", body.as_bytes()).await.is_err() {
                    return;
                }
            }
            "hang" => {
                wait_for_close(&mut io).await;
                gone();
                return;
            }
            "delay" => {
                tokio::time::sleep(Duration::from_millis(arg(1))).await;
                if answer(&mut io, "200 OK", b"delayed").await.is_err() {
                    return gone();
                }
            }
            "gate" => {
                let _ = gate.wait_for(|open| *open).await;
                if answer(&mut io, "200 OK", b"released").await.is_err() {
                    return gone();
                }
            }
            "trickle" => {
                let (n, ms) = (arg(1), arg(2));
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
                if io.write_all(head.as_bytes()).await.is_err() {
                    return gone();
                }
                for _ in 0..n {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if io.write_all(b"t").await.is_err() || io.flush().await.is_err() {
                        return gone();
                    }
                }
            }
            "stall" => {
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{}", "s".repeat(arg(1) as usize));
                if io.write_all(head.as_bytes()).await.is_ok() {
                    wait_for_close(&mut io).await;
                }
                return gone();
            }
            "big" => {
                let n = arg(1);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n"
                );
                if io.write_all(head.as_bytes()).await.is_err() {
                    return gone();
                }
                let chunk = vec![b'b'; 64 * 1024];
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    if io.write_all(&chunk[..take]).await.is_err() {
                        return gone();
                    }
                    state.written.fetch_add(take as u64, Ordering::SeqCst);
                    left -= take as u64;
                }
            }
            "reset-before-headers" => {
                io.arm_reset();
                return;
            }
            "eof-before-headers" => {
                let _ = io.shutdown().await;
                return;
            }
            "reset-mid-body" => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{}", "r".repeat(100));
                let _ = io.write_all(head.as_bytes()).await;
                let _ = io.flush().await;
                io.arm_reset();
                return;
            }
            "bad-status" => {
                let _ = io.write_all(b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok").await;
                return;
            }
            "cl-te" => {
                // A smuggling-shaped answer: the two framings disagree about the length.
                let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                let _ = io.write_all(raw).await;
                wait_for_close(&mut io).await;
                return gone();
            }
            "cr-header" => {
                let _ = io
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nx-injected: a\rset-cookie: b\r\ncontent-length: 2\r\n\r\nok",
                    )
                    .await;
                return;
            }
            "close-after" => {
                let _ = answer(&mut io, "200 OK", b"closing").await;
                let _ = io.shutdown().await;
                return;
            }
            "arm-reset" => {
                if answer(&mut io, "200 OK", b"armed").await.is_err() {
                    return;
                }
                armed = true;
            }
            _ => {
                if answer(&mut io, "200 OK", b"ok").await.is_err() {
                    return gone();
                }
            }
        }
    }
}

async fn answer<S: Io>(io: &mut S, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n", body.len());
    io.write_all(head.as_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// Reads (and discards) until the peer closes or errors.
async fn wait_for_close<S: Io>(io: &mut S) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = io.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Reads one request: records its head at once, then its body as it arrives. Returns
/// the index in `state.seen`, or `None` if the connection closed before a whole head.
async fn read_request<S: Io>(io: &mut S, buf: &mut Vec<u8>, conn: usize, state: &State) -> Option<usize> {
    let end = find(io, buf, b"\r\n\r\n").await?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let mut seen = Seen {
        conn,
        method: first.next().unwrap_or("").to_owned(),
        target: first.next().unwrap_or("").to_owned(),
        ..Seen::default()
    };
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            seen.headers.push((n.to_owned(), v.trim().to_owned()));
        }
    }
    let chunked = seen.header_values("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
    let length: u64 = seen.header_values("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
    let index = {
        let mut all = state.seen.lock().unwrap();
        all.push(seen);
        all.len() - 1
    };
    let record = |data: &[u8]| {
        let mut all = state.seen.lock().unwrap();
        let s = &mut all[index];
        s.body_len += data.len() as u64;
        let room = KEEP_BODY.saturating_sub(s.body.len());
        s.body.extend_from_slice(&data[..data.len().min(room)]);
    };
    let complete = if chunked {
        read_chunked(io, buf, &record).await
    } else {
        let mut left = length;
        loop {
            let take = (buf.len() as u64).min(left) as usize;
            record(&buf[..take]);
            buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                break true;
            }
            if !fill(io, buf).await {
                break false;
            }
        }
    };
    let mut all = state.seen.lock().unwrap();
    all[index].complete = complete;
    all[index].peer_gone = !complete;
    Some(index)
}

/// Decodes a chunked body (no extensions or trailers: keygate's client sends none).
async fn read_chunked<S: Io>(io: &mut S, buf: &mut Vec<u8>, record: &impl Fn(&[u8])) -> bool {
    loop {
        let Some(line_end) = find(io, buf, b"\r\n").await else { return false };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let Ok(size) = u64::from_str_radix(size_text.trim(), 16) else { return false };
        buf.drain(..line_end + 2);
        let mut left = size + 2;
        while left > 0 {
            if buf.is_empty() && !fill(io, buf).await {
                return false;
            }
            let take = (buf.len() as u64).min(left) as usize;
            let data_part = take.min(left.saturating_sub(2) as usize);
            record(&buf[..data_part]);
            buf.drain(..take);
            left -= take as u64;
        }
        if size == 0 {
            return true;
        }
    }
}

/// Reads until `buf` holds `delimiter`; its position, or `None` if the connection ended first.
async fn find<S: Io>(io: &mut S, buf: &mut Vec<u8>, delimiter: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(delimiter.len()).position(|w| w == delimiter) {
            return Some(i);
        }
        if !fill(io, buf).await {
            return None;
        }
    }
}

async fn fill<S: Io>(io: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
