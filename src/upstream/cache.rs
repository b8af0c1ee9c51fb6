//! Upstream clients across reloads: a snapshot's routes take their clients from the
//! gateway's [`Cache`], by key, so every upstream whose key did not change keeps its
//! client and connection pool.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::{Upstream, UpstreamKey};

/// Upstream clients by key, so that a reload keeps the client (and its connection pool)
/// of every upstream whose key did not change. The gateway holds one for its whole
/// life; compiling a snapshot asks it for each route's client. It keeps no client alive
/// by itself: a client lives as long as a snapshot's route uses it.
#[derive(Default)]
pub(crate) struct Cache {
    clients: parking_lot::Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    by_key: HashMap<UpstreamKey, Weak<Upstream>>,
    /// Dead entries are dropped when the map reaches this size, so that pruning costs
    /// nothing per lookup.
    prune_at: usize,
}

impl Cache {
    /// The client for `key`: the one a live snapshot already uses, else a new one made
    /// by `build` (which fails with a message for the config problem).
    pub(crate) fn client(
        &self,
        key: &UpstreamKey,
        build: impl FnOnce() -> Result<Upstream, String>,
    ) -> Result<Arc<Upstream>, String> {
        let mut clients = self.clients.lock();
        if let Some(live) = clients.by_key.get(key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let client = Arc::new(build()?);
        clients.insert(key.clone(), &client);
        Ok(client)
    }

    /// Remembers clients built elsewhere (those of a snapshot compiled before the
    /// gateway existed), so that the first reload keeps them too.
    pub(crate) fn adopt<'a>(&self, clients: impl IntoIterator<Item = &'a Arc<Upstream>>) {
        let mut held = self.clients.lock();
        for client in clients {
            held.insert(client.key.clone(), client);
        }
    }

    /// How many clients a live snapshot still uses.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.clients.lock().by_key.values().filter(|c| c.strong_count() > 0).count()
    }
}

impl Clients {
    fn insert(&mut self, key: UpstreamKey, client: &Arc<Upstream>) {
        if self.by_key.len() >= self.prune_at {
            self.by_key.retain(|_, c| c.strong_count() > 0);
            self.prune_at = (self.by_key.len() * 2).max(16);
        }
        self.by_key.insert(key, Arc::downgrade(client));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(url: &str) -> UpstreamKey {
        UpstreamKey { url: url.into(), ca_digest: None, connect_timeout: Duration::from_secs(5) }
    }

    fn build(url: &str) -> impl FnOnce() -> Result<Upstream, String> {
        let k = key(url);
        move || Upstream::new(&k.url.parse().map_err(|_| "bad url")?, None, k.clone())
    }

    #[test]
    fn a_live_client_is_kept_and_a_dropped_one_is_built_again() {
        let cache = Cache::default();
        let a = cache.client(&key("http://127.0.0.1:9"), build("http://127.0.0.1:9")).unwrap();
        let again = cache.client(&key("http://127.0.0.1:9"), || Err("must not build".into())).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "the same key shares one client while it is in use");
        let other = cache.client(&key("http://127.0.0.1:10"), build("http://127.0.0.1:10")).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(cache.live(), 2);
        drop((a, again));
        assert_eq!(cache.live(), 1, "the cache does not keep a client alive");
        let fresh = cache.client(&key("http://127.0.0.1:9"), || Err("rebuilt".into()));
        assert_eq!(fresh.err().as_deref(), Some("rebuilt"));
    }

    #[test]
    fn adopted_clients_are_kept() {
        let cache = Cache::default();
        let running = Arc::new(build("http://127.0.0.1:9")().unwrap());
        cache.adopt([&running]);
        let got = cache.client(&key("http://127.0.0.1:9"), || Err("must not build".into())).unwrap();
        assert!(Arc::ptr_eq(&running, &got));
    }
}
