//! The state shared by every connection: the current config snapshot behind one
//! `ArcSwap`, the upstream clients that outlive snapshots, the metrics, and the
//! shutdown flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::config::Snapshot;
use crate::metrics::Metrics;
use crate::upstream;

/// Everything a request needs besides its own connection.
pub struct Gateway {
    config: ArcSwap<Snapshot>,
    /// The upstream clients of every snapshot, by key, for reloads to keep.
    clients: upstream::Cache,
    pub metrics: Arc<Metrics>,
    /// The update-status guard's answers, which outlive snapshots like the clients.
    pub(crate) guard: crate::guard::registry::Guard,
    shutting_down: AtomicBool,
}

impl Gateway {
    /// A gateway serving `snapshot`, recording into `metrics`.
    pub(crate) fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Arc<Gateway> {
        metrics.applied(&snapshot);
        let clients = upstream::Cache::default();
        clients.adopt(snapshot.routes.routes().iter().map(|r| &r.upstream));
        Arc::new(Gateway {
            config: ArcSwap::from_pointee(snapshot),
            clients,
            metrics,
            guard: crate::guard::registry::Guard::default(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The current snapshot. A request loads it once and keeps it to the end.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    /// The upstream clients a new snapshot's routes take theirs from.
    pub(crate) fn clients(&self) -> &upstream::Cache {
        &self.clients
    }

    /// Publishes a new snapshot in one atomic swap.
    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        self.config.store(snapshot);
    }

    /// Marks the start of shutdown: readiness fails and new requests are refused.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
