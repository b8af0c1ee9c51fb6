//! The request pipeline: an ordered list of small steps, each either passing the
//! request on or answering it. Each step says why it sits where it sits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use crate::access::Exchange;
use crate::body::{self, Meter, Metered, ProxyBody};
use crate::caller::Caller;
use crate::config::Snapshot;
use crate::conn::ConnInfo;
use crate::error::{Refusal, Shape};
use crate::gateway::Gateway;
use crate::intercept;
use crate::request_body::RequestBody;
use crate::rewrite::UpstreamHead;
use crate::routes::{Credential, Kind, Route, Target, check_path, upsert};
use crate::upstream::{self, Outbound};
use crate::{batch, forward, guard};

/// How much of an answer replaced by a retry with the previous key is read (so its
/// connection can be reused), and for how long; a longer or slower one closes it.
const REPLACED_BODY_LIMIT: u64 = 64 * 1024;
const REPLACED_BODY_TIME: Duration = Duration::from_secs(1);

/// Handles one request end to end. Never fails: refusals are responses. `guard` (the
/// connection's own bookkeeping) is kept until the response's last byte, after the
/// access record is written.
pub(crate) async fn handle(
    gw: Arc<Gateway>,
    conn: ConnInfo,
    request: Request<RequestBody>,
    guard: Box<dyn Send>,
) -> Response<ProxyBody> {
    // One snapshot for the whole request, so a reload never mixes two configs.
    let snapshot = gw.snapshot();
    let mut exchange = Exchange::begin(&gw, &conn, &request, snapshot.log.access);
    let bytes_in = Arc::new(Meter::default());
    // The caller's head stays whole to the end, here: the upstream's path is made of
    // it, and the request is sent again from it with the previous key, when it is.
    // (Held by this step and lent to the next, it is in one future, not in two: each
    // level's future is moved into place, BENCHMARKS.md, round 14.)
    let response = if gw.is_shutting_down() {
        // Draining: finish what is in flight, take nothing new.
        Err(Refusal::ShuttingDown)
    } else if request.method() == Method::CONNECT {
        tunnel(&snapshot, &conn, request, &mut exchange)
    } else {
        let (caller, incoming) = request.into_parts();
        pipeline(&gw, &snapshot, &conn, &caller, incoming, &bytes_in, &mut exchange).await
    };
    let response = match response {
        Ok(response) => response,
        Err(refusal) => {
            exchange.refused(&refusal);
            let shape = exchange.route.as_ref().map_or(Shape::Keygate, |r| r.refusal_shape());
            refusal.into_shaped_response(shape)
        }
    };
    exchange.finish(response, bytes_in, guard)
}

