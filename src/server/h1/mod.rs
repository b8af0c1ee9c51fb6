//! keygate's own HTTP/1.1 server for plain TCP connections, in front of hyper's.
//!
//! Why: hyper's HTTP/1 server keeps an 8 KiB read buffer and an 8 KiB write buffer for
//! every connection, idle ones too, and its dispatch is a large share of keygate's CPU
//! per request (BENCHMARKS.md, "Round 4"). This server holds no buffer while a
//! connection waits, reads a head with httparse into one buffer that becomes the
//! request's header bytes, and writes the answer's head and a ready body in one write.
//!
//! What it serves: HTTP/1.1 heads whose meaning is plain (see [`head`]) with no body or
//! a `Content-Length` body, read from the socket as the pipeline asks for it
//! ([`crate::request_body::SocketBody`]). Every other head — and every byte after it —
//! goes to hyper on the same connection ([`Served::HandOver`]), which answers it as it
//! answers every TLS or HTTP/2 connection; so malformed, ambiguous or unusual requests
//! meet one implementation, hyper's.
//!
//! It keeps the connection rules of the hyper path: the header timeout from the
//! connection's start (first request) or from the first byte of a request, the idle
//! timeout between requests, the drain on shutdown (in-flight answers finish with
//! `connection: close`), a request dropped when its caller goes away while waiting for
//! it (recorded as 499), and a connection closed after a body the pipeline left unread.

mod head;
mod write;

/// Head-line writing, shared with keygate's upstream client.
pub(crate) use write::{HeadBuf, itoa, line};

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::{Handler, Limits, boxed_in_place};
use crate::body::ProxyBody;
use crate::conn::ConnInfo;
use crate::header_names::Names;
use crate::lazy_timer;
use crate::request_body::{Home, RequestBody, SocketBody};
use head::Head;
use write::Framing;

/// A head is read into a buffer of this much, grown for a larger head.
const FIRST_READ: usize = 4096;

/// How a connection left keygate's HTTP/1.1 server.
pub(super) enum Served {
    /// Closed (or to be closed): nothing more to serve.
    Closed,
    /// A head to be read by hyper: the stream, the bytes already read from it, and
    /// whether requests were served on it already (then it speaks HTTP/1.1 to the end:
    /// no HTTP/2 preface is looked for).
    HandOver(TcpStream, Bytes, Spoken),
}

/// Whether keygate's server answered requests on a connection before handing it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spoken {
    /// Nothing yet: the first bytes may be anything, HTTP/2 prior knowledge included.
    Nothing,
    /// At least one request: the connection is HTTP/1.1.
    Http1,
}

/// What a running connection remembers between requests.
struct Conn<H> {
    handler: Arc<H>,
    info: ConnInfo,
    limits: Limits,
    /// The socket's read side; lent to a request's body while it reads (see
    /// [`SocketBody`]), `None` until the body gives it back.
    read: Option<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// Where a body gives the read side back.
    home: Arc<Home>,
    /// Bytes read and not yet part of a request: empty, and holding no memory, while
    /// the connection waits.
    buf: BytesMut,
    /// The heads' names by line (BENCHMARKS.md, round 10).
    names: Names,
    draining: bool,
    /// The drain's wait holds this task's waker: polled once while waiting for a head,
    /// it wakes the task when the drain begins, and the signal's version then says so.
    /// A task's waker is the same at every poll, so the wait is not polled again (each
    /// poll of it locked the signal's list of waiters for nothing).
    drain_armed: bool,
}

