//! The one reader of Prometheus text: each sample line split into its series (name and
//! label set as written), name, labels and value, looked up by exact series or by name
//! and a subset of labels.

use std::collections::BTreeSet;

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The name and label set exactly as written, e.g. `keygate_denied_total{reason="x",route="-"}`.
    pub series: &'a str,
    pub name: &'a str,
    /// `(name, value)` pairs, quotes removed.
    pub labels: Vec<(&'a str, &'a str)>,
    pub value: Option<f64>,
}

/// Every sample line of `text` (comments and blank lines skipped).
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (name, label_text) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        Some(Sample { series, name, labels, value: value.trim().parse().ok() })
    })
}

/// The value of the sample line `series`, matched exactly (name and full label set).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    samples(text).find(|s| s.series == series)?.value
}

/// The value of the first sample named `name` carrying all of `labels` (others ignored).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text).find(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))?.value
}

/// The names of every sample in `text`.
pub fn names(text: &str) -> BTreeSet<String> {
    samples(text).map(|s| s.name.to_owned()).collect()
}
