//! The answers keygate gives itself (docs/errors.md), and the one function that turns a
//! refusal or failure into an HTTP response.
//!
//! Every response keygate writes on its own carries `x-keygate-error: <code>` and the
//! body `{"error":"<code>","message":"<sentence>"}`, so callers can tell keygate's
//! refusals from the upstream's answers. On `rjmetrics-import` routes a refusal is
//! shaped like the Import API's errors instead ([`Shape::Import`]), so that the
//! vendor's clients report it rather than fail to parse it. Messages are built from closed sets and config
//! values only: never from a secret, never from an upstream URL with its query.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::{self, ProxyBody};

/// Name of the header that marks keygate's own answers.
pub(crate) const ERROR_HEADER: &str = "x-keygate-error";

/// The `x-keygate-error` code of an upstream error body keygate withheld.
pub(crate) const WITHHELD: &str = "upstream_body_withheld";

/// The content type of Import-API-shaped bodies (keygate's refusals on import routes,
/// the sandbox's import answers). A `+json` subtype: PHP's Httpful parses it as JSON
/// (it parses `…+json` by its suffix), while the JS client's HTTP library (needle
/// 0.6.3) leaves it unparsed, as the client needs: needle parses a body labelled exactly
/// `application/json` itself, and the client then fails to `JSON.parse` the object.
pub(crate) const IMPORT_JSON: &str = "application/vnd.keygate.import+json";

/// Which body a refusal gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Shape {
    /// `{"error","message"}`, labelled `application/json`.
    #[default]
    Keygate,
    /// The Import API's `{"code","message","reasons"}`, plus `error`, labelled
    /// [`IMPORT_JSON`].
    Import,
}

