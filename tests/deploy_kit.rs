//! Checks of the deployment kit under `deploy/` and of `docs/operations.md`.
//!
//! - The Kubernetes manifests validate against the Kubernetes schemas
//!   (`kubernetes-validate`) and agree with the `keygate.toml` they embed.
//! - The alerting rules pass `promtool check rules` and `promtool test rules`, and the
//!   dashboard's queries parse.
//! - The systemd unit is hardened and passes `systemd-analyze verify`.
//! - Every metric the rules and the dashboard use exists in a real scrape of a running
//!   keygate.
//!
//! The external tools (python3 with PyYAML, kubernetes-validate, promtool,
//! systemd-analyze) are optional locally: without one, the test that needs it prints why
//! it skipped. With `KEYGATE_REQUIRE_TOOLS=1` a missing tool is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// Kubernetes versions the manifests are validated against: the first with native
/// sidecars (restartable init containers) on by default, and a current one.
const K8S_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

/// The only kinds without a schema in kubernetes-validate; checked structurally instead.
const CRD_API_VERSION: &str = "monitoring.coreos.com/v1";

/// Metric names from the contract (design §6). Histograms are listed by base name.
const CONTRACT_METRICS: &[&str] = &[
    "keygate_requests_total",
    "keygate_request_duration_seconds",
    "keygate_upstream_duration_seconds",
    "keygate_denied_total",
    "keygate_shadow_denied_total",
    "keygate_upstream_errors_total",
    "keygate_upstream_auth_failures_total",
    "keygate_requests_in_flight",
    "keygate_connections_open",
    "keygate_config_reloads_total",
    "keygate_config_last_reload_successful",
    "keygate_config_last_reload_success_timestamp_seconds",
    "keygate_config_generation",
    "keygate_secret_loaded_timestamp_seconds",
    "keygate_tls_cert_expiry_timestamp_seconds",
    "keygate_build_info",
];
const CONTRACT_HISTOGRAMS: &[&str] =
    &["keygate_request_duration_seconds", "keygate_upstream_duration_seconds"];
/// The standard process collector's metrics (Linux).
const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];
/// Series Prometheus synthesises for every target; keygate cannot export them.
const SYNTHETIC_METRICS: &[&str] = &["up"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------------

/// Runs `probe`; true when it succeeds. Otherwise fails the test when
/// `KEYGATE_REQUIRE_TOOLS=1`, else prints why the test is skipped and returns false.
fn have_tool(test: &str, tool: &str, install: &str, probe: &mut Command) -> bool {
    let ok = probe.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let msg = format!("{test}: {tool} is not available (install: {install})");
    if std::env::var("KEYGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg}; KEYGATE_REQUIRE_TOOLS=1 makes this a failure");
    }
    // Straight to the process's stderr: the test harness captures eprintln! of passing
    // tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {msg}; set KEYGATE_REQUIRE_TOOLS=1 to fail instead");
    false
}

