//! Re-batching an import upsert of more than 100 records (docs/presets.md, "Re-batched
//! upserts"): the records go up in order as upserts the vendor takes, each sent by the
//! pipeline's own send step, at most `batch_concurrency` at once; a batch answered 429 or
//! 5xx, or not answered at all, is sent again after a backoff (upserts replace rows by
//! their `keys`, so a repeat is harmless); the first batch that fails stops new ones from
//! starting. The caller gets one answer listing every batch, so it knows exactly which
//! records were stored.

mod retry;

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use crate::body::{self, Meter, ProxyBody};
use crate::error::{self, Refusal};
use crate::gateway::Gateway;
use crate::routes::upsert::Batch;
use crate::routes::{Route, Target};
use crate::upstream::Outbound;
use retry::Verdict;

/// Most of an upstream answer to a batch that is read (and thrown away) so that its
/// connection can be reused; a longer answer costs the connection instead.
const DRAIN_LIMIT: u64 = 64 * 1024;
/// The longest that reading such an answer away may take.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A re-batched upsert: the upstream request's head, and its batches in order.
pub(crate) struct Plan {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub batches: Vec<Batch>,
}

/// How one batch ended.
#[derive(Debug, Clone)]
struct Outcome {
    /// The upstream's status, or keygate's for a failure it answers itself.
    status: StatusCode,
    /// keygate's error code when no upstream answer came.
    error: Option<&'static str>,
    attempts: u32,
    retry_after: Option<HeaderValue>,
}

impl Outcome {
    fn stored(&self) -> bool {
        self.status.is_success()
    }
}

/// What every batch of one request shares.
struct Run<'a> {
    gw: &'a Gateway,
    route: &'a Route,
    target: &'a Target<'a>,
    plan: &'a Plan,
    bytes_in: &'a Meter,
    /// No attempt starts, and none goes on, past this.
    deadline: Instant,
}

/// Sends every batch of `plan` and answers for all of them. The status returned beside
/// the answer is the upstream's that decided it, for the access log.
pub(crate) async fn send_all(
    gw: &Gateway,
    route: &Route,
    target: &Target<'_>,
    plan: Plan,
    bytes_in: &Meter,
) -> (Response<ProxyBody>, Option<StatusCode>) {
    let deadline = Instant::now() + route.response_timeout;
    let run = Run { gw, route, target, plan: &plan, bytes_in, deadline };
    let outcomes = run.all().await;
    let counter = |result: &str| gw.metrics.import_batches.with_label_values(&[&route.name, result]);
    for outcome in &outcomes {
        match outcome {
            Some(o) if o.stored() => counter("created").inc(),
            Some(_) => counter("failed").inc(),
            None => counter("not_sent").inc(),
        }
    }
    answer(&plan.batches, &outcomes)
}

