//! The PodMonitor (a CRD, checked structurally) scrapes the sidecar's admin port.

use serde_json::Value as Json;

use crate::CRD_API_VERSION;
use crate::kit::*;
use crate::kubernetes::*;

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
