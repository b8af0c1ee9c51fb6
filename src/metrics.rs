//! Prometheus metrics (docs/metrics.md): names in one place, HELP on every metric,
//! labels only from config and closed sets. One explicit [`Registry`] per [`Metrics`],
//! so tests each get their own.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;
use parking_lot::RwLock;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::config::Snapshot;
use crate::error::UpstreamFailure;
use crate::routes::Route;

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
    pub(crate) tls_cert_expiry: Gauge,
    tls_registered: std::sync::Once,
    /// Tags the series a route keeps (see [`RouteSeries`]).
    id: u64,
}

/// One metric: its name, HELP text and labels.
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

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
const TLS_CERT_EXPIRY: Def = Def {
    name: "keygate_tls_cert_expiry_timestamp_seconds",
    help: "notAfter of the serving certificate, Unix time.",
    labels: &[],
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
            // Registered on first use: it exists only with TLS.
            tls_cert_expiry: gauge(None, &TLS_CERT_EXPIRY),
            tls_registered: std::sync::Once::new(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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

    /// Records a newly applied snapshot: generation, reload time, secret load times,
    /// and zeroed series for the closed label sets of its routes.
    pub(crate) fn applied(&self, snapshot: &Snapshot) {
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

/// Distinguishes one [`Metrics`] from another for [`RouteSeries`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// At most this many series of each kind are kept per route; any more are looked up
/// by label every time.
const MAX_KEPT: usize = 32;

/// One route's request series, looked up by label once and then kept with the route:
/// hashing four label values on every request costs more than the counting itself.
/// The route's snapshot never outlives the series (they are never removed from the
/// registry), and each handle is tagged with the [`Metrics`] it belongs to.
#[derive(Default)]
pub(crate) struct RouteSeries {
    /// `keygate_request_duration_seconds` and `keygate_upstream_duration_seconds`, by
    /// operation.
    durations: RwLock<Vec<(u64, &'static str, Histogram, Histogram)>>,
    /// `keygate_requests_total`, by operation, caller group and status.
    requests: RwLock<Vec<(u64, &'static str, Box<str>, StatusCode, IntCounter)>>,
}

impl std::fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSeries").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The request and upstream duration histograms of `route` and `operation`.
    fn durations<R>(&self, route: &Route, operation: &'static str, f: impl Fn(&Histogram, &Histogram) -> R) -> R {
        let kept = &route.series.durations;
        if let Some((_, _, request, upstream)) =
            kept.read().iter().find(|(id, op, _, _)| *id == self.id && *op == operation)
        {
            return f(request, upstream);
        }
        let request = self.request_duration.with_label_values(&[&route.name, operation]);
        let upstream = self.upstream_duration.with_label_values(&[&route.name, operation]);
        let answer = f(&request, &upstream);
        let mut kept = kept.write();
        if kept.len() < MAX_KEPT {
            kept.push((self.id, operation, request, upstream));
        }
        answer
    }

    /// Observes the time to the upstream's response head.
    pub(crate) fn upstream_took(&self, route: &Route, operation: &'static str, seconds: f64) {
        self.durations(route, operation, |_, upstream| upstream.observe(seconds));
    }

    /// Counts an answered request and observes its duration; `route` is `None` when
    /// none matched.
    pub(crate) fn answered(
        &self,
        route: Option<&Route>,
        operation: &'static str,
        caller: &str,
        status: StatusCode,
        seconds: f64,
    ) {
        let Some(route) = route else {
            self.requests.with_label_values(&["-", operation, caller, status.as_str()]).inc();
            self.request_duration.with_label_values(&["-", operation]).observe(seconds);
            return;
        };
        self.durations(route, operation, |request, _| request.observe(seconds));
        let kept = &route.series.requests;
        let found = |(id, op, group, code, _): &&(u64, &'static str, Box<str>, StatusCode, IntCounter)| {
            *id == self.id && *op == operation && *code == status && &**group == caller
        };
        if let Some((.., counter)) = kept.read().iter().find(found) {
            counter.inc();
            return;
        }
        let counter = self.requests.with_label_values(&[&route.name, operation, caller, status.as_str()]);
        counter.inc();
        let mut kept = kept.write();
        if kept.len() < MAX_KEPT {
            kept.push((self.id, operation, caller.into(), status, counter));
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&Def; 16] = [
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
        &TLS_CERT_EXPIRY,
        &BUILD_INFO,
    ];

    #[test]
    fn every_metric_is_registered_once_with_help() {
        let m = Metrics::new();
        m.set_tls_expiry(1.0);
        // One series of each labelled family, so that every family is rendered.
        m.requests.with_label_values(&["r", "o", "c", "200"]).inc();
        m.request_duration.with_label_values(&["r", "o"]).observe(0.1);
        m.upstream_duration.with_label_values(&["r", "o"]).observe(0.1);
        m.denied.with_label_values(&["r", "no_route"]).inc();
        m.shadow_denied.with_label_values(&["r"]).inc();
        m.upstream_errors.with_label_values(&["r", "tls"]).inc();
        m.upstream_auth_failures.with_label_values(&["r"]).inc();
        m.secret_loaded.with_label_values(&["s"]).set(1.0);
        let text = m.render();
        for def in ALL {
            assert!(text.contains(&format!("# HELP {} {}\n", def.name, def.help)), "{}", def.name);
            assert_eq!(text.matches(&format!("# TYPE {} ", def.name)).count(), 1, "{}", def.name);
        }
        assert!(text.contains(&format!("keygate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    }

    fn route() -> std::sync::Arc<Route> {
        let text = "[secrets.k]\nvalue = \"k\"\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nsecret = \"k\"\n\
            upstream = \"http://127.0.0.1:9\"\ninject = { header = \"x-key\" }\nallow = [\"127.0.0.1\"]\n";
        let inputs = crate::config::Inputs::parse(std::path::Path::new("keygate.toml"), text.as_bytes()).unwrap();
        let snapshot = crate::config::compile(&inputs, 1, None).unwrap_or_else(|_| panic!("config"));
        snapshot.routes.routes()[0].clone()
    }

    /// The lines of `family` in `m`'s exposition.
    fn lines(m: &Metrics, family: &str) -> Vec<String> {
        m.render().lines().filter(|l| l.starts_with(family)).map(str::to_owned).collect()
    }

    #[test]
    fn kept_series_count_exactly_what_label_lookups_count() {
        let route = route();
        let (kept, looked_up) = (Metrics::new(), Metrics::new());
        let answers = [("-", StatusCode::OK), ("ops", StatusCode::OK), ("-", StatusCode::FORBIDDEN)];
        for _ in 0..3 {
            for (caller, status) in answers {
                kept.answered(Some(&route), "list_exports", caller, status, 0.002);
                kept.upstream_took(&route, "list_exports", 0.001);
                looked_up.requests.with_label_values(&["r", "list_exports", caller, status.as_str()]).inc();
                looked_up.request_duration.with_label_values(&["r", "list_exports"]).observe(0.002);
                looked_up.upstream_duration.with_label_values(&["r", "list_exports"]).observe(0.001);
            }
        }
        kept.answered(None, "-", "-", StatusCode::NOT_FOUND, 0.0005);
        looked_up.requests.with_label_values(&["-", "-", "-", "404"]).inc();
        looked_up.request_duration.with_label_values(&["-", "-"]).observe(0.0005);
        for family in ["keygate_requests_total", "keygate_request_duration", "keygate_upstream_duration"] {
            assert_eq!(lines(&kept, family), lines(&looked_up, family), "{family}");
        }
        assert!(lines(&kept, "keygate_requests_total").contains(
            &"keygate_requests_total{caller=\"ops\",code=\"200\",operation=\"list_exports\",route=\"r\"} 3"
                .to_owned()
        ));
    }

    #[test]
    fn a_route_shared_by_two_registries_counts_into_each_its_own() {
        let route = route();
        let (first, second) = (Metrics::new(), Metrics::new());
        first.answered(Some(&route), "op", "-", StatusCode::OK, 0.1);
        second.answered(Some(&route), "op", "-", StatusCode::OK, 0.1);
        second.answered(Some(&route), "op", "-", StatusCode::OK, 0.1);
        let count = |m: &Metrics| m.requests.with_label_values(&["r", "op", "-", "200"]).get();
        assert_eq!((count(&first), count(&second)), (1, 2));
    }
}
