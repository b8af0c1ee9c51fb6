//! The one fake upstream: it listens on 127.0.0.1:0 (plain HTTP or HTTPS), records
//! exactly what it received — method, path, raw query, every header value, the body (its
//! length, its first 64 KiB, whether it was the streaming pattern, whether it ended
//! whole) — and answers the way the test picks:
//!
//! - [`FakeUpstream::start`]: served by hyper (HTTP/1.1 and h2); a [`Handler`] gives the
//!   [`Answer`] to each request: a fixed reply, a generated stream of any length, or
//!   never. [`ok`], [`status`] and [`echo`] are the common handlers.
//! - [`FakeUpstream::faults`]: HTTP/1.1 written by hand so it can misbehave on purpose;
//!   the first path segment picks the fault (the table is in [`faults`]).
//! - [`FakeUpstream::trailers`]: a chunked answer with trailers nobody asked for.
//! - [`FakeUpstream::silent`]: accepts connections and never reads or answers.
//!
//! Also: the deterministic byte [`pattern`] the streaming tests send and verify,
//! [`closed_port`], an address where nothing listens, [`FakeUpstream::go_down`] and
//! [`FakeUpstream::start_at`] to take an upstream away and bring it back on the same
//! address, and the [`keyed`] BI upstream that accepts a changeable set of keys.

pub mod faults;
pub mod keyed;
pub mod pattern;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use pattern::{PatternBody, Verifier};

/// How much of each request body is kept (all of it is counted).
const KEEP_BODY: usize = 64 * 1024;

/// One request as the fake upstream received it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Which accepted connection (0-based) carried it.
    pub conn: usize,
    pub method: String,
    pub path: String,
    /// The raw query, exactly as received.
    pub query: Option<String>,
    /// Lowercased names; one entry per value, duplicates kept, in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    pub body_len: u64,
    /// True when the body was exactly the [`PatternBody`] byte pattern.
    pub body_is_pattern: bool,
    /// False when the body ended in an error (cut, broken framing).
    pub body_complete: bool,
    /// The peer (keygate) went away while a fault was reading, waiting or writing.
    pub peer_gone: bool,
}

impl Recorded {
    /// Every value of `name`, as text.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The request target: the path, then `?` and the query when there was one.
    pub fn target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// Every header name and value, one per line, for leak and presence scans.
    pub fn dump(&self) -> String {
        let mut out = format!("{} {}?{}\n", self.method, self.path, self.query.as_deref().unwrap_or(""));
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v)));
        }
        out
    }

    fn keep(&mut self, data: &[u8], verifier: &mut Verifier) {
        verifier.feed(data);
        self.body_len += data.len() as u64;
        let room = KEEP_BODY.saturating_sub(self.body.len());
        self.body.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// What the hyper-served fake upstream answers.
pub enum Answer {
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// 200 with `len` bytes of the pattern, generated as it is sent.
    Stream {
        len: u64,
    },
    /// Never answers.
    Hang,
}

/// A small fixed answer.
pub fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
    Answer::Reply {
        status,
        headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
        body: body.as_bytes().to_vec(),
    }
}

/// Picks the answer to each request, after its body was read whole.
pub type Handler = Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;

/// Answers 200 `{"ok":true,"body_len":N,"pattern":B}`.
pub fn ok() -> Handler {
    Arc::new(|r: &Recorded| {
        let body = serde_json::json!({"ok": true, "body_len": r.body_len, "pattern": r.body_is_pattern});
        reply(200, &[("content-type", "application/json")], &body.to_string())
    })
}

/// Answers `status` with a small JSON body to everything.
pub fn status(status: u16) -> Handler {
    Arc::new(move |_: &Recorded| reply(status, &[("content-type", "application/json")], "{\"ok\":true}"))
}

/// Answers 200 `{"path", "key"}` to everything: the path it was asked for and the
/// `header` (the credential) it received.
pub fn echo(header: &'static str) -> Handler {
    Arc::new(move |r: &Recorded| {
        let key = r.header(header).into_iter().next().unwrap_or_default();
        reply(200, &[], &serde_json::json!({"path": r.path, "key": key}).to_string())
    })
}

/// How a fake upstream speaks.
#[derive(Clone)]
enum Speaks {
    Http(Handler),
    Faults,
    Trailers { body: &'static str, trailers: String },
    Silent,
}

/// What every connection of one fake upstream shares.
pub(super) struct State {
    recorded: Mutex<Vec<Recorded>>,
    accepted: AtomicUsize,
    written: AtomicU64,
    handshakes_failed: AtomicUsize,
    gate: watch::Sender<bool>,
    /// Every connection's task, so that [`FakeUpstream::go_down`] can end them.
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A running fake upstream; stops accepting when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Plain HTTP served by hyper, answering as `handler` says.
    pub async fn start(handler: Handler) -> FakeUpstream {
        FakeUpstream::launch(Speaks::Http(handler), None).await
    }

