//! A connection's phases and the header and idle timeouts they set: waiting for a
//! request head (from the connection's start, or from the first byte of the next
//! request), busy, idle between requests, and HTTP/2 with nothing in flight.
//!
//! The watcher ([`Phases::expired`]) reads the phase each time it is polled and keeps
//! one timer armed at the deadline it sets. It is polled right after the connection, in
//! the same task, so a phase change made while serving is seen without a wake-up (a
//! wake-up of one's own task costs a whole extra poll of the connection). Only a change
//! to an earlier deadline made from another task (a head starting on a socket read
//! elsewhere) wakes it. While busy the timer re-checks at most `idle_timeout` apart, so
//! the idle clock that starts when the last response ends is never missed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where a connection is in its life, for the header and idle timeouts.
#[derive(Debug, Default)]
struct ConnState {
    /// See the `PHASE_*` constants.
    phase: AtomicU8,
    /// When the current phase began, in ms since `epoch`.
    since_ms: AtomicU64,
    in_flight: AtomicU32,
    /// The task the watcher was last polled in.
    watcher: Mutex<Option<Waker>>,
}

/// Waiting for the head of a request (the first, or after bytes of the next arrived).
const PHASE_HEAD: u8 = 0;
/// Keep-alive, nothing received since the last response.
const PHASE_IDLE: u8 = 1;
/// Requests are being served.
const PHASE_BUSY: u8 = 2;
/// HTTP/2 with no request in flight: streams are managed by the protocol; only the
/// time since the last request ended is timed.
const PHASE_H2: u8 = 3;

struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl ConnState {
    fn set(&self, phase: u8, clock: &Clock) {
        self.since_ms.store(clock.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Wakes the watcher unless it runs in the task of `current`, which polls it next.
    fn wake_watcher(&self, current: &Waker) {
        if let Some(watcher) = self.watcher.lock().as_ref() {
            if !watcher.will_wake(current) {
                watcher.wake_by_ref();
            }
        }
    }
}

/// One connection's phase, shared by its socket ([`Phases::watch`]), its requests
/// ([`Phases::request_started`]) and its timeout watcher ([`Phases::expired`]).
#[derive(Clone)]
pub(super) struct Phases {
    state: Arc<ConnState>,
    clock: Arc<Clock>,
}

impl Phases {
    /// A connection that has just started: waiting for the head of its first request.
    pub(super) fn start() -> Phases {
        Phases { state: Arc::default(), clock: Arc::new(Clock(Instant::now())) }
    }

    /// The caller's socket, moving the phase as bytes of a new request arrive.
    pub(super) fn watch<I>(&self, inner: I) -> Watched<I> {
        Watched { inner, state: self.state.clone(), clock: self.clock.clone(), sniffed: false }
    }

    /// Counts a request as started (the connection is busy); the guard ends it when
    /// the response is done.
    pub(super) fn request_started(&self, h2: bool) -> RequestGuard {
        if self.state.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.state.set(PHASE_BUSY, &self.clock);
        }
        RequestGuard { state: self.state.clone(), clock: self.clock.clone(), h2 }
    }

    /// Resolves when the connection has waited too long for a request head (from the
    /// connection's start or the first byte of the next request) or been idle too long
    /// between requests. Poll it after the connection, in the same task.
    pub(super) fn expired(&self, header_timeout: Duration, idle_timeout: Duration) -> Expiry {
        let armed = self.clock.0 + header_timeout;
        Expiry {
            state: self.state.clone(),
            clock: self.clock.clone(),
            header_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(armed)),
            armed,
        }
    }
}

/// Counts a request as started; the returned guard ends it when the response is done.
pub(super) struct RequestGuard {
    state: Arc<ConnState>,
    clock: Arc<Clock>,
    h2: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // No wake-up: the new deadline is later than any the busy watcher has armed.
        if self.state.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.state.set(if self.h2 { PHASE_H2 } else { PHASE_IDLE }, &self.clock);
        }
    }
}

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// No (whole) request head within `header_timeout`.
    Head,
    /// Nothing in flight for `idle_timeout`.
    Idle,
}

/// The header and idle timeouts of one connection (see [`Phases::expired`]).
pub(super) struct Expiry {
    state: Arc<ConnState>,
    clock: Arc<Clock>,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Instant,
}

