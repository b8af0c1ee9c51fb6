//! The idle HTTP/1.1 connections of one upstream.
//!
//! A small LIFO stack: the newest idle connection is taken first (so the fewest stay
//! warm and the rest age out), closed ones are skipped, at most [`MAX_IDLE`] are kept,
//! and a reaper task drops those idle past [`IDLE_TIMEOUT`]. A connection comes back
//! only from the body of the answer it carried, once that body was read to its end
//! ([`super::h1::Body`]), so an answer that was cut, refused or looked like smuggling
//! never shares a connection with the next request.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long an idle pooled connection is kept.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How many idle HTTP/1.1 connections one upstream keeps.
pub(super) const MAX_IDLE: usize = 256;

/// What the pool needs to know of a connection.
pub(crate) trait Conn: Send + 'static {
    /// True once the connection can no longer carry a request (it may look at its
    /// socket, without waiting).
    fn is_closed(&mut self) -> bool;
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

impl<C> Pool<C> {
    /// Keeps `conn` for the next request, unless [`MAX_IDLE`] are kept already.
    pub(crate) fn put(&self, conn: C) {
        let mut state = self.state.lock();
        if state.idle.len() < MAX_IDLE {
            state.idle.push_back((conn, Instant::now()));
        }
    }
}

impl<C: Conn> Pool<C> {
    /// The newest idle connection that is still open and not idle too long at `now`.
    pub(crate) fn checkout(&self, now: Instant) -> Option<C> {
        let mut state = self.state.lock();
        while let Some((mut conn, since)) = state.idle.pop_back() {
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && !conn.is_closed() {
                return Some(conn);
            }
        }
        None
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
                state.idle.retain_mut(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && !conn.is_closed());
            }
        });
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.state.lock().idle.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

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
        fn is_closed(&mut self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }

    fn checked_out(pool: &Pool<Fake>) -> Vec<u32> {
        std::iter::from_fn(|| pool.checkout(Instant::now())).map(|c| c.0).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_newest_idle_connection_is_taken_first() {
        let pool = Arc::new(Pool::default());
        for n in 1..=3 {
            pool.put(Fake::new(n));
        }
        assert_eq!(checked_out(&pool), [3, 2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_connections_are_skipped_and_dropped() {
        let pool = Arc::new(Pool::default());
        let (a, b, c) = (Fake::new(1), Fake::new(2), Fake::new(3));
        for conn in [a.clone(), b.clone(), c.clone()] {
            pool.put(conn);
        }
        c.close();
        a.close();
        assert_eq!(checked_out(&pool), [2]);
        assert_eq!(pool.idle(), 0, "the closed ones were dropped on the way");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_closed_while_idle_is_never_handed_out() {
        let pool = Arc::new(Pool::default());
        let closed = Fake::new(3);
        pool.put(closed.clone());
        closed.close();
        assert_eq!(checked_out(&pool), Vec::<u32>::new());
        assert_eq!(pool.idle(), 0);
        pool.put(Fake::new(4));
        assert_eq!(checked_out(&pool), [4]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_reaped_after_the_timeout() {
        let pool = Arc::new(Pool::default());
        pool.start_reaper();
        pool.put(Fake::new(1));
        pool.put(Fake::new(2));
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        pool.put(Fake::new(3));
        // Past the first two's timeout, not the third's: the reaper has run since.
        tokio::time::sleep(IDLE_TIMEOUT / 2 + IDLE_TIMEOUT / 3).await;
        assert_eq!(pool.idle(), 1, "the reaper dropped the two old ones without a checkout");
        assert_eq!(checked_out(&pool), [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_timeout_is_not_handed_out_before_the_reaper_runs() {
        let pool = Arc::new(Pool::default());
        pool.put(Fake::new(1));
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_millis(1)).await;
        pool.put(Fake::new(2));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(checked_out(&pool), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_idle_are_kept() {
        let pool = Arc::new(Pool::default());
        for n in 0..MAX_IDLE as u32 + 5 {
            pool.put(Fake::new(n));
        }
        assert_eq!(pool.idle(), MAX_IDLE);
    }
}
