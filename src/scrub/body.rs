//! Which response bodies are read for secrets, and how (docs/presets.md, "On the way
//! down"; docs/operations.md, "Keys in answers").
//!
//! 2xx bodies stream untouched. Every other body is read, whatever its `Content-Type`:
//! - no content coding (or `identity`): up to [`SCRUB_LIMIT`] bytes are buffered and
//!   scrubbed whole; a longer body is scrubbed as it streams, holding back fewer bytes
//!   than the longest needle between pieces;
//! - `gzip`, `x-gzip`, `deflate` (zlib or raw) or `br`: a body of at most
//!   [`SCRUB_LIMIT`] bytes on the wire is decoded (to at most [`SCRUB_LIMIT`] bytes),
//!   scrubbed and sent decoded, without `Content-Encoding`;
//! - anything else, any stack of codings, a body that fails to decode, or one past
//!   either limit: the body is *withheld*. The caller gets the upstream's status and
//!   (scrubbed) headers with keygate's own JSON body, `x-keygate-error:
//!   upstream_body_withheld`. No byte keygate has not read reaches the caller.
//!
//! Decoding rather than asking the upstream for `identity` was chosen by measurement
//! (`benches/scrub.rs`): keygate cannot know before the answer whether it will be an
//! error, so `identity` would cost every 2xx download its compression, while decoding
//! costs only the rare error body tens of microseconds. To keep the upstream from
//! choosing a coding keygate cannot read, [`accept_encoding`] narrows the caller's
//! `Accept-Encoding` to the codings decoded here.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::Scrubber;
use crate::body::{self, BoxError, ProxyBody};
use crate::error::Withheld;

/// Largest non-2xx body buffered whole, on the wire and once decoded.
pub(crate) const SCRUB_LIMIT: usize = 64 * 1024;

/// Content codings keygate decodes, as they may appear in `Accept-Encoding`.
const DECODABLE: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "identity"];

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

/// The body sent back for a non-2xx answer, with `headers` fixed to match it.
/// `upstream` must already have its trailers scrubbed ([`Trailers`]).
pub async fn error_body<B>(
    scrub: &Arc<Scrubber>,
    route: &str,
    upstream: B,
    headers: &mut HeaderMap,
) -> ProxyBody
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    let head = match read_head(upstream).await {
        Ok(head) => head,
        Err(error) => return failed(error),
    };
    if head.data.is_empty() && head.rest.is_none() {
        // Nothing to read (HEAD, 304, an empty answer): any label describes nothing.
        return with_trailers(body::empty(), head.trailers);
    }
    let coding = match coding(headers) {
        Ok(coding) => coding,
        Err(why) => return withhold(route, headers, why),
    };
    match (coding, head.rest) {
        (Coding::Identity, None) => match scrub.scrub(&head.data) {
            Some(clean) => {
                headers.remove(header::CONTENT_LENGTH);
                with_trailers(body::full(clean), head.trailers)
            }
            None => with_trailers(body::full(head.data), head.trailers),
        },
        (Coding::Identity, Some(rest)) => {
            headers.remove(header::CONTENT_LENGTH);
            Streamed::new(scrub.clone(), head.data, rest).boxed_unsync()
        }
        (_, Some(_)) => withhold(route, headers, Withheld::TooLarge),
        (coding, None) => match decode(coding, &head.data) {
            Ok(plain) => {
                headers.remove(header::CONTENT_ENCODING);
                headers.remove(header::CONTENT_LENGTH);
                with_trailers(body::full(scrub.finish(plain)), head.trailers)
            }
            Err(why) => withhold(route, headers, why),
        },
    }
}

/// Narrows the `Accept-Encoding` sent upstream to the codings keygate decodes, so an
/// upstream that honours it never encodes an error body keygate would have to
/// withhold. Nothing left means `identity`. No work when the caller sent none or only
/// decodable codings.
pub(crate) fn accept_encoding(headers: &mut HeaderMap) {
    if let Some(value) = narrowed_accept_encoding(headers.get_all(header::ACCEPT_ENCODING)) {
        headers.insert(header::ACCEPT_ENCODING, value);
    }
}

/// The one `Accept-Encoding` line that replaces `lines` ([`accept_encoding`]); `None`
/// when they stay as they are (none, or every coding in them decodable).
pub(crate) fn narrowed_accept_encoding(lines: header::GetAll<'_, HeaderValue>) -> Option<HeaderValue> {
    let mut values = lines.iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return None,
        (Some(value), None) => value,
        // Rare: more than one line.
        (Some(_), Some(_)) => return narrow(lines.iter().collect::<Vec<_>>().into_iter()),
    };
    // One line, the usual case: a caller sends the same one every time, so the last
    // answer is kept per thread.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(HeaderValue, Option<HeaderValue>)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, narrowed)) if seen == value => narrowed.clone(),
        _ => {
            let narrowed = narrow(std::iter::once(value));
            *last = Some((value.clone(), narrowed.clone()));
            narrowed
        }
    })
}

/// The `Accept-Encoding` value for `values` narrowed to the decodable codings;
/// `None` when nothing needs to change.
fn narrow<'a>(values: impl Iterator<Item = &'a HeaderValue> + Clone) -> Option<HeaderValue> {
    let decodable = |item: &str| {
        let coding = item.split(';').next().unwrap_or("").trim();
        DECODABLE.iter().any(|c| coding.eq_ignore_ascii_case(c))
    };
    let items = || values.clone().flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','));
    if items().all(|item| item.trim().is_empty() || decodable(item)) {
        return None;
    }
    let kept: Vec<&str> = items().map(str::trim).filter(|i| !i.is_empty() && decodable(i)).collect();
    let identity = HeaderValue::from_static("identity");
    Some(if kept.is_empty() { identity } else { HeaderValue::from_str(&kept.join(", ")).unwrap_or(identity) })
}

