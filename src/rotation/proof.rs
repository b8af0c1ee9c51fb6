//! Proving a candidate key before it is used: one cheap, read-only upstream call per
//! route that uses the secret, with the candidate injected the way the route injects its
//! key (its own [`Credential`](crate::routes::Credential) policy and upstream client,
//! pool and TLS trust). The call of each kind of route is its [`Proof`]: the import
//! preset's `authenticate`, the export preset's `list_exports`, a generic route's
//! `verify`.
//!
//! Each answer is judged ([`judge`]): accepted, refused (401/403, or an answer no retry
//! changes) or failed (a network failure, a 5xx, 408, 429: retried with a jittered,
//! capped backoff). [`prove`] asks every route in turn and gives one [`Verdict`] within
//! the reload's `verify_timeout`; [`call`] is one call, as `keygate check --verify`
//! makes it.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderMap, HeaderValue, USER_AGENT};
use prometheus::IntCounterVec;

use crate::body;
use crate::rewrite::UpstreamHead;
use crate::routes::{Credential, Proof, Route};
use crate::secret::Secret;
use crate::upstream;

/// The longest one proof call may wait for its answer's head (less when the route's
/// `response_timeout` is shorter).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// What of a proof's answer body is read (so the connection can be reused), and for how
/// long; a longer or slower body closes the connection instead.
const BODY_LIMIT: u64 = 64 * 1024;
const BODY_TIME: Duration = Duration::from_secs(2);
/// The first wait after a failed call; each next one doubles, up to [`BACKOFF_CAP`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What one proof call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The upstream accepted the key with this status.
    Accepted(StatusCode),
    /// The upstream refused it (401/403), or answered what no retry changes.
    Refused(String),
    /// The call failed or the upstream could not answer (network, 5xx, 408, 429).
    Failed(String),
}

impl Answer {
    /// The `result` label of `keygate_secret_verifications_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Answer::Accepted(_) => "ok",
            Answer::Refused(_) => "rejected",
            Answer::Failed(_) => "error",
        }
    }
}

/// How a candidate's proof ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every route accepted it.
    Accepted,
    /// A route refused it; the reason names the route and the answer.
    Rejected(String),
    /// Not every route accepted it within the time allowed; the reason names the last
    /// failure.
    TimedOut(String),
}

/// Judges the status of a proof's answer: `expect` (or any 2xx when it is empty)
/// accepts; 401 and 403 refuse; a 5xx, 408 and 429 are failures worth retrying; any
/// other status refuses (a wrong path or client id does not heal by itself).
pub(crate) fn judge(status: StatusCode, expect: &[u16]) -> Answer {
    let expected = if expect.is_empty() { status.is_success() } else { expect.contains(&status.as_u16()) };
    match status.as_u16() {
        _ if expected => Answer::Accepted(status),
        401 | 403 => Answer::Refused(format!("answered {}", status.as_u16())),
        408 | 429 | 500..=599 => Answer::Failed(format!("answered {}", status.as_u16())),
        other => {
            let wanted = if expect.is_empty() {
                "2xx".to_owned()
            } else {
                expect.iter().map(u16::to_string).collect::<Vec<_>>().join(" or ")
            };
            Answer::Refused(format!("answered {other}, not {wanted}"))
        }
    }
}

/// One proof call of `candidate` on `route` (which has a proof).
pub(crate) async fn call(route: &Route, candidate: &Secret) -> Answer {
    let Some(proof) = &route.proof else { return Answer::Accepted(StatusCode::OK) };
    let credential = match route.kind.credential(candidate) {
        Ok(credential) => credential,
        Err(unsendable) => return Answer::Refused(unsendable.to_string()),
    };
    let sender = sender();
    let head = match head(&credential, proof, &sender) {
        Ok(head) => head,
        Err(why) => return Answer::Refused(why),
    };
    let timeout = route.response_timeout.min(CALL_TIMEOUT);
    let request = upstream::Outbound::Head(head, body::empty());
    match route.upstream.send(request, tokio::time::Instant::now(), timeout).await {
        Err(failure) => Answer::Failed(format!("{} failure", failure.label())),
        Ok(response) => {
            let status = response.status();
            upstream::discard(response, BODY_LIMIT, None, BODY_TIME).await;
            judge(status, &proof.expect)
        }
    }
}

/// The one line a proof call sends of its own: who sends it.
fn sender() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(USER_AGENT, HeaderValue::from_static(concat!("keygate/", env!("CARGO_PKG_VERSION"))));
    headers
}

