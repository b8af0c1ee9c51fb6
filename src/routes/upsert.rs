//! The Import API's rules for an upsert body (docs/vendor.md, "Upsert rules"), in one
//! place for the gateway and the sandbox: valid JSON; one object or an array of 1 to
//! [`MAX_RECORDS`] objects; each with `keys`, a non-empty array of strings naming
//! fields present in that record, never `keys` itself. Every problem is found, with
//! its record index: the gateway refuses with the first (docs/presets.md, "Upsert body
//! check"), the sandbox answers all of them, as the vendor does.

use std::fmt;

use serde_json::{Map, Value};

/// Most records (data points) one upsert may carry.
pub(crate) const MAX_RECORDS: usize = 100;

/// The longest key name a problem repeats (a longer one is cut).
const SHOWN_NAME: usize = 64;

/// One thing wrong with an upsert body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The record it is about (counting from 0; a lone object is record 0), or `None`
    /// for the body as a whole.
    pub record: Option<usize>,
    what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(i) => write!(f, "record {i}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

fn whole(what: String) -> Vec<Problem> {
    vec![Problem { record: None, what }]
}

/// The records of a valid upsert body, or every problem found in it.
pub(crate) fn check(body: &[u8]) -> Result<Vec<Map<String, Value>>, Vec<Problem>> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| whole(format!("the body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Object(record) => vec![Value::Object(record)],
        Value::Array(items) if items.is_empty() => {
            return Err(whole(format!("the array holds no data points (send 1 to {MAX_RECORDS})")));
        }
        Value::Array(items) if items.len() > MAX_RECORDS => {
            return Err(whole(format!("at most {MAX_RECORDS} data points per request, got {}", items.len())));
        }
        Value::Array(items) => items,
        _ => return Err(whole("the body must be a JSON object or an array of objects".to_owned())),
    };
    let mut records = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let checked = match item {
            Value::Object(record) => check_keys(&record).map(|()| record),
            _ => Err("is not a JSON object".to_owned()),
        };
        match checked {
            Ok(record) => records.push(record),
            Err(what) => problems.push(Problem { record: Some(index), what }),
        }
    }
    if problems.is_empty() { Ok(records) } else { Err(problems) }
}

/// What is wrong with one record's `keys`, if anything.
fn check_keys(record: &Map<String, Value>) -> Result<(), String> {
    let names = match record.get("keys") {
        None => return Err("the keys field is missing".to_owned()),
        Some(Value::Array(names)) if !names.is_empty() => names,
        Some(_) => return Err("keys must be a non-empty array of field names".to_owned()),
    };
    for name in names {
        match name {
            // A key field must be data; `keys` itself is not stored as a column.
            Value::String(name) if name == "keys" => return Err("keys cannot name itself".to_owned()),
            Value::String(name) if record.contains_key(name) => {}
            Value::String(name) => {
                let shown: String = name.chars().take(SHOWN_NAME).collect();
                return Err(format!("key field {shown:?} is not present in the record"));
            }
            _ => return Err("keys must contain only strings".to_owned()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(body: &str) -> Vec<String> {
        check(body.as_bytes()).unwrap_err().iter().map(Problem::to_string).collect()
    }

    #[test]
    fn accepts_one_object_or_an_array_of_up_to_a_hundred() {
        assert_eq!(check(br#"{"keys":["id"],"id":1}"#).unwrap().len(), 1);
        assert_eq!(check(br#"[{"keys":["a","b"],"a":1,"b":null}]"#).unwrap().len(), 1);
        let hundred: Vec<String> = (0..100).map(|i| format!(r#"{{"keys":["id"],"id":{i}}}"#)).collect();
        assert_eq!(check(format!("[{}]", hundred.join(",")).as_bytes()).unwrap().len(), 100);
        let more = format!("[{},{}]", hundred.join(","), r#"{"keys":["id"],"id":100}"#);
        assert_eq!(problems(&more), ["at most 100 data points per request, got 101"]);
    }

    #[test]
    fn a_body_of_the_wrong_shape_has_one_problem_about_the_whole() {
        assert_eq!(problems("[]"), ["the array holds no data points (send 1 to 100)"]);
        assert_eq!(problems("3"), ["the body must be a JSON object or an array of objects"]);
        let not_json = check(br#"{"keys":["id"]"#).unwrap_err();
        assert_eq!(not_json.len(), 1);
        assert_eq!(not_json[0].record, None);
        assert!(not_json[0].to_string().starts_with("the body is not valid JSON: "), "{}", not_json[0]);
    }

    #[test]
    fn every_failing_record_is_named_with_its_first_problem() {
        let body = r#"[{"keys":["id"],"id":1},{"id":2},{"keys":[],"id":3},{"keys":[1],"id":4},{"keys":["x"]},5,
            {"keys":"id","id":7},{"keys":["keys"],"id":8}]"#;
        assert_eq!(
            problems(body),
            [
                "record 1: the keys field is missing",
                "record 2: keys must be a non-empty array of field names",
                "record 3: keys must contain only strings",
                "record 4: key field \"x\" is not present in the record",
                "record 5: is not a JSON object",
                "record 6: keys must be a non-empty array of field names",
                "record 7: keys cannot name itself",
            ]
        );
        let records: Vec<Option<usize>> =
            check(body.as_bytes()).unwrap_err().iter().map(|p| p.record).collect();
        assert_eq!(records, [1, 2, 3, 4, 5, 6, 7].map(Some));
    }

    #[test]
    fn a_long_missing_key_name_is_cut() {
        let name = "k".repeat(200);
        let got = problems(&format!(r#"{{"keys":["{name}"]}}"#));
        assert_eq!(got, [format!("record 0: key field \"{}\" is not present in the record", "k".repeat(64))]);
    }
}
