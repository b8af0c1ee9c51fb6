//! The HTTP test client: requests built in one place and sent through hyper, on a new
//! connection or on a kept-alive [`Conn`] (HTTP/1.1 or HTTP/2, over TCP or TLS, from any
//! loopback source address), and the [`Reply`] a caller saw with the assertions made on
//! it. Byte-exact exchanges are in [`super::raw`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::keys::{EXPORT_KEY, GENERIC_KEY, IMPORT_KEY, QUERY_SENTINEL, SECRET};

/// The label of keygate's refusals on `rjmetrics-import` routes (and of the sandbox's
/// import answers).
pub const IMPORT_JSON: &str = "application/vnd.keygate.import+json";

/// How long any one read may take before the test fails instead of hanging.
pub const READ_LIMIT: Duration = Duration::from_secs(10);

/// A response as the caller saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The status and `x-keygate-error` (None when the answer is the upstream's).
    pub fn code(&self) -> (u16, Option<String>) {
        (self.status, self.header("x-keygate-error"))
    }

    /// Every header name and value, and the body, for leak scans.
    pub fn dump(&self) -> String {
        let mut out = format!("{}\n", self.status);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        out.push_str(&self.text());
        out
    }

    /// The echo upstream's view ([`super::upstream::echo`]): `{"path", "key"}`.
    pub fn echo(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text());
        self.json()
    }

    /// The credential the echo upstream received ("" when the answer is not a 200).
    pub fn key(&self) -> String {
        if self.status != 200 {
            return String::new();
        }
        self.echo()["key"].as_str().unwrap_or_default().to_owned()
    }

    /// Asserts this is keygate's own refusal: status, `x-keygate-error`, and a body in
    /// one of keygate's two shapes, checked exactly by its label: `application/json`
    /// holds exactly `{"error": code, "message": <non-empty sentence>}`; the import
    /// routes' [`IMPORT_JSON`] holds exactly `{"code": status, "message", "reasons":
    /// [<non-empty sentence>], "error": code}`. No sentinel key or caller query in the
    /// body or any header.
    #[track_caller]
    pub fn assert_refusal(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status for {code}; body: {}", self.text());
        assert_eq!(self.header("x-keygate-error").as_deref(), Some(code), "x-keygate-error");
        let body = self.json();
        let object = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(body["error"], code);
        let sentence = match self.header("content-type").as_deref() {
            Some("application/json") => {
                assert_eq!(keys, ["error", "message"], "body shape: {body}");
                body["message"].clone()
            }
            Some(IMPORT_JSON) => {
                assert_eq!(keys, ["code", "error", "message", "reasons"], "body shape: {body}");
                assert_eq!(body["code"], status, "{body}");
                assert_eq!(body["reasons"].as_array().map(Vec::len), Some(1), "{body}");
                body["reasons"][0].clone()
            }
            other => {
                panic!("keygate's refusals are labelled application/json or {IMPORT_JSON}, not {other:?}")
            }
        };
        assert!(!sentence.as_str().expect("a sentence").is_empty());
        let sentinels = [QUERY_SENTINEL, SECRET, IMPORT_KEY, EXPORT_KEY, GENERIC_KEY];
        let text = self.text();
        for sentinel in sentinels {
            assert!(!text.contains(sentinel), "{sentinel:?} leaked into a refusal: {text}");
        }
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!sentinels.iter().any(|s| value.contains(s)), "leaked into {name}: {value}");
        }
    }
}

/// Builds a request; `target` is origin-form (`/path?query`).
pub fn request(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(target).header("host", "keygate.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::copy_from_slice(body))).expect("request")
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    send_on(TcpStream::connect(addr).await.expect("connect"), req).await
}

/// Sends one request on a given (connected) stream.
pub async fn send_on<I>(io: I, req: Request<Full<Bytes>>) -> Reply
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn::over(io).await.unwrap_or_else(|e| panic!("{e}"));
    conn.send(req).await.unwrap_or_else(|e| panic!("{e}"))
}

pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, request(Method::GET, target, headers, b"")).await
}

pub async fn post(addr: SocketAddr, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    send(addr, request(Method::POST, target, headers, body)).await
}

/// One GET from a client socket bound to `from` (any 127.0.0.0/8 address, or ::1).
pub async fn get_from(from: IpAddr, to: SocketAddr, target: &str) -> Reply {
    send_from(from, to, request(Method::GET, target, &[], b"")).await
}

/// One request from a client socket bound to `from`.
pub async fn send_from(from: IpAddr, to: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let socket = match from {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    send_on(socket.connect(to).await.expect("connect"), req).await
}

enum Sender<B> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>),
}

/// A kept-alive client connection for many requests; failures are `Err`, so load loops
/// can count them.
pub struct Conn<B = Full<Bytes>> {
    sender: Sender<B>,
    /// Where to reconnect when the connection breaks (TCP connections only).
    addr: Option<SocketAddr>,
    /// The task driving the connection.
    task: tokio::task::JoinHandle<()>,
}

impl<B> Conn<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// An HTTP/1.1 connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Conn<B> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn { addr: Some(addr), ..Conn::over(stream).await.unwrap_or_else(|e| panic!("{e}")) }
    }

    /// An HTTP/2 connection (prior knowledge) to `addr`.
    pub async fn open_h2(addr: SocketAddr) -> Conn<B> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn { addr: Some(addr), ..Conn::over_h2(stream).await.unwrap_or_else(|e| panic!("{e}")) }
    }

    /// HTTP/1.1 over a connected stream (TCP, TLS).
    pub async fn over<I>(io: I) -> Result<Conn<B>, String>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender: Sender::Http1(sender), addr: None, task })
    }

    /// HTTP/2 over a connected stream (TCP with prior knowledge, TLS after ALPN `h2`).
    pub async fn over_h2<I>(io: I) -> Result<Conn<B>, String>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender: Sender::Http2(sender), addr: None, task })
    }

    /// Sends `req` and returns the response head with its body still to read.
    pub async fn respond(&mut self, req: Request<B>) -> Result<Response<Incoming>, String> {
        let sent = async {
            match &mut self.sender {
                Sender::Http1(sender) => {
                    sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
                    sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))
                }
                Sender::Http2(sender) => {
                    sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
                    sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))
                }
            }
        };
        tokio::time::timeout(READ_LIMIT * 3, sent).await.map_err(|_| "no response in time".to_owned())?
    }

    /// Drops the connection at once, as a caller that walks away (even mid-body).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(&mut self, req: Request<B>) -> Result<Reply, String> {
        let response = self.respond(req).await?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(READ_LIMIT * 3, body.collect())
            .await
            .map_err(|_| "no whole body in time".to_owned())?
            .map_err(|e| format!("body failed: {e}"))?;
        Ok(Reply { status: parts.status.as_u16(), headers: parts.headers, body: body.to_bytes().to_vec() })
    }
}

impl Conn {
    /// One GET; an error is a failed request.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(request(Method::GET, path, &[], b"")).await
    }

    /// One GET of a load loop: the reply if it is a 200; otherwise the problem is noted
    /// in `problems` and, if the connection broke, a new one replaces it.
    pub async fn get_ok(&mut self, path: &str, problems: &mut Vec<String>) -> Option<Reply> {
        match self.get(path).await {
            Ok(r) if r.status == 200 => Some(r),
            Ok(r) => {
                problems.push(format!("status {}: {}", r.status, r.text()));
                None
            }
            Err(e) => {
                problems.push(e);
                *self = Conn::open(self.addr.expect("a TCP connection to reopen")).await;
                None
            }
        }
    }
}
