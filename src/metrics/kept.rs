//! Counting a request into the series its route keeps ([`crate::routes::series`]):
//! looked up by label the first time, then found in the route's short list.

use http::StatusCode;

use super::Metrics;
use crate::routes::Route;
use crate::routes::series::{Answers, Durations, MAX_KEPT};

impl Metrics {
    /// Runs `f` on the duration histograms of `route` and `operation`.
    fn durations(&self, route: &Route, operation: &'static str, f: impl Fn(&Durations)) {
        let kept = &route.series.durations;
        if let Some(found) = kept.read().iter().find(|d| d.metrics == self.id && d.operation == operation) {
            return f(found);
        }
        let found = Durations {
            metrics: self.id,
            operation,
            request: self.request_duration.with_label_values(&[&route.name, operation]),
            upstream: self.upstream_duration.with_label_values(&[&route.name, operation]),
        };
        f(&found);
        let mut kept = kept.write();
        if kept.len() < MAX_KEPT {
            kept.push(found);
        }
    }

    /// Observes the time to the upstream's response head.
    pub(crate) fn upstream_took(&self, route: &Route, operation: &'static str, seconds: f64) {
        self.durations(route, operation, |d| d.upstream.observe(seconds));
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
        self.durations(route, operation, |d| d.request.observe(seconds));
        let kept = &route.series.requests;
        let same = |a: &&Answers| {
            a.metrics == self.id && a.operation == operation && a.status == status && &*a.caller == caller
        };
        if let Some(found) = kept.read().iter().find(same) {
            return found.counter.inc();
        }
        let counter = self.requests.with_label_values(&[&route.name, operation, caller, status.as_str()]);
        counter.inc();
        let mut kept = kept.write();
        if kept.len() < MAX_KEPT {
            kept.push(Answers { metrics: self.id, operation, caller: caller.into(), status, counter });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> std::sync::Arc<Route> {
        let text = "[secrets.k]\nvalue = \"k\"\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nsecret = \"k\"\n\
            upstream = \"http://127.0.0.1:9\"\ninject = { header = \"x-key\" }\nallow = [\"127.0.0.1\"]\n";
        let inputs =
            crate::config::Inputs::parse(std::path::Path::new("keygate.toml"), text.as_bytes()).unwrap();
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
