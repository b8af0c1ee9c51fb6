//! The Import API's rules for an upsert body (docs/vendor.md, "Upsert rules"), in one
//! place for the gateway and the sandbox: valid JSON; one object or an array of 1 to
//! [`MAX_RECORDS`] objects; each with `keys`, a non-empty array of strings naming
//! fields present in that record, never `keys` itself. Every problem is found, with
//! its record index: the gateway refuses with the first (docs/presets.md, "Upsert body
//! check"), the sandbox answers all of them, as the vendor does.
//!
//! A body that breaks only the record limit can be [`split`] into upserts the vendor
//! takes, each record checked the same way, and carried byte for byte.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Most records (data points) one upsert may carry.
pub(crate) const MAX_RECORDS: usize = 100;

/// The largest upsert a split makes, in bytes (the vendor's ~4 MiB working size).
pub(crate) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The longest key name a problem repeats (a longer one is cut).
const SHOWN_NAME: usize = 64;

/// One thing wrong with an upsert body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The record it is about (counting from 0; a lone object is record 0), or `None`
    /// for the body as a whole.
    pub record: Option<usize>,
    what: String,
    /// The body's only fault is holding more than [`MAX_RECORDS`] records.
    too_many: bool,
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
    vec![Problem { record: None, what, too_many: false }]
}

/// True when `problems` say only that the body holds more than [`MAX_RECORDS`] records,
/// so that [`split`] may make upserts of it.
pub(crate) fn only_too_many(problems: &[Problem]) -> bool {
    matches!(problems, [p] if p.too_many)
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
            let what = format!("at most {MAX_RECORDS} data points per request, got {}", items.len());
            return Err(vec![Problem { record: None, what, too_many: true }]);
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
            Err(what) => problems.push(Problem { record: Some(index), what, too_many: false }),
        }
    }
    if problems.is_empty() { Ok(records) } else { Err(problems) }
}

/// One upsert of a split body: records `from..to` of the caller's array, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub from: usize,
    pub to: usize,
    pub body: Bytes,
}

/// Splits a JSON array of records, in order, into upserts of at most `max_records`
/// records and, where records allow, at most `max_bytes` bytes (a record larger than
/// that goes alone). Each record is checked as [`check`] checks it and copied byte for
/// byte; every problem is returned, with its record index.
pub(crate) fn split(body: &[u8], max_records: usize, max_bytes: usize) -> Result<Vec<Batch>, Vec<Problem>> {
    let items: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| whole(format!("the body is not a JSON array of records: {e}")))?;
    let mut problems = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        let checked = match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(record)) => check_keys(&record),
            Ok(_) => Err("is not a JSON object".to_owned()),
            Err(e) => Err(format!("is not valid JSON: {e}")),
        };
        if let Err(what) = checked {
            problems.push(Problem { record: Some(index), what, too_many: false });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut batches = Vec::new();
    let mut from = 0;
    let mut size = 2;
    for (index, raw) in items.iter().enumerate() {
        let len = raw.get().len() + 1;
        if index > from && (index - from == max_records || size + len > max_bytes) {
            batches.push(batch(&items, from, index, size));
            (from, size) = (index, 2);
        }
        size += len;
    }
    if from < items.len() {
        batches.push(batch(&items, from, items.len(), size));
    }
    Ok(batches)
}

/// `[r, r, …]` of `items[from..to]`, built in one buffer of `size` bytes.
fn batch(items: &[&RawValue], from: usize, to: usize, size: usize) -> Batch {
    let mut body = BytesMut::with_capacity(size);
    body.put_u8(b'[');
    for (i, raw) in items[from..to].iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(raw.get().as_bytes());
    }
    body.put_u8(b']');
    Batch { from, to, body: body.freeze() }
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

    fn records(n: usize) -> String {
        let all: Vec<String> =
            (0..n).map(|i| format!(r#"{{ "keys": ["id"], "id": {i}, "f": 1.50 }}"#)).collect();
        format!("[ {} ]", all.join(" ,\n"))
    }

    #[test]
    fn only_the_record_limit_lets_a_body_be_split() {
        assert!(only_too_many(&check(records(101).as_bytes()).unwrap_err()));
        assert!(!only_too_many(&check(b"[]").unwrap_err()));
        assert!(!only_too_many(&check(br#"[{"id":1}]"#).unwrap_err()));
    }

    #[test]
    fn split_keeps_order_and_bytes_within_both_limits() {
        let batches = split(records(250).as_bytes(), 100, usize::MAX).unwrap();
        let ranges: Vec<(usize, usize)> = batches.iter().map(|b| (b.from, b.to)).collect();
        assert_eq!(ranges, [(0, 100), (100, 200), (200, 250)]);
        let first = std::str::from_utf8(&batches[0].body).unwrap();
        assert!(first.starts_with(r#"[{ "keys": ["id"], "id": 0, "f": 1.50 },{ "keys""#), "{first}");
        for b in &batches {
            let parsed: Vec<Value> = serde_json::from_slice(&b.body).unwrap();
            let ids: Vec<u64> = parsed.iter().map(|r| r["id"].as_u64().unwrap()).collect();
            assert_eq!(ids, (b.from as u64..b.to as u64).collect::<Vec<_>>());
        }
        // Within 400 bytes, and each batch as full as the next record allows.
        let small = split(records(25).as_bytes(), 100, 400).unwrap();
        assert_eq!(small.iter().map(|b| b.to - b.from).collect::<Vec<_>>(), [10, 9, 6]);
        for pair in small.windows(2) {
            let next =
                serde_json::to_string(&serde_json::from_slice::<Vec<Value>>(&pair[1].body).unwrap()[0])
                    .unwrap();
            assert!(pair[0].body.len() <= 400 && pair[0].body.len() + next.len() > 400 - 20, "{pair:?}");
        }
        // A record larger than the byte limit goes alone.
        let alone = split(records(3).as_bytes(), 100, 10).unwrap();
        assert_eq!(alone.iter().map(|b| (b.from, b.to)).collect::<Vec<_>>(), [(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn split_names_every_bad_record() {
        let body = format!("[{}, {{\"id\": 2}}, 7]", records(1).trim_matches(['[', ']', ' ']));
        let found: Vec<String> =
            split(body.as_bytes(), 100, usize::MAX).unwrap_err().iter().map(Problem::to_string).collect();
        assert_eq!(found, ["record 1: the keys field is missing", "record 2: is not a JSON object"]);
    }

    #[test]
    fn a_long_missing_key_name_is_cut() {
        let name = "k".repeat(200);
        let got = problems(&format!(r#"{{"keys":["{name}"]}}"#));
        assert_eq!(got, [format!("record 0: key field \"{}\" is not present in the record", "k".repeat(64))]);
    }
}