/// A `CONNECT`, decided on its own terms (host, port, caller) before anything that
/// reads a path: its target has none, and no byte goes upstream for it.
fn tunnel(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request: Request<RequestBody>,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Refusal> {
    let head = CallerHead::of(request.method(), request.uri(), request.headers());
    if head.size > snapshot.server.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    intercept::accept(snapshot, conn, request, exchange)
}

/// The steps of one request, in order. The first that answers ends it.
async fn pipeline(
    gw: &Gateway,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    caller: &Parts,
    incoming: RequestBody,
    bytes_in: &Arc<Meter>,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Refusal> {
    let head = CallerHead::of(&caller.method, &caller.uri, &caller.headers);
    // The head alone, before routing: nothing should spend work on a head that is too
    // large or that a proxy in front may read another way.
    check_head(snapshot, caller.version, &head)?;
    // Paths are checked before routing so no trick can reach a prefix it should not.
    let path = caller.uri.path();
    check_path(path)?;
    let host = request_host(&caller.uri, &head);
    let (route, remainder) = snapshot.routes.find(host, path).ok_or(Refusal::NoRoute)?;
    let route = route.clone();
    exchange.route = Some(route.clone());
    // Who is calling decides everything below; an unknown caller learns nothing more.
    admit(gw, snapshot, conn, &route, &caller.headers, exchange)?;
    let target = route.target(&caller.method, remainder)?;
    exchange.operation = target.operation;
    // A declared length over the limit is refused before any byte (or 100 Continue).
    if head.declared.length.is_some_and(|n| n > route.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }
    // Only now is the request rewritten and its body read: strip, inject, body.
    let declared = head.declared;
    let Outgoing { request, resend } =
        match build_request(snapshot, &route, &target, caller, declared, incoming, bytes_in).await? {
            Built::One(outgoing) => outgoing,
            // More records than the vendor takes in one upsert: sent as batches, and
            // answered for all of them (src/batch.rs).
            Built::Batches(plan) => {
                let (response, status) = Box::pin(batch::send_all(gw, &route, &target, plan, bytes_in)).await;
                exchange.upstream_status = status;
                return Ok(response);
            }
        };
    // The vendor allows one update-status call a minute per client id: answers are
    // shared by every caller (src/guard).
    if target.operation == "update_status" && !route.limits.update_status_ttl.is_zero() {
        let request = request.into_request().map_err(|_| unforwardable())?;
        let (route, target) = (&route, &target);
        let call = guard::Call { gw, snapshot, route, target, request, bytes_in, exchange };
        return Box::pin(guard::serve(call)).await;
    }
    // Sent here, not from a step of its own: each level's future is moved into place
    // and holds the one below it (BENCHMARKS.md, round 14).
    let mut response = forward::send(gw, &route, &target, request, bytes_in).await?;
    // When the upstream refuses the current key (401/403) and the request can be sent
    // again safely with the route's previous key (during the overlap after a
    // rotation), it is, once: the caller sees the second answer.
    if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        if let (Some(body), Some(previous)) = (resend, route.fallback()) {
            // Boxed, like every rare path, to keep each request's future small.
            let refused = response;
            response =
                Box::pin(fall_back(gw, &route, &target, caller, previous, body, refused, bytes_in, exchange))
                    .await?;
        }
    }
    exchange.upstream_status = Some(response.status());
    Ok(forward::downstream(snapshot, &route, response).await)
}

/// What the pipeline reads of a caller's head, in one pass over its headers (each
/// `get` on the map is a hash and a probe, and the pipeline asked five of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallerHead<'a> {
    /// The head's size as sent: the request line and every header line.
    size: usize,
    /// Whether the last `Transfer-Encoding` line reads `chunked` (asked only of one).
    chunked: bool,
    /// `Host` lines, and the first.
    hosts: usize,
    host: Option<&'a http::HeaderValue>,
    /// What it declares of its body; kept past the head's borrow.
    declared: Declared,
}

impl<'a> CallerHead<'a> {
    fn of(method: &Method, uri: &Uri, headers: &'a HeaderMap) -> CallerHead<'a> {
        let line = method.as_str().len() + uri_len(uri) + 12;
        let declared = Declared { length: None, codings: 0 };
        let mut head = CallerHead { size: line, chunked: false, hosts: 0, host: None, declared };
        let mut sized = false;
        for (name, value) in headers {
            head.size += name.as_str().len() + value.len() + 4;
            if name == header::HOST {
                head.hosts += 1;
                head.host = head.host.or(Some(value));
            } else if name == header::TRANSFER_ENCODING {
                head.declared.codings += 1;
                head.chunked = value.as_bytes().eq_ignore_ascii_case(b"chunked");
            } else if name == header::CONTENT_LENGTH && !sized {
                sized = true;
                head.declared.length = value.to_str().ok().and_then(|v| v.parse().ok());
            }
        }
        head
    }

    /// No `Transfer-Encoding`, or exactly one line reading `chunked`.
    fn plain_framing(&self) -> bool {
        let codings = self.declared.codings;
        codings == 0 || (codings == 1 && self.chunked)
    }
}

/// Refuses a head that is too large or that can be read two ways: any framing but one
/// plain `chunked`, and anything but exactly one `Host` line on HTTP/1.1.
fn check_head(snapshot: &Snapshot, version: Version, head: &CallerHead<'_>) -> Result<(), Refusal> {
    if head.size > snapshot.server.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    // Before anything reads the body: hyper refuses a `chunked` that is not the last
    // coding; anything but one plain `chunked` line is refused too, since a proxy in
    // front may frame it differently and re-framing upstream would drop a coding.
    if !head.plain_framing() {
        return Err(Refusal::AmbiguousFraming);
    }
    // RFC 9112 §3.2: more than one Host line is a 400, and so is an HTTP/1.1 request
    // without one (HTTP/1.0 may omit it; HTTP/2 carries `:authority`). keygate routes by
    // path alone, but a proxy in front might have routed by the line it picked.
    check_hosts(version, head.hosts)
}

fn check_hosts(version: Version, hosts: usize) -> Result<(), Refusal> {
    match hosts {
        0 if version == Version::HTTP_11 => {
            Err(Refusal::BadRequest("an HTTP/1.1 request needs a Host header"))
        }
        0 | 1 => Ok(()),
        _ => Err(Refusal::BadRequest("more than one Host header")),
    }
}

/// The host a request names: the authority of an absolute-form target (RFC 9112
/// §3.2.2: it replaces `Host`) or of HTTP/2's `:authority`, else the `Host` header.
fn request_host<'a>(uri: &'a Uri, head: &CallerHead<'a>) -> Option<&'a str> {
    match uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => head.host?.to_str().ok(),
    }
}

