//! Streaming bodies: the boxed body type keygate answers with, and the metering wrapper
//! that counts bytes, enforces size limits and idle timeouts, and keeps a guard alive
//! until the last byte has gone (the access log and duration metrics hang off it).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

/// The error type of every body keygate streams.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response keygate sends and every request it forwards.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Why a metered body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// More bytes arrived than the limit allows.
    #[error("body exceeds the size limit")]
    TooLarge,
    /// No bytes arrived for longer than the idle timeout.
    #[error("body stalled past the idle timeout")]
    Idle,
    /// The body itself failed (bad chunked framing, the sender went away).
    #[error("body could not be read")]
    Broken,
}

/// Counters shared between a metered body and whoever reports on it.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    bytes: AtomicU64,
    /// 0 = fine, 1 = too large, 2 = idle, 3 = broken.
    failure: AtomicU64,
}

impl Meter {
    /// Bytes that went through so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Why the body stopped early, if it did.
    pub(crate) fn failure(&self) -> Option<BodyError> {
        match self.failure.load(Ordering::Relaxed) {
            1 => Some(BodyError::TooLarge),
            2 => Some(BodyError::Idle),
            3 => Some(BodyError::Broken),
            _ => None,
        }
    }

    fn fail(&self, error: BodyError) -> BoxError {
        self.note(error);
        Box::new(error)
    }

    fn note(&self, error: BodyError) {
        let code = match error {
            BodyError::TooLarge => 1,
            BodyError::Idle => 2,
            BodyError::Broken => 3,
        };
        self.failure.store(code, Ordering::Relaxed);
    }
}

/// A body that counts its bytes, enforces an optional size limit and an idle timeout
/// between frames, and holds `guard` until it is dropped.
pub(crate) struct Metered<B> {
    inner: B,
    /// `None` for a body only timed ([`Metered::idle_only`]).
    meter: Option<Arc<Meter>>,
    limit: Option<u64>,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    _guard: Option<Box<dyn Send>>,
}

impl<B> Metered<B> {
    /// Wraps `inner`. `limit` bounds the total data bytes; `idle` bounds the wait for
    /// each frame.
    pub(crate) fn new(inner: B, meter: Arc<Meter>, limit: Option<u64>, idle: Option<Duration>) -> Self {
        Metered { inner, meter: Some(meter), limit, idle, timer: None, _guard: None }
    }

    /// Wraps `inner` with only the idle timeout between frames: nothing counts its bytes.
    pub(crate) fn idle_only(inner: B, idle: Duration) -> Self {
        Metered { inner, meter: None, limit: None, idle: Some(idle), timer: None, _guard: None }
    }

    /// Keeps `guard` alive until this body is dropped.
    pub(crate) fn with_guard(mut self, guard: Box<dyn Send>) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(meter)) = (frame.data_ref(), &this.meter) {
                    let len = data.len() as u64;
                    let total = meter.bytes.fetch_add(len, Ordering::Relaxed) + len;
                    if this.limit.is_some_and(|limit| total > limit) {
                        return Poll::Ready(Some(Err(meter.fail(BodyError::TooLarge))));
                    }
                }
                if let (Some(timer), Some(idle)) = (this.timer.as_mut(), this.idle) {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // Noted so that whoever reads the meter can tell the sender's fault
                // from the receiver's.
                if let Some(meter) = &this.meter {
                    meter.note(BodyError::Broken);
                }
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(idle) = this.idle else { return Poll::Pending };
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(match &this.meter {
                        Some(meter) => meter.fail(BodyError::Idle),
                        None => Box::new(BodyError::Idle),
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn counts_bytes_and_passes_data_through() {
        let meter = Arc::new(Meter::default());
        let body = Metered::new(Full::new(Bytes::from_static(b"hello")), meter.clone(), Some(5), None);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(meter.bytes(), 5);
        assert_eq!(meter.failure(), None);
    }

    #[tokio::test]
    async fn refuses_bytes_past_the_limit() {
        let meter = Arc::new(Meter::default());
        let body = Metered::new(Full::new(Bytes::from_static(b"hello!")), meter.clone(), Some(5), None);
        let err = body.collect().await.expect_err("limit must trip");
        assert_eq!(err.to_string(), "body exceeds the size limit");
        assert_eq!(meter.failure(), Some(BodyError::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_body_times_out() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_shim::Receiver(rx));
        let meter = Arc::new(Meter::default());
        let body = Metered::new(stream, meter.clone(), None, Some(Duration::from_secs(2)));
        let err = body.collect().await.expect_err("idle must trip");
        assert_eq!(err.to_string(), "body stalled past the idle timeout");
        assert_eq!(meter.failure(), Some(BodyError::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_only_body_passes_data_and_times_out_between_frames() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part")))).await.unwrap();
        let stream = http_body_util::StreamBody::new(tokio_stream_shim::Receiver(rx));
        let mut body = Metered::idle_only(stream, Duration::from_secs(2));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"part");
        let err = body.frame().await.expect("an error frame").expect_err("idle must trip");
        assert_eq!(err.to_string(), "body stalled past the idle timeout");
        drop(tx);
    }

    #[tokio::test]
    async fn a_failing_inner_body_is_noted_as_broken() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Err("bad chunk".into())).await.unwrap();
        let stream = http_body_util::StreamBody::new(tokio_stream_shim::Receiver(rx));
        let meter = Arc::new(Meter::default());
        let body = Metered::new(stream, meter.clone(), Some(5), None);
        let err = body.collect().await.expect_err("the inner error passes through");
        assert_eq!(err.to_string(), "bad chunk");
        assert_eq!(meter.failure(), Some(BodyError::Broken));
    }

    /// A minimal `Stream` over an mpsc receiver, so the test needs no extra crate.
    mod tokio_stream_shim {
        use super::*;
        pub(super) struct Receiver<T>(pub tokio::sync::mpsc::Receiver<T>);
        impl<T> futures_util::Stream for Receiver<T> {
            type Item = T;
            fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
                self.0.poll_recv(cx)
            }
        }
    }
}
