//! keygate's own HTTP/1.1 client, driven in the request's task, for requests whose body
//! is in hand: none, or a known length of at most [`INLINE_BODY`] (every BI `GET`, every
//! checked upsert and batch). Longer or unknown-length bodies go through hyper's client
//! (see [`super::Upstream`]), which writes and reads at once.
//!
//! Why: hyper's client runs each connection as its own task, reached through channels,
//! and its send and dispatch were ≈ 15k of the ≈ 40k instructions keygate spent per
//! request (BENCHMARKS.md, "Round 6"). Here the request's head and body leave in one
//! write, the answer's head is read with httparse (the parser hyper uses, with its
//! settings and limits) into one buffer that becomes the header values, and the body is
//! read from the socket by whoever polls it.
//!
//! What it reads is what hyper's client reads, decided the same way (RFC 9112 §6.3):
//! `1xx` heads skipped (a `101` ends the connection), no body after `HEAD`, `204` or
//! `304`, `chunked` when `Transfer-Encoding` ends with it (extensions ignored, trailers
//! passed on as a trailers frame), else read to the close; `Content-Length` when every
//! value agrees, an error when one does not; `Transfer-Encoding` with `Content-Length`
//! is refused (the shape of response smuggling), as is `Transfer-Encoding` in HTTP/1.0.
//! A sweep of hostile answers checks it against hyper's client (`h1_tests.rs`).
//!
//! A connection goes back to the pool only from [`Body`], when the answer's framing has
//! ended with nothing after it and neither side asked to close; an answer cut, dropped
//! half read or followed by stray bytes closes its connection.

use std::future::Future as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Outbound;
use super::pool::{self, Pool};
use crate::body::{BoxError, ProxyBody};
use crate::error::UpstreamFailure;
use crate::header_names::{Names, Span};
use crate::lazy_timer;
use crate::rewrite::{connection_names, has_connection_token};
use crate::secret::Wiped;
use crate::server::{itoa, line};

/// The longest request body keygate's client sends; longer ones, and bodies of unknown
/// length, go through hyper's client. A body this short fits in the socket's send
/// buffer, so writing it whole before reading cannot wait on an upstream that answers
/// early.
pub(crate) const INLINE_BODY: u64 = 64 * 1024;
/// As many header lines as hyper's client takes.
const MAX_HEADERS: usize = 100;
/// The longest answer head, as hyper's client (its read buffer's limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most trailer bytes, and chunk extension bytes per body, as hyper.
const TRAILER_LIMIT: usize = 16 * 1024;
const EXTENSIONS_LIMIT: usize = 16 * 1024;
/// The read size while a head is awaited, and for body bytes.
const HEAD_READ: usize = 4096;
const BODY_READ: usize = 16 * 1024;
/// The largest read buffer an idle connection keeps.
const KEPT_BUFFER: usize = 8 * 1024;
/// A body at most this long is copied behind the head, for one plain write.
const COPY_LIMIT: usize = 16 * 1024;

/// An upstream connection's stream.
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to an upstream, and the bytes read from it but not yet used.
/// An idle one keeps its read buffer when it is at most [`KEPT_BUFFER`] bytes, so the
/// next answer on it needs no new one (at most [`super::pool::MAX_IDLE`] are idle per
/// upstream).
///
/// Its state lives in one box for as long as the connection does: the connection is
/// moved from the pool, into the answer's body and through every level the answer is
/// returned by, and a pointer is what moves (BENCHMARKS.md, round 15).
pub(crate) struct Conn<I = Io>(Box<ConnState<I>>);

/// What a [`Conn`] holds; its fields are read and written through the `Conn`.
pub(crate) struct ConnState<I> {
    io: I,
    buf: BytesMut,
    /// What times each exchange's wait for its answer; made at the first, then moved
    /// to each next one's deadline (see [`exchange`]).
    timer: Option<Pin<Box<Sleep>>>,
    /// The answers' header names, by line (BENCHMARKS.md, round 10).
    names: Names,
    /// Where each line of the answer head being read lies; kept, so that no array
    /// for the most lines a head may have is cleared for each answer (BENCHMARKS.md, round 15).
    spans: Vec<Span>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> pool::Conn for Conn<I> {
    fn is_closed(&mut self) -> bool {
        Conn::is_closed(self)
    }
}

impl<I> std::ops::Deref for Conn<I> {
    type Target = ConnState<I>;

