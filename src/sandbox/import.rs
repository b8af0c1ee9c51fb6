//! The Data Import API: status, authenticate, and the upsert endpoint with the vendor's
//! body rules. `v1` paths behave exactly like `v2`.

use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::respond::{self, Resp};
use super::{Api, State, form};
use crate::routes::upsert;

/// `GET /`: the unauthenticated "API is up" check.
pub(super) fn status(method: &Method) -> Resp {
    if let Some(refused) = respond::refuse_method(method, &[Method::GET]) {
        return refused;
    }
    respond::import(StatusCode::OK, &json!({ "code": 200, "message": "ok" }))
}

/// Routes `/v1|v2/...`; `segments` start after the version.
pub(super) fn handle(state: &State, parts: &Parts, segments: &[&str], body: &[u8]) -> Resp {
    match segments {
        ["client", cid, "authenticate"] => {
            if let Some(refused) = respond::refuse_method(&parts.method, &[Method::GET]) {
                return refused;
            }
            match refuse_key(state, parts, cid) {
                None => respond::import(StatusCode::OK, &json!({ "code": 200, "message": "authenticated" })),
                Some(refused) => refused,
            }
        }
        ["client", cid, "table", table, "data"] => {
            if let Some(refused) = respond::refuse_method(&parts.method, &[Method::POST]) {
                return refused;
            }
            if let Some(refused) = refuse_key(state, parts, cid) {
                return refused;
            }
            upsert(state, table, body)
        }
        _ => respond::import_error(StatusCode::NOT_FOUND, "Not Found", vec!["no such resource".to_owned()]),
    }
}

/// The 401 refusal, unless the first `apikey` parameter is an accepted import key and
/// `cid` its client.
fn refuse_key(state: &State, parts: &Parts, cid: &str) -> Option<Resp> {
    let pairs = form::pairs(parts.uri.query().unwrap_or(""));
    let reason = match form::first(&pairs, "apikey") {
        None => "the apikey parameter is missing",
        Some(key) if !state.accepts(Api::Import, key.as_bytes()) => "the apikey is not valid",
        Some(_) if cid.parse::<u64>().ok() != Some(state.settings.client_id) => {
            "the apikey is not valid for this client"
        }
        Some(_) => return None,
    };
    Some(respond::import_error(StatusCode::UNAUTHORIZED, "Authorization failed", vec![reason.to_owned()]))
}

fn upsert(state: &State, table: &str, body: &[u8]) -> Resp {
    if table.is_empty() || !table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        let reason = "table names may contain only letters, digits and underscores".to_owned();
        return respond::import_error(StatusCode::BAD_REQUEST, "Bad Request", vec![reason]);
    }
    match validate(body) {
        Ok(records) => {
            let count = records.len();
            state.store().upsert(table, records);
            respond::import(
                StatusCode::CREATED,
                &json!({ "code": 201, "message": "created", "count": count }),
            )
        }
        Err(reasons) => respond::import_error(StatusCode::BAD_REQUEST, "Bad Request", reasons),
    }
}

/// Applies the vendor's rules ([`crate::routes::upsert`], shared with the gateway); on
/// failure returns every reason found (record indexes count from 0).
pub(super) fn validate(body: &[u8]) -> Result<Vec<Map<String, Value>>, Vec<String>> {
    upsert::check(body).map_err(|problems| problems.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(body: &str) -> Vec<String> {
        validate(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn accepts_one_object_or_an_array() {
        assert_eq!(validate(br#"{"keys":["id"],"id":1}"#).unwrap().len(), 1);
        assert_eq!(validate(br#"[{"keys":["a","b"],"a":1,"b":null}]"#).unwrap().len(), 1);
    }

    #[test]
    fn names_each_failing_record() {
        let body =
            r#"[{"keys":["id"],"id":1},{"id":2},{"keys":[],"id":3},{"keys":[1],"id":4},{"keys":["x"]},5]"#;
        assert_eq!(
            reasons(body),
            [
                "record 1: the keys field is missing",
                "record 2: keys must be a non-empty array of field names",
                "record 3: keys must contain only strings",
                "record 4: key field \"x\" is not present in the record",
                "record 5: is not a JSON object",
            ]
        );
    }

    #[test]
    fn refuses_bad_shapes() {
        assert_eq!(reasons("[]"), ["the array holds no data points (send 1 to 100)"]);
        assert_eq!(reasons("3"), ["the body must be a JSON object or an array of objects"]);
        assert!(reasons("{").as_slice()[0].starts_with("the body is not valid JSON: "));
        let many = format!("[{}]", vec![r#"{"keys":["id"],"id":1}"#; 101].join(","));
        assert_eq!(reasons(&many), ["at most 100 data points per request, got 101"]);
        let hundred = format!("[{}]", vec![r#"{"keys":["id"],"id":1}"#; 100].join(","));
        assert_eq!(validate(hundred.as_bytes()).unwrap().len(), 100);
    }
}