/// Identifies the caller, notes it on the exchange, and refuses it unless the route's
/// `allow` admits it (`shadow_allow` is only counted).
fn admit(
    gw: &Gateway,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    route: &Route,
    headers: &HeaderMap,
    exchange: &mut Exchange,
) -> Result<(), Refusal> {
    let caller = snapshot.callers.of(conn, headers);
    exchange.caller = caller.group.clone();
    exchange.caller_addr = caller.addr;
    shadow_check(gw, route, &caller);
    if route.allow.permits(&caller) { Ok(()) } else { Err(Refusal::CallerNotAllowed) }
}

/// Sends the request again with the previous key, after reading away the answer that
/// refused the current one (its connection goes back to the pool when it was short).
#[expect(clippy::too_many_arguments, reason = "the one rare path of the pipeline's send, kept beside it")]
async fn fall_back(
    gw: &Gateway,
    route: &Route,
    target: &Target<'_>,
    caller: &Parts,
    previous: &Credential,
    body: Bytes,
    refused: Response<upstream::Body>,
    bytes_in: &Meter,
    exchange: &mut Exchange,
) -> Result<Response<upstream::Body>, Refusal> {
    upstream::discard(refused, REPLACED_BODY_LIMIT, None, REPLACED_BODY_TIME).await;
    let head = upstream_head(target, caller, previous)?;
    gw.metrics.secret_fallbacks.with_label_values(&[&route.secret_name]).inc();
    exchange.key = Some("previous");
    forward::send(gw, route, target, Outbound::Head(head, body::full(body)), bytes_in).await
}

/// Counts and logs a request the route's `shadow_allow` would refuse; never decides.
fn shadow_check(gw: &Gateway, route: &Route, caller: &Caller) {
    if let Some(shadow) = &route.shadow_allow {
        if !shadow.permits(caller) {
            gw.metrics.shadow_denied.with_label_values(&[&route.name]).inc();
            tracing::info!(
                target: "keygate::shadow",
                route = %route.name,
                caller = %crate::access::addr_text(caller.addr),
                caller_group = caller.group_name(),
                "shadow_allow would refuse this request"
            );
        }
    }
}

/// `uri.to_string().len()`, without building the string.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

/// What the caller's head declares of its body, read with the rest of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Declared {
    /// The first `Content-Length`, if it is a number.
    length: Option<u64>,
    /// How many `Transfer-Encoding` lines it has.
    codings: usize,
}

/// The request to send upstream, and the body to send it again with when that is safe.
struct Outgoing<'a> {
    request: Outbound<'a>,
    /// Set only while the route has a previous key and the request is one a retry
    /// cannot harm: every BI `GET` (no body), a buffered import upsert (idempotent by
    /// its `keys`), a generic `GET` or `HEAD` without a body.
    resend: Option<Bytes>,
}

/// What the caller's request becomes upstream.
enum Built<'a> {
    One(Outgoing<'a>),
    /// An import upsert of more than 100 records, re-batched.
    Batches(batch::Plan),
}