    /// Plain HTTP served by hyper on `addr` (one an upstream that went down left free).
    pub async fn start_at(addr: SocketAddr, handler: Handler) -> FakeUpstream {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr} again: {e}"));
        FakeUpstream::serve(listener, Speaks::Http(handler), None)
    }

    /// Stops accepting and ends every open connection at once, as a crashed upstream:
    /// connecting is refused and pooled connections are closed.
    pub fn go_down(&self) {
        self.task.abort();
        for conn in self.state.conns.lock().expect("lock").drain(..) {
            conn.abort();
        }
    }

    /// HTTPS with the given server config (see [`super::tls`]), answering as `handler` says.
    pub async fn start_tls(handler: Handler, config: Arc<rustls::ServerConfig>) -> FakeUpstream {
        FakeUpstream::launch(Speaks::Http(handler), Some(config)).await
    }

    /// The fault-injecting HTTP/1.1 upstream (see [`faults`]).
    pub async fn faults() -> FakeUpstream {
        FakeUpstream::launch(Speaks::Faults, None).await
    }

    /// The fault-injecting upstream over TLS with `config` (handshake failures are counted).
    pub async fn faults_tls(config: Arc<rustls::ServerConfig>) -> FakeUpstream {
        FakeUpstream::launch(Speaks::Faults, Some(config)).await
    }

    /// An upstream that answers each connection once with a chunked `body` and the
    /// given trailers, then closes it: 401 for a path containing `/fail`, else 200.
    pub async fn trailers(body: &'static str, trailers: Vec<(String, String)>) -> FakeUpstream {
        let trailers = trailers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
        FakeUpstream::launch(Speaks::Trailers { body, trailers }, None).await
    }

    /// An upstream that accepts connections and never reads or answers.
    pub async fn silent() -> FakeUpstream {
        FakeUpstream::launch(Speaks::Silent, None).await
    }

    async fn launch(speaks: Speaks, tls: Option<Arc<rustls::ServerConfig>>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        FakeUpstream::serve(listener, speaks, tls)
    }

    fn serve(listener: TcpListener, speaks: Speaks, tls: Option<Arc<rustls::ServerConfig>>) -> FakeUpstream {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            recorded: Mutex::default(),
            accepted: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            handshakes_failed: AtomicUsize::new(0),
            gate: watch::channel(false).0,
            conns: Mutex::default(),
        });
        let (is_tls, st) = (tls.is_some(), state.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let conn = st.accepted.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(accept(stream, conn, tls.clone(), speaks.clone(), st.clone()));
                let mut conns = st.conns.lock().expect("lock");
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        });
        FakeUpstream { addr, tls: is_tls, state, task }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().expect("lock").clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Body bytes written so far by the `/big` fault.
    pub fn written(&self) -> u64 {
        self.state.written.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed.
    pub fn handshakes_failed(&self) -> usize {
        self.state.handshakes_failed.load(Ordering::SeqCst)
    }

    /// Lets every `/gate` fault request (waiting or future) answer.
    pub fn release(&self) {
        let _ = self.state.gate.send(true);
    }
}

/// The transport under a connection: plain TCP or TLS over TCP.
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

async fn accept(
    stream: TcpStream,
    conn: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    speaks: Speaks,
    state: Arc<State>,
) {
    match tls {
        None => speak(stream, conn, speaks, state).await,
        Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
            Ok(stream) => speak(stream, conn, speaks, state).await,
            Err(_) => {
                state.handshakes_failed.fetch_add(1, Ordering::SeqCst);
            }
        },
    }
}

async fn speak<S: Io>(io: S, conn: usize, speaks: Speaks, state: Arc<State>) {
    match speaks {
        Speaks::Http(handler) => {
            let service = service_fn(move |req| handle(req, conn, handler.clone(), state.clone()));
            let _ =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service).await;
        }
        Speaks::Faults => faults::serve(io, conn, state).await,
        Speaks::Trailers { body, trailers } => faults::serve_trailers(io, conn, state, body, &trailers).await,
        Speaks::Silent => {
            let _held = io;
            std::future::pending::<()>().await;
        }
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    conn: usize,
    handler: Handler,
    state: Arc<State>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut recorded = Recorded {
        conn,
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        body_complete: true,
        ..Recorded::default()
    };
    let mut verifier = Verifier::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    recorded.keep(data, &mut verifier);
                }
            }
            Err(_) => {
                verifier.broken = true;
                recorded.body_complete = false;
                break;
            }
        }
    }
    recorded.body_is_pattern = verifier.intact();
    let answer = handler(&recorded);
    state.recorded.lock().expect("lock").push(recorded);
    let response = match answer {
        Answer::Hang => std::future::pending().await,
        Answer::Stream { len } => {
            let mut r = Response::new(PatternBody::new(len).boxed());
            r.headers_mut()
                .insert("content-type", http::HeaderValue::from_static("application/octet-stream"));
            r
        }
        Answer::Reply { status, headers, body } => {
            let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            for (n, v) in headers {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(&v).expect("value"),
                );
            }
            r
        }
    };
    Ok(response)
}

/// A loopback address that nothing listens on (bound, read, released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}