fn have_pyyaml(test: &str) -> bool {
    have_tool(
        test,
        "python3 with PyYAML",
        "pip install kubernetes-validate==1.37.0 (brings PyYAML)",
        Command::new("python3").args(["-c", "import yaml"]),
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every YAML document of `path`, as JSON (through python3 + PyYAML, the parser
/// kubernetes-validate itself uses).
fn yaml_docs(path: &Path) -> Vec<Json> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let out = run(Command::new("python3").arg("-c").arg(SCRIPT).arg(path));
    assert!(out.status.success(), "{} is not valid YAML:\n{}", path.display(), text(&out));
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

fn yaml_doc(path: &Path) -> Json {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{} must hold one document", path.display());
    docs.remove(0)
}

fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
        .collect();
    files.sort();
    files
}

fn k8s_manifests() -> Vec<PathBuf> {
    let files = files_with_ext(&repo().join("deploy/kubernetes"), &["yaml", "yml"]);
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    files
}

// ---------------------------------------------------------------------------------
// Small parsers
// ---------------------------------------------------------------------------------

/// A config duration ("250ms", "20s", "2m", "1h") in milliseconds.
fn duration_ms(s: &str) -> Option<u64> {
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

fn port_of(addr: &str) -> Option<u64> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Removes `open ... close` spans (outside string literals), keeping a space.
fn strip_spans(s: &str, open: char, close: char) -> String {
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
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
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
fn grafana_variable_promql(query: &str) -> String {
    let q = query.trim();
    match q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        Some(args) => match args.rsplit_once(',') {
            Some((selector, _label)) if !selector.trim().is_empty() => selector.to_string(),
            _ => String::new(), // label_values(label): no metric
        },
        None => q.to_string(),
    }
}

fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/keygate-alerts.yml")
}

fn dashboard_file() -> PathBuf {
    repo().join("deploy/grafana/keygate-dashboard.json")
}

/// Every rule of the alerting rules file, as JSON.
fn alert_rules() -> Vec<Json> {
    let doc = yaml_doc(&rules_file());
    let groups = doc["groups"].as_array().expect("groups: a list");
    let rules: Vec<Json> =
        groups.iter().flat_map(|g| g["rules"].as_array().expect("rules: a list").clone()).collect();
    assert!(!rules.is_empty(), "no rules in {}", rules_file().display());
    rules
}

fn dashboard() -> Json {
    let raw = std::fs::read_to_string(dashboard_file()).expect("dashboard file");
    serde_json::from_str(&raw).expect("dashboard is JSON")
}

/// Every `expr` string anywhere in the dashboard (panel targets, annotations).
fn dashboard_exprs(v: &Json, out: &mut Vec<String>) {
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
fn dashboard_queries(dash: &Json) -> Vec<String> {
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
fn kit_metric_names() -> BTreeMap<String, BTreeSet<String>> {
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

// ---------------------------------------------------------------------------------
// 1. Kubernetes manifests
// ---------------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_validate_against_schemas() {
    let test = "kubernetes_manifests_validate_against_schemas";
    if !have_pyyaml(test)
        || !have_tool(
            test,
            "kubernetes-validate",
            "pip install kubernetes-validate==1.37.0",
            Command::new("python3").args(["-m", "kubernetes_validate", "--version"]),
        )
    {
        return;
    }
    let files = k8s_manifests();
    let mut expected_passes = 0;
    let mut crd_kinds = BTreeSet::new();
    for f in &files {
        for doc in yaml_docs(f) {
            if doc["apiVersion"] == CRD_API_VERSION {
                crd_kinds.insert(doc["kind"].as_str().unwrap_or("?").to_string());
            } else {
                expected_passes += 1;
            }
        }
    }
    for version in K8S_VERSIONS {
        let out = run(Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&files));
        let report = text(&out);
        assert!(out.status.success(), "kubernetes-validate (k8s {version}) failed:\n{report}");
        // A document without a schema only warns (exit 0): a typo in apiVersion would
        // pass silently. Only the CRDs may lack one.
        for line in report.lines().filter(|l| !l.starts_with("INFO")) {
            let crd = crd_kinds.iter().any(|k| {
                line.contains(&format!(
                    "Couldn't find schema for kind {k} with api version {CRD_API_VERSION}"
                ))
            });
            assert!(crd, "kubernetes-validate (k8s {version}): {line}");
        }
        let passes = report.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passes, expected_passes, "not every manifest was validated (k8s {version}):\n{report}");
    }
}

struct Manifests {
    deployment: Json,
    config_map: Json,
    pod_monitor: Json,
}

fn manifests() -> Manifests {
    let mut by_kind: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for f in k8s_manifests() {
        for doc in yaml_docs(&f) {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            by_kind.entry(kind).or_default().push(doc);
        }
    }
    let mut one = |kind: &str| {
        let mut docs = by_kind.remove(kind).unwrap_or_default();
        assert_eq!(docs.len(), 1, "expected one {kind} under deploy/kubernetes");
        docs.remove(0)
    };
    Manifests { deployment: one("Deployment"), config_map: one("ConfigMap"), pod_monitor: one("PodMonitor") }
}

fn pod_spec(m: &Manifests) -> &Json {
    &m.deployment["spec"]["template"]["spec"]
}

fn containers(pod: &Json) -> impl Iterator<Item = &Json> {
    ["initContainers", "containers"].into_iter().filter_map(|k| pod[k].as_array()).flatten()
}

fn keygate_container(pod: &Json) -> &Json {
    containers(pod).find(|c| c["name"] == "keygate").expect("a container named keygate")
}

fn volume<'a>(pod: &'a Json, name: &str) -> &'a Json {
    pod["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The named container port `port` refers to (a name or a number), as a number.
fn container_port(container: &Json, port: &Json) -> Option<u64> {
    match port {
        Json::Number(n) => n.as_u64(),
        Json::String(name) => {
            container["ports"].as_array()?.iter().find(|p| p["name"] == *name)?["containerPort"].as_u64()
        }
        _ => None,
    }
}

/// The keygate.toml the Deployment's keygate container is started with.
fn embedded_config(m: &Manifests) -> (toml::Table, String) {
    let pod = pod_spec(m);
    let kg = keygate_container(pod);
    let args: Vec<&str> = kg["args"]
        .as_array()
        .expect("keygate args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    assert_eq!(args.first(), Some(&"run"), "keygate must be started with `run`");
    let path = args
        .windows(2)
        .find(|w| w[0] == "--config" || w[0] == "-c")
        .map(|w| w[1])
        .expect("keygate run --config PATH");
    let (dir, file) = path.rsplit_once('/').expect("absolute config path");
    let mount = kg["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|vm| vm["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let cm_name = volume(pod, mount["name"].as_str().expect("mount name"))["configMap"]["name"]
        .as_str()
        .expect("the config directory is a ConfigMap volume");
    assert_eq!(m.config_map["metadata"]["name"], cm_name);
    let raw = m.config_map["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {file}"));
    let table =
        raw.parse::<toml::Table>().unwrap_or_else(|e| panic!("embedded {file} is not valid TOML: {e}"));
    (table, path.to_string())
}

fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut cur = t;
    for p in parents {
        cur = cur.get(*p)?.as_table()?;
    }
    cur.get(*last)?.as_str()
}

#[test]
fn kubernetes_manifests_agree_with_embedded_keygate_toml() {
    if !have_pyyaml("kubernetes_manifests_agree_with_embedded_keygate_toml") {
        return;
    }
    let m = manifests();
    let pod = pod_spec(&m);
    let kg = keygate_container(pod);
    let (cfg, _) = embedded_config(&m);
    let mut errors: Vec<String> = Vec::new();
    let mut check = |ok: bool, msg: String| {
        if !ok {
            errors.push(msg);
        }
    };

    // Native sidecar: a restartable init container.
    let is_init =
        pod["initContainers"].as_array().is_some_and(|cs| cs.iter().any(|c| c["name"] == "keygate"));
    check(
        !is_init || kg["restartPolicy"] == "Always",
        "keygate in initContainers needs restartPolicy: Always (native sidecar)".into(),
    );

    // Routes: allow lists present, secrets defined.
    let groups = cfg
        .get("callers")
        .and_then(|c| c.get("groups"))
        .and_then(|g| g.as_table())
        .cloned()
        .unwrap_or_default();
    let secrets = cfg.get("secrets").and_then(|s| s.as_table()).cloned().unwrap_or_default();
    let routes = cfg.get("routes").and_then(|r| r.as_array()).cloned().unwrap_or_default();
    check(!routes.is_empty(), "keygate.toml has no [[routes]]".into());
    let mut used_secrets = BTreeSet::new();
    for r in &routes {
        let name = r.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        let allow = r.get("allow").and_then(|a| a.as_array());
        check(
            allow.is_some_and(|a| !a.is_empty()),
            format!("route {name}: `allow` is required and must not be empty"),
        );
        for entry in allow.into_iter().flatten() {
            let e = entry.as_str().unwrap_or("");
            check(
                e.contains('/') || groups.contains_key(e),
                format!("route {name}: allow entry {e:?} is neither a CIDR nor a group"),
            );
        }
        let secret = r.get("secret").and_then(|s| s.as_str()).unwrap_or("");
        check(
            secrets.contains_key(secret),
            format!("route {name}: secret {secret:?} is not defined in [secrets]"),
        );
        used_secrets.insert(secret.to_string());
    }

    // Secrets: files on a Secret volume mounted as a directory.
    let mounts = kg["volumeMounts"].as_array().cloned().unwrap_or_default();
    let secret_dirs: Vec<String> = mounts
        .iter()
        .filter(|vm| volume(pod, vm["name"].as_str().unwrap_or("")).get("secret").is_some())
        .map(|vm| vm["mountPath"].as_str().unwrap_or("").to_string())
        .collect();
    check(!secret_dirs.is_empty(), "keygate mounts no Secret volume".into());
    for (name, s) in &secrets {
        check(used_secrets.contains(name), format!("[secrets.{name}] is used by no route"));
        let file = s.get("file").and_then(|f| f.as_str());
        check(
            s.get("value").is_none() && s.get("env").is_none(),
            format!("[secrets.{name}] must come from a file on a Secret volume"),
        );
        check(
            file.is_some_and(|f| {
                secret_dirs
                    .iter()
                    .any(|d| f.strip_prefix(d.as_str()).is_some_and(|rest| rest.starts_with('/')))
            }),
            format!("[secrets.{name}] file {file:?} is not under a Secret mount {secret_dirs:?}"),
        );
    }
    for vm in &mounts {
        check(
            vm.get("subPath").is_none() && vm.get("subPathExpr").is_none(),
            format!("keygate mount {} uses subPath: it would never see updates", vm["name"]),
        );
        check(vm["readOnly"] == true, format!("keygate mount {} is not readOnly", vm["name"]));
    }
    for v in pod["volumes"].as_array().into_iter().flatten() {
        if let Some(mode) = v["secret"]["defaultMode"].as_u64() {
            check(mode & 0o007 == 0, format!("Secret volume {} is world-accessible ({mode:o})", v["name"]));
        }
    }
    // Only keygate may see the keys: no other container mounts a Secret or reads one
    // into its environment.
    for c in containers(pod).filter(|c| c["name"] != "keygate") {
        for vm in c["volumeMounts"].as_array().into_iter().flatten() {
            check(
                volume(pod, vm["name"].as_str().unwrap_or("")).get("secret").is_none(),
                format!("container {} mounts Secret volume {}", c["name"], vm["name"]),
            );
        }
        let env = serde_json::to_string(&c["env"]).unwrap_or_default();
        check(
            !env.contains("secretKeyRef") && c.get("envFrom").is_none(),
            format!("container {} reads Secrets into its environment", c["name"]),
        );
    }

    // Admin listener, probes and scrape annotations.
    let admin = toml_str(&cfg, &["admin", "listen"]).unwrap_or("");
    let admin_port = port_of(admin);
    check(admin_port.is_some(), format!("[admin] listen {admin:?} has no port"));
    check(
        admin.starts_with("0.0.0.0:") || admin.starts_with("[::]:"),
        format!("[admin] listen {admin:?} must be on the pod IP for kubelet and Prometheus"),
    );
    for (probe, paths) in [
        ("livenessProbe", &["/healthz"][..]),
        ("readinessProbe", &["/readyz"][..]),
        ("startupProbe", &["/healthz", "/readyz"][..]),
    ] {
        let get = &kg[probe]["httpGet"];
        if probe == "startupProbe" && kg.get(probe).is_none() {
            continue;
        }
        check(
            get["path"].as_str().is_some_and(|p| paths.contains(&p)),
            format!("{probe} path {} should be one of {paths:?}", get["path"]),
        );
        check(
            admin_port.is_some() && container_port(kg, &get["port"]) == admin_port,
            format!("{probe} port {} is not the admin port {admin_port:?}", get["port"]),
        );
    }
    let ann = &m.deployment["spec"]["template"]["metadata"]["annotations"];
    check(ann["prometheus.io/scrape"] == "true", "prometheus.io/scrape is not \"true\"".into());
    check(
        ann["prometheus.io/port"].as_str().and_then(|p| p.parse().ok()) == admin_port,
        format!("prometheus.io/port {} is not the admin port", ann["prometheus.io/port"]),
    );
    check(ann["prometheus.io/path"] == "/metrics", "prometheus.io/path is not /metrics".into());

    // The app talks to the gateway on loopback, at each route's prefix.
    let listen = toml_str(&cfg, &["server", "listen"]).unwrap_or("");
    check(
        listen.starts_with("127.0.0.1:"),
        format!("[server] listen {listen:?} should be loopback: only the pod's app calls it"),
    );
    let app_urls: Vec<String> = containers(pod)
        .filter(|c| c["name"] != "keygate")
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["value"].as_str().map(str::to_string))
        .collect();
    for r in &routes {
        let prefix = r.get("prefix").and_then(|p| p.as_str()).unwrap_or("?");
        let url = format!("http://{listen}{prefix}");
        check(app_urls.contains(&url), format!("no app container is pointed at {url}"));
    }
    for want in ["/import", "/export"] {
        check(
            routes.iter().any(|r| r.get("prefix").and_then(|p| p.as_str()) == Some(want)),
            format!("no route with prefix {want}"),
        );
    }

    // Shutdown: the pod waits longer than keygate drains.
    let grace = toml_str(&cfg, &["server", "shutdown_grace"]).unwrap_or("20s");
    let grace_ms = duration_ms(grace);
    check(grace_ms.is_some(), format!("shutdown_grace {grace:?} is not a duration"));
    let tgps = pod["terminationGracePeriodSeconds"].as_u64();
    check(
        tgps.is_some_and(|t| Some(t * 1000) > grace_ms),
        format!("terminationGracePeriodSeconds {tgps:?} must exceed shutdown_grace {grace}"),
    );

    // One worker thread for a one-CPU limit.
    let threads = cfg.get("server").and_then(|s| s.get("worker_threads")).and_then(|w| w.as_integer());
    check(threads == Some(1), format!("worker_threads is {threads:?}, want 1"));
    let limits = &kg["resources"]["limits"];
    check(
        matches!(limits["cpu"].as_str(), Some("1" | "1000m")) || limits["cpu"] == 1,
        format!("keygate cpu limit is {}, want 1", limits["cpu"]),
    );
    check(limits["memory"].is_string(), "keygate has no memory limit".into());
    check(
        kg["resources"]["requests"]["cpu"].is_string() && kg["resources"]["requests"]["memory"].is_string(),
        "keygate has no resource requests".into(),
    );

    // Security context (container level, or pod level where Kubernetes allows it).
    let sc = &kg["securityContext"];
    let psc = &pod["securityContext"];
    check(
        sc["runAsNonRoot"] == true || (sc["runAsNonRoot"].is_null() && psc["runAsNonRoot"] == true),
        "keygate must run with runAsNonRoot: true".into(),
    );
    check(sc["runAsUser"] != 0, "keygate must not run as uid 0".into());
    check(sc["readOnlyRootFilesystem"] == true, "keygate needs readOnlyRootFilesystem".into());
    check(sc["allowPrivilegeEscalation"] == false, "keygate needs allowPrivilegeEscalation: false".into());
    check(
        sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|c| c == "ALL")),
        "keygate must drop ALL capabilities".into(),
    );
    check(sc["capabilities"]["add"].is_null(), "keygate must add no capability".into());
    check(
        sc["seccompProfile"]["type"] == "RuntimeDefault"
            || (sc["seccompProfile"].is_null() && psc["seccompProfile"]["type"] == "RuntimeDefault"),
        "keygate needs seccompProfile RuntimeDefault".into(),
    );

    assert!(errors.is_empty(), "deploy/kubernetes:\n- {}", errors.join("\n- "));
}

