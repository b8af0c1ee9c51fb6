//! The update-status guard (docs/presets.md, "Update-status guard"): the vendor allows
//! one `fullupdatestatus` call per client id a minute and answers 429 past that, so on
//! `rjmetrics-export` routes keygate makes that call for everyone. Callers arriving
//! together wait for one upstream call (single flight per upstream and client id); a
//! 200 answer is served to all for the route's `update_status_ttl`; a 429 starts a
//! back-off during which callers get the last good answer marked stale, or the 429.
//! Anything else passes through, shared only with the callers that waited for it.
//!
//! With `[coordination] redis`, the answers and the right to call upstream are shared
//! by every keygate process of the fleet ([`fleet`]); when Redis fails, this process's
//! own guard answers and the failure is counted.

mod fetch;
mod fleet;
mod stored;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use crate::access::Exchange;
use crate::body::{Meter, ProxyBody};
use crate::config::Snapshot;
use crate::error::Refusal;
use crate::gateway::Gateway;
use crate::routes::{Kind, Route, Target};
pub(crate) use fleet::COORDINATION_OPS;
use fleet::View;
use stored::Stored;

/// The `source` labels of `keygate_update_status_answers_total`.
pub(crate) const SOURCES: [&str; 5] = ["upstream", "shared", "cached", "stale", "limited"];

/// Every guarded key's state, and the Redis connection when one is configured.
#[derive(Default)]
pub(crate) struct Guard {
    entries: parking_lot::Mutex<HashMap<String, Arc<Entry>>>,
    fleet: fleet::Connections,
}

/// One upstream and client id.
#[derive(Default)]
struct Entry {
    state: parking_lot::Mutex<State>,
    /// Held by the one caller that asks upstream (or Redis) for everyone.
    flight: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The last 200.
    good: Option<Arc<Stored>>,
    /// Until when the upstream asked keygate to wait, and the 429 that said so.
    backoff: Option<(Instant, Arc<Stored>)>,
    /// Bumped when a flight ends, so the callers that waited for it know.
    generation: u64,
    /// What the last flight got, for those callers.
    last: Shared,
}

#[derive(Default, Clone)]
enum Shared {
    /// Nothing the waiting callers can be given (an answer too large to keep).
    #[default]
    Nothing,
    Answer(Arc<Stored>),
    Refused(Refusal),
}

/// How one caller was answered, for `keygate_update_status_answers_total`.
type Served = (Result<Response<ProxyBody>, Refusal>, &'static str);

impl State {
    /// The answer a caller gets without anyone calling upstream: a fresh 200, or during
    /// a back-off the last 200 marked stale, else the 429.
    fn settled(&self, ttl: Duration) -> Option<(Response<ProxyBody>, &'static str)> {
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
    fn keep(&mut self, stored: &Arc<Stored>, ttl: Duration) {
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
                        crate::batch::retry_after_delay(v, std::time::SystemTime::now(), BACKOFF_CAP)
                    })
                    .unwrap_or(ttl);
                self.backoff = Some((stored.at + wait, stored.clone()));
            }
            _ => {}
        }
    }
}

/// The longest back-off a 429's `Retry-After` starts.
const BACKOFF_CAP: Duration = Duration::from_secs(600);

impl Guard {
    fn entry(&self, key: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock();
        entries.entry(key.to_owned()).or_default().clone()
    }
}