/// The answer the handler is working on.
type Answer = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// Serves `stream` until it closes or a head needs hyper.
pub(super) async fn serve<H: Handler>(
    handler: Arc<H>,
    stream: TcpStream,
    info: ConnInfo,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Served {
    let draining = *shutdown.borrow_and_update();
    let (read, write) = stream.into_split();
    let home = Arc::new(Home::default());
    let mut conn = Conn {
        handler,
        info,
        limits,
        read: Some(read),
        write,
        home,
        buf: BytesMut::new(),
        names: Names::default(),
        draining,
        drain_armed: false,
    };
    // The first head is timed from the connection's start; later ones from their first
    // byte, after up to `idle_timeout` of waiting for it.
    let mut wait_until = Instant::now() + limits.header_timeout;
    let mut head_until = Some(wait_until);
    // One timer for the connection's life, moved only when a wait's deadline comes
    // sooner ([`lazy_timer`]), where a timer per wait is an insertion into the
    // runtime's timer wheel and a removal from it for every request.
    let mut timer = pin!(tokio::time::sleep_until(wait_until));
    // The same for the drain signal: one wait for the connection's life, where a wait
    // per head registered with the signal and left it again for every request. It is
    // polled once, the first time a head is waited for (`Conn::drain_armed`); from then
    // on the drain is read from the signal's version, which its wake-up makes the task
    // look at (a drain that begins while an answer is made too, see `exchange`).
    let mut drain = pin!(drain_wait(shutdown.clone()));
    let mut served = Spoken::Nothing;
    loop {
        let parsed =
            match conn.next_head(&shutdown, drain.as_mut(), timer.as_mut(), wait_until, head_until).await {
                Ok(Some(parsed)) => parsed,
                // Dropping the write side shuts it down: the caller reads the last answer
                // to its end rather than a reset.
                Ok(None) => return Served::Closed,
                Err(HandOver) => return conn.hand_over(served),
            };
        // Boxed: an idle connection's task then keeps only what waiting for a head
        // needs (0.5 KB, not the 1.6 KB of an exchange in flight).
        if !boxed_in_place(|| conn.exchange(parsed, &shutdown)).await || conn.draining {
            return Served::Closed;
        }
        served = Spoken::Http1;
        wait_until = Instant::now() + limits.idle_timeout;
        head_until = None;
    }
}

/// Ends when the drain begins (or the signal is gone). Unconstrained by the task's
/// budget: the wait is polled once (`Conn::drain_armed`), and a poll the budget turned
/// away would leave it registered nowhere, so no drain would wake an idle connection.
fn drain_wait(shutdown: watch::Receiver<bool>) -> impl Future<Output = ()> {
    async fn drain_begun(mut shutdown: watch::Receiver<bool>) {
        let _ = shutdown.changed().await;
    }
    tokio::task::coop::unconstrained(drain_begun(shutdown))
}

/// A head hyper has to read.
struct HandOver;

/// What a read from the caller's socket found.
#[derive(PartialEq, Eq)]
enum Read {
    Some,
    /// The end of the stream, or an error.
    Closed,
}

/// What ended a wait for a head's bytes.
enum Waited {
    Read(Read),
    Drain,
    Timeout,
}

thread_local! {
    /// Where a connection without a buffer reads (see `Conn::poll_read_some`).
    static SCRATCH: std::cell::RefCell<[u8; FIRST_READ]> = const { std::cell::RefCell::new([0; FIRST_READ]) };
}

impl<H: Handler> Conn<H> {
    /// The most a head may take, as hyper's read buffer is sized on the hyper path.
    fn max_head(&self) -> usize {
        self.limits.max_header_bytes.max(8192) * 2
    }

    /// Waits for the next request head: `Ok(None)` when the connection should close
    /// (the caller left, a timeout ran out, the server drains while nothing is in
    /// flight).
    async fn next_head(
        &mut self,
        shutdown: &watch::Receiver<bool>,
        mut drain: Pin<&mut impl Future<Output = ()>>,
        mut timer: Pin<&mut Sleep>,
        wait_until: Instant,
        mut head_until: Option<Instant>,
    ) -> Result<Option<head::Parsed>, HandOver> {
        let max = self.max_head();
        loop {
            if !self.buf.is_empty() {
                match head::read(&mut self.buf, &mut self.names) {
                    Head::Plain(parsed) => return Ok(Some(parsed)),
                    Head::HandOver => return Err(HandOver),
                    Head::Partial if self.buf.len() >= max => return Err(HandOver),
                    Head::Partial => {}
                }
                // A request has begun: its head has the header timeout from here.
                head_until.get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
            }
            if self.read.is_none() {
                return Ok(None);
            }
            let deadline = head_until.unwrap_or(wait_until);
            lazy_timer::set(timer.as_mut(), deadline);
            // The read is tried at once: tokio knows whether the socket has anything, so
            // a socket with nothing costs no system call, only its waker kept, where a
            // wait for readiness first would register with the socket and leave again
            // for every request. The drain first (a look at the signal's version), then
            // the socket; the drain's wait and the timer are polled only while the
            // socket has nothing, which is when they need this task's waker.
            let waited = poll_fn(|cx| {
                if !self.draining && shutdown.has_changed().unwrap_or(true) {
                    return Poll::Ready(Waited::Drain);
                }
                if let Poll::Ready(read) = self.poll_read_some(cx, max) {
                    return Poll::Ready(Waited::Read(read));
                }
                if !self.draining && !self.drain_armed {
                    if drain.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Waited::Drain);
                    }
                    self.drain_armed = true;
                }
                lazy_timer::poll_until(timer.as_mut(), deadline, cx).map(|()| Waited::Timeout)
            })
            .await;
            match waited {
                Waited::Read(Read::Some) => {}
                Waited::Read(Read::Closed) => return Ok(None),
                Waited::Drain => {
                    self.draining = true;
                    // Nothing in flight: closing loses nothing.
                    return Ok(None);
                }
                Waited::Timeout => {
                    if head_until.is_some() {
                        tracing::debug!(peer = %self.info.peer, "request head not received in time; closing");
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Reads what the socket has into the buffer. A connection that holds no buffer
    /// reads into the thread's scratch space and takes one only for bytes that came, so
    /// that a connection waiting for its caller holds none.
    fn poll_read_some(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Read> {
        let Some(read) = self.read.as_mut() else { return Poll::Pending };
        if self.buf.capacity() == 0 {
            return SCRATCH.with_borrow_mut(|scratch| {
                let mut came = ReadBuf::new(&mut scratch[..]);
                match Pin::new(read).poll_read(cx, &mut came) {
                    Poll::Ready(Ok(())) if !came.filled().is_empty() => {
                        self.buf = BytesMut::with_capacity(FIRST_READ);
                        self.buf.extend_from_slice(came.filled());
                        Poll::Ready(Read::Some)
                    }
                    Poll::Ready(_) => Poll::Ready(Read::Closed),
                    Poll::Pending => Poll::Pending,
                }
            });
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(FIRST_READ.max(self.buf.len()).min(max));
        }
        match pin!(read.read_buf(&mut self.buf)).poll(cx) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Read::Closed),
            Poll::Ready(Ok(_)) => Poll::Ready(Read::Some),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Serves one request: runs the handler, writes its answer. Returns whether the
    /// connection may carry another request.
    async fn exchange(&mut self, parsed: head::Parsed, shutdown: &watch::Receiver<bool>) -> bool {
        let head::Parsed { method, uri, headers, length, close } = parsed;
        let body = match self.read.take() {
            Some(read) if length > 0 => {
                let have = (self.buf.len() as u64).min(length) as usize;
                let buffered = self.buf.split_to(have).freeze();
                RequestBody::Socket(SocketBody::new(self.home.clone(), read, buffered, length))
            }
            read => {
                self.read = read;
                RequestBody::Empty
            }
        };
        if self.buf.is_empty() {
            // Whatever it still holds belongs to the request just read.
            self.buf = BytesMut::new();
        }
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        // Boxed, as on the hyper path: the connection's own future stays small.
        let handler = self.handler.clone();
        let answer: Answer = boxed_in_place(|| handler.handle(self.info.clone(), request, Box::new(())));
        let Some(response) = self.await_answer(answer).await else {
            return false;
        };
        // A drain begun while the answer was made: it goes with `connection: close`. A
        // look at the signal's version, not a wait on it beside every request.
        self.draining |= shutdown.has_changed().unwrap_or(true);
        let (parts, body) = response.into_parts();
        self.reclaim();
        // A body the pipeline left unread cannot be skipped safely: the connection
        // closes after this answer, and says so when it knows.
        let body_left = self.home.unread() > 0 || self.read.is_none();
        let close = close || self.draining || body_left;
        let mut out = Vec::with_capacity(512);
        let (framing, close) = write::head(&mut out, &parts, &method, body.size_hint().exact(), close);
        let sent = self.send(out, framing, body).await;
        sent && !close
    }

    /// Takes the read side back from a body that has given it back.
    fn reclaim(&mut self) {
        if self.read.is_none() {
            self.read = self.home.take();
        }
    }

    /// Runs the handler's future while watching the caller: `None` when the caller
    /// closed the connection before the answer (the future is dropped, as hyper drops
    /// it, and the exchange is recorded as the caller's going).
    async fn await_answer(&mut self, mut answer: Answer) -> Option<Response<ProxyBody>> {
        let max = self.max_head();
        poll_fn(|cx| {
            if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            // Read only once the request's body is off the wire, and only while nothing
            // of the next request is buffered (as hyper does): a caller that pipelined
            // requests and then closed its side gets its answers. Checked at every
            // poll: the body may end at any of them.
            self.reclaim();
            while self.read.is_some() && self.home.unread() == 0 && self.buf.is_empty() {
                match self.poll_read_some(cx, max) {
                    Poll::Ready(Read::Some) => {}
                    Poll::Pending => break,
                    Poll::Ready(Read::Closed) => {
                        tracing::debug!(peer = %self.info.peer, "caller closed the connection before the answer");
                        return Poll::Ready(None);
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the head in `out` and the body framed by `framing`. False when the
    /// answer could not be sent whole (the connection must close). The body is dropped
    /// as soon as it has ended, before its last bytes are written, as hyper does: the
    /// exchange's record is complete by the time the caller has the answer.
    async fn send(&mut self, mut out: Vec<u8>, framing: Framing, body: ProxyBody) -> bool {
        let stream = &self.write;
        let peer = self.info.peer;
        let chunked = framing == Framing::Chunked;
        let mut left = if let Framing::Length(n) = framing { n } else { 0 };
        // Asked first, whatever the framing: an empty body that says it has ended lets
        // the upstream connection it came on go back to the pool (a HEAD, a 204).
        let ended = body.is_end_stream();
        let mut body = (framing != Framing::None && !ended).then_some(body);
        while let Some(open) = body.as_mut() {
            // Whatever the body has ready goes with what is waiting to be written.
            let frame = match open.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    if !out.is_empty() {
                        if write::all(stream, &out, None, false).await.is_err() {
                            return false;
                        }
                        out.clear();
                    }
                    open.frame().await
                }
            };
            let mut data = match frame {
                None => break,
                Some(Err(e)) => {
                    drop(body);
                    tracing::debug!(peer = %peer, error = %e, "answer body failed; closing");
                    let _ = write::all(stream, &out, None, false).await;
                    return false;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: HTTP/1.1 callers get none (docs/reliability.md).
                    Err(_) => continue,
                },
            };
            if open.is_end_stream() {
                body = None;
            }
            if !chunked {
                if data.len() as u64 > left {
                    drop(body);
                    tracing::debug!(peer = %peer, "answer body longer than its length; cut and closing");
                    data.truncate(left as usize);
                    let _ = write::all(stream, &out, Some(&data), false).await;
                    return false;
                }
                left -= data.len() as u64;
            }
            if let Some(rest) = write::frame(&mut out, framing, data) {
                if write::all(stream, &out, Some(&rest), chunked).await.is_err() {
                    return false;
                }
                out.clear();
            }
        }
        drop(body);
        if chunked {
            out.extend_from_slice(write::LAST_CHUNK);
        } else if left != 0 {
            tracing::debug!(peer = %peer, "answer body shorter than its length; closing");
        }
        let written = out.is_empty() || write::all(stream, &out, None, false).await.is_ok();
        written && left == 0
    }

    /// Hands the connection to hyper with what was read of the next head.
    fn hand_over(self, served: Spoken) -> Served {
        let Conn { read, write, buf, .. } = self;
        match read.map(|read| read.reunite(write)) {
            Some(Ok(stream)) => Served::HandOver(stream, buf.freeze(), served),
            _ => Served::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// The wait for the drain is polled once per connection: polled when the task has
    /// spent its budget, it must still wake the task when the drain begins.
    #[tokio::test]
    async fn a_drain_wait_polled_once_with_no_budget_left_still_wakes_its_task() {
        let (signal, shutdown) = watch::channel(false);
        let mut drain = pin!(drain_wait(shutdown));
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = Waker::from(woken.clone());
        poll_fn(|cx| {
            while let Poll::Ready(spent) = tokio::task::coop::poll_proceed(cx) {
                spent.made_progress();
            }
            assert!(!tokio::task::coop::has_budget_remaining());
            assert!(drain.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            Poll::Ready(())
        })
        .await;
        signal.send(true).expect("the wait holds a receiver");
        assert!(woken.0.load(Ordering::SeqCst), "the drain did not wake the task");
    }
}