/// PodMonitor is a CRD: kubernetes-validate has no schema for it, so its structure is
/// checked here against the fields of monitoring.coreos.com/v1 it may use.
#[test]
fn podmonitor_scrapes_the_sidecar_admin_port() {
    if !have_pyyaml("podmonitor_scrapes_the_sidecar_admin_port") {
        return;
    }
    let m = manifests();
    let pm = &m.pod_monitor;
    let kg = keygate_container(pod_spec(&m));
    let only = |v: &Json, allowed: &[&str], what: &str| {
        let obj = v.as_object().unwrap_or_else(|| panic!("{what} must be a mapping"));
        for k in obj.keys() {
            assert!(allowed.contains(&k.as_str()), "{what}: unknown field {k:?}");
        }
    };
    assert_eq!(pm["apiVersion"], CRD_API_VERSION);
    only(pm, &["apiVersion", "kind", "metadata", "spec"], "PodMonitor");
    assert!(pm["metadata"]["name"].is_string(), "PodMonitor needs a name");
    let spec = &pm["spec"];
    only(
        spec,
        &[
            "selector",
            "namespaceSelector",
            "podMetricsEndpoints",
            "jobLabel",
            "podTargetLabels",
            "sampleLimit",
            "targetLimit",
        ],
        "PodMonitor.spec",
    );
    let pod_labels =
        m.deployment["spec"]["template"]["metadata"]["labels"].as_object().expect("pod template labels");
    let wanted = spec["selector"]["matchLabels"].as_object().expect("spec.selector.matchLabels");
    assert!(!wanted.is_empty(), "an empty selector would scrape every pod");
    for (k, v) in wanted {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "PodMonitor selects {k}={v} but the pod template does not carry it"
        );
    }
    let duration = |v: &Json, what: &str| {
        let s = v.as_str().unwrap_or_else(|| panic!("{what} must be a string"));
        assert!(duration_ms(s).is_some(), "{what} {s:?} is not a Prometheus duration");
    };
    let endpoints = spec["podMetricsEndpoints"].as_array().expect("podMetricsEndpoints: a list");
    assert!(!endpoints.is_empty());
    let admin_port_name = kg["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "keygate-admin"))
        .map(|p| p["name"].clone())
        .expect("keygate exposes a port named keygate-admin");
    for ep in endpoints {
        only(
            ep,
            &[
                "port",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "relabelings",
                "metricRelabelings",
            ],
            "podMetricsEndpoints[]",
        );
        assert_eq!(ep["port"], admin_port_name, "scrape the admin port by name");
        assert_eq!(ep["path"], "/metrics");
        duration(&ep["interval"], "interval");
        duration(&ep["scrapeTimeout"], "scrapeTimeout");
        let relabelings = ep["relabelings"].as_array().cloned().unwrap_or_default();
        for r in &relabelings {
            only(
                r,
                &["action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"],
                "relabelings[]",
            );
            let action = r["action"].as_str().unwrap_or("replace");
            assert!(
                [
                    "replace",
                    "keep",
                    "drop",
                    "hashmod",
                    "labelmap",
                    "labeldrop",
                    "labelkeep",
                    "lowercase",
                    "uppercase",
                    "keepequal",
                    "dropequal",
                ]
                .contains(&action),
                "unknown relabel action {action:?}"
            );
        }
        // The alerting rules select job="keygate".
        assert!(
            relabelings.iter().any(|r| r["targetLabel"] == "job"
                && r["replacement"] == "keygate"
                && r["action"].as_str().unwrap_or("replace") == "replace"),
            "the PodMonitor must set job=\"keygate\", which the alerting rules use"
        );
    }
}