/// Turns the caller's request into the upstream's: strip, then inject, then body.
async fn build_request<'a>(
    snapshot: &Snapshot,
    route: &'a Route,
    target: &'a Target<'a>,
    caller: &'a Parts,
    declared: Declared,
    incoming: RequestBody,
    bytes_in: &Arc<Meter>,
) -> Result<Built<'a>, Refusal> {
    let head = upstream_head(target, caller, &route.credential)?;
    // Known before the body is read: a generic request can be sent again only when it
    // has no body to lose.
    let bodiless = incoming.is_end_stream();
    let (body, buffered) =
        match request_body(snapshot, route, target, caller, declared, incoming, bytes_in).await? {
            Body::One(body, buffered) => (body, buffered),
            Body::Batches(batches) => {
                let (headers, uri) = (head.headers(), head.uri().map_err(|_| unforwardable())?);
                let plan = batch::Plan { method: caller.method.clone(), uri, headers, batches };
                return Ok(Built::Batches(plan));
            }
        };
    let resend = if route.fallback.is_none() || !target.credential {
        None
    } else {
        match &route.kind {
            Kind::Preset { .. } if caller.method == Method::GET => Some(Bytes::new()),
            Kind::Preset { .. } => buffered.filter(|_| target.validate_upsert),
            Kind::Generic { .. } if matches!(caller.method, Method::GET | Method::HEAD) && bodiless => {
                Some(Bytes::new())
            }
            Kind::Generic { .. } => None,
        }
    };
    Ok(Built::One(Outgoing { request: Outbound::Head(head, body), resend }))
}

/// The upstream's head for the caller's, carrying `credential`. Removal works on the
/// caller's headers and query before the real credential is added, so nothing a caller
/// sends (a `Connection` naming the credential header, a second copy) can remove or
/// shadow it ([`crate::rewrite::UpstreamHead`]).
fn upstream_head<'a>(
    target: &'a Target<'a>,
    caller: &'a Parts,
    credential: &'a Credential,
) -> Result<UpstreamHead<'a>, Refusal> {
    let query = credential
        .query_for(caller.uri.query(), target.credential)
        .map_err(|refused| Refusal::BadRequest(refused.reason()))?;
    credential
        .upstream_head(&caller.method, &caller.headers, target.path.pieces(), query, target.credential)
        .map_err(|_| unforwardable())
}

fn unforwardable() -> Refusal {
    Refusal::InvalidPath("the path cannot be forwarded")
}

/// A request body as it goes upstream.
enum Body {
    /// The body, and a second handle on a buffered upsert's bytes while a retry with
    /// the previous key is possible.
    One(ProxyBody, Option<Bytes>),
    /// The records of an upsert too large for one, split in order.
    Batches(Vec<upsert::Batch>),
}

/// The body sent upstream: a checked upsert whole (also returned, should the request be
/// sent again; past 100 records, split), nothing for a BI `GET`, anything else streamed
/// within the route's limit and the idle timeout.
async fn request_body(
    snapshot: &Snapshot,
    route: &Route,
    target: &Target<'_>,
    parts: &Parts,
    declared: Declared,
    incoming: RequestBody,
    bytes_in: &Arc<Meter>,
) -> Result<Body, Refusal> {
    // Made only for a body that is read: a BI GET's never is.
    let metered = |incoming| {
        Metered::new(
            incoming,
            bytes_in.clone(),
            Some(route.max_body_bytes),
            Some(snapshot.server.idle_timeout),
        )
    };
    if target.validate_upsert {
        // Upserts are small (≤ max_body_bytes) and must be whole to be checked.
        let bytes = Box::pin(metered(incoming).collect())
            .await
            .map_err(|_| forward::body_refusal(bytes_in))?
            .to_bytes();
        // The first problem is the answer (the sandbox, like the vendor, lists them all).
        let first = |problems: Vec<upsert::Problem>| {
            Refusal::InvalidBody(problems.into_iter().next().map_or_else(String::new, |p| p.to_string()))
        };
        return match upsert::check(&bytes) {
            Ok(_) => {
                // A second handle on the same bytes, kept only while a retry is possible.
                let kept = route.fallback.is_some().then(|| bytes.clone());
                Ok(Body::One(body::full(bytes), kept))
            }
            Err(problems) if upsert::only_too_many(&problems) => {
                upsert::split(&bytes, upsert::MAX_RECORDS, upsert::MAX_BATCH_BYTES)
                    .map(Body::Batches)
                    .map_err(first)
            }
            Err(problems) => Err(first(problems)),
        };
    }
    if matches!(route.kind, Kind::Preset { .. })
        && (parts.method == Method::GET || parts.method == Method::HEAD)
    {
        // No BI GET takes a body; one here is a mistake or a smuggling attempt.
        if declared.length.unwrap_or(0) > 0 || declared.codings > 0 {
            return Err(Refusal::BadRequest("GET and HEAD requests cannot carry a body"));
        }
        return Ok(Body::One(body::empty(), None));
    }
    Ok(Body::One(metered(incoming).boxed_unsync(), None))
}

