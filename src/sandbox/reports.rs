//! Sample figures (Visual and SQL Report Builder) and charts (cohort report builder),
//! and their export as CSV or JSON.

use serde_json::{Value, json};

use super::table_file;

/// Which builder made a report; it decides the formats it exports to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Builder {
    Visual,
    Sql,
    Cohort,
}

/// One cell of sample data.
#[derive(Clone, Copy)]
enum Cell {
    Text(&'static str),
    Int(i64),
    Num(f64),
}

/// A figure or chart with fixed sample data.
pub(super) struct Report {
    pub id: u64,
    name: &'static str,
    builder: Builder,
    columns: &'static [&'static str],
    rows: &'static [&'static [Cell]],
}

use Cell::{Int, Num, Text};

/// The sample figures.
pub(super) const FIGURES: &[Report] = &[
    Report {
        id: 101,
        name: "Revenue by month",
        builder: Builder::Visual,
        columns: &["Month", "Revenue"],
        rows: &[
            &[Text("2024-01"), Num(12500.5)],
            &[Text("2024-02"), Num(13100.0)],
            &[Text("2024-03"), Num(14875.25)],
        ],
    },
    Report {
        id: 102,
        name: "Orders by status",
        builder: Builder::Sql,
        columns: &["Status", "Orders"],
        rows: &[
            &[Text("complete"), Int(412)],
            &[Text("pending, awaiting payment"), Int(37)],
            &[Text("canceled"), Int(9)],
        ],
    },
];

/// The sample charts.
pub(super) const CHARTS: &[Report] = &[Report {
    id: 201,
    name: "Customer retention by cohort",
    builder: Builder::Cohort,
    columns: &["Cohort", "Customers", "Month 1", "Month 2"],
    rows: &[
        &[Text("2024-01"), Int(120), Num(0.42), Num(0.31)],
        &[Text("2024-02"), Int(98), Num(0.39), Num(0.0)],
    ],
}];

/// The report with this id (as written in the path), if any.
pub(super) fn find<'a>(reports: &'a [Report], id: &str) -> Option<&'a Report> {
    let id: u64 = id.parse().ok()?;
    reports.iter().find(|r| r.id == id)
}

/// An export format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Csv,
    Json,
}

impl Report {
    fn formats(&self) -> &'static [&'static str] {
        match self.builder {
            Builder::Sql => &["csv"],
            Builder::Visual | Builder::Cohort => &["csv", "json"],
        }
    }

    /// The report as `info` and the lists describe it.
    pub(super) fn describe(&self) -> Value {
        let kind = match self.builder {
            Builder::Visual => "visual",
            Builder::Sql => "sql",
            Builder::Cohort => "cohort",
        };
        json!({
            "id": self.id,
            "name": self.name,
            "type": kind,
            "formats": self.formats(),
            "columns": self.columns,
        })
    }

    /// Whether the report exports to `format` (SQL Report Builder figures: CSV only).
    pub(super) fn supports(&self, format: Format) -> bool {
        format == Format::Csv || self.builder != Builder::Sql
    }

    /// CSV lines, the header row first when `headers`.
    pub(super) fn csv(&self, headers: bool) -> String {
        let mut out = String::new();
        if headers {
            table_file::push_line(&mut out, self.columns.iter().copied());
        }
        for row in self.rows {
            let cells: Vec<String> =
                row.iter().map(|c| table_file::cell_text(Some(&cell_value(*c)))).collect();
            table_file::push_line(&mut out, cells.iter().map(String::as_str));
        }
        out
    }

    /// A JSON array of rows (arrays of cells), the header row first when `headers`.
    pub(super) fn json(&self, headers: bool) -> Value {
        let mut rows: Vec<Value> = Vec::new();
        if headers {
            rows.push(json!(self.columns));
        }
        rows.extend(self.rows.iter().map(|row| Value::Array(row.iter().map(|c| cell_value(*c)).collect())));
        Value::Array(rows)
    }
}

fn cell_value(cell: Cell) -> Value {
    match cell {
        Text(s) => json!(s),
        Int(i) => json!(i),
        Num(n) => json!(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_csv_and_json_with_and_without_headers() {
        let figure = find(FIGURES, "102").unwrap();
        assert_eq!(figure.csv(false), "complete,412\r\n\"pending, awaiting payment\",37\r\ncanceled,9\r\n");
        assert!(figure.csv(true).starts_with("Status,Orders\r\n"));
        assert!(!figure.supports(Format::Json));
        let chart = find(CHARTS, "201").unwrap();
        assert_eq!(chart.json(false)[1], json!(["2024-02", 98, 0.39, 0.0]));
        assert_eq!(chart.json(true)[0], json!(["Cohort", "Customers", "Month 1", "Month 2"]));
        assert!(find(FIGURES, "999").is_none());
        assert!(find(FIGURES, "x").is_none());
    }
}