/// Why keygate answered a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path has dot segments, empty segments or encoded separators, or a preset
    /// parameter (table name, id) is malformed.
    InvalidPath(&'static str),
    /// The request body failed local validation; the reason names the record.
    InvalidBody(String),
    /// The request is malformed in a way that is not about its path or body.
    BadRequest(&'static str),
    /// The request's `Transfer-Encoding` is not one plain `chunked`: a proxy in front may
    /// frame the body differently, so nothing more on this connection can be trusted and
    /// the answer closes it.
    AmbiguousFraming,
    /// The caller is outside the route's allow list.
    CallerNotAllowed,
    /// The client id in the path is not the route's `client_id`.
    ClientMismatch,
    /// No route's prefix matches the path.
    NoRoute,
    /// A `CONNECT` keygate does not intercept: a host no route names, a port other
    /// than 443, an IP literal, or no `[server.intercept]`. Never tunnelled anywhere.
    TunnelRefused(&'static str),
    /// The route matched but the path is not one of its operations.
    UnknownOperation,
    /// The operation exists but not for this method; carries the `Allow` value.
    MethodNotAllowed(String),
    /// The body is larger than the route's `max_body_bytes`.
    BodyTooLarge,
    /// The request head is larger than `max_header_bytes`.
    HeadersTooLarge,
    /// Connecting to the upstream failed, or it broke the protocol.
    /// Carries the failure kind (never `Timeout`, which is [`Refusal::UpstreamTimeout`]).
    UpstreamUnavailable(UpstreamFailure),
    /// Too many connections or requests.
    Overloaded,
    /// keygate is draining after SIGTERM/SIGINT.
    ShuttingDown,
    /// No usable configuration is loaded.
    NotReady(&'static str),
    /// The upstream did not answer within the route's timeouts.
    UpstreamTimeout,
}

impl Refusal {
    /// The stable error code (`x-keygate-error` and the `reason` metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidPath(_) => "invalid_path",
            Refusal::InvalidBody(_) => "invalid_body",
            Refusal::BadRequest(_) | Refusal::AmbiguousFraming => "bad_request",
            Refusal::CallerNotAllowed => "caller_not_allowed",
            Refusal::ClientMismatch => "client_mismatch",
            Refusal::NoRoute | Refusal::TunnelRefused(_) => "no_route",
            Refusal::UnknownOperation => "unknown_operation",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::UpstreamUnavailable(_) => "upstream_unavailable",
            Refusal::Overloaded => "overloaded",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::NotReady(_) => "not_ready",
            Refusal::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The HTTP status keygate answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::InvalidPath(_)
            | Refusal::InvalidBody(_)
            | Refusal::BadRequest(_)
            | Refusal::AmbiguousFraming => StatusCode::BAD_REQUEST,
            Refusal::CallerNotAllowed | Refusal::ClientMismatch | Refusal::TunnelRefused(_) => {
                StatusCode::FORBIDDEN
            }
            Refusal::NoRoute | Refusal::UnknownOperation => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Refusal::Overloaded | Refusal::ShuttingDown | Refusal::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A human sentence for the body. Never contains a secret; the only caller-supplied text is
    /// an upsert record's field name in an `invalid_body` reason, at most 64 characters.
    pub fn message(&self) -> String {
        match self {
            Refusal::InvalidPath(why) => format!("the request path is not allowed: {why}"),
            Refusal::InvalidBody(why) => format!("the request body is invalid: {why}"),
            Refusal::BadRequest(why) => format!("the request is malformed: {why}"),
            Refusal::AmbiguousFraming => {
                "the request is malformed: Transfer-Encoding must be a single \"chunked\"".into()
            }
            Refusal::CallerNotAllowed => "the caller is not allowed to use this route".into(),
            Refusal::ClientMismatch => "the client id in the path is not this route's".into(),
            Refusal::NoRoute => "no route matches this path".into(),
            Refusal::TunnelRefused(why) => format!("keygate does not open this tunnel: {why}"),
            Refusal::UnknownOperation => "this route does not forward this path".into(),
            Refusal::MethodNotAllowed(allow) => {
                format!("this operation does not accept this method (allowed: {allow})")
            }
            Refusal::BodyTooLarge => "the request body is larger than this route allows".into(),
            Refusal::HeadersTooLarge => "the request headers are too large".into(),
            Refusal::UpstreamUnavailable(kind) => {
                format!("the upstream could not be reached ({})", kind.label())
            }
            Refusal::Overloaded => "keygate is at its connection limit".into(),
            Refusal::ShuttingDown => "keygate is shutting down".into(),
            Refusal::NotReady(why) => format!("keygate is not ready: {why}"),
            Refusal::UpstreamTimeout => "the upstream did not answer in time".into(),
        }
    }

    /// The Import-shaped body's one `reasons` entry: what was wrong, without the
    /// sentence around it when there is one. Never a secret or a caller-supplied value.
    fn reason(&self) -> String {
        match self {
            Refusal::InvalidPath(why)
            | Refusal::BadRequest(why)
            | Refusal::NotReady(why)
            | Refusal::TunnelRefused(why) => (*why).to_owned(),
            Refusal::InvalidBody(why) => why.clone(),
            other => other.message(),
        }
    }

    /// The one place a refusal becomes a response.
    pub fn into_response(self) -> Response<ProxyBody> {
        self.into_shaped_response(Shape::Keygate)
    }

    /// [`Refusal::into_response`] with the body `shape` asks for.
    pub(crate) fn into_shaped_response(self, shape: Shape) -> Response<ProxyBody> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        *response.body_mut() = match shape {
            Shape::Keygate => own_body(headers, self.code(), &self.message()),
            Shape::Import => {
                import_body(headers, self.status(), self.code(), &self.message(), &self.reason())
            }
        };
        let headers = response.headers_mut();
        if let Refusal::MethodNotAllowed(allow) = &self {
            if let Ok(value) = HeaderValue::from_str(allow) {
                headers.insert(header::ALLOW, value);
            }
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// True when the answer must end the connection: keygate is draining, or the
    /// request's framing leaves the rest of the connection unreadable.
    fn closes_connection(&self) -> bool {
        matches!(self, Refusal::ShuttingDown | Refusal::AmbiguousFraming)
    }
}

/// Why keygate withheld an upstream's error body: it could not read it for secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Withheld {
    /// The `Content-Encoding` names a coding keygate does not decode, or several.
    Coding,
    /// The body does not decode as its label says.
    Undecodable,
    /// Past what keygate reads, on the wire (encoded) or once decoded.
    TooLarge,
}

impl Withheld {
    /// The `reason` of the log line.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Withheld::Coding => "coding",
            Withheld::Undecodable => "undecodable",
            Withheld::TooLarge => "too_large",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Withheld::Coding => {
                "keygate withheld the upstream's error body: its content coding is not one keygate reads"
            }
            Withheld::Undecodable => {
                "keygate withheld the upstream's error body: it does not decode as its content coding says"
            }
            Withheld::TooLarge => {
                "keygate withheld the upstream's error body: it is compressed and larger than keygate reads"
            }
        }
    }

    /// keygate's body in place of the withheld one, with `headers` (the upstream's,
    /// already scrubbed, without their content coding and length) marked to match. The
    /// status stays the upstream's.
    pub(crate) fn into_body(self, headers: &mut HeaderMap) -> ProxyBody {
        own_body(headers, WITHHELD, self.message())
    }
}

/// keygate's own body, `{"error":"<code>","message":"<sentence>"}`, with the
/// `Content-Type` and `x-keygate-error` that mark it: every answer keygate writes itself
/// is written here.
fn own_body(headers: &mut HeaderMap, code: &'static str, message: &str) -> ProxyBody {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
    body::full(serde_json::json!({ "error": code, "message": message }).to_string())
}

/// keygate's own body in the Import API's error shape, labelled [`IMPORT_JSON`]:
/// `{"code":<status>,"message":"<sentence>","reasons":["<reason>"],"error":"<code>"}`.
/// The vendor's clients print `code`, `message` and `reasons`; `message` is the same
/// sentence as in keygate's other shape.
fn import_body(
    headers: &mut HeaderMap,
    status: StatusCode,
    code: &'static str,
    message: &str,
    reason: &str,
) -> ProxyBody {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(IMPORT_JSON));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
    let value = serde_json::json!({ "code": status.as_u16(), "message": message, "reasons": [reason], "error": code });
    body::full(value.to_string())
}

