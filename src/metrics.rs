//! Prometheus metrics (design §6): names in one place, HELP on every metric, labels
//! only from config and closed sets. One explicit [`Registry`] per [`Metrics`], so
//! tests each get their own.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::config::Snapshot;
use crate::error::UpstreamFailure;

/// Buckets from 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Every metric keygate exports.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub denied: IntCounterVec,
    pub shadow_denied: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_auth_failures: IntCounterVec,
    pub in_flight: IntGauge,
    pub connections_open: IntGauge,
    pub reloads: IntCounterVec,
    pub last_reload_successful: IntGauge,
    pub last_reload_success_timestamp: Gauge,
    pub generation: IntGauge,
    pub secret_loaded: GaugeVec,
    pub tls_cert_expiry: Gauge,
    tls_registered: std::sync::Once,
    pub build_info: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("static metric definition");
    registry.register(Box::new(h.clone())).expect("unique metric name");
    h
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("static metric definition");
    registry.register(Box::new(g.clone())).expect("unique metric name");
    g
}

impl Metrics {
    /// Registers every metric in a fresh registry. The definitions are static, so the
    /// `expect`s cannot fire.
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Registration fails only on a duplicate; this registry is new.
            let _ = r.register(Box::new(pc));
        }
        let build_info = {
            let g = IntGauge::with_opts(
                Opts::new("keygate_build_info", "keygate's version; always 1.")
                    .const_label("version", env!("CARGO_PKG_VERSION")),
            )
            .expect("static metric definition");
            r.register(Box::new(g.clone())).expect("unique metric name");
            g.set(1);
            g
        };
        let secret_loaded = GaugeVec::new(
            Opts::new(
                "keygate_secret_loaded_timestamp_seconds",
                "When each secret was last (re)loaded, Unix time.",
            ),
            &["secret"],
        )
        .expect("static metric definition");
        r.register(Box::new(secret_loaded.clone())).expect("unique metric name");
        let m = Metrics {
            requests: counter(
                &r,
                "keygate_requests_total",
                "Requests answered, by route, operation, caller group and status code.",
                &["route", "operation", "caller", "code"],
            ),
            request_duration: histogram(
                &r,
                "keygate_request_duration_seconds",
                "Time from request head to the last byte of the response.",
                &["route", "operation"],
            ),
            upstream_duration: histogram(
                &r,
                "keygate_upstream_duration_seconds",
                "Time from sending upstream to the upstream's response head.",
                &["route", "operation"],
            ),
            denied: counter(
                &r,
                "keygate_denied_total",
                "Requests keygate refused itself, by error code.",
                &["route", "reason"],
            ),
            shadow_denied: counter(
                &r,
                "keygate_shadow_denied_total",
                "Requests the route's shadow_allow list would have refused.",
                &["route"],
            ),
            upstream_errors: counter(
                &r,
                "keygate_upstream_errors_total",
                "Failed upstream calls, by kind (connect, timeout, tls, protocol).",
                &["route", "kind"],
            ),
            upstream_auth_failures: counter(
                &r,
                "keygate_upstream_auth_failures_total",
                "Upstream 401/403 answers: key revoked or egress IP not allowlisted.",
                &["route"],
            ),
            in_flight: int_gauge(&r, "keygate_requests_in_flight", "Requests being handled now."),
            connections_open: int_gauge(&r, "keygate_connections_open", "Caller connections open now."),
            reloads: counter(
                &r,
                "keygate_config_reloads_total",
                "Config reload attempts, by result.",
                &["result"],
            ),
            last_reload_successful: int_gauge(
                &r,
                "keygate_config_last_reload_successful",
                "1 when the last reload attempt succeeded, else 0.",
            ),
            last_reload_success_timestamp: gauge(
                &r,
                "keygate_config_last_reload_success_timestamp_seconds",
                "When a config was last applied, Unix time.",
            ),
            generation: int_gauge(
                &r,
                "keygate_config_generation",
                "Generation of the running config; bumps on every applied change.",
            ),
            secret_loaded,
            tls_cert_expiry: Gauge::new(
                "keygate_tls_cert_expiry_timestamp_seconds",
                "notAfter of the serving certificate, Unix time.",
            )
            .expect("static metric definition"),
            tls_registered: std::sync::Once::new(),
            build_info,
            registry: r,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Sets the expiry gauge, registering it on first use (it exists only with TLS).
    pub fn set_tls_expiry(&self, not_after_unix: f64) {
        self.tls_registered.call_once(|| {
            let _ = self.registry.register(Box::new(self.tls_cert_expiry.clone()));
        });
        self.tls_cert_expiry.set(not_after_unix);
    }

    /// Records a newly applied snapshot: generation, reload time, secret load times,
    /// and zeroed series for the closed label sets of its routes.
    pub fn applied(&self, snapshot: &Snapshot) {
        self.generation.set(snapshot.generation as i64);
        self.last_reload_successful.set(1);
        self.last_reload_success_timestamp.set(unix(snapshot.loaded_at));
        if let Some(tls) = &snapshot.tls {
            self.set_tls_expiry(unix(tls.not_after));
        }
        self.secret_loaded.reset();
        for s in &snapshot.secrets {
            self.secret_loaded.with_label_values(&[&s.name]).set(unix(s.loaded_at));
        }
        for route in snapshot.routes.routes() {
            self.upstream_auth_failures.with_label_values(&[&route.name]);
            for kind in UpstreamFailure::ALL {
                self.upstream_errors.with_label_values(&[&route.name, kind.label()]);
            }
            if route.shadow_allow.is_some() {
                self.shadow_denied.with_label_values(&[&route.name]);
            }
        }
    }

    /// Counts a failed reload.
    pub fn reload_failed(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
        self.last_reload_successful.set(0);
    }

    /// Counts a successful reload (not the initial load).
    pub fn reload_succeeded(&self, snapshot: &Snapshot) {
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

    /// The registry (for tests and extra collectors).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Seconds since the Unix epoch.
pub fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
