//! A route's request series, looked up by label once and then kept with the route:
//! hashing four label values on every request costs more than the counting itself.
//! Series are never removed from a registry, so a kept handle stays the one a label
//! lookup would find; each is tagged with the `Metrics` it belongs to, so a route
//! shared by two registries (tests) counts into each its own. `crate::metrics` fills
//! and reads them.

use http::StatusCode;
use parking_lot::RwLock;
use prometheus::{Histogram, IntCounter};

/// At most this many series of each kind are kept per route; any more are looked up
/// by label every time.
pub(crate) const MAX_KEPT: usize = 32;

/// One route's kept request series.
#[derive(Default)]
pub(crate) struct RouteSeries {
    pub(crate) durations: RwLock<Vec<Durations>>,
    pub(crate) requests: RwLock<Vec<Answers>>,
}

/// `keygate_request_duration_seconds` and `keygate_upstream_duration_seconds` of one
/// operation.
pub(crate) struct Durations {
    pub(crate) metrics: u64,
    pub(crate) operation: &'static str,
    pub(crate) request: Histogram,
    pub(crate) upstream: Histogram,
}

/// `keygate_requests_total` of one operation, caller group and status.
pub(crate) struct Answers {
    pub(crate) metrics: u64,
    pub(crate) operation: &'static str,
    pub(crate) caller: Box<str>,
    pub(crate) status: StatusCode,
    pub(crate) counter: IntCounter,
}

impl std::fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSeries").finish_non_exhaustive()
    }
}
