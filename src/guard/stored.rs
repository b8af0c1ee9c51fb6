//! One kept `update_status` answer: its status, the headers worth repeating, its body
//! (already scrubbed) and when the upstream gave it; how it is served again (fresh,
//! with `Age` and `Cache-Control`, or stale, with `Warning`), and how it travels
//! through Redis (a JSON head line, then the body bytes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::body::{self, ProxyBody};

/// Headers never repeated from a kept answer: ours replace them, or they belong to one
/// caller (`Set-Cookie`), or the body keygate sends frames itself.
/// Headers an answer read back from Redis never brings: they frame a connection.
const FRAMING: [HeaderName; 5] =
    [header::CONNECTION, header::TRANSFER_ENCODING, header::TRAILER, header::UPGRADE, header::TE];

/// The largest answer the guard keeps; a larger one is passed to its caller only.
pub(super) const KEEP_LIMIT: usize = 64 * 1024;

/// The most header text an answer read back from Redis may hold besides its body.
const HEAD_LIMIT: usize = 16 * 1024;

const NOT_KEPT: [HeaderName; 6] = [
    header::AGE,
    header::CACHE_CONTROL,
    header::WARNING,
    header::SET_COOKIE,
    header::CONTENT_LENGTH,
    header::EXPIRES,
];

