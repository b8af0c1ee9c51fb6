//! Byte-exact exchanges for smuggling, framing, pipelining and timeouts: a [`Raw`]
//! connection that writes exact bytes and parses responses one by one (or reads all
//! until the peer closes), and what came back on it ([`Received`]).

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{READ_LIMIT, Reply};

/// A raw connection: write exact bytes, parse responses one by one.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

/// Everything a raw connection received until the peer closed it or a time limit.
#[derive(Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset) before the limit ran out.
    pub closed: bool,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status codes of every response in the bytes, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = self.text();
        text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect()
    }
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

    /// Everything until the peer closes (EOF or reset) or `limit` passes, starting with
    /// what is already buffered.
    pub async fn read_until_close(&mut self, limit: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + limit;
        let mut bytes = std::mem::take(&mut self.buf);
        if self.eof {
            return Received { bytes, closed: true };
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Received { bytes, closed: false },
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.eof = true;
                    return Received { bytes, closed: true };
                }
                Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// One whole response (head plus its `content-length` body) exactly as sent, as text.
    pub async fn answer_text(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:")?.trim().parse::<usize>().ok()
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + length {
                    let answer: Vec<u8> = self.buf.drain(..end + 4 + length).collect();
                    return String::from_utf8_lossy(&answer).into_owned();
                }
            }
            assert!(self.fill(Duration::from_secs(5)).await, "closed mid-answer: {}", self.peek());
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

/// Writes `bytes` on a new connection, then reads until the server closes or `limit`.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Received {
    let mut raw = Raw::connect(addr).await;
    // The server may answer and close before reading everything; that is not our error.
    let _ = raw.stream.write_all(bytes).await;
    raw.read_until_close(limit).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