/// The proof request's head: the proof's method and path on the route's upstream,
/// carrying `credential` (the candidate's) exactly where the route's requests carry
/// their key, by the same rules ([`crate::rewrite::UpstreamHead`]), and nothing else
/// but `sender`.
fn head<'a>(
    credential: &'a Credential,
    proof: &'a Proof,
    sender: &'a HeaderMap,
) -> Result<UpstreamHead<'a>, String> {
    let query = credential.query_for(proof.query.as_deref(), true).map_err(|r| r.reason().to_owned())?;
    credential
        .upstream_head(&proof.method, sender, [proof.path.as_str(), ""], query, true)
        .map_err(|_| "the proof path cannot be sent".to_owned())
}

/// Proves `candidate` of secret `secret` on each of `routes` in turn, retrying failed
/// calls with backoff, until every route accepted it, one refused it, or `within` has
/// passed. Every call is counted in `counts` (`secret`, `result`).
pub(crate) async fn prove(
    secret: &str,
    candidate: &Secret,
    routes: &[Arc<Route>],
    within: Duration,
    counts: &IntCounterVec,
) -> Verdict {
    let fingerprint = candidate.fingerprint();
    let last = parking_lot::Mutex::new(None::<String>);
    let work = async {
        for route in routes.iter().filter(|r| r.proof.is_some()) {
            let mut backoff = Backoff::default();
            loop {
                let answer = call(route, candidate).await;
                counts.with_label_values(&[secret, answer.label()]).inc();
                match answer {
                    Answer::Accepted(_) => break,
                    Answer::Refused(why) => {
                        return Verdict::Rejected(format!("route {:?} {why}", route.name));
                    }
                    Answer::Failed(why) => {
                        let wait = backoff.next();
                        tracing::warn!(
                            secret,
                            candidate = %fingerprint,
                            route = %route.name,
                            reason = %why,
                            retry_in_ms = wait.as_millis() as u64,
                            "key proof failed; retrying while the running key stays"
                        );
                        *last.lock() = Some(format!("route {:?} {why}", route.name));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Verdict::Accepted
    };
    match tokio::time::timeout(within, work).await {
        Ok(verdict) => verdict,
        Err(_) => {
            let last = last.lock().take().unwrap_or_else(|| "the call did not finish".to_owned());
            Verdict::TimedOut(format!("not proven within {within:?} (last: {last})"))
        }
    }
}

/// Waits between failed calls: doubling from [`BACKOFF_FIRST`] up to [`BACKOFF_CAP`],
/// each wait drawn between half and all of its step, so that many sidecars rotating at
/// once do not call in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_FIRST }
    }
}

impl Backoff {
    /// The next wait.
    pub(crate) fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_CAP);
        // A fresh RandomState is randomly keyed: hashing anything gives a random number.
        let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
        let half = step / 2;
        half + half.mul_f64((random % 1024) as f64 / 1023.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_by_status() {
        let s = |n| StatusCode::from_u16(n).unwrap();
        assert_eq!(judge(s(200), &[]), Answer::Accepted(s(200)));
        assert_eq!(judge(s(204), &[]), Answer::Accepted(s(204)));
        assert_eq!(judge(s(401), &[]), Answer::Refused("answered 401".into()));
        assert_eq!(judge(s(403), &[]), Answer::Refused("answered 403".into()));
        for retried in [500, 502, 503, 504, 408, 429] {
            assert_eq!(judge(s(retried), &[]), Answer::Failed(format!("answered {retried}")), "{retried}");
        }
        assert_eq!(judge(s(404), &[]), Answer::Refused("answered 404, not 2xx".into()));
        // `expect` replaces "any 2xx".
        assert_eq!(judge(s(404), &[200, 404]), Answer::Accepted(s(404)));
        assert_eq!(judge(s(204), &[200]), Answer::Refused("answered 204, not 200".into()));
        assert_eq!(judge(s(302), &[200, 204]), Answer::Refused("answered 302, not 200 or 204".into()));
        assert_eq!(judge(s(503), &[200]), Answer::Failed("answered 503".into()));
        assert_eq!(
            [Answer::Accepted(s(200)), Answer::Refused(String::new()), Answer::Failed(String::new())]
                .map(|a| a.label()),
            ["ok", "rejected", "error"]
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_each_step() {
        let mut steps = Vec::new();
        for _ in 0..200 {
            let mut backoff = Backoff::default();
            steps.push((0..8).map(|_| backoff.next()).collect::<Vec<_>>());
        }
        let expected_steps = [200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(Duration::from_millis);
        for waits in &steps {
            for (wait, step) in waits.iter().zip(expected_steps) {
                assert!(*wait >= step / 2 && *wait <= step, "{wait:?} outside [{:?}, {step:?}]", step / 2);
            }
        }
        // Jittered: the first waits of 200 backoffs are not all the same.
        let firsts: std::collections::BTreeSet<Duration> = steps.iter().map(|w| w[0]).collect();
        assert!(firsts.len() > 10, "{firsts:?}");
    }
}