// ---------------------------------------------------------------------------------
// 2. Alerting rules and dashboard
// ---------------------------------------------------------------------------------

fn have_promtool(test: &str) -> bool {
    have_tool(test, "promtool", "apt-get install prometheus", Command::new("promtool").arg("--version"))
}

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
    ] {
        assert!(all.contains(needle), "the dashboard shows nothing of {needle}");
    }
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
    assert!(unknown.is_empty(), "not keygate metrics (design §6): {unknown:?}");
    // Histograms are only ever read through their series.
    for h in CONTRACT_HISTOGRAMS {
        assert!(!names.contains_key(*h), "{h} has no series of its own; use {h}_bucket");
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

// ---------------------------------------------------------------------------------
// systemd unit
// ---------------------------------------------------------------------------------

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit_path = repo().join("deploy/systemd/keygate.service");
    let unit = std::fs::read_to_string(&unit_path).expect("keygate.service");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| directives.contains(&(k, v));
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert!(has(k, v), "keygate.service needs {k}={v}");
    }
    assert!(
        has("DynamicUser", "yes") || directives.iter().any(|(k, v)| *k == "User" && *v != "root"),
        "keygate.service must run as a non-root user"
    );
    // It must outwait keygate's default drain (shutdown_grace = 20s).
    let stop = directives
        .iter()
        .find(|(k, _)| *k == "TimeoutStopSec")
        .and_then(|(_, v)| duration_ms(v))
        .expect("TimeoutStopSec");
    assert!(stop > 20_000, "TimeoutStopSec must exceed shutdown_grace (20s)");

    let test = "systemd_unit_is_hardened_and_verifies";
    if !have_tool(
        test,
        "systemd-analyze",
        "apt-get install systemd",
        Command::new("systemd-analyze").arg("--version"),
    ) {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("keygate.service");
    std::fs::write(&copy, unit.replace("/usr/bin/keygate", env!("CARGO_BIN_EXE_keygate")))
        .expect("write unit");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    // Unknown or misspelt directives only print a warning, so any output is a failure.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
    // Offline exposure score (0-100 in tenths): 20 = "2.0 OK".
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy));
    assert!(out.status.success(), "systemd-analyze security: exposure above 2.0\n{}", text(&out));
}

