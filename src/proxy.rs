//! The request pipeline: an ordered list of small steps, each either passing the
//! request on or answering it. Each step says why it sits where it sits.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use zeroize::Zeroizing;

use crate::access::Exchange;
use crate::body::{self, BodyError, Meter, Metered, ProxyBody};
use crate::caller::Caller;
use crate::config::Snapshot;
use crate::conn::ConnInfo;
use crate::error::{Refusal, UpstreamFailure};
use crate::gateway::Gateway;
use crate::rewrite;
use crate::routes::{Inject, Kind, Preset, Route, Target, check_path};
use crate::scrub;
use crate::upstream::Lease;

/// Handles one request end to end. Never fails: refusals are responses. `guard` (the
/// connection's own bookkeeping) is kept until the response's last byte, after the
/// access record is written.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: ConnInfo,
    request: Request<Incoming>,
    guard: Box<dyn Send>,
) -> Response<ProxyBody> {
    // One snapshot for the whole request, so a reload never mixes two configs.
    let snapshot = gw.snapshot();
    let mut exchange = Exchange::begin(&gw, &conn, &request, snapshot.log.access);
    let bytes_in = Arc::new(Meter::default());
    let response = match pipeline(&gw, &snapshot, &conn, request, &bytes_in, &mut exchange).await {
        Ok(response) => response,
        Err(refusal) => {
            exchange.refused(&gw, &refusal);
            refusal.into_response()
        }
    };
    exchange.finish(gw, response, bytes_in, guard)
}

async fn pipeline(
    gw: &Gateway,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request: Request<Incoming>,
    bytes_in: &Arc<Meter>,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Refusal> {
    // Draining: finish what is in flight, take nothing new.
    if gw.is_shutting_down() {
        return Err(Refusal::ShuttingDown);
    }
    // Size first: nothing else should spend work on an oversized head.
    if head_size(&request) > snapshot.server.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    // Framing before anything reads the body: hyper refuses a `chunked` that is not the
    // last coding; anything but one plain `chunked` line is refused too, since a proxy
    // in front may frame it differently and re-framing upstream would drop a coding.
    if !plain_framing(request.headers()) {
        return Err(Refusal::AmbiguousFraming);
    }
    // RFC 9112 §3.2: more than one Host line is a 400, and so is an HTTP/1.1 request
    // without one (HTTP/1.0 may omit it; HTTP/2 carries `:authority`). keygate routes by
    // path alone, but a proxy in front might have routed by the line it picked.
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Refusal::BadRequest("more than one Host header")),
        (None, _) if request.version() == Version::HTTP_11 => {
            return Err(Refusal::BadRequest("an HTTP/1.1 request needs a Host header"));
        }
        _ => {}
    }
    // Paths are checked before routing so no trick can reach a prefix it should not.
    let path = request.uri().path();
    check_path(path)?;
    let (route, remainder) = snapshot.routes.find(path).ok_or(Refusal::NoRoute)?;
    let route = route.clone();
    exchange.route = Some(route.clone());
    // Who is calling decides everything below; an unknown caller learns nothing more.
    let caller = snapshot.callers.identify(conn.peer.ip(), request.headers(), conn.identities.clone());
    exchange.caller = caller.group.clone();
    exchange.caller_addr = caller.addr;
    shadow_check(gw, &route, &caller);
    if !route.allow.permits(&caller) {
        return Err(Refusal::CallerNotAllowed);
    }
    let target = route.target(request.method(), remainder)?;
    exchange.operation = target.operation;
    // A declared length over the limit is refused before any byte (or 100 Continue).
    if declared_length(request.headers()).is_some_and(|n| n > route.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }

    let upstream_request = build_request(snapshot, &route, &target, request, bytes_in).await?;
    let started = Instant::now();
    let result = route.upstream.send(upstream_request, route.response_timeout).await;
    gw.metrics
        .upstream_duration
        .with_label_values(&[&route.name, target.operation])
        .observe(started.elapsed().as_secs_f64());
    let (response, lease) = match result {
        // keygate never forwards an upgrade, so a 101 breaks the protocol; passing it
        // on would tell the caller a tunnel exists.
        Ok((response, _)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            return Err(upstream_failure(gw, &route, UpstreamFailure::Protocol, bytes_in));
        }
        Ok(answer) => answer,
        Err(failure) => return Err(upstream_failure(gw, &route, failure, bytes_in)),
    };
    exchange.upstream_status = Some(response.status());
    if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        gw.metrics.upstream_auth_failures.with_label_values(&[&route.name]).inc();
    }
    Ok(downstream(snapshot, &route, response, lease).await)
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

