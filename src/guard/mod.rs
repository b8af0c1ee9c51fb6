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
pub(crate) mod registry;
mod state;
mod stored;

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use crate::access::Exchange;
use crate::body::{Meter, ProxyBody};
use crate::config::Snapshot;
use crate::error::Refusal;
use crate::gateway::Gateway;
use crate::routes::{Kind, Route, Target};
use fleet::View;
use registry::Entry;
use state::{Served, Shared};

/// One caller's `update_status` request as the pipeline hands it over: its state, and
/// the upstream request built for this caller, sent only if this caller makes the call.
pub(crate) struct Call<'a> {
    pub gw: &'a Gateway,
    pub snapshot: &'a Snapshot,
    pub route: &'a Route,
    pub target: &'a Target<'a>,
    pub request: Request<ProxyBody>,
    pub bytes_in: &'a Meter,
    pub exchange: &'a mut Exchange,
}

/// Answers an `update_status` request through the guard.
pub(crate) async fn serve(call: Call<'_>) -> Result<Response<ProxyBody>, Refusal> {
    let (gw, route) = (call.gw, call.route);
    let client_id = match &route.kind {
        Kind::Preset { client_id, .. } => client_id.as_str(),
        Kind::Generic { .. } => "",
    };
    let key = format!("{}|{client_id}", route.upstream.url());
    let (answer, source) = Box::pin(guarded(call, &key)).await;
    gw.metrics.update_status.with_label_values(&[&route.name, source]).inc();
    answer
}

async fn guarded(call: Call<'_>, key: &str) -> Served {
    let gw = call.gw;
    let ttl = call.route.limits.update_status_ttl;
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
    lead(call, key, &entry).await
}

/// What the one caller that asks for everyone does: Redis first, when the fleet shares
/// answers, then upstream; what it learns is kept for the others.
async fn lead(call: Call<'_>, key: &str, entry: &Entry) -> Served {
    let (gw, snapshot, route) = (call.gw, call.snapshot, call.route);
    let ttl = route.limits.update_status_ttl;
    let fleet = gw.guard.fleet.get(&gw.metrics, snapshot);
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
    let fetched = fetch::fetch(call).await;
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
