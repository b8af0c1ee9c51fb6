//! Which batch answers are worth sending again, and after how long: 429 and 5xx
//! answers, failed connections, broken exchanges and timeouts are (an upsert replaces
//! rows by their `keys`, so a batch that did land is only written again); TLS failures
//! and every other answer are not. The wait is the upstream's `Retry-After` (seconds or
//! an HTTP date, at most [`RETRY_AFTER_CAP`]) or an exponential backoff with full jitter.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, Response, StatusCode, header};

use super::Outcome;
use crate::error::{Refusal, UpstreamFailure};
use crate::upstream::retry_after_delay;

/// The first backoff's upper bound; each retry doubles it, up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured; the request's deadline bounds it too.
pub(super) const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// How one batch ended, or one attempt of it.
#[derive(Debug, Clone)]
pub(super) struct Ended {
    status: StatusCode,
    error: Option<&'static str>,
    retry_after: Option<HeaderValue>,
}

impl From<Refusal> for Ended {
    fn from(refusal: Refusal) -> Ended {
        Ended { status: refusal.status(), error: Some(refusal.code()), retry_after: None }
    }
}

impl Ended {
    pub(super) fn outcome(self, attempts: u32) -> Outcome {
        Outcome { status: self.status, error: self.error, attempts, retry_after: self.retry_after }
    }
}

/// What to do after one attempt.
pub(super) enum Verdict {
    /// Stored, or failed for good.
    Final(Ended),
    /// Worth another attempt, after the upstream's wait when it named one.
    Again(Ended, Option<Duration>),
}

/// Judges an upstream answer: 429 and 5xx are retried, the rest are final.
pub(super) fn judge_answer<B>(response: &Response<B>) -> Verdict {
    let status = response.status();
    let wait = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| retry_after_delay(v, SystemTime::now(), RETRY_AFTER_CAP));
    // The caller is told the wait in keygate's own words (seconds), never the
    // upstream's bytes, and only for a 429.
    let retry_after =
        wait.filter(|_| status == StatusCode::TOO_MANY_REQUESTS).map(|w| HeaderValue::from(w.as_secs()));
    let ended = Ended { status, error: None, retry_after };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Verdict::Again(ended, wait)
    } else {
        Verdict::Final(ended)
    }
}

/// Judges a failure keygate answers itself: a failed connection, a broken exchange or a
/// timeout is retried; a TLS failure (a certificate will not fix itself) is final.
pub(super) fn judge_failure(refusal: Refusal) -> Verdict {
    let again = matches!(
        refusal,
        Refusal::UpstreamTimeout
            | Refusal::UpstreamUnavailable(UpstreamFailure::Connect | UpstreamFailure::Protocol)
    );
    if again { Verdict::Again(refusal.into(), None) } else { Verdict::Final(refusal.into()) }
}

/// The wait before retry `attempt` (1 for the first): uniformly random up to
/// `BACKOFF_BASE × 2^(attempt-1)`, at most [`BACKOFF_CAP`] ("full jitter").
pub(super) fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    Duration::from_millis(fastrand::u64(0..=ceiling.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: u16, retry_after: Option<&str>) -> (bool, Option<Duration>) {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(v) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        match judge_answer(&response) {
            Verdict::Again(_, wait) => (true, wait),
            Verdict::Final(_) => (false, None),
        }
    }

    #[test]
    fn only_429_and_5xx_answers_are_retried() {
        for status in [429, 500, 502, 503, 504] {
            assert!(verdict(status, None).0, "{status}");
        }
        for status in [200, 201, 400, 401, 403, 404, 413] {
            assert!(!verdict(status, None).0, "{status}");
        }
        assert_eq!(verdict(429, Some("2")), (true, Some(Duration::from_secs(2))));
        assert_eq!(verdict(503, Some("soon")), (true, None));
    }

    #[test]
    fn transport_failures_but_tls_are_retried() {
        let again = |r: Refusal| matches!(judge_failure(r), Verdict::Again(..));
        assert!(again(Refusal::UpstreamTimeout));
        assert!(again(Refusal::UpstreamUnavailable(UpstreamFailure::Connect)));
        assert!(again(Refusal::UpstreamUnavailable(UpstreamFailure::Protocol)));
        assert!(!again(Refusal::UpstreamUnavailable(UpstreamFailure::Tls)));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let at = |v: &str| retry_after_delay(&HeaderValue::from_str(v).unwrap(), now, RETRY_AFTER_CAP);
        assert_eq!(at("7"), Some(Duration::from_secs(7)));
        assert_eq!(at("Sun, 06 Nov 1994 08:49:47 GMT"), Some(Duration::from_secs(10)));
        assert_eq!(at("Sun, 06 Nov 1994 08:49:00 GMT"), Some(Duration::ZERO), "a date passed");
        assert_eq!(at("86400"), Some(RETRY_AFTER_CAP));
        assert_eq!(at("-1"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        for attempt in 1..=40 {
            let ceiling = BACKOFF_BASE.saturating_mul(1 << (attempt - 1).min(16)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(attempt) <= ceiling, "{attempt}");
            }
        }
        assert!(
            (0..200).any(|_| backoff(3) > BACKOFF_BASE),
            "the third retry may wait longer than the first"
        );
    }
}
