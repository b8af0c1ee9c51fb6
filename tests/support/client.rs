//! Callers: hyper's HTTP/1.1 client for ordinary requests, and a raw socket for
//! byte-exact ones (smuggling, path tricks, pipelining), with a small response parser.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

    /// Every header name and value, for leak scans.
    pub fn dump(&self) -> String {
        let mut out = format!("{}\n", self.status);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        out.push_str(&self.text());
        out
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
    let stream = TcpStream::connect(addr).await.expect("connect");
    send_on(stream, req).await
}

/// Sends one request on a given (connected) stream.
pub async fn send_on(stream: TcpStream, req: Request<Full<Bytes>>) -> Reply {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let fut = async {
        let response = sender.send_request(req).await.expect("send");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        Reply { status: parts.status.as_u16(), headers: parts.headers, body }
    };
    tokio::time::timeout(READ_LIMIT * 3, fut).await.expect("response in time")
}

pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, request(Method::GET, target, headers, b"")).await
}

pub async fn post(addr: SocketAddr, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    send(addr, request(Method::POST, target, headers, body)).await
}

/// A raw connection: write exact bytes, parse responses one by one.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).await.expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream, buf: Vec::new(), eof: false }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; false at EOF or on a reset; panics after `limit` of silence.
    async fn fill(&mut self, limit: Duration) -> bool {
        match self.try_fill(limit).await {
            Some(more) => more,
            None => panic!("no bytes from keygate within {limit:?}; have {:?}", self.peek()),
        }
    }

    /// Like `fill`, but None after `limit` of silence.
    async fn try_fill(&mut self, limit: Duration) -> Option<bool> {
        if self.eof {
            return Some(false);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Err(_) => None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                Some(false)
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
        }
    }

    /// Every response until keygate closes the connection or stays quiet for `quiet`;
    /// the flag says whether it closed.
    pub async fn responses_until_close(&mut self, quiet: Duration) -> (Vec<Reply>, bool) {
        let mut replies = Vec::new();
        loop {
            if self.buf.is_empty() {
                match self.try_fill(quiet).await {
                    None => return (replies, false),
                    Some(false) => return (replies, true),
                    Some(true) => {}
                }
            }
            match self.response().await {
                Some(reply) => replies.push(reply),
                None => return (replies, true),
            }
        }
    }

    fn peek(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next response, or None when the connection closed before one began.
    pub async fn response(&mut self) -> Option<Reply> {
        self.response_within(READ_LIMIT).await
    }

    pub async fn response_within(&mut self, limit: Duration) -> Option<Reply> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill(limit).await {
                assert!(self.buf.is_empty(), "connection closed mid-head: {:?}", self.peek());
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = HeaderMap::new();
        for line in lines {
            let (n, v) = line.split_once(':').unwrap_or_else(|| panic!("bad header {line:?}"));
            headers.append(
                HeaderName::from_bytes(n.trim().as_bytes()).expect("name"),
                HeaderValue::from_str(v.trim()).expect("value"),
            );
        }
        let body = if status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len.to_str().ok().and_then(|s| s.parse().ok()).expect("content-length");
            while self.buf.len() < len {
                assert!(self.fill(limit).await, "closed mid-body");
            }
            self.buf.drain(..len).collect()
        } else if headers.get("transfer-encoding").is_some_and(|v| v.as_bytes().ends_with(b"chunked")) {
            self.chunked(limit).await
        } else {
            while self.fill(limit).await {}
            std::mem::take(&mut self.buf)
        };
        Some(Reply { status, headers, body })
    }

    async fn chunked(&mut self, limit: Duration) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                assert!(self.fill(limit).await, "closed mid-chunk");
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        self.buf.drain(..i + 2);
                        if i == 0 {
                            return body;
                        }
                        continue;
                    }
                    assert!(self.fill(limit).await, "closed in trailers");
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill(limit).await, "closed mid-chunk");
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// True when keygate closes the connection (EOF or reset) within `limit` without
    /// sending another byte.
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(_) => false,
        }
    }

    /// True when nothing arrives within `limit` (the connection stays open and quiet).
    pub async fn quiet_for(&mut self, limit: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Err(_) => true,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
        }
    }
}

/// One raw request, one response; the connection is closed afterwards.
pub async fn raw_once(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut raw = Raw::connect(addr).await;
    raw.send(bytes).await;
    raw.response().await.unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(bytes)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
