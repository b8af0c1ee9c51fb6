//! Export files: RFC 4180 CSV text and the stored (uncompressed) zip that wraps it.

use std::io::{Cursor, Write};

use serde_json::Value;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Appends one CSV line (CRLF-terminated), quoting fields that need it.
pub(super) fn push_line<'a>(out: &mut String, cells: impl IntoIterator<Item = &'a str>) {
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if cell.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push_str("\r\n");
}

/// How a JSON value is written in a CSV cell: strings raw, `null` empty, other values
/// as their JSON text.
pub(super) fn cell_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A zip archive holding one stored file.
pub(super) fn zip_one(name: &str, contents: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    zip.start_file(name, options).map_err(std::io::Error::other)?;
    zip.write_all(contents)?;
    let cursor = zip.finish().map_err(std::io::Error::other)?;
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read;

    #[test]
    fn quotes_only_what_needs_quoting() {
        let mut out = String::new();
        push_line(&mut out, ["plain", "a,b", "say \"hi\"", "two\nlines", ""]);
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
    }

    #[test]
    fn renders_json_cells() {
        assert_eq!(cell_text(Some(&json!("x"))), "x");
        assert_eq!(cell_text(Some(&json!(1.5))), "1.5");
        assert_eq!(cell_text(Some(&json!(null))), "");
        assert_eq!(cell_text(None), "");
        assert_eq!(cell_text(Some(&json!({"a":[1]}))), "{\"a\":[1]}");
    }

    #[test]
    fn zip_round_trips() {
        let bytes = zip_one("t.csv", b"a,b\r\n").unwrap();
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut file = archive.by_name("t.csv").unwrap();
        assert_eq!(file.compression(), CompressionMethod::Stored);
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "a,b\r\n");
    }
}
