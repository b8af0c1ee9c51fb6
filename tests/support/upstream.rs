//! A configurable fake upstream (plain HTTP or HTTPS) that records exactly what it
//! received — method, path, raw query, every header value, body length — and answers
//! as the test's handler says: a fixed reply, a generated stream of any length, or
//! never. Also: the deterministic byte pattern used by the streaming tests, generated
//! and verified on the fly without holding the whole body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query, exactly as received.
    pub query: Option<String>,
    /// Lowercased names; one entry per value, duplicates kept, in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body_len: u64,
    /// True when the body was exactly the [`PatternBody`] byte pattern.
    pub body_is_pattern: bool,
    /// False when the body ended in an error (cut, broken framing).
    pub body_complete: bool,
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

    /// Every header name and value, one per line, for leak and presence scans.
    pub fn dump(&self) -> String {
        let mut out = format!("{} {}?{}\n", self.method, self.path, self.query.as_deref().unwrap_or(""));
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v)));
        }
        out
    }
}

/// What the fake upstream answers.
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

/// A running fake upstream; stops when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    tls: bool,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Plain HTTP.
    pub async fn start(handler: Handler) -> FakeUpstream {
        FakeUpstream::launch(handler, None).await
    }

    /// HTTPS with the given server config (see [`super::tls::Ca::server_config`]).
    pub async fn start_tls(handler: Handler, config: Arc<rustls::ServerConfig>) -> FakeUpstream {
        FakeUpstream::launch(handler, Some(TlsAcceptor::from(config))).await
    }

    async fn launch(handler: Handler, tls: Option<TlsAcceptor>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let is_tls = tls.is_some();
        let rec = recorded.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(stream, tls.clone(), handler.clone(), rec.clone()));
            }
        });
        FakeUpstream { addr, tls: is_tls, recorded, task }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("lock").clone()
    }
}

async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    rec: Arc<Mutex<Vec<Recorded>>>,
) {
    let service = service_fn(move |req| handle(req, handler.clone(), rec.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    match tls {
        None => {
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        }
        Some(acceptor) => {
            if let Ok(tls) = acceptor.accept(stream).await {
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            }
        }
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    handler: Handler,
    rec: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut verifier = Verifier::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    verifier.feed(data);
                }
            }
            Err(_) => {
                verifier.broken = true;
                break;
            }
        }
    }
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        body_len: verifier.offset,
        body_is_pattern: verifier.intact(),
        body_complete: !verifier.broken,
    };
    let answer = handler(&recorded);
    rec.lock().expect("lock").push(recorded);
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

/// An upstream that accepts connections and never reads or answers.
pub async fn silent_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

// ---- the streaming pattern ----

/// Pattern chunks are this long; each starts with its index (8 bytes LE) so a lost,
/// repeated or reordered chunk is caught.
pub const CHUNK: usize = 64 * 1024;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// The pattern byte expected at `offset` within chunk `index` (slow path for the
/// first 8 bytes of each chunk).
fn header_byte(index: u64, pos: usize) -> u8 {
    index.to_le_bytes()[pos]
}

/// A body of `len` pattern bytes, generated chunk by chunk as it is polled.
pub struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> PatternBody {
        PatternBody { sent: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let index = self.sent / CHUNK as u64;
        let n = (self.len - self.sent).min(CHUNK as u64) as usize;
        let mut chunk = block()[..n].to_vec();
        let head = n.min(8);
        chunk[..head].copy_from_slice(&index.to_le_bytes()[..head]);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// Checks bytes against the pattern as they arrive, counting them.
#[derive(Debug, Default)]
pub struct Verifier {
    pub offset: u64,
    pub first_mismatch: Option<u64>,
    pub broken: bool,
}

impl Verifier {
    pub fn feed(&mut self, mut data: &[u8]) {
        let block = block();
        while !data.is_empty() {
            let index = self.offset / CHUNK as u64;
            let pos = (self.offset % CHUNK as u64) as usize;
            let n = data.len().min(CHUNK - pos);
            let (now, rest) = data.split_at(n);
            if self.first_mismatch.is_none() {
                let ok = now
                    .iter()
                    .enumerate()
                    .take(8usize.saturating_sub(pos))
                    .all(|(i, b)| *b == header_byte(index, pos + i));
                let skip = 8usize.saturating_sub(pos).min(n);
                if !ok || now[skip..] != block[pos + skip..pos + n] {
                    self.first_mismatch = Some(self.offset);
                }
            }
            self.offset += n as u64;
            data = rest;
        }
    }

    /// True when every byte so far matched and the body was not cut.
    pub fn intact(&self) -> bool {
        self.first_mismatch.is_none() && !self.broken
    }
}

/// The resident set size of this test process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
