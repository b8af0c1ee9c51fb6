//! Writing an answer for keygate's HTTP/1.1 server: the head as hyper writes it
//! (lower-case names, a `date` unless the answer has one), framed by `Content-Length`
//! when the length is known and `chunked` otherwise, and the body as it comes. The head
//! and a body that is ready at once leave in one write.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header;
use http::response::Parts;
use http::{Method, StatusCode};
use hyper::ext::ReasonPhrase;
use tokio::net::tcp::OwnedWriteHalf;

use crate::secret::Wiped;

/// A body frame this small is copied next to the head or its chunk framing so that
/// they leave in one write; larger ones are written from where they are.
const COPY_LIMIT: usize = 16 * 1024;

/// How an answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body may follow (`HEAD`, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// Writes the status line and headers of `parts` into `out`, and says how the body is
/// framed and whether the connection closes after it. `length` is the body's exact
/// length when it is known; `close` (or a `Connection: close` of the answer's own) adds
/// `connection: close`. One pass over the headers: the answer's `Content-Length`, `Date`
/// and `Connection` are noted as they go by, not looked up.
pub(super) fn head(
    out: &mut Vec<u8>,
    parts: &Parts,
    method: &Method,
    length: Option<u64>,
    mut close: bool,
) -> (Framing, bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // The answer's own `Content-Length` counts only when it is one line.
    let (mut lengths, mut declared) = (0, None);
    let mut dated = false;
    for (name, value) in &parts.headers {
        // Framing and connection management are this server's to write.
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            declared = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            continue;
        }
        if name == header::CONNECTION {
            close |= crate::rewrite::has_connection_token(value, b"close");
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        dated |= name == header::DATE;
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let declared = if lengths == 1 { declared } else { None };
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let length = declared.or(length);
    let framing = if bodiless || status == StatusCode::NOT_MODIFIED || method == Method::HEAD {
        Framing::None
    } else {
        length.map_or(Framing::Chunked, Framing::Length)
    };
    match framing {
        Framing::Length(n) => line(out, b"content-length", itoa(n, &mut [0; 20])),
        Framing::Chunked => line(out, b"transfer-encoding", b"chunked"),
        // What the body would have been: hyper keeps a known length on HEAD and 304.
        Framing::None if !bodiless => {
            if let Some(n) = length {
                line(out, b"content-length", itoa(n, &mut [0; 20]));
            }
        }
        Framing::None => {}
    }
    if !dated {
        DATE.with(|date| line(out, b"date", date.borrow_mut().now()));
    }
    if close {
        line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// Where a head is written: a plain buffer, or one wiped after use when it holds a key
/// ([`Wiped`], keygate's HTTP/1.1 client's).
pub(crate) trait HeadBuf {
    fn put(&mut self, bytes: &[u8]);
}

impl HeadBuf for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl HeadBuf for Wiped {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

pub(crate) fn line(out: &mut impl HeadBuf, name: &[u8], value: &[u8]) {
    out.put(name);
    out.put(b": ");
    out.put(value);
    out.put(b"\r\n");
}

pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Adds one body frame to what is about to be written: copied into `out` when small,
/// else returned to be written after it. Chunked frames get their size line and CRLF.
pub(super) fn frame(out: &mut Vec<u8>, framing: Framing, data: Bytes) -> Option<Bytes> {
    if framing == Framing::Chunked {
        if data.is_empty() {
            return None;
        }
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    }
    let rest = if data.len() <= COPY_LIMIT {
        out.extend_from_slice(&data);
        None
    } else {
        Some(data)
    };
    if framing == Framing::Chunked && rest.is_none() {
        out.extend_from_slice(b"\r\n");
    }
    rest
}

/// The end of a chunked body.
pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes `first` then `then` (and a chunk's CRLF after `then` when `chunked`) to the
/// caller, in as few writes as the socket takes.
pub(super) async fn all(
    stream: &OwnedWriteHalf,
    first: &[u8],
    then: Option<&[u8]>,
    chunked: bool,
) -> io::Result<()> {
    let tail: &[u8] = if chunked && then.is_some() { b"\r\n" } else { b"" };
    let mut parts = [first, then.unwrap_or(b""), tail];
    let mut at = 0;
    while at < parts.len() {
        if parts[at].is_empty() {
            at += 1;
            continue;
        }
        let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1]), IoSlice::new(parts[2])];
        let written = loop {
            stream.writable().await?;
            match stream.try_write_vectored(&slices[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        let mut left = written;
        while left > 0 {
            let take = left.min(parts[at].len());
            parts[at] = &parts[at][take..];
            left -= take;
            if parts[at].is_empty() {
                at += 1;
            }
        }
    }
    Ok(())
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: u64::MAX, text: [0; 29] }) };
}

/// The `date` value, formatted once a second per thread.
struct Date {
    second: u64,
    text: [u8; 29],
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn encoded(
        response: Response<()>,
        method: Method,
        length: Option<u64>,
        close: bool,
    ) -> (String, Framing) {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let (framing, closes) = head(&mut out, &parts, &method, length, close);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(closes, text.contains("\r\nconnection: close\r\n"), "{text}");
        (text, framing)
    }

    fn lines(text: &str) -> Vec<&str> {
        text.split("\r\n").filter(|l| !l.starts_with("date: ")).collect()
    }

    #[test]
    fn a_known_length_is_a_content_length_and_an_unknown_one_is_chunked() {
        let response = Response::builder().status(200).header("x-a", "1").body(()).unwrap();
        let (text, framing) = encoded(response, Method::GET, Some(11), false);
        assert_eq!(framing, Framing::Length(11));
        assert_eq!(lines(&text), ["HTTP/1.1 200 OK", "x-a: 1", "content-length: 11", "", ""]);
        assert!(text.contains("\r\ndate: "), "{text}");

        let response = Response::builder().status(404).body(()).unwrap();
        let (text, framing) = encoded(response, Method::GET, None, true);
        assert_eq!(framing, Framing::Chunked);
        assert_eq!(
            lines(&text),
            ["HTTP/1.1 404 Not Found", "transfer-encoding: chunked", "connection: close", "", ""]
        );
    }

    #[test]
    fn framing_headers_of_the_answer_are_replaced() {
        let response = Response::builder()
            .status(200)
            .header("content-length", "5")
            .header("transfer-encoding", "chunked")
            .header("connection", "keep-alive")
            .header("date", "Tue, 01 Dec 2026 00:00:00 GMT")
            .body(())
            .unwrap();
        let (text, framing) = encoded(response, Method::GET, None, false);
        assert_eq!(framing, Framing::Length(5));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
        );
    }

    #[test]
    fn bodiless_answers_carry_no_body_framing() {
        let (text, framing) =
            encoded(Response::builder().status(204).body(()).unwrap(), Method::GET, Some(0), false);
        assert_eq!(framing, Framing::None);
        assert_eq!(lines(&text), ["HTTP/1.1 204 No Content", "", ""]);
        let (text, framing) =
            encoded(Response::builder().status(200).body(()).unwrap(), Method::HEAD, Some(7), false);
        assert_eq!(framing, Framing::None);
        assert_eq!(lines(&text), ["HTTP/1.1 200 OK", "content-length: 7", "", ""]);
        let (text, _) = encoded(Response::builder().status(200).body(()).unwrap(), Method::HEAD, None, false);
        assert_eq!(lines(&text), ["HTTP/1.1 200 OK", "", ""]);
    }

    #[test]
    fn a_reason_phrase_extension_is_written() {
        let mut response = Response::builder().status(200).body(()).unwrap();
        response.extensions_mut().insert(ReasonPhrase::from_static(b"Connection established"));
        let (text, _) = encoded(response, Method::GET, Some(0), false);
        assert!(text.starts_with("HTTP/1.1 200 Connection established\r\n"), "{text}");
    }

    #[test]
    fn chunks_are_framed_and_large_frames_left_in_place() {
        let mut out = Vec::new();
        assert_eq!(frame(&mut out, Framing::Chunked, Bytes::from_static(b"hello")), None);
        assert_eq!(out, b"5\r\nhello\r\n");
        out.clear();
        assert_eq!(frame(&mut out, Framing::Chunked, Bytes::new()), None);
        assert!(out.is_empty(), "an empty chunk would end the body");
        let big = Bytes::from(vec![b'x'; COPY_LIMIT + 1]);
        assert_eq!(frame(&mut out, Framing::Chunked, big.clone()), Some(big.clone()));
        assert_eq!(out, format!("{:x}\r\n", COPY_LIMIT + 1).as_bytes());
        out.clear();
        assert_eq!(frame(&mut out, Framing::Length(3), Bytes::from_static(b"abc")), None);
        assert_eq!(out, b"abc");
    }

    #[test]
    fn numbers_and_dates() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
        let text = DATE.with(|d| String::from_utf8(d.borrow_mut().now().to_vec()).unwrap());
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }

    #[test]
    fn an_answer_that_asks_to_close_closes_and_says_so_once() {
        for (value, closes) in [("x, Close", true), ("close", true), ("keep-alive", false), ("closed", false)]
        {
            let response = Response::builder().status(200).header("connection", value).body(()).unwrap();
            let (text, _) = encoded(response, Method::GET, Some(0), false);
            assert_eq!(text.matches("connection").count(), usize::from(closes), "{value}: {text}");
        }
    }

    #[test]
    fn only_one_content_length_line_of_the_answer_counts() {
        for (lines_sent, framing) in [
            (&["5"][..], Framing::Length(5)),
            (&["5", "5"][..], Framing::Chunked),
            (&["x"][..], Framing::Chunked),
        ] {
            let mut response = Response::builder().status(200);
            for value in lines_sent {
                response = response.header("content-length", *value);
            }
            let (text, got) = encoded(response.body(()).unwrap(), Method::GET, None, false);
            assert_eq!(got, framing, "{lines_sent:?}: {text}");
        }
    }
}
