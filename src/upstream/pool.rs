//! The idle HTTP/1.1 connections of one upstream, and the [`Lease`] that gives one back.
//!
//! A small LIFO stack: the newest idle connection is taken first (so the fewest stay
//! warm and the rest age out), closed ones are skipped, at most [`MAX_IDLE`] are kept,
//! and a reaper task drops those idle past [`IDLE_TIMEOUT`]. A connection goes back only
//! through a [`Lease`] whose response body was read to its end, so an answer that was
//! cut, refused or looked like smuggling never shares a connection with the next
//! request.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::http1;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::body::Meter;

/// How long an idle pooled connection is kept.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How many idle HTTP/1.1 connections one upstream keeps.
pub(super) const MAX_IDLE: usize = 256;

/// What the pool needs to know of a connection.
pub(crate) trait Conn: Send + 'static {
    /// True once the connection can no longer carry a request.
    fn is_closed(&self) -> bool;
}

impl<B: Send + 'static> Conn for http1::SendRequest<B> {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }
}

/// Idle connections, newest last.
pub(crate) struct Pool<C> {
    state: Mutex<State<C>>,
}

struct State<C> {
    idle: VecDeque<(C, Instant)>,
    reaper: bool,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool { state: Mutex::new(State { idle: VecDeque::new(), reaper: false }) }
    }
}

impl<C: Conn> Pool<C> {
    /// The newest idle connection that is still open and not idle too long.
    pub(crate) fn checkout(&self) -> Option<C> {
        let mut state = self.state.lock();
        while let Some((conn, since)) = state.idle.pop_back() {
            if !conn.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: C) {
        let mut state = self.state.lock();
        if state.idle.len() < MAX_IDLE {
            state.idle.push_back((conn, Instant::now()));
        }
    }

    /// Starts, once per pool, a task that drops connections idle past the timeout (or
    /// closed); it ends when the pool is dropped.
    pub(crate) fn start_reaper(self: &Arc<Self>) {
        if std::mem::replace(&mut self.state.lock().reaper, true) {
            return;
        }
        let pool: Weak<Pool<C>> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE_TIMEOUT / 3).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut state = pool.state.lock();
                state.idle.retain(|(conn, since)| !conn.is_closed() && since.elapsed() < IDLE_TIMEOUT);
            }
        });
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.state.lock().idle.len()
    }
}

/// The connection a response came on. It goes back to the pool when the lease is
/// dropped after the body was read to its end (see [`Lease::watch`]); otherwise the
/// connection is closed.
#[must_use]
pub(crate) struct Lease<C: Conn> {
    conn: Option<(C, Arc<Pool<C>>)>,
    meter: Option<Arc<Meter>>,
}

impl<C: Conn> Lease<C> {
    /// A lease on `conn`, which belongs to `pool`.
    pub(crate) fn new(conn: C, pool: Arc<Pool<C>>) -> Lease<C> {
        Lease { conn: Some((conn, pool)), meter: None }
    }

    /// A lease that holds nothing (HTTP/2 streams need none).
    pub(crate) fn none() -> Lease<C> {
        Lease { conn: None, meter: None }
    }

    /// Ties the lease to the meter of the response body.
    pub(crate) fn watch(&mut self, meter: &Arc<Meter>) {
        self.meter = Some(meter.clone());
    }
}

impl<C: Conn> Drop for Lease<C> {
    fn drop(&mut self) {
        let ended = self.meter.as_ref().is_some_and(|m| m.ended());
        if let (Some((conn, pool)), true) = (self.conn.take(), ended) {
            if !conn.is_closed() {
                pool.put(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;
    use crate::body::Metered;

    /// A connection known by its number, closed from outside.
    #[derive(Debug, Clone)]
    struct Fake(u32, Arc<AtomicBool>);

    impl Fake {
        fn new(n: u32) -> Fake {
            Fake(n, Arc::default())
        }
        fn close(&self) {
            self.1.store(true, Ordering::Relaxed);
        }
    }

    impl Conn for Fake {
        fn is_closed(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }

    /// Returns `conn` to `pool` through a lease whose body was read to its end.
    async fn give_back(pool: &Arc<Pool<Fake>>, conn: Fake) {
        let mut lease = Lease::new(conn, pool.clone());
        let meter = Arc::new(Meter::default());
        lease.watch(&meter);
        let body = Metered::new(http_body_util::Full::new(Bytes::from_static(b"ok")), meter, None, None);
        body.collect().await.unwrap();
        drop(lease);
    }

    fn checked_out(pool: &Pool<Fake>) -> Vec<u32> {
        std::iter::from_fn(|| pool.checkout()).map(|c| c.0).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_newest_idle_connection_is_taken_first() {
        let pool = Arc::new(Pool::default());
        for n in 1..=3 {
            give_back(&pool, Fake::new(n)).await;
        }
        assert_eq!(checked_out(&pool), [3, 2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_connections_are_skipped_and_dropped() {
        let pool = Arc::new(Pool::default());
        let (a, b, c) = (Fake::new(1), Fake::new(2), Fake::new(3));
        for conn in [a.clone(), b.clone(), c.clone()] {
            give_back(&pool, conn).await;
        }
        c.close();
        a.close();
        assert_eq!(checked_out(&pool), [2]);
        assert_eq!(pool.idle(), 0, "the closed ones were dropped on the way");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_body_was_not_read_to_its_end_closes_its_connection() {
        let pool = Arc::new(Pool::default());
        // Cut: the meter saw bytes but never the end.
        let mut lease = Lease::new(Fake::new(1), pool.clone());
        let meter = Arc::new(Meter::default());
        lease.watch(&meter);
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, crate::body::BoxError>>(1);
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"half")))).await.unwrap();
        let stream =
            Box::pin(futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) }));
        let mut body = Metered::new(http_body_util::StreamBody::new(stream), meter.clone(), None, None);
        body.frame().await.unwrap().unwrap();
        drop((body, tx));
        drop(lease);
        // Never watched: nothing is known of the body.
        drop(Lease::new(Fake::new(2), pool.clone()));
        // Read to its end, but the connection closed meanwhile.
        let closed = Fake::new(3);
        closed.close();
        give_back(&pool, closed).await;
        assert_eq!(pool.idle(), 0);
        give_back(&pool, Fake::new(4)).await;
        assert_eq!(checked_out(&pool), [4]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_reaped_after_the_timeout() {
        let pool = Arc::new(Pool::default());
        pool.start_reaper();
        give_back(&pool, Fake::new(1)).await;
        give_back(&pool, Fake::new(2)).await;
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        give_back(&pool, Fake::new(3)).await;
        // Past the first two's timeout, not the third's: the reaper has run since.
        tokio::time::sleep(IDLE_TIMEOUT / 2 + IDLE_TIMEOUT / 3).await;
        assert_eq!(pool.idle(), 1, "the reaper dropped the two old ones without a checkout");
        assert_eq!(checked_out(&pool), [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_timeout_is_not_handed_out_before_the_reaper_runs() {
        let pool = Arc::new(Pool::default());
        give_back(&pool, Fake::new(1)).await;
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_millis(1)).await;
        give_back(&pool, Fake::new(2)).await;
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(checked_out(&pool), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_idle_are_kept() {
        let pool = Arc::new(Pool::default());
        for n in 0..MAX_IDLE as u32 + 5 {
            give_back(&pool, Fake::new(n)).await;
        }
        assert_eq!(pool.idle(), MAX_IDLE);
    }
}
