//! The alerting rules pass `promtool check rules` and `promtool test rules`, and the
//! rules and the dashboard use only the contract's metrics.

use std::process::Command;

use crate::kit::*;
use crate::support::tools::have_promtool;
use crate::{CONTRACT_HISTOGRAMS, CONTRACT_METRICS, PROCESS_METRICS, SYNTHETIC_METRICS, repo};

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let test = "alert_rules_pass_promtool_check_and_unit_tests";
    if !have_promtool(test) {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(rules_file()));
    assert!(out.status.success(), "promtool check rules:\n{}", text(&out));
    let out =
        run(Command::new("promtool").args(["test", "rules", "keygate-alerts.test.yml"]).current_dir(&dir));
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
}

#[test]
fn rules_and_dashboard_use_only_contract_metrics() {
    if !have_pyyaml("rules_and_dashboard_use_only_contract_metrics") {
        return;
    }
    let names = kit_metric_names();
    let known = |n: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .filter(|b| CONTRACT_HISTOGRAMS.contains(b));
        CONTRACT_METRICS.contains(&n)
            || base.is_some()
            || PROCESS_METRICS.contains(&n)
            || SYNTHETIC_METRICS.contains(&n)
    };
    let unknown: Vec<String> =
        names.iter().filter(|(n, _)| !known(n)).map(|(n, used)| format!("{n} (in {used:?})")).collect();
    assert!(unknown.is_empty(), "not keygate metrics (docs/metrics.md): {unknown:?}");
    // Histograms are only ever read through their series.
    for h in CONTRACT_HISTOGRAMS {
        assert!(!names.contains_key(*h), "{h} has no series of its own; use {h}_bucket");
    }
}