fn head_size(request: &Request<Incoming>) -> usize {
    let line = request.method().as_str().len() + uri_len(request.uri()) + 12;
    request.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + line
}

/// The header the export key travels in.
const X_RJM_API_KEY: HeaderName = HeaderName::from_static("x-rjm-api-key");

/// What every BI route removes from callers: their own credentials and cookies, and the
/// headers that ask a server or a framework in front of the API to rewrite the target
/// (`X-Original-URL`, `X-Rewrite-URL`), the URL it believes it serves
/// (`X-Forwarded-Host/-Proto/-Prefix`) or the method (the `*-Method-Override` family).
static PRESET_DROP: [HeaderName; 11] = [
    header::AUTHORIZATION,
    header::COOKIE,
    X_RJM_API_KEY,
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// True when the request has no `Transfer-Encoding`, or exactly one line reading `chunked`.
fn plain_framing(headers: &http::HeaderMap) -> bool {
    let mut lines = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (lines.next(), lines.next()) {
        (None, _) => true,
        (Some(value), None) => value.as_bytes().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// `uri.to_string().len()`, without building the string.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Turns the caller's request into the upstream's: strip, then inject, then body.
async fn build_request(
    snapshot: &Snapshot,
    route: &Route,
    target: &Target,
    request: Request<Incoming>,
    bytes_in: &Arc<Meter>,
) -> Result<Request<ProxyBody>, Refusal> {
    let (parts, incoming) = request.into_parts();
    let credential = target.credential.then(|| route.secret.as_ref());

    // Removal happens on the caller's headers before injection, so a `Connection`
    // naming the credential header cannot strip the real one.
    let generic_drop;
    let generic_names;
    let drop: &[HeaderName];
    let query_names: &[&str];
    let mut inject_header: Option<(HeaderName, HeaderValue)> = None;
    let mut inject_query: Option<&str> = None;
    let unsendable = |_| Refusal::NotReady("the secret cannot be sent in a header");
    match &route.kind {
        Kind::Preset { preset, .. } => {
            drop = &PRESET_DROP;
            query_names = &["apikey"];
            match preset {
                Preset::Import => inject_query = Some("apikey"),
                Preset::Export => {
                    if let Some(secret) = credential {
                        let value = HeaderValue::from_str(secret.expose()).map_err(unsendable)?;
                        inject_header = Some((X_RJM_API_KEY, value));
                    }
                }
            }
        }
        Kind::Generic { inject, .. } => match inject {
            Inject::Header { name, prefix, suffix } => {
                generic_drop = [name.clone()];
                drop = &generic_drop;
                query_names = &[];
                if let Some(secret) = credential {
                    let text = Zeroizing::new(format!("{prefix}{}{suffix}", secret.expose()));
                    inject_header = Some((name.clone(), HeaderValue::from_str(&text).map_err(unsendable)?));
                }
            }
            Inject::Query(name) => {
                drop = &[];
                generic_names = [name.as_str()];
                query_names = &generic_names;
                inject_query = Some(name);
            }
        },
    }
    let query_inject = inject_query.zip(credential);
    let query = rewrite::rewrite_query(parts.uri.query(), query_names, query_inject)
        .map_err(|refused| Refusal::BadRequest(refused.reason()))?;
    let mut headers = rewrite::request_headers(&parts.headers, drop);
    // So that an error body comes back in a coding keygate can read for secrets.
    scrub::body::accept_encoding(&mut headers);
    if let Some((name, mut value)) = inject_header {
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let uri = route
        .upstream
        .uri(&target.path, query.as_deref())
        .map_err(|_| Refusal::InvalidPath("the path cannot be forwarded"))?;

    let limit = Some(route.max_body_bytes);
    let idle = Some(snapshot.server.idle_timeout);
    let metered = Metered::new(incoming, bytes_in.clone(), limit, idle);
    let body = if target.validate_upsert {
        // Upserts are small (≤ max_body_bytes) and must be whole to be checked.
        let bytes = Box::pin(metered.collect()).await.map_err(|_| body_refusal(bytes_in))?.to_bytes();
        crate::routes::preset::validate_upsert(&bytes).map_err(Refusal::InvalidBody)?;
        body::full(bytes)
    } else if matches!(route.kind, Kind::Preset { .. })
        && (parts.method == Method::GET || parts.method == Method::HEAD)
    {
        // No BI GET takes a body; one here is a mistake or a smuggling attempt.
        if declared_length(&parts.headers).unwrap_or(0) > 0
            || parts.headers.contains_key(header::TRANSFER_ENCODING)
        {
            return Err(Refusal::BadRequest("GET and HEAD requests cannot carry a body"));
        }
        body::empty()
    } else {
        metered.boxed_unsync()
    };

    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    Ok(out)
}

fn body_refusal(bytes_in: &Meter) -> Refusal {
    match bytes_in.failure() {
        Some(BodyError::TooLarge) => Refusal::BodyTooLarge,
        Some(BodyError::Idle) => Refusal::BadRequest("the request body stalled"),
        Some(BodyError::Broken) | None => Refusal::BadRequest("the request body could not be read"),
    }
}

/// Maps an upstream failure to keygate's answer and counts it. A request body that
/// broke its own limits is the caller's fault, not the upstream's.
fn upstream_failure(gw: &Gateway, route: &Route, failure: UpstreamFailure, bytes_in: &Meter) -> Refusal {
    if bytes_in.failure().is_some() {
        return body_refusal(bytes_in);
    }
    gw.metrics.upstream_errors.with_label_values(&[&route.name, failure.label()]).inc();
    match failure {
        UpstreamFailure::Timeout => Refusal::UpstreamTimeout,
        kind => Refusal::UpstreamUnavailable(kind),
    }
}

/// Cleans the upstream's answer: headers and trailers always; every non-2xx body read
/// for secrets ([`scrub::body`]); 2xx bodies streamed untouched, with an idle timeout
/// between chunks.
async fn downstream(
    snapshot: &Snapshot,
    route: &Route,
    response: Response<Incoming>,
    mut lease: Lease,
) -> Response<ProxyBody> {
    let (mut parts, incoming) = response.into_parts();
    let both;
    let query_names: &[&str] = match &route.kind {
        Kind::Generic { inject: Inject::Query(name), .. } => {
            both = ["apikey", name.as_str()];
            &both
        }
        _ => &["apikey"],
    };
    rewrite::response_headers(&mut parts.headers, &snapshot.scrub, query_names);
    let idle = Some(route.response_timeout.max(snapshot.server.idle_timeout));
    // The upstream connection is reused only after this body has been read whole.
    let meter = Arc::new(Meter::default());
    lease.watch(&meter);
    let metered = Metered::new(incoming, meter, None, idle).with_guard(Box::new(lease));
    let streamed = scrub::body::Trailers::new(metered, snapshot.scrub.clone());

    let body = if parts.status.is_success() {
        streamed.boxed_unsync()
    } else {
        // Boxed, like every rare path, to keep each request's future small.
        Box::pin(scrub::body::error_body(&snapshot.scrub, &route.name, streamed, &mut parts.headers)).await
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn uri_len_matches_the_formatted_length() {
        for text in ["/", "/export/0.1/export?a=1&b", "http://h:8/x?y", "https://h", "*", "h:443", "/p?"] {
            let uri: http::Uri = text.parse().unwrap();
            assert_eq!(super::uri_len(&uri), uri.to_string().len(), "{text}");
        }
    }
}
