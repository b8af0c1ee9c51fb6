//! The sandbox's in-memory warehouse: tables filled by the import API and the raw
//! exports created from them through the export API.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::clock;
use super::table_file;

/// Tables by name, and exports by id.
#[derive(Default)]
pub(super) struct Store {
    tables: BTreeMap<String, Table>,
    exports: BTreeMap<u64, Export>,
    last_export_id: u64,
}

/// One warehouse table: rows in first-insertion order, replaced in place by key.
#[derive(Default)]
pub(super) struct Table {
    columns: Vec<String>,
    rows: Vec<Map<String, Value>>,
    by_key: HashMap<String, usize>,
}

/// A raw export: a snapshot of a table taken when the export was created.
pub(super) struct Export {
    pub id: u64,
    pub name: String,
    pub table: String,
    pub rows: usize,
    pub created: SystemTime,
    /// False until the first poll (see [`Store::poll_export`]).
    pub ready: bool,
    pub zip: Bytes,
}

impl Table {
    /// Column names: the union of every row's fields, in the order first seen.
    pub(super) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Inserts a record, or replaces the row with the same key values. `keys` is not
    /// stored as a column; the record must already have passed import validation.
    fn upsert(&mut self, mut record: Map<String, Value>) {
        let key_id = key_identity(&record);
        record.remove("keys");
        for name in record.keys() {
            if !self.columns.contains(name) {
                self.columns.push(name.clone());
            }
        }
        match self.by_key.get(&key_id) {
            Some(&at) => self.rows[at] = record,
            None => {
                self.by_key.insert(key_id, self.rows.len());
                self.rows.push(record);
            }
        }
    }

    /// The table as CSV: a header of all columns, then one line per row.
    fn csv(&self) -> String {
        let mut out = String::new();
        table_file::push_line(&mut out, self.columns.iter().map(String::as_str));
        for row in &self.rows {
            let cells: Vec<String> = self.columns.iter().map(|c| table_file::cell_text(row.get(c))).collect();
            table_file::push_line(&mut out, cells.iter().map(String::as_str));
        }
        out
    }
}

/// What identifies a row: its key field names (sorted, deduplicated) with their values.
fn key_identity(record: &Map<String, Value>) -> String {
    let mut names: Vec<&str> = match record.get("keys") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    names.sort_unstable();
    names.dedup();
    let pairs: Vec<Value> = names.iter().map(|n| json!([n, record.get(*n)])).collect();
    Value::Array(pairs).to_string()
}

impl Export {
    /// The export as the API describes it (list entries, `info`, `copy`).
    pub(super) fn describe(&self) -> Value {
        json!({
            "id": self.id,
            "export_id": self.id,
            "name": self.name,
            "table": self.table,
            "rows": self.rows,
            "status": if self.ready { "Completed" } else { "Pending" },
            "created_at": clock::format_utc(self.created),
        })
    }
}

impl Store {
    /// Upserts validated records into `table`, creating it on first push.
    pub(super) fn upsert(&mut self, table: &str, records: Vec<Map<String, Value>>) {
        let table = self.tables.entry(table.to_owned()).or_default();
        for record in records {
            table.upsert(record);
        }
    }

    /// Tables by name.
    pub(super) fn tables(&self) -> impl Iterator<Item = (&String, &Table)> {
        self.tables.iter()
    }

    /// One table.
    pub(super) fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Creates a pending export of a table's current rows; `None` when there is no such table.
    pub(super) fn export_table(&mut self, name: &str) -> Option<std::io::Result<&Export>> {
        let table = self.tables.get(name)?;
        let zip = match table_file::zip_one(&format!("{name}.csv"), table.csv().as_bytes()) {
            Ok(zip) => Bytes::from(zip),
            Err(e) => return Some(Err(e)),
        };
        let rows = table.rows.len();
        Some(Ok(self.add_export(format!("Table export: {name}"), name.to_owned(), rows, zip)))
    }

    /// Creates a pending copy of an export; `None` when there is no such export.
    pub(super) fn copy_export(&mut self, id: u64, name: Option<String>) -> Option<&Export> {
        let source = self.exports.get(&id)?;
        let name = name.unwrap_or_else(|| format!("Copy of {}", source.name));
        let (table, rows, zip) = (source.table.clone(), source.rows, source.zip.clone());
        Some(self.add_export(name, table, rows, zip))
    }

    fn add_export(&mut self, name: String, table: String, rows: usize, zip: Bytes) -> &Export {
        self.last_export_id += 1;
        let id = self.last_export_id;
        let export = Export { id, name, table, rows, created: SystemTime::now(), ready: false, zip };
        self.exports.entry(id).or_insert(export)
    }

    /// Every export, oldest first.
    pub(super) fn exports(&self) -> impl Iterator<Item = &Export> {
        self.exports.values()
    }

    /// The readiness rule: a poll (`info` or download) sees an export as it was, then
    /// marks it ready, so the first poll after creation answers "pending" and every
    /// later one "completed". Returns the export as the poll saw it.
    pub(super) fn poll_export(&mut self, id: u64) -> Option<PolledExport> {
        let export = self.exports.get_mut(&id)?;
        let seen =
            PolledExport { ready: export.ready, description: export.describe(), zip: export.zip.clone() };
        export.ready = true;
        Some(seen)
    }
}

/// An export as one poll saw it.
pub(super) struct PolledExport {
    pub ready: bool,
    pub description: Value,
    pub zip: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn same_key_values_replace_the_row_in_place() {
        let mut store = Store::default();
        store.upsert(
            "t",
            vec![
                record(json!({"keys":["id"],"id":1,"v":"a"})),
                record(json!({"keys":["id"],"id":2,"v":"b"})),
                record(json!({"keys":["id"],"id":1,"v":"c","extra":true})),
            ],
        );
        let table = store.table("t").unwrap();
        assert_eq!(table.columns(), ["id", "v", "extra"]);
        assert_eq!(table.csv(), "id,v,extra\r\n1,c,true\r\n2,b,\r\n");
    }

    #[test]
    fn composite_keys_ignore_name_order() {
        let mut store = Store::default();
        store.upsert("t", vec![record(json!({"keys":["a","b"],"a":1,"b":2,"v":1}))]);
        store.upsert("t", vec![record(json!({"keys":["b","a"],"a":1,"b":2,"v":2}))]);
        store.upsert("t", vec![record(json!({"keys":["a","b"],"a":2,"b":1,"v":3}))]);
        assert_eq!(store.table("t").unwrap().csv(), "a,b,v\r\n1,2,2\r\n2,1,3\r\n");
    }

    #[test]
    fn exports_become_ready_on_first_poll() {
        let mut store = Store::default();
        store.upsert("t", vec![record(json!({"keys":["id"],"id":1}))]);
        let id = store.export_table("t").unwrap().unwrap().id;
        assert!(!store.poll_export(id).unwrap().ready);
        assert!(store.poll_export(id).unwrap().ready);
        let copy = store.copy_export(id, None).unwrap();
        assert_eq!(copy.name, "Copy of Table export: t");
        assert!(!copy.ready);
        assert!(store.export_table("missing").is_none());
    }
}
