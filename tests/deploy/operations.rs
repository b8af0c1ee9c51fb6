//! `docs/operations.md`: every alert is documented, unit-tested and linked to its
//! runbook.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use crate::kit::*;
use crate::repo;

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes.
fn markdown_anchors(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_is_documented_tested_and_linked_to_its_runbook() {
    let test = "every_alert_is_documented_tested_and_linked_to_its_runbook";
    if !have_pyyaml(test) {
        return;
    }
    let ops = std::fs::read_to_string(repo().join("docs/operations.md")).expect("operations.md");
    let anchors = markdown_anchors(&ops);
    let tests = yaml_doc(&repo().join("deploy/prometheus/keygate-alerts.test.yml"));
    let cases: Vec<&Json> = tests["tests"]
        .as_array()
        .expect("tests: a list")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let mut errors = Vec::new();
    for rule in alert_rules() {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        for key in ["summary", "description", "runbook_url"] {
            if rule["annotations"][key].as_str().is_none_or(|s| s.trim().is_empty()) {
                errors.push(format!("{alert}: no {key} annotation"));
            }
        }
        if !rule["labels"]["severity"].is_string() {
            errors.push(format!("{alert}: no severity label"));
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        match url.split_once("docs/operations.md#") {
            Some((_, anchor)) if anchors.contains(anchor) && anchor == alert.to_lowercase() => {}
            _ => errors.push(format!(
                "{alert}: runbook_url {url:?} must point at docs/operations.md#{}, a heading there",
                alert.to_lowercase()
            )),
        }
        let of_alert = cases.iter().filter(|c| c["alertname"] == alert);
        let (firing, quiet): (Vec<&&Json>, Vec<&&Json>) =
            of_alert.partition(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        if firing.is_empty() || quiet.is_empty() {
            errors.push(format!(
                "{alert}: keygate-alerts.test.yml needs a firing and a not-firing case \
                 (has {} and {})",
                firing.len(),
                quiet.len()
            ));
        }
    }
    // Links inside the guide point at headings that exist.
    for (i, _) in ops.match_indices("](#") {
        let rest = &ops[i + 3..];
        let anchor = &rest[..rest.find(')').unwrap_or(0)];
        if !anchors.contains(anchor) {
            errors.push(format!("docs/operations.md links to missing #{anchor}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
