//! The one upstream call the guard makes for everyone: sent by the pipeline's send step,
//! cleaned by its downstream step, then read whole (at most `KEEP_LIMIT`) and, for a
//! 2xx answer too, scrubbed of every secret, since it is kept and shared.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::Response;
use http::header::{self, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};

use super::stored::{KEEP_LIMIT, Stored};
use crate::body::{BoxError, ProxyBody};
use crate::error::{Refusal, UpstreamFailure};

/// What the call brought back.
pub(super) enum Fetched {
    /// Read whole and clean: kept or shared.
    Kept(Stored),
    /// Too large to keep, or in a content coding: streamed to this caller only.
    Streamed(Response<ProxyBody>),
}

/// Calls upstream with `request` (asking for no content coding, so a kept body is
/// plain and can be scrubbed), as the pipeline would.
pub(super) async fn fetch(call: super::Call<'_>) -> Result<Fetched, Refusal> {
    let super::Call { gw, snapshot, route, target, mut request, bytes_in, exchange } = call;
    request.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let request = crate::upstream::Outbound::built(request);
    let response = crate::forward::send(gw, route, target, request, bytes_in).await?;
    exchange.upstream_status = Some(response.status());
    let response = crate::forward::downstream(snapshot, route, response).await;
    let coded = response.headers().get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity");
    if coded {
        return Ok(Fetched::Streamed(response));
    }
    let (parts, mut body) = response.into_parts();
    let mut data = BytesMut::new();
    // The body is read whole within the route's response timeout, like the head: every
    // caller of this client id waits on this one call.
    let deadline = tokio::time::Instant::now() + route.response_timeout;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, body.frame()).await else {
            return Err(crate::forward::upstream_failure(gw, route, UpstreamFailure::Timeout, bytes_in));
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|_| Refusal::UpstreamUnavailable(UpstreamFailure::Protocol))?;
        let Ok(chunk) = frame.into_data() else { continue };
        data.extend_from_slice(&chunk);
        if data.len() > KEEP_LIMIT {
            let head =
                futures_util::stream::once(async move { Ok::<_, BoxError>(Frame::data(data.freeze())) });
            let streamed = StreamBody::new(head.chain(BodyStream::new(body))).boxed_unsync();
            return Ok(Fetched::Streamed(Response::from_parts(parts, streamed)));
        }
    }
    // Non-2xx bodies were scrubbed on the way down; a 2xx one is kept, so it is too.
    let data = data.freeze();
    let body = match parts.status.is_success().then(|| snapshot.scrub.scrub(&data)).flatten() {
        Some(clean) => Bytes::from(clean),
        None => data,
    };
    Ok(Fetched::Kept(Stored::now(parts.status, &parts.headers, body)))
}
