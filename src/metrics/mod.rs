//! Prometheus metrics (docs/metrics.md): names in one place, HELP on every metric,
//! labels only from config and closed sets. One explicit [`Registry`] per [`Metrics`],
//! so tests each get their own.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::Snapshot;
use crate::error::UpstreamFailure;

mod kept;

/// Buckets from 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Every metric keygate exports.
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) denied: IntCounterVec,
    pub(crate) shadow_denied: IntCounterVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) upstream_auth_failures: IntCounterVec,
    pub in_flight: IntGauge,
    pub(crate) connections_open: IntGauge,
    pub(crate) reloads: IntCounterVec,
    pub(crate) last_reload_successful: IntGauge,
    pub(crate) last_reload_success_timestamp: Gauge,
    pub(crate) generation: IntGauge,
    pub(crate) secret_loaded: GaugeVec,
    pub(crate) secret_candidate: IntGaugeVec,
    pub(crate) secret_verifications: IntCounterVec,
    pub(crate) secret_fallbacks: IntCounterVec,
    pub(crate) tls_cert_expiry: Gauge,
    tls_registered: std::sync::Once,
    pub(crate) intercept_cert_expiry: Gauge,
    intercept_registered: std::sync::Once,
    pub(crate) import_batches: IntCounterVec,
    pub(crate) import_retries: IntCounterVec,
    pub(crate) update_status: IntCounterVec,
    pub(crate) coordination_errors: IntCounterVec,
    /// Tags the series a route keeps (see [`crate::routes::series`]).
    pub(crate) id: u64,
}

/// One metric: its name, HELP text and labels.
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

/// Distinguishes one [`Metrics`] from another (the tag of the series a route keeps).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new [`Metrics`]'s tag.
fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The `result` labels of `keygate_import_batches_total` (src/batch.rs).
const IMPORT_BATCH_RESULTS: [&str; 3] = ["created", "failed", "not_sent"];
/// The `source` labels of `keygate_update_status_answers_total` (src/guard).
const UPDATE_STATUS_SOURCES: [&str; 5] = ["upstream", "shared", "cached", "stale", "limited"];
/// The `op` labels of `keygate_coordination_errors_total` (src/guard/fleet.rs).
const COORDINATION_OPS: [&str; 3] = ["read", "lock", "write"];

const REQUESTS: Def = Def {
    name: "keygate_requests_total",
    help: "Requests answered, by route, operation, caller group and status code.",
    labels: &["route", "operation", "caller", "code"],
};
const REQUEST_DURATION: Def = Def {
    name: "keygate_request_duration_seconds",
    help: "Time from request head to the last byte of the response.",
    labels: &["route", "operation"],
};
const UPSTREAM_DURATION: Def = Def {
    name: "keygate_upstream_duration_seconds",
    help: "Time from sending upstream to the upstream's response head.",
    labels: &["route", "operation"],
};
const DENIED: Def = Def {
    name: "keygate_denied_total",
    help: "Requests keygate refused itself, by error code.",
    labels: &["route", "reason"],
};
const SHADOW_DENIED: Def = Def {
    name: "keygate_shadow_denied_total",
    help: "Requests the route's shadow_allow list would have refused.",
    labels: &["route"],
};
const UPSTREAM_ERRORS: Def = Def {
    name: "keygate_upstream_errors_total",
    help: "Failed upstream calls, by kind (connect, timeout, tls, protocol).",
    labels: &["route", "kind"],
};
const UPSTREAM_AUTH_FAILURES: Def = Def {
    name: "keygate_upstream_auth_failures_total",
    help: "Upstream 401/403 answers: key revoked or egress IP not allowlisted.",
    labels: &["route"],
};
const IN_FLIGHT: Def =
    Def { name: "keygate_requests_in_flight", help: "Requests being handled now.", labels: &[] };
const CONNECTIONS_OPEN: Def =
    Def { name: "keygate_connections_open", help: "Caller connections open now.", labels: &[] };
