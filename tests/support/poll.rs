//! Waiting for something with a deadline instead of sleeping: the one [`eventually`] of
//! the suite, and the bound most waits use.

use std::future::Future;
use std::time::{Duration, Instant};

/// A generous bound for anything that should happen "soon" on a loaded machine.
pub const SOON: Duration = Duration::from_secs(10);

/// How often [`eventually`] looks again.
const EVERY: Duration = Duration::from_millis(10);

/// What a check passed to [`eventually`] answers: `true` or `Some(value)` once it holds.
pub trait Outcome {
    /// What [`eventually`] returns once the check holds.
    type Value;
    /// `Some` once the check holds.
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every 10 ms until it answers `true` or `Some(value)` (returned), or
/// panics naming `what` once `within` has passed.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> <Fut::Output as Outcome>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await.ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(EVERY).await;
    }
}
