//! The Kubernetes manifests validate against the Kubernetes schemas
//! (`kubernetes-validate`) and agree with the `keygate.toml` they embed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value as Json;

use crate::kit::*;
use crate::support::tools::have_tool;
use crate::{CRD_API_VERSIONS, K8S_VERSIONS};

fn port_of(addr: &str) -> Option<u64> {
    addr.rsplit_once(':')?.1.parse().ok()
}

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
            let api = doc["apiVersion"].as_str().unwrap_or("?");
            if CRD_API_VERSIONS.contains(&api) {
                crd_kinds.insert((doc["kind"].as_str().unwrap_or("?").to_string(), api.to_string()));
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
            let crd = crd_kinds.iter().any(|(kind, api)| {
                line.contains(&format!("Couldn't find schema for kind {kind} with api version {api}"))
            });
            assert!(crd, "kubernetes-validate (k8s {version}): {line}");
        }
        let passes = report.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passes, expected_passes, "not every manifest was validated (k8s {version}):\n{report}");
    }
}

pub struct Manifests {
    pub deployment: Json,
    pub config_map: Json,
    pub pod_monitor: Json,
    pub certificate: Json,
    pub issuer: Json,
}

pub fn manifests() -> Manifests {
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
    Manifests {
        deployment: one("Deployment"),
        config_map: one("ConfigMap"),
        pod_monitor: one("PodMonitor"),
        certificate: one("Certificate"),
        issuer: one("Issuer"),
    }
}

pub fn pod_spec(m: &Manifests) -> &Json {
    &m.deployment["spec"]["template"]["spec"]
}

pub fn containers(pod: &Json) -> impl Iterator<Item = &Json> {
    ["initContainers", "containers"].into_iter().filter_map(|k| pod[k].as_array()).flatten()
}

pub fn keygate_container(pod: &Json) -> &Json {
    containers(pod).find(|c| c["name"] == "keygate").expect("a container named keygate")
}

pub fn volume<'a>(pod: &'a Json, name: &str) -> &'a Json {
    pod["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The named container port `port` refers to (a name or a number), as a number.
pub fn container_port(container: &Json, port: &Json) -> Option<u64> {
    match port {
        Json::Number(n) => n.as_u64(),
        Json::String(name) => {
            container["ports"].as_array()?.iter().find(|p| p["name"] == *name)?["containerPort"].as_u64()
        }
        _ => None,
    }
}

/// The keygate.toml the Deployment's keygate container is started with.
pub fn embedded_config(m: &Manifests) -> (toml::Table, String) {
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

pub fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
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
    // Host routes are reached through the proxy variables instead (checked below).
    for r in routes.iter().filter(|r| r.get("host").is_none()) {
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

/// The value of the environment variable `name` of container `c`.
fn env<'a>(c: &'a Json, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
fn kubernetes_manifests_intercept_the_vendor_hosts_for_unmodified_clients() {
    if !have_pyyaml("kubernetes_manifests_intercept_the_vendor_hosts_for_unmodified_clients") {
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
    let routes = cfg.get("routes").and_then(|r| r.as_array()).cloned().unwrap_or_default();
    let hosts: BTreeSet<&str> = routes.iter().filter_map(|r| r.get("host")?.as_str()).collect();
    check(hosts.contains("connect.rjmetrics.com"), "no route names connect.rjmetrics.com".into());

    // The certificate names exactly the routed hosts, no wildcard, from the Issuer.
    let spec = &m.certificate["spec"];
    let names: BTreeSet<&str> =
        spec["dnsNames"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
    check(names == hosts, format!("Certificate dnsNames {names:?} are not the routed hosts {hosts:?}"));
    check(
        spec["issuerRef"]["name"] == m.issuer["metadata"]["name"] && spec["issuerRef"]["kind"] == "Issuer",
        format!("the Certificate's issuerRef {} is not the Issuer", spec["issuerRef"]),
    );
    check(m.issuer["spec"]["ca"]["secretName"].is_string(), "the Issuer is not a CA issuer".into());
    check(spec["privateKey"]["rotationPolicy"] == "Always", "the intercept key is not rotated".into());

    // keygate reads the issued pair from the Certificate's Secret, mounted as a directory.
    let secret = spec["secretName"].as_str().unwrap_or("?");
    let mount = kg["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|vm| volume(pod, vm["name"].as_str().unwrap_or(""))["secret"]["secretName"] == secret);
    let dir = mount.and_then(|vm| vm["mountPath"].as_str()).unwrap_or("?");
    for field in ["cert", "key"] {
        let path = toml_str(&cfg, &["server", "intercept", field]).unwrap_or("?");
        check(
            path.starts_with(&format!("{dir}/")),
            format!("[server.intercept] {field} {path} is not in {secret}"),
        );
    }
    // The CA's key is mounted nowhere.
    let ca_key = m.issuer["spec"]["ca"]["secretName"].as_str().unwrap_or("?");
    for v in pod["volumes"].as_array().into_iter().flatten() {
        check(v["secret"]["secretName"] != ca_key, format!("volume {} mounts the CA's key", v["name"]));
    }

    // The app: both proxy variables in both cases, NO_PROXY, and the CA bundle from a
    // ConfigMap (public certificates only).
    let listen = toml_str(&cfg, &["server", "listen"]).unwrap_or("");
    let proxy = format!("http://{listen}");
    for app in containers(pod).filter(|c| c["name"] != "keygate") {
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            check(env(app, var) == Some(proxy.as_str()), format!("{}: {var} is not {proxy}", app["name"]));
        }
        for var in ["NO_PROXY", "no_proxy"] {
            let list = env(app, var).unwrap_or("");
            check(
                list.split(',').any(|h| h == "127.0.0.1"),
                format!("{}: {var} lacks 127.0.0.1", app["name"]),
            );
        }
        for var in ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"] {
            let file = env(app, var).unwrap_or("?");
            let from_config_map = app["volumeMounts"].as_array().into_iter().flatten().any(|vm| {
                file.starts_with(&format!("{}/", vm["mountPath"].as_str().unwrap_or("?")))
                    && volume(pod, vm["name"].as_str().unwrap_or(""))["configMap"].is_object()
            });
            check(from_config_map, format!("{}: {var} {file} is not on a ConfigMap mount", app["name"]));
        }
    }
    assert!(errors.is_empty(), "deploy/kubernetes:\n- {}", errors.join("\n- "));
}