    fn deref(&self) -> &ConnState<I> {
        &self.0
    }
}

impl<I> std::ops::DerefMut for Conn<I> {
    fn deref_mut(&mut self) -> &mut ConnState<I> {
        &mut self.0
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    pub(crate) fn new(io: I) -> Conn<I> {
        Conn(Box::new(ConnState {
            io,
            buf: BytesMut::new(),
            timer: None,
            names: Names::default(),
            spans: Vec::new(),
        }))
    }

    /// The stream, for hyper's client (an idle connection has nothing buffered).
    pub(crate) fn into_io(self) -> I {
        self.0.io
    }

    /// True when an idle connection can no longer carry a request: the upstream closed
    /// it, broke it, or sent bytes nobody asked for. Looks without waiting: a socket
    /// not known to be readable costs no system call; over TLS, records that carry no
    /// data (a session ticket) are taken in and the connection stays open.
    pub(crate) fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        !matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// Reads what the socket has (at most `want` more bytes) into the buffer; 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < want.min(HEAD_READ) {
            self.buf.reserve(want);
        }
        let ConnState { io, buf, .. } = &mut *self.0;
        pin!(io.read_buf(buf)).poll(cx)
    }
}

/// A request ready to go: its head's bytes (with the body's first bytes behind them,
/// when they were ready at once and short), and the rest of its body.
pub(crate) struct Outgoing {
    /// The head (with the key in it) and a first body frame that is small: wiped when
    /// the request is done with.
    bytes: Wiped,
    /// A first frame too long to copy behind the head.
    first: Bytes,
    /// The rest of the body, and how many bytes the whole must have.
    rest: Option<ProxyBody>,
    length: u64,
    /// Bytes of the body taken so far (those in `bytes` and `first` included).
    taken: u64,
    /// The request is a `HEAD`: its answer has no body.
    head: bool,
}

impl Outgoing {
    /// Encodes `request` as hyper's client would: the request line with the origin-form
    /// target, `host` first, the headers with lower-case names, and `Content-Length`
    /// when the body is not over already; the body must have an exact size (at most
    /// [`INLINE_BODY`]: the caller sees to that). A head not yet built is written from
    /// its rules, line by line ([`UpstreamHead`]). A body frame that is ready at once
    /// goes out with the head.
    pub(crate) fn new(request: Outbound<'_>, host: &HeaderValue) -> Result<Outgoing, UpstreamFailure> {
        let mut bytes = Wiped::with_capacity(256);
        let (method, mut body) = match request {
            Outbound::Built(request) => {
                let (parts, body) = request.into_parts();
                let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                request_line(&mut bytes, &parts.method, host, |out| out.extend_from_slice(target.as_bytes()));
                for (name, value) in &parts.headers {
                    if name != header::HOST {
                        line(&mut bytes, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                (parts.method, body)
            }
            Outbound::Head(head, body) => {
                request_line(&mut bytes, head.method(), host, |out| head.write_target(out));
                // `Host` is never among the lines ([`crate::rewrite::frames_request`]).
                head.for_each_line(|name, value| {
                    line(&mut bytes, name.as_str().as_bytes(), value.as_bytes())
                });
                (head.method().clone(), body)
            }
        };
        let head = method == Method::HEAD;
        if body.is_end_stream() {
            bytes.extend_from_slice(b"\r\n");
            return Ok(Outgoing { bytes, first: Bytes::new(), rest: None, length: 0, taken: 0, head });
        }
        let length = body.size_hint().exact().ok_or(UpstreamFailure::Protocol)?;
        line(&mut bytes, b"content-length", itoa(length, &mut [0; 20]));
        bytes.extend_from_slice(b"\r\n");
        let mut out = Outgoing { bytes, first: Bytes::new(), rest: None, length, taken: 0, head };
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.taken = data.len() as u64;
                    if data.len() <= COPY_LIMIT {
                        out.bytes.extend_from_slice(&data);
                    } else {
                        out.first = data;
                    }
                }
            }
            Some(Some(Err(_))) => return Err(UpstreamFailure::Protocol),
            Some(None) | None => {}
        }
        if out.taken > length {
            return Err(UpstreamFailure::Protocol);
        }
        if !body.is_end_stream() {
            out.rest = Some(body);
        }
        Ok(out)
    }

