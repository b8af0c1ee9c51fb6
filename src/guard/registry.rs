//! What the update-status guard keeps between requests, outliving snapshots like the
//! upstream clients: an entry per upstream and client id (its state and single flight),
//! and the fleet's Redis connection.

use std::collections::HashMap;
use std::sync::Arc;

use super::fleet::Connections;
use super::state::State;

/// Every guarded key's state, and the Redis connection when one is configured.
#[derive(Default)]
pub(crate) struct Guard {
    entries: parking_lot::Mutex<HashMap<String, Arc<Entry>>>,
    pub(super) fleet: Connections,
}

/// One upstream and client id.
#[derive(Default)]
pub(super) struct Entry {
    pub(super) state: parking_lot::Mutex<State>,
    /// Held by the one caller that asks upstream (or Redis) for everyone.
    pub(super) flight: tokio::sync::Mutex<()>,
}

impl Guard {
    pub(super) fn entry(&self, key: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock();
        entries.entry(key.to_owned()).or_default().clone()
    }
}