#[cfg(test)]
mod tests {
    use http::header::{self, HeaderName, HeaderValue};
    use http::{Request, Version};
    use proptest::prelude::*;

    use super::{CallerHead, check_hosts};
    use crate::error::Refusal;

    // The head checks as they were written first, one lookup each, to hold the one pass to.
    fn size_reference<B>(request: &Request<B>) -> usize {
        let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
        request.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + line
    }

    fn plain_framing_reference(headers: &http::HeaderMap) -> bool {
        let mut lines = headers.get_all(header::TRANSFER_ENCODING).iter();
        match (lines.next(), lines.next()) {
            (None, _) => true,
            (Some(value), None) => value.as_bytes().eq_ignore_ascii_case(b"chunked"),
            (Some(_), Some(_)) => false,
        }
    }

    fn hosts_reference<B>(request: &Request<B>) -> Result<(), Refusal> {
        let mut hosts = request.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => Err(Refusal::BadRequest("more than one Host header")),
            (None, _) if request.version() == Version::HTTP_11 => {
                Err(Refusal::BadRequest("an HTTP/1.1 request needs a Host header"))
            }
            _ => Ok(()),
        }
    }

    fn request_host_reference<B>(request: &Request<B>) -> Option<&str> {
        match request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => request.headers().get(header::HOST)?.to_str().ok(),
        }
    }

    fn declared_length_reference(headers: &http::HeaderMap) -> Option<u64> {
        headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
    }

    fn header_line() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop::sample::select(vec![
            ("host", "a.example"),
            ("Host", "b.example:8080"),
            ("host", "caf\u{e9}"),
            ("transfer-encoding", "chunked"),
            ("Transfer-Encoding", "Chunked"),
            ("transfer-encoding", "gzip, chunked"),
            ("transfer-encoding", "gzip"),
            ("content-length", "5"),
            ("content-length", "05"),
            ("content-length", "x"),
            ("content-length", "-1"),
            ("content-length", ""),
            ("content-length", "18446744073709551616"),
            ("x-rjm-api-key", "k"),
            ("accept", "*/*"),
            ("connection", "keep-alive"),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Read in one pass, a head gives every answer the lookups gave.
        #[test]
        fn one_pass_over_the_head_reads_what_the_lookups_read(
            lines in prop::collection::vec(header_line(), 0..8),
            target in prop::sample::select(vec!["/export/0.1/x", "http://h.example/x?y=1", "/a?apikey=k", "*"]),
            version in prop::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
        ) {
            let mut request = Request::builder().uri(target).version(version).body(()).unwrap();
            for (name, value) in &lines {
                let value = HeaderValue::from_bytes(value.as_bytes()).unwrap();
                request.headers_mut().append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            }
            let head = CallerHead::of(request.method(), request.uri(), request.headers());
            prop_assert_eq!(head.size, size_reference(&request));
            prop_assert_eq!(head.plain_framing(), plain_framing_reference(request.headers()));
            prop_assert_eq!(check_hosts(request.version(), head.hosts), hosts_reference(&request));
            prop_assert_eq!(super::request_host(request.uri(), &head), request_host_reference(&request));
            prop_assert_eq!(head.declared.length, declared_length_reference(request.headers()));
            prop_assert_eq!(head.declared.codings > 0, request.headers().contains_key(header::TRANSFER_ENCODING));
        }
    }

    #[test]
    fn uri_len_matches_the_formatted_length() {
        for text in ["/", "/export/0.1/export?a=1&b", "http://h:8/x?y", "https://h", "*", "h:443", "/p?"] {
            let uri: http::Uri = text.parse().unwrap();
            assert_eq!(super::uri_len(&uri), uri.to_string().len(), "{text}");
        }
    }
}