    /// Writes what is left of the body after the first write, as it comes.
    async fn stream_rest<I: AsyncWrite + Unpin>(&mut self, io: &mut I) -> Result<(), UpstreamFailure> {
        if let Some(mut body) = self.rest.take() {
            while let Some(frame) = body.frame().await {
                // The caller's body failed; its meter says why.
                let frame = frame.map_err(|_| UpstreamFailure::Protocol)?;
                let Ok(data) = frame.into_data() else { continue };
                self.taken += data.len() as u64;
                if self.taken > self.length {
                    return Err(UpstreamFailure::Protocol);
                }
                io.write_all(&data).await.map_err(|e| classify(&e))?;
            }
        }
        if self.taken == self.length { Ok(()) } else { Err(UpstreamFailure::Protocol) }
    }
}

/// `method target HTTP/1.1` (the target written by `target`), then the `host` line.
fn request_line(out: &mut Wiped, method: &Method, host: &HeaderValue, target: impl FnOnce(&mut Wiped)) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    target(out);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    line(out, b"host", host.as_bytes());
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Not a byte of the request was written: it can go on another connection.
    Unsent(UpstreamFailure),
    /// The request (or part of it) went out; it must not be sent again.
    Failed(UpstreamFailure),
}

/// An answer's head, read; its body is still on the connection.
#[derive(Debug)]
pub(crate) struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl Answer {
    /// The response, whose body reads the rest from `conn` and gives `conn` back to
    /// `pool` at its end (when the connection can carry another request).
    pub(crate) fn into_response<I>(self, conn: Conn<I>, pool: Arc<Pool<Conn<I>>>) -> Response<Body<I>> {
        let home = self.keep_alive.then_some(pool);
        let mut body = Body { conn: Some(conn), home, framing: self.framing };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Writes the request and reads the answer's head (skipping `1xx` heads), by
/// `deadline`: past it, the exchange fails as [`UpstreamFailure::Timeout`]. When the
/// first write fails, nothing of `out` was sent and it can go on another connection.
///
/// The connection's one timer times every exchange on it, where a timer per exchange
/// is an insertion into the runtime's timer wheel and a removal from it, with the
/// exchange's future moved into a `Timeout` (BENCHMARKS.md, round 8). It is moved only
/// when a deadline comes sooner ([`lazy_timer`]). An idle connection's timer may still
/// fire and wake the task that last ran an exchange on it, for nothing; a pooled
/// connection lives at most the pool's idle time.
pub(crate) async fn exchange<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<I>,
    out: &mut Outgoing,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let mut timer = match conn.timer.take() {
        Some(mut timer) => {
            lazy_timer::set(timer.as_mut(), deadline);
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    let result = {
        let mut sent = pin!(send_and_read(conn, out));
        std::future::poll_fn(|cx| match sent.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => lazy_timer::poll_until(timer.as_mut(), deadline, cx)
                .map(|()| Err(Failure::Failed(UpstreamFailure::Timeout))),
        })
        .await
    };
    conn.timer = Some(timer);
    result
}

async fn send_and_read<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<I>,
    out: &mut Outgoing,
) -> Result<Answer, Failure> {
    let mut unsent = Buf::chain(&out.bytes[..], &out.first[..]);
    let total = unsent.remaining();
    if let Err(e) = conn.io.write_all_buf(&mut unsent).await {
        let failure = classify(&e);
        return Err(if unsent.remaining() == total {
            Failure::Unsent(failure)
        } else {
            Failure::Failed(failure)
        });
    }
    out.stream_rest(&mut conn.io).await.map_err(Failure::Failed)?;
    conn.io.flush().await.map_err(|e| Failure::Failed(classify(&e)))?;
    loop {
        // Nothing read yet (the usual case right after sending): nothing to parse.
        if !conn.buf.is_empty() {
            let ConnState { buf, names, spans, .. } = &mut *conn.0;
            if let Some(answer) = parse(buf, names, spans, out.head).map_err(Failure::Failed)? {
                return Ok(answer);
            }
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Failure::Failed(UpstreamFailure::Protocol));
        }
        match std::future::poll_fn(|cx| conn.poll_fill(cx, HEAD_READ)).await {
            // Closed before (the rest of) an answer.
            Ok(0) => return Err(Failure::Failed(UpstreamFailure::Protocol)),
            Ok(_) => {}
            Err(e) => return Err(Failure::Failed(classify(&e))),
        }
    }
}

