//! One request's trip to the upstream and its answer's way back, shared by the pipeline,
//! the import batches and the update-status guard: [`send`] (timed; a 401/403 counted;
//! failures become refusals) and [`downstream`] (headers, trailers and error bodies
//! scrubbed of every secret).

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::{self, BodyError, Meter, Metered, ProxyBody};
use crate::config::Snapshot;
use crate::error::{Refusal, UpstreamFailure};
use crate::gateway::Gateway;
use crate::rewrite;
use crate::routes::{Route, Target};
use crate::scrub;
use crate::upstream;

/// Sends one request and times it. A `101` and every failure become refusals; a 401
/// or 403 is counted, since it means the key or the egress address was refused.
pub(crate) async fn send(
    gw: &Gateway,
    route: &Route,
    target: &Target<'_>,
    request: upstream::Outbound<'_>,
    bytes_in: &Meter,
) -> Result<Response<upstream::Body>, Refusal> {
    let started = Instant::now();
    let result = route.upstream.send(request, started, route.response_timeout).await;
    gw.metrics.upstream_took(route, target.operation, started.elapsed().as_secs_f64());
    let response = match result {
        // keygate never forwards an upgrade, so a 101 breaks the protocol; passing it
        // on would tell the caller a tunnel exists.
        Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            return Err(upstream_failure(gw, route, UpstreamFailure::Protocol, bytes_in));
        }
        Ok(answer) => answer,
        Err(failure) => return Err(upstream_failure(gw, route, failure, bytes_in)),
    };
    if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        gw.metrics.upstream_auth_failures.with_label_values(&[&route.name]).inc();
    }
    Ok(response)
}

/// keygate's answer when the caller's request body broke one of its limits.
pub(crate) fn body_refusal(bytes_in: &Meter) -> Refusal {
    match bytes_in.failure() {
        Some(BodyError::TooLarge) => Refusal::BodyTooLarge,
        Some(BodyError::Idle) => Refusal::BadRequest("the request body stalled"),
        Some(BodyError::Broken) | None => Refusal::BadRequest("the request body could not be read"),
    }
}

/// Maps an upstream failure to keygate's answer and counts it. A request body that
/// broke its own limits is the caller's fault, not the upstream's.
pub(crate) fn upstream_failure(
    gw: &Gateway,
    route: &Route,
    failure: UpstreamFailure,
    bytes_in: &Meter,
) -> Refusal {
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
pub(crate) async fn downstream(
    snapshot: &Snapshot,
    route: &Route,
    response: Response<upstream::Body>,
) -> Response<ProxyBody> {
    let (mut parts, mut incoming) = response.into_parts();
    rewrite::response_headers(&mut parts.headers, &snapshot.scrub, route.credential.location_query());
    // A 2xx answer that came whole with its head (most BI answers) is passed on as it
    // is: a body framed by its length carries no trailers, and there is no wait between
    // its chunks to time.
    if parts.status.is_success() {
        if let Some(whole) = incoming.take_whole() {
            return Response::from_parts(parts, body::full(whole));
        }
    }
    let idle = route.response_timeout.max(snapshot.server.idle_timeout);
    // Only the idle timeout: the upstream connection goes back to its pool from the
    // body itself, once read whole.
    let metered = Metered::idle_only(incoming, idle);
    let streamed = scrub::body::Trailers::new(metered, snapshot.scrub.clone());

    let body = if parts.status.is_success() {
        streamed.boxed_unsync()
    } else {
        // Boxed, like every rare path, to keep each request's future small.
        Box::pin(scrub::body::error_body(&snapshot.scrub, &route.name, streamed, &mut parts.headers)).await
    };
    Response::from_parts(parts, body)
}
