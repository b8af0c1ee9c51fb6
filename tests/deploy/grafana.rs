//! The dashboard: its queries are valid PromQL, and every panel uses the datasource
//! variable.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value as Json;

use crate::kit::*;
use crate::support::tools::have_promtool;

#[test]
fn dashboard_queries_are_valid_promql() {
    if !have_promtool("dashboard_queries_are_valid_promql") {
        return;
    }
    // promtool parses PromQL only inside rule files: wrap each query in a recording rule,
    // with Grafana's variables given plausible values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries(&dashboard()).iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", "keygate")
            .replace("$instance", ".*")
            .replace("$route", ".*");
        assert!(!q.contains('$'), "unhandled dashboard variable in {q}");
        let quoted = serde_json::to_string(&q).expect("JSON string"); // valid YAML too
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {quoted}\n"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, rules).expect("write rules");
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(&path));
    assert!(out.status.success(), "dashboard PromQL:\n{}", text(&out));
}

#[test]
fn dashboard_uses_the_datasource_variable() {
    let dash = dashboard();
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "the dashboard needs a `datasource` variable of type datasource (prometheus)"
    );
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id in {title}");
        assert!(p["gridPos"]["w"].is_u64(), "{title}: no gridPos");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: target datasource");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}: empty expr");
            queried += 1;
        }
    }
    assert!(queried > 0);
    // Every other data source reference too (variables, annotations), except Grafana's
    // built-in annotation source.
    fn datasources<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
        match v {
            Json::Object(map) => {
                if let Some(ds) = map.get("datasource") {
                    out.push(ds);
                }
                map.values().for_each(|v| datasources(v, out));
            }
            Json::Array(items) => items.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(&dash, &mut refs);
    for ds in refs.into_iter().filter(|ds| ds["type"] != "grafana") {
        assert_eq!(ds["uid"], "${datasource}", "data source reference {ds}");
    }
    // The panels the operator guide promises.
    let all = serde_json::to_string(&dash).expect("JSON");
    for needle in [
        "keygate_requests_total",
        "histogram_quantile",
        "keygate_request_duration_seconds_bucket",
        "keygate_upstream_duration_seconds_bucket",
        "keygate_denied_total",
        "keygate_upstream_errors_total",
        "keygate_config_reloads_total",
        "keygate_config_generation",
        "time() - keygate_secret_loaded_timestamp_seconds",
        "keygate_requests_in_flight",
        "keygate_connections_open",
        "keygate_secret_candidate",
        "keygate_secret_verifications_total",
        "keygate_secret_fallbacks_total",
    ] {
        assert!(all.contains(needle), "the dashboard shows nothing of {needle}");
    }
}