/// Sorts an I/O error of an exchange into a failure kind.
pub(crate) fn classify(error: &io::Error) -> UpstreamFailure {
    if error.kind() == io::ErrorKind::TimedOut {
        return UpstreamFailure::Timeout;
    }
    if carries_rustls_error(error) { UpstreamFailure::Tls } else { UpstreamFailure::Protocol }
}

/// True when `error` wraps a rustls error (as tokio-rustls reports TLS failures).
pub(crate) fn carries_rustls_error(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// The first whole answer head in `buf` that is not a `1xx` (skipped, as hyper skips
/// them), taken off `buf`; `None` while there is none yet. `names` and `spans` are the
/// connection's: the names its last answers had at each line, and room for where the
/// lines lie.
fn parse(
    buf: &mut BytesMut,
    names: &mut Names,
    spans: &mut Vec<Span>,
    head_request: bool,
) -> Result<Option<Answer>, UpstreamFailure> {
    let config = httparse::ParserConfig::default();
    loop {
        // One parse, straight on what came (httparse finds the head's end, as it does
        // for hyper): where each line's name and value lie is noted, and they are cut
        // from the head once it is one shared `Bytes` (BENCHMARKS.md, round 13).
        spans.clear();
        let (len, code, version) = {
            let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let len = match config.parse_response_with_uninit_headers(&mut response, buf, &mut lines) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(UpstreamFailure::Protocol),
            };
            let (Some(code), Some(version)) = (response.code, response.version) else {
                return Err(UpstreamFailure::Protocol);
            };
            let start = buf.as_ptr() as usize;
            spans.extend(
                response.headers.iter().map(|line| Span::of(start, line.name.as_bytes(), line.value)),
            );
            (len, code, version)
        };
        let status = StatusCode::from_u16(code).map_err(|_| UpstreamFailure::Protocol)?;
        if status.is_informational() && code != 101 {
            buf.advance(len);
            continue;
        }
        let head = buf.split_to(len).freeze();
        let version = if version == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut keep_alive = version == Version::HTTP_11;
        let mut close = false;
        let mut framed = Framed::default();
        // Where `Content-Length` frames the body, the body carries it (its exact size
        // hint), and every writer downstream takes it from there: the map would only
        // hold a copy for them to skip (BENCHMARKS.md, round 13). A `HEAD` answer's and
        // a 304's tell the length of a body that is not there, and stay.
        let framed_by_length = !head_request && !matches!(code, 101 | 204 | 304);
        for (at, span) in spans.iter().enumerate() {
            // (httparse's slices are of the head: a span past it would be a bug of its.)
            let (raw, value) = span.within(head.len()).ok_or(UpstreamFailure::Protocol)?;
            let name = names.read(at, &head[raw]).ok_or(UpstreamFailure::Protocol)?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| UpstreamFailure::Protocol)?;
            if name == header::CONNECTION {
                // Once one line asks to close, a later `keep-alive` cannot undo it.
                if close || has_connection_token(&value, b"close") {
                    close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_connection_token(&value, b"keep-alive");
                }
                // Read: the way down drops the line and what it names, and one that
                // names nothing more has no more to say. Left out, it costs neither an
                // insert here nor a removal there (BENCHMARKS.md, round 10).
                if connection_names(&value).next().is_none() {
                    continue;
                }
            } else if name == header::TRANSFER_ENCODING {
                framed.coding(&value);
            } else if name == header::CONTENT_LENGTH {
                framed.length(&value);
                if framed_by_length {
                    continue;
                }
            }
            headers.append(name, value);
        }
        let framing = framing(status, version, &framed, head_request)?;
        let keep_alive = keep_alive && !matches!(framing, Framing::Eof) && code != 101;
        return Ok(Some(Answer { status, version, headers, framing, keep_alive }));
    }
}

