//! What the update-status guard knows about one upstream and client id: the last good
//! answer, a running back-off and what the last flight got, and which answers settle a
//! caller without an upstream call.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::stored::Stored;
use crate::body::ProxyBody;
use crate::error::Refusal;

#[derive(Default)]
pub(super) struct State {
    /// The last 200.
    pub(super) good: Option<Arc<Stored>>,
    /// Until when the upstream asked keygate to wait, and the 429 that said so.
    pub(super) backoff: Option<(Instant, Arc<Stored>)>,
    /// Bumped when a flight ends, so the callers that waited for it know.
    pub(super) generation: u64,
    /// What the last flight got, for those callers.
    pub(super) last: Shared,
}

#[derive(Default, Clone)]
pub(super) enum Shared {
    /// Nothing the waiting callers can be given (an answer too large to keep).
    #[default]
    Nothing,
    Answer(Arc<Stored>),
    Refused(Refusal),
}

/// How one caller was answered, for `keygate_update_status_answers_total`.
pub(super) type Served = (Result<Response<ProxyBody>, Refusal>, &'static str);

impl State {
    /// The answer a caller gets without anyone calling upstream: a fresh 200, or during
    /// a back-off the last 200 marked stale, else the 429.
    pub(super) fn settled(&self, ttl: Duration) -> Option<(Response<ProxyBody>, &'static str)> {
        if let Some(good) = self.good.as_ref().filter(|g| g.age() < ttl) {
            return Some((good.fresh(ttl), "cached"));
        }
        let (until, limited) = self.backoff.as_ref().filter(|(until, _)| *until > Instant::now())?;
        Some(match &self.good {
            Some(good) => (good.stale(), "stale"),
            None => (limited.limited(until.saturating_duration_since(Instant::now())), "limited"),
        })
    }

    /// Keeps what a flight (here or elsewhere in the fleet) learnt.
    pub(super) fn keep(&mut self, stored: &Arc<Stored>, ttl: Duration) {
        match stored.status {
            StatusCode::OK => {
                if self.good.as_ref().is_none_or(|g| g.at_ms <= stored.at_ms) {
                    self.good = Some(stored.clone());
                }
                self.backoff = None;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = stored
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| {
                        crate::upstream::retry_after_delay(v, std::time::SystemTime::now(), BACKOFF_CAP)
                    })
                    .unwrap_or(ttl);
                self.backoff = Some((stored.at + wait, stored.clone()));
            }
            _ => {}
        }
    }
}

/// The longest back-off a 429's `Retry-After` starts.
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(600);

/// True when `known` answers a caller without an upstream call: a fresh 200, or a
/// back-off still running.
pub(super) fn settles(known: &[Arc<Stored>], ttl: Duration) -> bool {
    let mut state = State::default();
    for stored in known {
        state.keep(stored, ttl);
    }
    state.settled(ttl).is_some()
}