/// A kept answer.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the upstream answered, on this host's monotonic clock.
    pub at: Instant,
    /// The same moment as Unix milliseconds, for other hosts.
    pub at_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Stored {
    /// An answer the upstream gave just now.
    pub(super) fn now(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Stored {
        let mut kept = headers.clone();
        for name in &NOT_KEPT {
            kept.remove(name);
        }
        Stored { status, headers: kept, body, at: Instant::now(), at_ms: unix_ms(SystemTime::now()) }
    }

    /// How long ago the upstream gave it.
    pub(super) fn age(&self) -> Duration {
        self.at.elapsed()
    }

    /// Served as fresh: `Age` and `Cache-Control: max-age=<what is left of ttl>`.
    pub(super) fn fresh(&self, ttl: Duration) -> Response<ProxyBody> {
        let age = self.age();
        let mut response = self.response(age);
        // Whole seconds, like `Age`: the two add up to the TTL.
        let left = ttl.as_secs().saturating_sub(age.as_secs());
        if let Ok(value) = HeaderValue::from_str(&format!("max-age={left}")) {
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
        response
    }

    /// Served past its time, while the upstream asks keygate to wait: `Age` and
    /// `Warning: 110 - "Response is Stale"`.
    pub(super) fn stale(&self) -> Response<ProxyBody> {
        let mut response = self.response(self.age());
        response
            .headers_mut()
            .insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
        response
    }

    /// A kept 429, with `Retry-After` saying how much of the back-off is left.
    pub(super) fn limited(&self, left: Duration) -> Response<ProxyBody> {
        let mut response = self.response(self.age());
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }

    /// Served as the upstream gave it (an answer that is not kept, shared only with the
    /// callers that waited for it).
    pub(super) fn passed(&self) -> Response<ProxyBody> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }

    fn response(&self, age: Duration) -> Response<ProxyBody> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response.headers_mut().insert(header::AGE, HeaderValue::from(age.as_secs()));
        response
    }

    /// The Redis form: a JSON line (`at_ms`, `status`, text headers, and `extra`), then
    /// the body bytes.
    pub(super) fn encode(&self, extra: Value) -> Vec<u8> {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))).collect();
        let head = json!({ "at_ms": self.at_ms, "status": self.status.as_u16(), "headers": headers, "extra": extra });
        let mut out = head.to_string().into_bytes();
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads the Redis form back (`None` for anything else), with its `extra`. Its age
    /// is taken from `at_ms` against this host's clock, never below zero; `None` when it
    /// is older than this host's monotonic clock reaches back.
    pub(super) fn decode(bytes: &[u8]) -> Option<(Stored, Value)> {
        // Only what this process would have written: a kept body and its headers.
        if bytes.len() > KEEP_LIMIT + HEAD_LIMIT {
            return None;
        }
        let split = bytes.iter().position(|&b| b == b'\n')?;
        let head: Value = serde_json::from_slice(&bytes[..split]).ok()?;
        let status = StatusCode::from_u16(u16::try_from(head["status"].as_u64()?).ok()?).ok()?;
        let at_ms = head["at_ms"].as_u64()?;
        let mut headers = HeaderMap::new();
        for pair in head["headers"].as_array()? {
            let name = HeaderName::from_bytes(pair[0].as_str()?.as_bytes()).ok()?;
            headers.append(name, HeaderValue::from_str(pair[1].as_str()?).ok()?);
        }
        // As when kept, and no framing of another connection.
        for name in NOT_KEPT.iter().chain(&FRAMING) {
            headers.remove(name);
        }
        let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(at_ms));
        // An answer older than this host's monotonic clock (a host up for less time
        // than its age) cannot be placed on it: it is taken as unknown, never as new.
        let at = Instant::now().checked_sub(age)?;
        let body = Bytes::copy_from_slice(&bytes[split + 1..]);
        Some((Stored { status, headers, body, at, at_ms }, head["extra"].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_form_reads_back_without_the_per_caller_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let stored = Stored::now(StatusCode::OK, &headers, Bytes::from_static(b"{\"a\":\n1}"));
        let (back, extra) = Stored::decode(&stored.encode(json!({"until_ms": 5}))).unwrap();
        assert_eq!(
            (back.status, back.at_ms, &back.body[..]),
            (StatusCode::OK, stored.at_ms, &b"{\"a\":\n1}"[..])
        );
        assert_eq!(back.headers.len(), 1, "{:?}", back.headers);
        assert_eq!(extra["until_ms"], 5);
        assert!(Stored::decode(b"not json\nbody").is_none());
    }

    #[test]
    fn what_redis_gives_back_is_bounded_and_frames_nothing() {
        let head = json!({"at_ms": unix_ms(SystemTime::now()), "status": 200, "extra": {},
            "headers": [["transfer-encoding", "chunked"], ["connection", "close"], ["set-cookie", "s=1"],
                        ["content-type", "application/json"]]});
        let (back, _) = Stored::decode(format!("{head}\n{{}}").as_bytes()).unwrap();
        assert_eq!(back.headers.len(), 1, "{:?}", back.headers);
        let huge = format!("{head}\n{}", "x".repeat(super::KEEP_LIMIT + HEAD_LIMIT));
        assert!(Stored::decode(huge.as_bytes()).is_none());
    }

    #[test]
    fn an_answer_older_than_this_hosts_clock_reaches_is_unknown_not_new() {
        let stored = Stored::now(StatusCode::OK, &HeaderMap::new(), Bytes::from_static(b"{}"));
        let line = String::from_utf8(stored.encode(json!({}))).unwrap();
        let ancient = line.replacen(&format!("\"at_ms\":{}", stored.at_ms), "\"at_ms\":1000", 1);
        assert_ne!(ancient, line, "the encoded form holds at_ms");
        // Known with its age, or unknown: never new.
        if let Some((back, _)) = Stored::decode(ancient.as_bytes()) {
            assert!(
                back.age() > Duration::from_secs(365 * 86400),
                "a 1970 answer read back as {:?} old",
                back.age()
            );
        }
    }

    #[test]
    fn fresh_answers_say_their_age_and_what_is_left() {
        let stored = Stored::now(StatusCode::OK, &HeaderMap::new(), Bytes::new());
        let fresh = stored.fresh(Duration::from_secs(60));
        assert_eq!(fresh.headers()[header::AGE], "0");
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], "max-age=60");
        let stale = stored.stale();
        assert_eq!(stale.headers()[header::WARNING], "110 - \"Response is Stale\"");
        assert_eq!(stored.limited(Duration::from_millis(1500)).headers()[header::RETRY_AFTER], "2");
    }
}