/// What an answer's head says of its body's framing, noted line by line as the head is
/// read (no lookups in the header map afterwards).
#[derive(Debug, Default)]
struct Framed {
    /// It has a `Transfer-Encoding` line, and whether the last one ends with `chunked`.
    coded: bool,
    chunked: bool,
    /// `None` without a `Content-Length` line; with some, the length when every value
    /// (lines and comma lists) is the same run of digits, `Some(None)` once one is not.
    length: Option<Option<u64>>,
}

impl Framed {
    fn coding(&mut self, value: &HeaderValue) {
        self.coded = true;
        self.chunked = value
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
    }

    fn length(&mut self, value: &HeaderValue) {
        self.length = Some(match self.length {
            // An earlier value was not a length: no later one makes it one.
            Some(None) => None,
            known => agreed_length(value, known.flatten()),
        });
    }
}

/// `known` (the length the earlier values gave, if any) when every comma-separated
/// value of `line` is the same run of digits as it, `None` otherwise.
fn agreed_length(line: &HeaderValue, mut known: Option<u64>) -> Option<u64> {
    for value in line.as_bytes().split(|&b| b == b',') {
        let value = value.trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
        if known.is_some_and(|l| l != n) {
            return None;
        }
        known = Some(n);
    }
    known
}

/// How the answer's body is framed (RFC 9112 §6.3, as hyper's client reads it).
fn framing(
    status: StatusCode,
    version: Version,
    framed: &Framed,
    head_request: bool,
) -> Result<Framing, UpstreamFailure> {
    if framed.coded && framed.length.is_some() {
        // Refused whatever the status, as keygate always has (see `both_framings`).
        return Err(UpstreamFailure::Protocol);
    }
    if matches!(status.as_u16(), 101 | 204 | 304) || head_request {
        return Ok(Framing::Length(0));
    }
    if framed.coded {
        if version == Version::HTTP_10 {
            return Err(UpstreamFailure::Protocol);
        }
        return Ok(if framed.chunked { Framing::Chunked(Chunked::default()) } else { Framing::Eof });
    }
    if let Some(length) = framed.length {
        return length.map(Framing::Length).ok_or(UpstreamFailure::Protocol);
    }
    Ok(Framing::Eof)
}

/// True when an answer carries both `Transfer-Encoding` and `Content-Length`: the shape
/// of response smuggling, since the stale length would go back to the caller and desync
/// its connection. Both clients refuse it.
pub(crate) fn both_framings(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
}

#[derive(Debug)]
enum Framing {
    /// This many bytes are still to come (0: the body is over).
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes; the connection cannot be used again.
    Eof,
}

/// An answer's body, read from its connection as it is polled.
pub(crate) struct Body<I = Io> {
    /// `None` once the body is over or broken.
    conn: Option<Conn<I>>,
    /// Where the connection goes at the body's end; `None`: it closes.
    home: Option<Arc<Pool<Conn<I>>>>,
    framing: Framing,
}

impl<I> Body<I> {
    /// The body is over: the connection goes home when it can carry another request
    /// and nothing came after this answer.
    fn finish(&mut self) {
        self.framing = Framing::Length(0);
        if let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if conn.buf.is_empty() {
                if conn.buf.capacity() > KEPT_BUFFER {
                    conn.buf = BytesMut::new();
                }
                home.put(conn);
            }
        }
    }

    /// The whole body, when every byte of it came with the head (most short answers):
    /// taken at once, and the connection goes home now rather than after the caller has
    /// it. `None` while some of it is still to be read, or when it is not framed by a
    /// length (a chunked body may end in trailers; an empty one has nothing to take).
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        let Framing::Length(rest) = self.framing else { return None };
        let conn = self.conn.as_mut()?;
        if rest == 0 || (conn.buf.len() as u64) < rest {
            return None;
        }
        let data = conn.buf.split_to(rest as usize).freeze();
        self.finish();
        Some(data)
    }

    fn broken(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Length(0);
        Poll::Ready(Some(Err(error.into())))
    }
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed mid-body")
}