/// Answers an `update_status` request through the guard. `request` is the upstream
/// request built for this caller; it is sent only if this caller makes the call.
pub(crate) async fn serve(
    gw: &Gateway,
    snapshot: &Snapshot,
    route: &Route,
    target: &Target,
    request: Request<ProxyBody>,
    bytes_in: &Meter,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Refusal> {
    let client_id = match &route.kind {
        Kind::Preset { client_id, .. } => client_id.as_str(),
        Kind::Generic { .. } => "",
    };
    let key = format!("{}|{client_id}", route.upstream.url());
    let (answer, source) =
        Box::pin(guarded(gw, snapshot, route, target, request, bytes_in, exchange, &key)).await;
    gw.metrics.update_status.with_label_values(&[&route.name, source]).inc();
    answer
}

#[expect(clippy::too_many_arguments, reason = "the pipeline's own request state, passed on")]
async fn guarded(
    gw: &Gateway,
    snapshot: &Snapshot,
    route: &Route,
    target: &Target,
    request: Request<ProxyBody>,
    bytes_in: &Meter,
    exchange: &mut Exchange,
    key: &str,
) -> Served {
    let ttl = route.limits.update_status_ttl;
    let entry = gw.guard.entry(key);
    let seen = {
        let state = entry.state.lock();
        if let Some((response, source)) = state.settled(ttl) {
            return (Ok(response), source);
        }
        state.generation
    };
    let _flight = entry.flight.lock().await;
    {
        let state = entry.state.lock();
        if let Some((response, source)) = state.settled(ttl) {
            return (Ok(response), source);
        }
        if state.generation != seen {
            match &state.last {
                Shared::Answer(stored) => return (Ok(stored.passed()), "shared"),
                Shared::Refused(refusal) => return (Err(refusal.clone()), "shared"),
                Shared::Nothing => {}
            }
        }
    }
    lead(gw, snapshot, route, target, request, bytes_in, exchange, key, &entry).await
}

/// What the one caller that asks for everyone does: Redis first, when the fleet shares
/// answers, then upstream; what it learns is kept for the others.
#[expect(clippy::too_many_arguments, reason = "the pipeline's own request state, passed on")]
async fn lead(
    gw: &Gateway,
    snapshot: &Snapshot,
    route: &Route,
    target: &Target,
    request: Request<ProxyBody>,
    bytes_in: &Meter,
    exchange: &mut Exchange,
    key: &str,
    entry: &Entry,
) -> Served {
    let ttl = route.limits.update_status_ttl;
    let fleet = gw.guard.fleet.get(gw, snapshot);
    let lock = match &fleet {
        Some(fleet) => match fleet.before_call(key, ttl, route.response_timeout).await {
            View::Known(stored) => {
                let mut state = entry.state.lock();
                for s in &stored {
                    state.keep(s, ttl);
                }
                // Another process called: this one's answer comes from Redis.
                if let Some((response, source)) = state.settled(ttl) {
                    return (Ok(response), source);
                }
                None
            }
            View::Go(lock) => lock,
        },
        None => None,
    };
    let fetched = fetch::fetch(gw, snapshot, route, target, request, bytes_in, exchange).await;
    let mut state = entry.state.lock();
    state.generation += 1;
    let answer = match fetched {
        Ok(fetch::Fetched::Kept(stored)) => {
            let stored = Arc::new(stored);
            state.keep(&stored, ttl);
            state.last = Shared::Answer(stored.clone());
            if let Some(fleet) = &fleet {
                fleet.after_call(key, lock, Some(stored.clone()), ttl);
            }
            match stored.status {
                StatusCode::OK => Ok(stored.fresh(ttl)),
                StatusCode::TOO_MANY_REQUESTS => {
                    Ok(state.settled(ttl).map_or_else(|| stored.passed(), |(r, _)| r))
                }
                _ => Ok(stored.passed()),
            }
        }
        Ok(fetch::Fetched::Streamed(response)) => {
            state.last = Shared::Nothing;
            if let Some(fleet) = &fleet {
                fleet.after_call(key, lock, None, ttl);
            }
            Ok(response)
        }
        Err(refusal) => {
            state.last = Shared::Refused(refusal.clone());
            if let Some(fleet) = &fleet {
                fleet.after_call(key, lock, None, ttl);
            }
            Err(refusal)
        }
    };
    (answer, "upstream")
}

/// True when `known` answers a caller without an upstream call: a fresh 200, or a
/// back-off still running.
fn settles(known: &[Arc<Stored>], ttl: Duration) -> bool {
    let mut state = State::default();
    for stored in known {
        state.keep(stored, ttl);
    }
    state.settled(ttl).is_some()
}
