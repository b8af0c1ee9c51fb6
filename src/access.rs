//! One exchange's record: filled in as the pipeline runs, then — when the last byte of
//! the response has gone or the caller went away — written as the access log line
//! (docs/metrics.md, "Access log") and counted in the request metrics.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BoxError, Meter, ProxyBody};
use crate::caller::Group;
use crate::conn::ConnInfo;
use crate::error::Refusal;
use crate::gateway::Gateway;
use crate::request_body::RequestBody;
use crate::routes::Route;

/// The status recorded for a request whose caller went away before keygate answered
/// (nginx's convention); nothing was sent with it.
const CALLER_GONE: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// What is known about one request so far. Written exactly once: when the response's
/// body ends or is dropped ([`Exchange::finish`]), or, if the request is dropped before
/// it has an answer (the caller closed its connection), when the exchange itself is.
pub(crate) struct Exchange {
    gw: Arc<Gateway>,
    written: bool,
    start: Instant,
    access: bool,
    peer: SocketAddr,
    /// The caller's mTLS identities (empty without a client certificate).
    identities: Arc<[String]>,
    method: Method,
    /// The path without its query (the query may carry a key).
    path: String,
    pub route: Option<Arc<Route>>,
    pub operation: &'static str,
    pub caller: Option<Arc<Group>>,
    pub caller_addr: Option<IpAddr>,
    pub upstream_status: Option<StatusCode>,
    /// `previous` when the answer came from a retry with the previous key.
    pub key: Option<&'static str>,
    error: Option<&'static str>,
}

/// Formats an optional caller address (`-` when unknown).
pub(crate) fn addr_text(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

impl Exchange {
    /// Starts the record and counts the request in flight.
    pub(crate) fn begin(
        gw: &Arc<Gateway>,
        conn: &ConnInfo,
        request: &Request<RequestBody>,
        access: bool,
    ) -> Exchange {
        gw.metrics.in_flight.inc();
        Exchange {
            gw: gw.clone(),
            written: false,
            start: Instant::now(),
            access,
            peer: conn.peer,
            identities: conn.identities.clone(),
            method: request.method().clone(),
            // Only the access log line shows it. A CONNECT's target is an authority,
            // never a path with a query.
            path: match request.uri().authority() {
                _ if !access => String::new(),
                // Host and port only: user information in it could be a credential.
                Some(authority) if request.method() == Method::CONNECT => match authority.port() {
                    Some(port) => format!("{}:{port}", authority.host()),
                    None => authority.host().to_owned(),
                },
                _ => request.uri().path().to_owned(),
            },
            route: None,
            operation: "-",
            caller: None,
            caller_addr: Some(conn.peer.ip().to_canonical()),
            upstream_status: None,
            key: None,
            error: None,
        }
    }

    /// Notes that keygate answered itself, and counts the denial.
    pub(crate) fn refused(&mut self, refusal: &Refusal) {
        self.error = Some(refusal.code());
        self.gw.metrics.denied.with_label_values(&[self.route_name(), refusal.code()]).inc();
    }

    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.name.as_str())
    }

    /// Wraps the response body so the record is completed when it ends; `then` is
    /// dropped right after the record is written.
    pub(crate) fn finish(
        self,
        response: Response<ProxyBody>,
        bytes_in: Arc<Meter>,
        then: Box<dyn Send>,
    ) -> Response<ProxyBody> {
        let (parts, body) = response.into_parts();
        let done = Done { exchange: self, status: parts.status, bytes_in, _then: then };
        let body = Recorded { done, inner: body, bytes_out: 0 };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// A response body that counts what it sends and completes the record when it is
/// dropped (at its end, or when the caller went away): one allocation, the box it
/// is answered in.
struct Recorded {
    /// Written in `drop`, and dropped first (fields drop in order): the record, then
    /// `_then`, then the body. Kept in place, not taken out of an `Option`, which
    /// would move it twice.
    done: Done,
    inner: ProxyBody,
    bytes_out: u64,
}

/// What completing the record needs.
struct Done {
    exchange: Exchange,
    status: StatusCode,
    bytes_in: Arc<Meter>,
    /// Dropped after the record is written.
    _then: Box<dyn Send>,
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes_out += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let done = &mut self.done;
        let bytes = (done.bytes_in.bytes(), self.bytes_out);
        done.exchange.write(done.status, Some(bytes));
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.written {
            self.error = Some("caller_gone");
            self.write(CALLER_GONE, None);
        }
    }
}

impl Exchange {
    /// The access line and the request metrics, once; `bytes` (in, out) once there was
    /// an answer.
    fn write(&mut self, status: StatusCode, bytes: Option<(u64, u64)>) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let e = &*self;
        let m = &e.gw.metrics;
        let elapsed = e.start.elapsed();
        let group = e.caller.as_ref().map_or("-", |g| g.name.as_str());
        m.in_flight.dec();
        m.answered(e.route.as_deref(), e.operation, group, status, elapsed.as_secs_f64());
        if !e.access {
            return;
        }
        let route = e.route_name();
        let upstream_status = e.upstream_status.map(|s| s.as_u16());
        tracing::info!(
            target: "keygate::access",
            caller = %addr_text(e.caller_addr),
            peer = %e.peer,
            identity = e.identities.first().map(String::as_str),
            caller_group = group,
            route,
            operation = e.operation,
            method = e.method.as_str(),
            path = %e.path,
            status = status.as_u16(),
            upstream_status,
            key = e.key,
            duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            bytes_in = bytes.map(|b| b.0),
            bytes_out = bytes.map(|b| b.1),
            error = e.error,
            "request"
        );
    }
}