const RELOADS: Def = Def {
    name: "keygate_config_reloads_total",
    help: "Config reload attempts, by result.",
    labels: &["result"],
};
const LAST_RELOAD_SUCCESSFUL: Def = Def {
    name: "keygate_config_last_reload_successful",
    help: "1 when the last reload attempt succeeded, else 0.",
    labels: &[],
};
const LAST_RELOAD_SUCCESS_TIMESTAMP: Def = Def {
    name: "keygate_config_last_reload_success_timestamp_seconds",
    help: "When a config was last applied, Unix time.",
    labels: &[],
};
const GENERATION: Def = Def {
    name: "keygate_config_generation",
    help: "Generation of the running config; bumps on every applied change.",
    labels: &[],
};
const SECRET_LOADED: Def = Def {
    name: "keygate_secret_loaded_timestamp_seconds",
    help: "When each secret was last (re)loaded, Unix time.",
    labels: &["secret"],
};
const SECRET_CANDIDATE: Def = Def {
    name: "keygate_secret_candidate",
    help: "1 while a changed value of the secret waits for its proof, else 0.",
    labels: &["secret"],
};
const SECRET_VERIFICATIONS: Def = Def {
    name: "keygate_secret_verifications_total",
    help: "Proof calls made with a candidate key, by result (ok, rejected, error).",
    labels: &["secret", "result"],
};
const SECRET_FALLBACKS: Def = Def {
    name: "keygate_secret_fallbacks_total",
    help: "Requests refused with the current key and sent again with the previous one.",
    labels: &["secret"],
};
const TLS_CERT_EXPIRY: Def = Def {
    name: "keygate_tls_cert_expiry_timestamp_seconds",
    help: "notAfter of the serving certificate, Unix time.",
    labels: &[],
};
const INTERCEPT_CERT_EXPIRY: Def = Def {
    name: "keygate_intercept_cert_expiry_timestamp_seconds",
    help: "notAfter of the [server.intercept] certificate presented inside CONNECT tunnels, Unix time.",
    labels: &[],
};
const IMPORT_BATCHES: Def = Def {
    name: "keygate_import_batches_total",
    help: "Batches of re-batched import upserts, by result (created, failed, not_sent).",
    labels: &["route", "result"],
};
const IMPORT_RETRIES: Def = Def {
    name: "keygate_import_retries_total",
    help: "Batches of re-batched import upserts sent again after a 429, a 5xx or no answer.",
    labels: &["route"],
};
const UPDATE_STATUS: Def = Def {
    name: "keygate_update_status_answers_total",
    help: "update_status answers, by where they came from (upstream, shared, cached, stale, limited).",
    labels: &["route", "source"],
};
const COORDINATION_ERRORS: Def = Def {
    name: "keygate_coordination_errors_total",
    help: "Redis operations of [coordination] that failed or timed out; the in-process guard answered.",
    labels: &["op"],
};
const BUILD_INFO: Def = Def { name: "keygate_build_info", help: "keygate's version; always 1.", labels: &[] };

/// A metric built from a literal definition, registered in `registry` when given.
/// Both steps fail only for a malformed name or a name registered twice, which the
/// definitions above rule out (and `every_metric_is_registered_once_with_help` checks).
#[expect(clippy::expect_used, reason = "literal definitions, each registered once: checked by a unit test")]
fn build<M: Collector + Clone + 'static>(registry: Option<&Registry>, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("literal metric definition");
    if let Some(registry) = registry {
        registry.register(Box::new(metric.clone())).expect("unique metric name");
    }
    metric
}

fn counter(r: &Registry, d: &Def) -> IntCounterVec {
    build(Some(r), IntCounterVec::new(Opts::new(d.name, d.help), d.labels))
}

fn histogram(r: &Registry, d: &Def) -> HistogramVec {
    build(Some(r), HistogramVec::new(HistogramOpts::new(d.name, d.help).buckets(BUCKETS.to_vec()), d.labels))
}

fn int_gauge(r: &Registry, d: &Def) -> IntGauge {
    build(Some(r), IntGauge::new(d.name, d.help))
}