impl Expiry {
    fn arm(&mut self, deadline: Instant) {
        if deadline != self.armed {
            self.armed = deadline;
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl Future for Expiry {
    type Output = Expired;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expired> {
        let this = self.get_mut();
        {
            let mut watcher = this.state.watcher.lock();
            if !watcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *watcher = Some(cx.waker().clone());
            }
        }
        loop {
            let phase = this.state.phase.load(Ordering::Relaxed);
            let since = this.state.since_ms.load(Ordering::Relaxed);
            let began = this.clock.0 + Duration::from_millis(since);
            let kind = match phase {
                PHASE_HEAD => {
                    this.arm(began + this.header_timeout);
                    Expired::Head
                }
                PHASE_IDLE | PHASE_H2 => {
                    this.arm(began + this.idle_timeout);
                    Expired::Idle
                }
                // Busy: nothing is timed, but the timer re-checks at most `idle_timeout`
                // from now, so the idle deadline of the last response is not missed.
                _ => {
                    let latest = Instant::now() + this.idle_timeout;
                    if this.timer.is_elapsed() || this.armed > latest {
                        this.arm(latest);
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    continue;
                }
            };
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Expired only if nothing moved meanwhile.
            if this.state.phase.load(Ordering::Relaxed) == phase
                && this.state.since_ms.load(Ordering::Relaxed) == since
            {
                return Poll::Ready(kind);
            }
        }
    }
}

/// The caller's socket, noting when bytes of a new request arrive after idleness.
pub(super) struct Watched<I> {
    inner: I,
    state: Arc<ConnState>,
    clock: Arc<Clock>,
    sniffed: bool,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if !this.sniffed {
                this.sniffed = true;
                if read.starts_with(b"PRI * HTTP/2.0") {
                    this.state.set(PHASE_H2, &this.clock);
                }
            }
            // On HTTP/2 only requests restart the idle clock (when the last one ends, see
            // `RequestGuard`): PINGs, SETTINGS or WINDOW_UPDATEs alone must not hold a
            // connection open.
            if this.state.phase.load(Ordering::Relaxed) == PHASE_IDLE {
                this.state.set(PHASE_HEAD, &this.clock);
                // The head's deadline is earlier than the idle one the watcher armed.
                this.state.wake_watcher(cx.waker());
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    /// Runs the watcher of `phases`; the answer is which timeout ran out, and when.
    fn watcher(phases: &Phases) -> tokio::task::JoinHandle<(Expired, Duration)> {
        let expired = phases.expired(HEADER, IDLE);
        let started = Instant::now();
        tokio::spawn(async move {
            let kind = expired.await;
            (kind, started.elapsed())
        })
    }

    /// Lets every task that can run now run (the paused clock does not move meanwhile).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_gets_the_header_timeout() {
        let phases = Phases::start();
        let (kind, after) = watcher(&phases).await.unwrap();
        assert_eq!((kind, after), (Expired::Head, HEADER));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_timed_and_idles_from_its_last_response() {
        let phases = Phases::start();
        let watch = watcher(&phases);
        let first = phases.request_started(false);
        let second = phases.request_started(false);
        tokio::time::sleep(IDLE * 10).await;
        assert!(!watch.is_finished(), "busy for ten idle timeouts, and still open");
        drop(first);
        tokio::time::sleep(IDLE * 2).await;
        assert!(!watch.is_finished(), "one request is still in flight");
        drop(second);
        let ended_at = Instant::now();
        let (kind, _) = watch.await.unwrap();
        assert_eq!(kind, Expired::Idle);
        assert_eq!(Instant::now() - ended_at, IDLE, "idle is timed from the last response");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_starting_on_an_idle_connection_wakes_the_watcher_with_the_earlier_deadline() {
        let phases = Phases::start();
        drop(phases.request_started(false));
        let watch = watcher(&phases);
        settle().await;
        // Idle (60 s) until bytes of a new request arrive: from then on, 10 s for the head.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (mut caller, server) = tokio::io::duplex(64);
        let mut socket = phases.watch(server);
        caller.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = socket.read(&mut buf).await.unwrap();
        let (kind, after) = watch.await.unwrap();
        assert_eq!((kind, after), (Expired::Head, Duration::from_secs(5) + HEADER));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_idles_from_the_last_request_and_frames_alone_do_not_restart_it() {
        let phases = Phases::start();
        let (mut caller, server) = tokio::io::duplex(64);
        let mut socket = phases.watch(server);
        let watch = watcher(&phases);
        caller.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = socket.read(&mut buf).await.unwrap();
        // A PING (any bytes) half-way through must not hold the connection open.
        tokio::time::sleep(IDLE / 2).await;
        caller.write_all(b"ping").await.unwrap();
        let _ = socket.read(&mut buf).await.unwrap();
        let (kind, after) = watch.await.unwrap();
        assert_eq!((kind, after), (Expired::Idle, IDLE), "HTTP/2 is timed as idle from its preface");
        // A request ending restarts it.
        let watch = watcher(&phases);
        drop(phases.request_started(true));
        let (kind, after) = watch.await.unwrap();
        assert_eq!((kind, after), (Expired::Idle, IDLE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_that_moved_before_its_deadline_does_not_expire() {
        let phases = Phases::start();
        let watch = watcher(&phases);
        // A request starts and ends just before the head deadline: the clock restarts at
        // the idle timeout from there.
        tokio::time::sleep(HEADER - Duration::from_millis(1)).await;
        drop(phases.request_started(false));
        let (kind, after) = watch.await.unwrap();
        assert_eq!((kind, after), (Expired::Idle, HEADER - Duration::from_millis(1) + IDLE));
    }
}