// ---------------------------------------------------------------------------------
// 3. Every metric the kit uses exists in a real scrape
// ---------------------------------------------------------------------------------

/// Kills the child process when dropped, so a failing test leaves nothing behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fake upstream that answers every request with `401 Unauthorized`.
fn spawn_fake_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
    let addr = listener.local_addr().expect("local_addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    addr
}

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr").port()
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Splits a raw HTTP/1.1 response into (status, headers, body), undoing chunking.
fn parse_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_field = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_field:?}"));
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    (status, head, body)
}

fn request_bytes(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Reads until EOF; a TLS peer that closes without close_notify ends the read too.
fn read_all(r: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                return out;
            }
            Err(e) => panic!("reading response: {e}"),
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    tcp
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut tcp = connect(addr);
    tcp.write_all(&request_bytes(path)).expect("send request");
    parse_response(&read_all(&mut tcp))
}

fn https_get(addr: SocketAddr, path: &str, tls: &Arc<rustls::ClientConfig>) -> (u16, String, Vec<u8>) {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(tls.clone(), name).expect("TLS client");
    let mut stream = rustls::StreamOwned::new(conn, connect(addr));
    stream.write_all(&request_bytes(path)).unwrap_or_else(|e| panic!("TLS request to {addr}{path}: {e}"));
    parse_response(&read_all(&mut stream))
}

