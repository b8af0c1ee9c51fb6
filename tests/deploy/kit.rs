//! Reading the deployment kit: YAML through python3 + PyYAML (skipping without it), the
//! manifests, the alerting rules and the dashboard, the metric names they use, and config
//! durations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

use crate::promql::{grafana_variable_promql, promql_metric_names};
use crate::repo;
use crate::support::tools::have_tool;

pub fn have_pyyaml(test: &str) -> bool {
    have_tool(
        test,
        "python3 with PyYAML",
        "pip install kubernetes-validate==1.37.0 (brings PyYAML)",
        Command::new("python3").args(["-c", "import yaml"]),
    )
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every YAML document of `path`, as JSON (through python3 + PyYAML, the parser
/// kubernetes-validate itself uses).
pub fn yaml_docs(path: &Path) -> Vec<Json> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let out = run(Command::new("python3").arg("-c").arg(SCRIPT).arg(path));
    assert!(out.status.success(), "{} is not valid YAML:\n{}", path.display(), text(&out));
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

pub fn yaml_doc(path: &Path) -> Json {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{} must hold one document", path.display());
    docs.remove(0)
}

pub fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
        .collect();
    files.sort();
    files
}

pub fn k8s_manifests() -> Vec<PathBuf> {
    let files = files_with_ext(&repo().join("deploy/kubernetes"), &["yaml", "yml"]);
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    files
}

/// A config duration ("250ms", "20s", "2m", "1h") in milliseconds.
pub fn duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(n * factor)
}

pub fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/keygate-alerts.yml")
}

pub fn dashboard_file() -> PathBuf {
    repo().join("deploy/grafana/keygate-dashboard.json")
}

/// Every rule of the alerting rules file, as JSON.
pub fn alert_rules() -> Vec<Json> {
    let doc = yaml_doc(&rules_file());
    let groups = doc["groups"].as_array().expect("groups: a list");
    let rules: Vec<Json> =
        groups.iter().flat_map(|g| g["rules"].as_array().expect("rules: a list").clone()).collect();
    assert!(!rules.is_empty(), "no rules in {}", rules_file().display());
    rules
}

pub fn dashboard() -> Json {
    let raw = std::fs::read_to_string(dashboard_file()).expect("dashboard file");
    serde_json::from_str(&raw).expect("dashboard is JSON")
}

/// Every `expr` string anywhere in the dashboard (panel targets, annotations).
pub fn dashboard_exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Json::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

/// The dashboard's queries, with Grafana's variables replaced so promtool can parse them.
pub fn dashboard_queries(dash: &Json) -> Vec<String> {
    let mut exprs = Vec::new();
    dashboard_exprs(dash, &mut exprs);
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] == "query" {
            let q = var["definition"].as_str().expect("variable definition");
            exprs.push(grafana_variable_promql(q));
        }
    }
    exprs.retain(|e| !e.trim().is_empty());
    exprs
}

/// Metric names used by the alerting rules and the dashboard, with where each is used.
pub fn kit_metric_names() -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in alert_rules() {
        let alert = rule["alert"].as_str().unwrap_or("a recording rule");
        let expr = rule["expr"].as_str().expect("expr");
        for n in promql_metric_names(expr) {
            names.entry(n).or_default().insert(format!("alert {alert}"));
        }
    }
    for expr in dashboard_queries(&dashboard()) {
        for n in promql_metric_names(&expr) {
            names.entry(n).or_default().insert("dashboard".into());
        }
    }
    names
}
