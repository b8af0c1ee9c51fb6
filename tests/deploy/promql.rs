//! A small PromQL reader: the metric names an expression selects, and the selector of a
//! Grafana `label_values` variable query.

use std::collections::BTreeSet;

/// Removes `open ... close` spans (outside string literals), keeping a space.
pub fn strip_spans(s: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            let was_escaped = escaped;
            escaped = !was_escaped && c == '\\';
            if c == q && !was_escaped {
                quote = None;
            }
            if depth == 0 {
                out.push(' ');
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => {
                quote = Some(c);
                escaped = false;
                if depth == 0 {
                    out.push(' ');
                }
            }
            c if c == open => depth += 1,
            c if c == close && depth > 0 => {
                depth -= 1;
                out.push(' ');
            }
            _ if depth > 0 => {}
            c => out.push(c),
        }
    }
    out
}

/// The metric names a PromQL expression selects. String literals, label matchers,
/// range/subquery brackets and `by (...)`-style label lists are skipped; function and
/// aggregation names are recognised by what follows them.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let bare = strip_spans(&strip_spans(expr, '{', '}'), '[', ']');
    let chars: Vec<char> = bare.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' || c == '$' {
            // Numbers, durations ("10m", "1e3") and dashboard variables.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.{}".contains(chars[i])) {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let call = chars.get(next) == Some(&'(');
        if LABEL_LISTS.contains(&word.as_str()) && call {
            // Skip the label list.
            let mut depth = 0;
            i = next;
            while i < chars.len() {
                match chars[i] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else if !call && !KEYWORDS.contains(&word.as_str()) {
            names.insert(word);
        }
    }
    names
}

/// The selector part of a Grafana `label_values(selector, label)` variable query, or the
/// query itself when it is plain PromQL.
pub fn grafana_variable_promql(query: &str) -> String {
    let q = query.trim();
    match q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        Some(args) => match args.rsplit_once(',') {
            Some((selector, _label)) if !selector.trim().is_empty() => selector.to_string(),
            _ => String::new(), // label_values(label): no metric
        },
        None => q.to_string(),
    }
}

#[test]
fn promql_metric_names_finds_selectors_only() {
    let names = |e: &str| promql_metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.9, sum by (le, route) (rate(a_bucket{job=~"$job", x="y(z)"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names(
            "rate(a_total[5m]) / ignoring (kind) group_left sum without (code) (rate(b_total[5m])) > 0.05 and c offset 10m"
        ),
        ["a_total", "b_total", "c"]
    );
    assert_eq!(names("x - time() < 14 * 86400"), ["x"]);
    assert_eq!(names(r#"label_replace(a{l="\"}{"}, "d", "$1", "s", "(.*)")"#), ["a"]);
    assert_eq!(names(r#"absent(up{job="keygate"})"#), ["up"]);
    assert_eq!(names("sum(rate(a[1m])) by (route)"), ["a"]);
    assert_eq!(names(&grafana_variable_promql("label_values(m{j=~\"$job\"}, instance)")), ["m"]);
}
