//! A connection's one timer, moved only when a deadline comes sooner (BENCHMARKS.md,
//! round 11).
//!
//! Each request on a kept connection sets a deadline later than the last (its idle
//! timeout, its upstream's response timeout). Moving the timer later each time costs a
//! reading of the clock and its conversion to the timer wheel's ticks, for a timer
//! that almost never fires. Here a timer set no later than the new deadline stays
//! where it is; when it fires before the deadline, it is moved to it then and waited
//! on again. So a timeout never ends a wait before its deadline, the timer is moved
//! at most about once per timeout's length, and a deadline that comes sooner moves it
//! at once.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// Makes `timer` fire no later than `deadline`.
pub(crate) fn set(timer: Pin<&mut Sleep>, deadline: Instant) {
    if timer.deadline() > deadline {
        timer.reset(deadline);
    }
}

/// Ready once `deadline` has passed, `timer` having been [`set`] for it. A timer that
/// fires sooner is moved to `deadline` and waited on again.
pub(crate) fn poll_until(mut timer: Pin<&mut Sleep>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        ready!(timer.as_mut().poll(cx));
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        timer.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_deadline_whatever_the_timer_was_set_to() {
        let start = Instant::now();
        let mut timer = Box::pin(tokio::time::sleep_until(start + Duration::from_secs(10)));
        // Later: the timer stays at 10 s, fires there, and is moved to 25 s.
        let later = start + Duration::from_secs(25);
        set(timer.as_mut(), later);
        assert_eq!(timer.deadline(), start + Duration::from_secs(10), "not moved later");
        poll_fn(|cx| poll_until(timer.as_mut(), later, cx)).await;
        assert_eq!(Instant::now(), later);
        // Sooner than where it is: moved at once.
        let sooner = Instant::now() + Duration::from_secs(3);
        timer.as_mut().reset(Instant::now() + Duration::from_secs(60));
        set(timer.as_mut(), sooner);
        assert_eq!(timer.deadline(), sooner);
        poll_fn(|cx| poll_until(timer.as_mut(), sooner, cx)).await;
        assert_eq!(Instant::now(), sooner);
        // Already past when waited on: ends at once.
        let past = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        poll_fn(|cx| poll_until(timer.as_mut(), past, cx)).await;
        assert_eq!(Instant::now(), past + Duration::from_secs(1));
    }
}