/// keygate's answer to a re-batched upsert (docs/errors.md, "Batched upserts"): the
/// Import API's shape, `{"code","message","reasons","batches"}`, with
/// `x-keygate-batches: <count>` and, when the failing batch was answered 429 with one,
/// its `Retry-After`. The status is the answer's (201, or the first failing batch's).
pub(crate) fn batch_answer<B: serde::Serialize>(
    status: StatusCode,
    message: &str,
    reasons: &[String],
    batches: &[B],
    retry_after: Option<HeaderValue>,
) -> Response<ProxyBody> {
    /// In the order the Import API writes its own answers.
    #[derive(serde::Serialize)]
    struct Answer<'a, B> {
        code: u16,
        message: &'a str,
        reasons: &'a [String],
        batches: &'a [B],
    }
    let count = batches.len();
    let body =
        serde_json::to_vec(&Answer { code: status.as_u16(), message, reasons, batches }).unwrap_or_default();
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // Labelled like keygate's other Import-shaped answers, so the JavaScript client
    // parses it itself (see IMPORT_JSON).
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(IMPORT_JSON));
    headers.insert(BATCHES_HEADER, HeaderValue::from(count));
    if let Some(value) = retry_after {
        headers.insert(header::RETRY_AFTER, value);
    }
    response
}

/// Name of the header on a re-batched upsert's answer: how many batches it was.
pub(crate) const BATCHES_HEADER: &str = "x-keygate-batches";

/// Why an upstream call failed (the `kind` label of `keygate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Name resolution or the TCP connect failed, or the connection broke during the
    /// HTTP handshake.
    Connect,
    /// The connect or response timeout ran out.
    Timeout,
    /// The TLS handshake or session failed (certificate verification included).
    Tls,
    /// Anything else on an open connection: a reset, invalid HTTP, a `101`, both
    /// framings on one answer.
    Protocol,
}

impl UpstreamFailure {
    /// Every kind, in the order their series are listed.
    pub const ALL: [UpstreamFailure; 4] =
        [UpstreamFailure::Connect, UpstreamFailure::Timeout, UpstreamFailure::Tls, UpstreamFailure::Protocol];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_documented_status() {
        let cases = [
            (Refusal::InvalidPath("x"), 400, "invalid_path"),
            (Refusal::InvalidBody("x".into()), 400, "invalid_body"),
            (Refusal::BadRequest("x"), 400, "bad_request"),
            (Refusal::AmbiguousFraming, 400, "bad_request"),
            (Refusal::CallerNotAllowed, 403, "caller_not_allowed"),
            (Refusal::ClientMismatch, 403, "client_mismatch"),
            (Refusal::NoRoute, 404, "no_route"),
            (Refusal::TunnelRefused("x"), 403, "no_route"),
            (Refusal::UnknownOperation, 404, "unknown_operation"),
            (Refusal::MethodNotAllowed("GET".into()), 405, "method_not_allowed"),
            (Refusal::BodyTooLarge, 413, "body_too_large"),
            (Refusal::HeadersTooLarge, 431, "headers_too_large"),
            (Refusal::UpstreamUnavailable(UpstreamFailure::Connect), 502, "upstream_unavailable"),
            (Refusal::Overloaded, 503, "overloaded"),
            (Refusal::ShuttingDown, 503, "shutting_down"),
            (Refusal::NotReady("x"), 503, "not_ready"),
            (Refusal::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (refusal, status, code) in cases {
            let response = refusal.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(response.headers()[ERROR_HEADER], code);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        }
    }

    #[test]
    fn import_shaped_refusals_carry_the_vendor_fields_and_keygate_code() {
        use http_body_util::BodyExt;
        let response = Refusal::ClientMismatch.into_shaped_response(Shape::Import);
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()[ERROR_HEADER], "client_mismatch");
        assert_eq!(response.headers()[header::CONTENT_TYPE], IMPORT_JSON);
        let bytes = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("a whole body")
            .expect("no error")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "code": 403,
                "message": "the client id in the path is not this route's",
                "reasons": ["the client id in the path is not this route's"],
                "error": "client_mismatch",
            })
        );
        let response = Refusal::InvalidBody("record 1: the keys field is missing".into())
            .into_shaped_response(Shape::Import);
        let bytes = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("a whole body")
            .expect("no error")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], 400);
        assert_eq!(body["message"], "the request body is invalid: record 1: the keys field is missing");
        assert_eq!(body["reasons"], serde_json::json!(["record 1: the keys field is missing"]));
    }

    #[test]
    fn only_draining_and_ambiguous_framing_close_the_connection() {
        let closing = [Refusal::ShuttingDown, Refusal::AmbiguousFraming];
        for refusal in closing {
            assert_eq!(refusal.into_response().headers()[header::CONNECTION], "close");
        }
        for refusal in [Refusal::BadRequest("x"), Refusal::Overloaded, Refusal::NoRoute] {
            assert!(refusal.into_response().headers().get(header::CONNECTION).is_none());
        }
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response = Refusal::MethodNotAllowed("GET, POST".into()).into_response();
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }
}
