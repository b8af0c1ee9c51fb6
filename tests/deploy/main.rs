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

#[path = "../support/mod.rs"]
mod support;

mod grafana;
mod kit;
mod kubernetes;
mod operations;
mod podmonitor;
mod prometheus;
mod promql;
mod scrape;
mod systemd;

use std::path::PathBuf;

/// Kubernetes versions the manifests are validated against: the first with native
/// sidecars (restartable init containers) on by default, and a current one.
const K8S_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

/// The PodMonitor's API: one of the kinds without a schema in kubernetes-validate.
const CRD_API_VERSION: &str = "monitoring.coreos.com/v1";

/// Every API without a schema in kubernetes-validate (the PodMonitor's, cert-manager's);
/// their kinds are checked structurally instead.
const CRD_API_VERSIONS: [&str; 2] = [CRD_API_VERSION, "cert-manager.io/v1"];

/// Metric names from the contract (`docs/metrics.md`). Histograms are listed by base name.
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
    "keygate_secret_candidate",
    "keygate_secret_verifications_total",
    "keygate_secret_fallbacks_total",
    "keygate_tls_cert_expiry_timestamp_seconds",
    "keygate_intercept_cert_expiry_timestamp_seconds",
    "keygate_build_info",
    "keygate_import_batches_total",
    "keygate_import_retries_total",
    "keygate_update_status_answers_total",
    "keygate_coordination_errors_total",
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
