//! The answers keygate gives itself (design §7), and the one function that turns a
//! refusal or failure into an HTTP response.
//!
//! Every response keygate writes on its own carries `x-keygate-error: <code>` and the
//! body `{"error":"<code>","message":"<sentence>"}`, so callers can tell keygate's
//! refusals from the upstream's answers. Messages are built from closed sets and config
//! values only: never from a secret, never from an upstream URL with its query.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::upstream::Failure;

/// Name of the header that marks keygate's own answers.
pub const ERROR_HEADER: &str = "x-keygate-error";

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
    /// The caller is outside the route's allow list.
    CallerNotAllowed,
    /// The client id in the path is not the route's `client_id`.
    ClientMismatch,
    /// No route's prefix matches the path.
    NoRoute,
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
    UpstreamUnavailable(Failure),
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
            Refusal::BadRequest(_) => "bad_request",
            Refusal::CallerNotAllowed => "caller_not_allowed",
            Refusal::ClientMismatch => "client_mismatch",
            Refusal::NoRoute => "no_route",
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
            Refusal::InvalidPath(_) | Refusal::InvalidBody(_) | Refusal::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::CallerNotAllowed | Refusal::ClientMismatch => StatusCode::FORBIDDEN,
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

    /// A human sentence for the body. Never contains a secret or a caller-supplied value.
    pub fn message(&self) -> String {
        match self {
            Refusal::InvalidPath(why) => format!("the request path is not allowed: {why}"),
            Refusal::InvalidBody(why) => format!("the request body is invalid: {why}"),
            Refusal::BadRequest(why) => format!("the request is malformed: {why}"),
            Refusal::CallerNotAllowed => "the caller is not allowed to use this route".into(),
            Refusal::ClientMismatch => "the client id in the path is not this route's".into(),
            Refusal::NoRoute => "no route matches this path".into(),
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

    /// The one place a refusal becomes a response.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({ "error": self.code(), "message": self.message() });
        let bytes = Bytes::from(body.to_string());
        let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        if let Refusal::MethodNotAllowed(allow) = &self {
            if let Ok(value) = HeaderValue::from_str(allow) {
                headers.insert(header::ALLOW, value);
            }
        }
        if matches!(self, Refusal::ShuttingDown) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
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
            (Refusal::CallerNotAllowed, 403, "caller_not_allowed"),
            (Refusal::ClientMismatch, 403, "client_mismatch"),
            (Refusal::NoRoute, 404, "no_route"),
            (Refusal::UnknownOperation, 404, "unknown_operation"),
            (Refusal::MethodNotAllowed("GET".into()), 405, "method_not_allowed"),
            (Refusal::BodyTooLarge, 413, "body_too_large"),
            (Refusal::HeadersTooLarge, 431, "headers_too_large"),
            (Refusal::UpstreamUnavailable(Failure::Connect), 502, "upstream_unavailable"),
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
    fn method_not_allowed_carries_allow() {
        let response = Refusal::MethodNotAllowed("GET, POST".into()).into_response();
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }
}