fn malformed(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<I: AsyncRead + AsyncWrite + Unpin> http_body::Body for Body<I> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let step = match &mut this.framing {
                Framing::Length(0) => Step::End,
                Framing::Length(rest) => {
                    if conn.buf.is_empty() {
                        let want = (*rest).min(BODY_READ as u64) as usize;
                        match ready!(conn.poll_fill(cx, want)) {
                            Ok(0) => return this.broken(cut()),
                            Ok(_) => {}
                            Err(e) => return this.broken(e),
                        }
                    }
                    let n = (*rest).min(conn.buf.len() as u64);
                    *rest -= n;
                    let data = conn.buf.split_to(n as usize).freeze();
                    if *rest == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx, BODY_READ)) {
                            Ok(0) => {
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.broken(e),
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Framing::Chunked(chunked) => match chunked.step(&mut conn.buf) {
                    Ok(step) => step,
                    Err(e) => return this.broken(e),
                },
            };
            match step {
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::More => match ready!(conn.poll_fill(cx, BODY_READ)) {
                    Ok(0) => return this.broken(cut()),
                    Ok(_) => {}
                    Err(e) => return this.broken(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(rest)) => SizeHint::with_exact(*rest),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

/// What the buffered bytes of a chunked body gave.
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes are needed.
    More,
}

/// A chunked body's decoder (RFC 9112 §7.1, with hyper's strictness: `CRLF` line ends,
/// whitespace only after the size, extensions ignored up to a limit).
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    extensions: usize,
}

#[derive(Debug, Default)]
enum ChunkState {
    #[default]
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The `CRLF` after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line.
    Trailers,
}

impl Chunked {
    fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(at) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > EXTENSIONS_LIMIT + 64 {
                            return Err(malformed("chunk size line too long"));
                        }
                        return Ok(Step::More);
                    };
                    let line = buf.split_to(at + 1);
                    let size = self.size_line(&line)?;
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(rest) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = rest.min(buf.len() as u64);
                    self.state = if n == rest { ChunkState::DataEnd } else { ChunkState::Data(rest - n) };
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                ChunkState::DataEnd => match &buf[..] {
                    [b'\r', b'\n', ..] => {
                        buf.advance(2);
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(Step::More),
                    _ => return Err(malformed("chunk data not followed by CRLF")),
                },
                ChunkState::Trailers => {
                    return match &buf[..] {
                        [b'\r', b'\n', ..] => {
                            buf.advance(2);
                            Ok(Step::End)
                        }
                        [] | [b'\r'] => Ok(Step::More),
                        [b'\r', _, ..] => Err(malformed("bad end of a chunked body")),
                        _ => match memchr::memmem::find(buf, b"\r\n\r\n") {
                            Some(at) if at + 4 <= TRAILER_LIMIT => {
                                let section = buf.split_to(at + 4);
                                trailers(&section).map(Step::Trailers)
                            }
                            None if buf.len() < TRAILER_LIMIT => Ok(Step::More),
                            _ => Err(malformed("trailers too large")),
                        },
                    };
                }
            }
        }
    }

    /// The size of a chunk from its line (`\n` included): hex digits, optional spaces or
    /// tabs, an optional extension after `;`, then `CRLF`.
    fn size_line(&mut self, line: &[u8]) -> io::Result<u64> {
        let bad = || malformed("bad chunk size line");
        let text = line.strip_suffix(b"\r\n").ok_or_else(bad)?;
        if text.contains(&b'\r') {
            return Err(bad());
        }
        let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let mut size = 0u64;
        for &d in &text[..digits] {
            let v = (d as char).to_digit(16).ok_or_else(bad)?;
            size = size.checked_mul(16).and_then(|s| s.checked_add(u64::from(v))).ok_or_else(bad)?;
        }
        let rest = &text[digits..];
        let spaces = rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        match &rest[spaces..] {
            [] => {}
            [b';', extension @ ..] => {
                self.extensions += extension.len();
                if self.extensions >= EXTENSIONS_LIMIT {
                    return Err(malformed("chunk extensions over the limit"));
                }
            }
            _ => return Err(bad()),
        }
        Ok(size)
    }
}

/// A chunked body's trailer section (its lines and the empty line that ends it).
fn trailers(section: &[u8]) -> io::Result<HeaderMap> {
    let bad = || malformed("bad trailer");
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(section, &mut lines) {
        Ok(httparse::Status::Complete((len, parsed))) if len == section.len() => parsed,
        _ => return Err(bad()),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for line in parsed {
        let name = HeaderName::from_bytes(line.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(line.value).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
