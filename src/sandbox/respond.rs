//! Building responses: JSON bodies, the vendor-style error body, 404 and 405.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::error::IMPORT_JSON;

/// Every sandbox response is small enough to build whole.
pub(super) type Resp = Response<Full<Bytes>>;

/// A response with a body and a content type.
pub(super) fn body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response.
pub(super) fn json(status: StatusCode, value: &Value) -> Resp {
    body(status, "application/json", value.to_string())
}

/// The import API's error shape, used by both APIs: `{"code","message","reasons"}`.
pub(super) fn error(status: StatusCode, message: &str, reasons: Vec<String>) -> Resp {
    json(status, &error_value(status, message, reasons))
}

fn error_value(status: StatusCode, message: &str, reasons: Vec<String>) -> Value {
    json!({ "code": status.as_u16(), "message": message, "reasons": reasons })
}

/// An Import API answer: JSON labelled [`IMPORT_JSON`], which every official client
/// reads. The JS client cannot take a body labelled exactly `application/json`: its HTTP
/// library parses that itself and the client's own `JSON.parse` then throws, so the
/// vendor cannot be answering that way (docs/sandbox.md).
pub(super) fn import(status: StatusCode, value: &Value) -> Resp {
    body(status, IMPORT_JSON, value.to_string())
}

/// [`error`], as an Import API answer ([`import`]).
pub(super) fn import_error(status: StatusCode, message: &str, reasons: Vec<String>) -> Resp {
    import(status, &error_value(status, message, reasons))
}

/// 404 with a JSON body.
pub(super) fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "Not Found", vec!["no such resource".to_owned()])
}

/// `None` when `method` is one of `allowed`, else the 405 refusal naming them in `Allow`.
pub(super) fn refuse_method(method: &Method, allowed: &[Method]) -> Option<Resp> {
    if allowed.contains(method) {
        return None;
    }
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        vec![format!("use {}", names.join(" or "))],
    );
    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(ALLOW, value);
    }
    Some(response)
}

/// Constant-time comparison of a presented credential with the real one.
pub(super) fn same_key(presented: &[u8], real: &str) -> bool {
    let real = real.as_bytes();
    if presented.len() != real.len() {
        return false;
    }
    presented.iter().zip(real).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