/// Output lines of a child process, collected by a reader thread.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect_lines(r: impl Read + Send + 'static, tx: Option<mpsc::Sender<String>>) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            sink.lock().expect("lines lock").push(line);
        }
    });
    lines
}

fn tail(lines: &Lines) -> String {
    let lines = lines.lock().expect("lines lock");
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n")
}

/// A string field of a JSON log line: top level, or tracing's nested `fields`.
fn log_field<'a>(line: &'a Json, key: &str) -> Option<&'a str> {
    line.get(key).or_else(|| line.get("fields").and_then(|f| f.get(key))).and_then(Json::as_str)
}

/// Names of the samples in a Prometheus text exposition.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_in_rules_and_dashboard_is_exported_by_keygate() {
    if !have_pyyaml("every_metric_in_rules_and_dashboard_is_exported_by_keygate") {
        return;
    }
    let wanted: BTreeMap<String, BTreeSet<String>> =
        kit_metric_names().into_iter().filter(|(n, _)| !SYNTHETIC_METRICS.contains(&n.as_str())).collect();
    assert!(wanted.len() > 10, "suspiciously few metric names: {wanted:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let write_private = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p.to_str().expect("utf-8 path").to_string()
    };
    // A serving certificate, so keygate_tls_cert_expiry_timestamp_seconds exists.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = write_private("keygate.crt", &ck.cert.pem());
    let key = write_private("keygate.key", &ck.key_pair.serialize_pem());
    let secret = write_private("test-key", "deploy-kit-test-key-0123456789");
    let upstream = format!("http://{}", spawn_fake_upstream());
    let closed = format!("http://127.0.0.1:{}", closed_port());

    let route = |name: &str, upstream: &str, allow: &str, extra: &str| {
        format!(
            "[[routes]]\nname = {}\nprefix = {}\nupstream = {}\n\
             inject = {{ header = \"X-Api-Key\", format = \"{{secret}}\" }}\n\
             secret = \"test\"\nmethods = [\"GET\"]\nallow = [{}]\n{extra}\n",
            q(name),
            q(&format!("/{name}")),
            q(upstream),
            q(allow),
        )
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nworker_threads = 1\n\n\
         [server.tls]\ncert = {}\nkey = {}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\n\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
         [secrets.test]\nfile = {}\n\n{}{}{}",
        q(&cert),
        q(&key),
        q(&secret),
        // Answered 401 by the upstream; the shadow list refuses loopback callers.
        route("ok", &upstream, "127.0.0.0/8", "shadow_allow = [\"10.0.0.0/8\"]"),
        // Nothing listens: a connect error.
        route("down", &closed, "127.0.0.0/8", ""),
        // Loopback callers are refused.
        route("private", &upstream, "10.0.0.0/8", ""),
    );
    let config_path = dir.path().join("keygate.toml");
    std::fs::write(&config_path, &config).expect("write config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("run")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keygate");
    let (tx, rx) = mpsc::channel();
    let stdout = collect_lines(child.stdout.take().expect("stdout"), Some(tx));
    let stderr = collect_lines(child.stderr.take().expect("stderr"), None);
    let pid = child.id();
    let _guard = KillOnDrop(child);
    let diagnostics =
        || format!("\n--- keygate stdout ---\n{}\n--- keygate stderr ---\n{}", tail(&stdout), tail(&stderr));

    // Discover the bound ports from the "listening" log lines.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut gateway, mut admin) = (None, None);
    while gateway.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("keygate did not log both listeners in time{}", diagnostics())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("keygate exited before listening{}", diagnostics())
            }
        };
        let Ok(json) = serde_json::from_str::<Json>(&line) else {
            continue;
        };
        if log_field(&json, "message") != Some("listening") {
            continue;
        }
        let addr: Option<SocketAddr> = log_field(&json, "addr").and_then(|a| a.parse().ok());
        match log_field(&json, "listener") {
            Some("gateway") => gateway = addr,
            Some("admin") => admin = addr,
            _ => {}
        }
    }
    let (gateway, admin) = (gateway.expect("gateway"), admin.expect("admin"));

    // Traffic, so that the labelled series exist.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("trust the test cert");
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    for (path, want) in [
        ("/ok/thing", 401),      // forwarded; the upstream refuses the key
        ("/down/thing", 502),    // upstream connect error
        ("/private/thing", 403), // refused by the allow list
        ("/nowhere", 404),       // no route
    ] {
        let (status, head, _) = https_get(gateway, path, &tls);
        assert_eq!(status, want, "GET {path}: {head}{}", diagnostics());
    }

    // A reload, so keygate_config_reloads_total has a series: change the config's
    // bytes (atomically) and send SIGHUP.
    let next = dir.path().join("keygate.toml.next");
    std::fs::write(&next, format!("{config}\n# reloaded by the test\n")).expect("write");
    std::fs::rename(&next, &config_path).expect("rename config");
    let hup = run(Command::new("kill").args(["-HUP", &pid.to_string()]));
    assert!(hup.status.success(), "kill -HUP: {}", text(&hup));

    // Scrape until every name is there, or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, head, body) = http_get(admin, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {head}{}", diagnostics());
        let exposed = exposed_names(&String::from_utf8_lossy(&body));
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(n, _)| !exposed.contains(*n))
            .map(|(n, used)| format!("{n} (used by {used:?})"))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics used by the kit but not exported by keygate:\n  {}\nexported: {exposed:?}{}",
            missing.join("\n  "),
            diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100)); // poll interval, not a wait
    }
}