fn gauge(r: Option<&Registry>, d: &Def) -> Gauge {
    build(r, Gauge::new(d.name, d.help))
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub(crate) fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Registration fails only on a duplicate; this registry is new.
            let _ = r.register(Box::new(pc));
        }
        let version =
            Opts::new(BUILD_INFO.name, BUILD_INFO.help).const_label("version", env!("CARGO_PKG_VERSION"));
        let build_info = build(Some(&r), IntGauge::with_opts(version));
        build_info.set(1);
        let m = Metrics {
            requests: counter(&r, &REQUESTS),
            request_duration: histogram(&r, &REQUEST_DURATION),
            upstream_duration: histogram(&r, &UPSTREAM_DURATION),
            denied: counter(&r, &DENIED),
            shadow_denied: counter(&r, &SHADOW_DENIED),
            upstream_errors: counter(&r, &UPSTREAM_ERRORS),
            upstream_auth_failures: counter(&r, &UPSTREAM_AUTH_FAILURES),
            in_flight: int_gauge(&r, &IN_FLIGHT),
            connections_open: int_gauge(&r, &CONNECTIONS_OPEN),
            reloads: counter(&r, &RELOADS),
            last_reload_successful: int_gauge(&r, &LAST_RELOAD_SUCCESSFUL),
            last_reload_success_timestamp: gauge(Some(&r), &LAST_RELOAD_SUCCESS_TIMESTAMP),
            generation: int_gauge(&r, &GENERATION),
            secret_loaded: build(
                Some(&r),
                GaugeVec::new(Opts::new(SECRET_LOADED.name, SECRET_LOADED.help), SECRET_LOADED.labels),
            ),
            secret_candidate: build(
                Some(&r),
                IntGaugeVec::new(
                    Opts::new(SECRET_CANDIDATE.name, SECRET_CANDIDATE.help),
                    SECRET_CANDIDATE.labels,
                ),
            ),
            secret_verifications: counter(&r, &SECRET_VERIFICATIONS),
            secret_fallbacks: counter(&r, &SECRET_FALLBACKS),
            // Registered on first use: it exists only with TLS.
            tls_cert_expiry: gauge(None, &TLS_CERT_EXPIRY),
            tls_registered: std::sync::Once::new(),
            // Registered on first use: it exists only with [server.intercept].
            intercept_cert_expiry: gauge(None, &INTERCEPT_CERT_EXPIRY),
            intercept_registered: std::sync::Once::new(),
            import_batches: counter(&r, &IMPORT_BATCHES),
            import_retries: counter(&r, &IMPORT_RETRIES),
            update_status: counter(&r, &UPDATE_STATUS),
            coordination_errors: counter(&r, &COORDINATION_ERRORS),
            id: next_id(),
            registry: r,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Sets the expiry gauge, registering it on first use (it exists only with TLS).
    pub(crate) fn set_tls_expiry(&self, not_after_unix: f64) {
        self.tls_registered.call_once(|| {
            let _ = self.registry.register(Box::new(self.tls_cert_expiry.clone()));
        });
        self.tls_cert_expiry.set(not_after_unix);
    }

    /// Sets the intercept certificate's expiry gauge, registering it on first use.
    pub(crate) fn set_intercept_expiry(&self, not_after_unix: f64) {
        self.intercept_registered.call_once(|| {
            let _ = self.registry.register(Box::new(self.intercept_cert_expiry.clone()));
        });
        self.intercept_cert_expiry.set(not_after_unix);
    }

    /// Records an applied snapshot (the first, or a reload's): [`Metrics::published`],
    /// and the reload time.
    pub(crate) fn applied(&self, snapshot: &Snapshot) {
        self.published(snapshot);
        self.last_reload_successful.set(1);
        self.last_reload_success_timestamp.set(unix(snapshot.loaded_at));
    }

    /// Records a newly published snapshot (a reload's, or one that only a key's proof or
    /// overlap changed): generation, secret load times and candidates, and zeroed series
    /// for the closed label sets of its routes and secrets.
    pub(crate) fn published(&self, snapshot: &Snapshot) {
        self.generation.set(snapshot.generation as i64);
        if let Some(tls) = &snapshot.tls {
            self.set_tls_expiry(unix(tls.not_after));
        }
        if let Some(intercept) = &snapshot.intercept {
            self.set_intercept_expiry(unix(intercept.not_after));
        }
        self.secret_loaded.reset();
        self.secret_candidate.reset();
        for s in &snapshot.secrets {
            self.secret_loaded.with_label_values(&[&s.name]).set(unix(s.loaded_at));
            self.secret_candidate.with_label_values(&[&s.name]).set(i64::from(s.candidate.is_some()));
            for result in ["ok", "rejected", "error"] {
                self.secret_verifications.with_label_values(&[&s.name, result]);
            }
            self.secret_fallbacks.with_label_values(&[&s.name]);
        }
        for route in snapshot.routes.routes() {
            self.upstream_auth_failures.with_label_values(&[&route.name]);
            for kind in UpstreamFailure::ALL {
                self.upstream_errors.with_label_values(&[&route.name, kind.label()]);
            }
            if route.shadow_allow.is_some() {
                self.shadow_denied.with_label_values(&[&route.name]);
            }
            self.vendor_limit_series(route);
        }
        if snapshot.coordination.is_some() {
            for op in COORDINATION_OPS {
                self.coordination_errors.with_label_values(&[op]);
            }
        }
    }

    /// Zeroed series of the closed label sets of a route's re-batching or update-status
    /// guard, so that rates exist before the first event.
    fn vendor_limit_series(&self, route: &crate::routes::Route) {
        use crate::routes::{Kind, Preset};
        match &route.kind {
            Kind::Preset { preset: Preset::Import, .. } => {
                for result in IMPORT_BATCH_RESULTS {
                    self.import_batches.with_label_values(&[&route.name, result]);
                }
                self.import_retries.with_label_values(&[&route.name]);
            }
            Kind::Preset { preset: Preset::Export, .. } if !route.limits.update_status_ttl.is_zero() => {
                for source in UPDATE_STATUS_SOURCES {
                    self.update_status.with_label_values(&[&route.name, source]);
                }
            }
            _ => {}
        }
    }

    /// Counts a failed reload.
    pub(crate) fn reload_failed(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
        self.last_reload_successful.set(0);
    }

    /// Counts a successful reload (not the initial load).
    pub(crate) fn reload_succeeded(&self, snapshot: &Snapshot) {
        self.reloads.with_label_values(&["success"]).inc();
        self.applied(snapshot);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&Def; 24] = [
        &REQUESTS,
        &REQUEST_DURATION,
        &UPSTREAM_DURATION,
        &DENIED,
        &SHADOW_DENIED,
        &UPSTREAM_ERRORS,
        &UPSTREAM_AUTH_FAILURES,
        &IN_FLIGHT,
        &CONNECTIONS_OPEN,
        &RELOADS,
        &LAST_RELOAD_SUCCESSFUL,
        &LAST_RELOAD_SUCCESS_TIMESTAMP,
        &GENERATION,
        &SECRET_LOADED,
        &SECRET_CANDIDATE,
        &SECRET_VERIFICATIONS,
        &SECRET_FALLBACKS,
        &TLS_CERT_EXPIRY,
        &INTERCEPT_CERT_EXPIRY,
        &BUILD_INFO,
        &IMPORT_BATCHES,
        &IMPORT_RETRIES,
        &UPDATE_STATUS,
        &COORDINATION_ERRORS,
    ];

    #[test]
    fn every_metric_is_registered_once_with_help() {
        let m = Metrics::new();
        m.set_tls_expiry(1.0);
        m.set_intercept_expiry(1.0);
        // One series of each labelled family, so that every family is rendered.
        m.requests.with_label_values(&["r", "o", "c", "200"]).inc();
        m.request_duration.with_label_values(&["r", "o"]).observe(0.1);
        m.upstream_duration.with_label_values(&["r", "o"]).observe(0.1);
        m.denied.with_label_values(&["r", "no_route"]).inc();
        m.shadow_denied.with_label_values(&["r"]).inc();
        m.upstream_errors.with_label_values(&["r", "tls"]).inc();
        m.upstream_auth_failures.with_label_values(&["r"]).inc();
        m.secret_loaded.with_label_values(&["s"]).set(1.0);
        m.secret_candidate.with_label_values(&["s"]).set(1);
        m.secret_verifications.with_label_values(&["s", "ok"]).inc();
        m.secret_fallbacks.with_label_values(&["s"]).inc();
        m.import_batches.with_label_values(&["r", "created"]).inc();
        m.import_retries.with_label_values(&["r"]).inc();
        m.update_status.with_label_values(&["r", "cached"]).inc();
        m.coordination_errors.with_label_values(&["read"]).inc();
        let text = m.render();
        for def in ALL {
            assert!(text.contains(&format!("# HELP {} {}\n", def.name, def.help)), "{}", def.name);
            assert_eq!(text.matches(&format!("# TYPE {} ", def.name)).count(), 1, "{}", def.name);
        }
        assert!(text.contains(&format!("keygate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    }
}