impl Run<'_> {
    /// Every batch's outcome, in order; `None` for a batch never sent because an
    /// earlier one failed.
    async fn all(&self) -> Vec<Option<Outcome>> {
        let total = self.plan.batches.len();
        let mut outcomes = vec![None; total];
        let mut in_flight = FuturesUnordered::new();
        let (mut next, mut failed) = (0, false);
        loop {
            while !failed && next < total && in_flight.len() < self.route.limits.batch_concurrency {
                let index = next;
                in_flight.push(Box::pin(async move { (index, self.batch(&self.plan.batches[index]).await) }));
                next += 1;
            }
            let Some((index, outcome)) = in_flight.next().await else { break };
            failed |= !outcome.stored();
            outcomes[index] = Some(outcome);
        }
        outcomes
    }

    /// Sends one batch until it is stored, fails for good, or runs out of retries or time.
    async fn batch(&self, batch: &Batch) -> Outcome {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let verdict = self.attempt(batch).await;
            let (failure, wait) = match verdict {
                Verdict::Final(failure) => return failure.outcome(attempts),
                Verdict::Again(failure, wait) => (failure, wait),
            };
            let wait = wait.unwrap_or_else(|| retry::backoff(attempts));
            if attempts > self.route.limits.batch_retries || Instant::now() + wait >= self.deadline {
                return failure.outcome(attempts);
            }
            self.gw.metrics.import_retries.with_label_values(&[&self.route.name]).inc();
            tokio::time::sleep(wait).await;
        }
    }

    /// One send of `batch` through the pipeline's send step, and what to do next.
    async fn attempt(&self, batch: &Batch) -> Verdict {
        let mut request = Request::new(body::full(batch.body.clone()));
        *request.method_mut() = self.plan.method.clone();
        *request.uri_mut() = self.plan.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.plan.headers.clone();
        // The deadline covers the send up to the answer's head, which decides: an answer
        // that came in time stands, however long its body then takes.
        let sent =
            crate::forward::send(self.gw, self.route, self.target, Outbound::built(request), self.bytes_in);
        match tokio::time::timeout_at(self.deadline, sent).await {
            Ok(Ok(response)) => {
                let verdict = retry::judge_answer(&response);
                // Read away only to reuse the connection; a slow body costs the connection.
                let idle = Some(self.route.response_timeout);
                crate::upstream::discard(response, DRAIN_LIMIT, idle, DRAIN_TIME).await;
                verdict
            }
            Ok(Err(refusal)) => retry::judge_failure(refusal),
            Err(_) => Verdict::Final(Refusal::UpstreamTimeout.into()),
        }
    }
}

/// The caller's answer: 201 when every batch was stored, else the first failing
/// batch's status; the body lists every batch.
fn answer(batches: &[Batch], outcomes: &[Option<Outcome>]) -> (Response<ProxyBody>, Option<StatusCode>) {
    let listed: Vec<Listing> = batches.iter().zip(outcomes).map(|(b, o)| listing(b, o.as_ref())).collect();
    let records = batches.last().map_or(0, |b| b.to);
    let failing =
        batches.iter().zip(outcomes).find_map(|(b, o)| o.as_ref().filter(|o| !o.stored()).map(|o| (b, o)));
    let Some((first, failure)) = failing else {
        let message = format!("all {records} records were stored, in {} upserts", batches.len());
        return (
            error::batch_answer(StatusCode::CREATED, &message, &[], &listed, None),
            Some(StatusCode::CREATED),
        );
    };
    let stored: usize = batches
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.as_ref().is_some_and(Outcome::stored))
        .map(|(b, _)| b.to - b.from)
        .sum();
    let message = format!(
        "records {} to {} were not stored ({}); {stored} of {records} records were stored",
        first.from,
        first.to - 1,
        why(failure)
    );
    let mut reasons = Vec::new();
    for (b, o) in batches.iter().zip(outcomes) {
        match o {
            Some(o) if !o.stored() => reasons.push(format!("records [{}, {}): {}", b.from, b.to, why(o))),
            None => reasons
                .push(format!("records [{}, {}): not sent, since an earlier batch failed", b.from, b.to)),
            Some(_) => {}
        }
    }
    let upstream = failure.error.is_none().then_some(failure.status);
    let response =
        error::batch_answer(failure.status, &message, &reasons, &listed, failure.retry_after.clone());
    (response, upstream)
}

/// One entry of the `batches` list: the record range `[from, to)`, and how it went.
#[derive(serde::Serialize)]
struct Listing {
    records: [usize; 2],
    sent: bool,
    status: Option<u16>,
    attempts: u32,
    /// keygate's error code when no upstream answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

fn listing(batch: &Batch, outcome: Option<&Outcome>) -> Listing {
    let records = [batch.from, batch.to];
    match outcome {
        None => Listing { records, sent: false, status: None, attempts: 0, error: None },
        Some(o) => Listing {
            records,
            sent: true,
            status: Some(o.status.as_u16()),
            attempts: o.attempts,
            error: o.error,
        },
    }
}

fn why(outcome: &Outcome) -> String {
    let tries =
        if outcome.attempts == 1 { "1 attempt".to_owned() } else { format!("{} attempts", outcome.attempts) };
    match outcome.error {
        Some(code) => format!("{code} after {tries}"),
        None => format!("the upstream answered {} after {tries}", outcome.status.as_u16()),
    }
}