/// The first [`SCRUB_LIMIT`] bytes of a body, and the body itself when it goes on.
struct Head<B> {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// The unread rest, when the body is longer than the limit.
    rest: Option<B>,
}

async fn read_head<B>(mut upstream: B) -> Result<Head<B>, BoxError>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut data = Vec::new();
    while let Some(frame) = upstream.frame().await {
        match frame?.into_data() {
            Ok(bytes) => {
                data.extend_from_slice(&bytes);
                if data.len() > SCRUB_LIMIT {
                    return Ok(Head { data, trailers: None, rest: Some(upstream) });
                }
            }
            // Trailers are the last frame.
            Err(frame) => return Ok(Head { data, trailers: frame.into_trailers().ok(), rest: None }),
        }
    }
    Ok(Head { data, trailers: None, rest: None })
}

/// The body's one content coding; `identity` entries are ignored.
fn coding(headers: &HeaderMap) -> Result<Coding, Withheld> {
    let mut found = Coding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| Withheld::Coding)?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let this = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                _ => return Err(Withheld::Coding),
            };
            if found != Coding::Identity {
                return Err(Withheld::Coding);
            }
            found = this;
        }
    }
    Ok(found)
}

/// Decodes a whole encoded body, to at most [`SCRUB_LIMIT`] bytes.
fn decode(coding: Coding, raw: &[u8]) -> Result<Vec<u8>, Withheld> {
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Identity => return Ok(raw.to_vec()),
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        // RFC 9110 §8.4.1.2 says zlib; some servers send raw deflate.
        Coding::Deflate if is_zlib(raw) => Box::new(flate2::read::ZlibDecoder::new(raw)),
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(raw)),
        Coding::Brotli => Box::new(brotli::Decompressor::new(raw, 4096)),
    };
    let mut plain = Vec::new();
    // One byte past the limit tells "exactly the limit" from "more" (a zip bomb stops here).
    reader.take(SCRUB_LIMIT as u64 + 1).read_to_end(&mut plain).map_err(|_| Withheld::Undecodable)?;
    if plain.len() > SCRUB_LIMIT {
        return Err(Withheld::TooLarge);
    }
    Ok(plain)
}

/// A zlib header (RFC 1950): method 8, and the two bytes a multiple of 31.
fn is_zlib(raw: &[u8]) -> bool {
    match raw {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// keygate's own body in place of one it could not read.
fn withhold(route: &str, headers: &mut HeaderMap, why: Withheld) -> ProxyBody {
    tracing::warn!(
        target: "keygate::scrub",
        route,
        reason = why.label(),
        "withheld an upstream error body that keygate could not read for secrets"
    );
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    why.into_body(headers)
}

/// A body whose trailers are scrubbed like headers (a name holding a secret removes the
/// field, a value holding one is redacted); data frames pass untouched. Every upstream
/// answer goes through one, 2xx or not.
pub(crate) struct Trailers<B> {
    inner: B,
    scrub: Arc<Scrubber>,
}

impl<B> Trailers<B> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: B, scrub: Arc<Scrubber>) -> Self {
        Trailers { inner, scrub }
    }
}

impl<B> Body for Trailers<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = polled {
            let mut frame = frame;
            if let Some(trailers) = frame.trailers_mut() {
                this.scrub.headers(trailers);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn with_trailers(body: ProxyBody, trailers: Option<HeaderMap>) -> ProxyBody {
    match trailers {
        None => body,
        Some(trailers) => body.with_trailers(std::future::ready(Some(Ok(trailers)))).boxed_unsync(),
    }
}

fn failed(error: BoxError) -> ProxyBody {
    let once = futures_util::stream::once(async move { Err::<Frame<Bytes>, _>(error) });
    http_body_util::StreamBody::new(once).boxed_unsync()
}

/// An identity body longer than [`SCRUB_LIMIT`], scrubbed piece by piece as it streams.
struct Streamed<B> {
    inner: B,
    scrub: Arc<Scrubber>,
    /// The bytes read before streaming began, not yet scrubbed.
    first: Option<Vec<u8>>,
    /// The tail that could still start a key split across pieces.
    held: Vec<u8>,
    /// The inner body's trailers, sent after the held tail.
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl<B> Streamed<B> {
    fn new(scrub: Arc<Scrubber>, first: Vec<u8>, inner: B) -> Self {
        Streamed { inner, scrub, first: Some(first), held: Vec::new(), trailers: None, ended: false }
    }

    /// The scrubbed rest once the inner body has ended.
    fn end(&mut self) -> Vec<u8> {
        self.ended = true;
        self.scrub.finish(std::mem::take(&mut self.held))
    }
}

impl<B> Body for Streamed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let out = if let Some(first) = this.first.take() {
                this.scrub.push(&mut this.held, &first)
            } else if this.ended {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            } else {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                    Poll::Ready(None) => this.end(),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => this.scrub.push(&mut this.held, &data),
                        Err(frame) => {
                            this.trailers = frame.into_trailers().ok();
                            this.end()
                        }
                    },
                }
            };
            // An empty data frame could read as the end of a chunked body: never send one.
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
