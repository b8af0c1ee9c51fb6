//! The body of a caller's request, whichever HTTP/1 server read its head: hyper's
//! (`Incoming`), or keygate's own for plain HTTP/1.1 (`src/server/h1`), which reads a
//! `Content-Length` body straight from the caller's socket, never a byte past its end.
//!
//! Reads go through tokio's `poll_read` (not `try_read`): after a read that did not fill
//! the buffer it knows the socket is drained and waits for the next readiness, instead
//! of a `recvfrom` that finds nothing. So the body owns the socket's read side while it
//! reads, and hands it back through a [`Home`] the server shares with it.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use crate::body::BoxError;

/// The most read from the socket into one frame.
const CHUNK: u64 = 16 * 1024;

/// A caller's request body.
pub(crate) enum RequestBody {
    /// Read by hyper (HTTP/2, TLS, chunked and everything else keygate's HTTP/1 server
    /// hands over).
    Hyper(Incoming),
    /// Read by keygate's HTTP/1 server from the socket, within a `Content-Length`.
    Socket(SocketBody),
    /// No body (no `Content-Length`, or 0).
    Empty,
}

/// Where the read side of a caller's socket goes back to keygate's HTTP/1 server once
/// the body that took it is done with it, and how much of that body is still in the
/// socket (what came with the head is off the wire already: a connection whose body
/// arrived whole can carry the next request even if nobody read the body).
#[derive(Debug, Default)]
pub(crate) struct Home {
    read: Mutex<Option<OwnedReadHalf>>,
    /// Bytes of the current request's body still in the socket (0 between requests).
    unread: AtomicU64,
}

impl Home {
    /// Bytes of the current request's body still in the socket.
    pub(crate) fn unread(&self) -> u64 {
        self.unread.load(Ordering::Relaxed)
    }

    /// The read side, once the body has given it back.
    pub(crate) fn take(&self) -> Option<OwnedReadHalf> {
        self.read.lock().take()
    }
}

/// A `Content-Length` body: the bytes that came with the head, then the rest from the
/// socket, in reads never longer than what is left. The read side goes home as soon as
/// the last byte is read, or when the body is dropped.
pub(crate) struct SocketBody {
    home: Arc<Home>,
    read: Option<OwnedReadHalf>,
    buffered: Bytes,
    /// Still to be read from the socket.
    remaining: u64,
}

impl SocketBody {
    /// The body of `length` bytes, of which `buffered` came with the head; the rest is
    /// read from `read`.
    pub(crate) fn new(home: Arc<Home>, read: OwnedReadHalf, buffered: Bytes, length: u64) -> SocketBody {
        let remaining = length - buffered.len() as u64;
        home.unread.store(remaining, Ordering::Relaxed);
        let mut body = SocketBody { home, read: Some(read), buffered, remaining };
        if remaining == 0 {
            body.go_home();
        }
        body
    }

    fn taken(&self, n: u64) {
        self.home.unread.fetch_sub(n, Ordering::Relaxed);
    }

    fn go_home(&mut self) {
        if let Some(read) = self.read.take() {
            *self.home.read.lock() = Some(read);
        }
    }
}

impl Drop for SocketBody {
    fn drop(&mut self) {
        self.go_home();
    }
}

impl Body for SocketBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.buffered.is_empty() {
            let data = std::mem::take(&mut this.buffered);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let Some(read) = this.read.as_mut() else { return Poll::Ready(None) };
        let want = this.remaining.min(CHUNK) as usize;
        let mut chunk = BytesMut::with_capacity(want);
        let result = ready!(pin!(read.read_buf(&mut (&mut chunk).limit(want))).poll(cx));
        match result {
            Ok(0) => {
                let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "the caller closed mid-body");
                Poll::Ready(Some(Err(closed.into())))
            }
            Ok(n) => {
                this.remaining -= n as u64;
                this.taken(n as u64);
                if this.remaining == 0 {
                    this.go_home();
                }
                Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
            }
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.buffered.len() as u64 + self.remaining)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Hyper(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            RequestBody::Socket(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(incoming) => incoming.is_end_stream(),
            RequestBody::Socket(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(incoming) => incoming.size_hint(),
            RequestBody::Socket(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
