//! Sharing update-status answers across keygate processes through Redis
//! (`[coordination] redis`): the last 200 and a running back-off live under keys named
//! after the upstream and the client id, and a lock (`SET NX PX`) lets one process at a
//! time call upstream. Every operation is bounded by [`OP_TIMEOUT`]; one that fails is
//! counted in `keygate_coordination_errors_total{op}`, logged at most every
//! [`LOG_EVERY`], and the caller is served by this process's own guard instead: Redis
//! never fails a request. Only answers go to Redis, already scrubbed; never a key, and
//! the URL (which may hold a password) is only ever shown masked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::stored::Stored;
use crate::config::{CoordinationSettings, Snapshot};
use crate::metrics::Metrics;

/// The most any one Redis operation may take, connecting included.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a process that did not get the lock looks for the answer.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The longest a process waits for another's call before calling upstream itself.
const WAIT_CAP: Duration = Duration::from_secs(10);
/// How long a 200 stays in Redis past its TTL, to be served stale during a back-off.
const KEEP_STALE: Duration = Duration::from_secs(3600);
/// Failures are logged at most this often (they are all counted).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Releases the lock only when it is still this process's.
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// The connection for the current `[coordination] redis`, made on first use and again
/// when a reload changes the URL.
#[derive(Default)]
pub(super) struct Connections {
    current: parking_lot::Mutex<Option<Fleet>>,
    last_log_ms: Arc<AtomicU64>,
}

impl Connections {
    /// The fleet of `snapshot`, or `None` without `[coordination] redis` (or when the
    /// client cannot be made, which is logged).
    pub(super) fn get(&self, metrics: &Arc<Metrics>, snapshot: &Snapshot) -> Option<Fleet> {
        let settings = snapshot.coordination.as_ref()?;
        let mut current = self.current.lock();
        if let Some(fleet) = current.as_ref().filter(|f| f.settings == *settings) {
            return Some(fleet.clone());
        }
        let fleet = Fleet::new(settings, metrics.clone(), self.last_log_ms.clone())?;
        *current = Some(fleet.clone());
        Some(fleet)
    }
}

/// One Redis connection (multiplexed, reconnecting) and what its failures go to.
#[derive(Clone)]
pub(super) struct Fleet {
    settings: CoordinationSettings,
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    last_log_ms: Arc<AtomicU64>,
}

/// What Redis says before this process calls upstream.
pub(super) enum View {
    /// The answers other processes kept (the caller serves them if they settle it).
    Known(Vec<Arc<Stored>>),
    /// Call upstream; with the lock when this process holds it.
    Go(Option<Lock>),
}

/// The lock this process holds on one key.
pub(super) struct Lock {
    token: String,
}

/// The Redis keys of one upstream and client id.
struct Keys {
    answer: String,
    backoff: String,
    lock: String,
}

impl Keys {
    fn of(key: &str) -> Keys {
        let base = format!("keygate:update_status:{key}");
        Keys {
            answer: format!("{base}:answer"),
            backoff: format!("{base}:backoff"),
            lock: format!("{base}:lock"),
        }
    }
}

impl Fleet {
    fn new(
        settings: &CoordinationSettings,
        metrics: Arc<Metrics>,
        last_log_ms: Arc<AtomicU64>,
    ) -> Option<Fleet> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let made = redis::Client::open(settings.redis.expose())
            .and_then(|client| ConnectionManager::new_lazy_with_config(client, config));
        match made {
            Ok(conn) => Some(Fleet { settings: settings.clone(), conn, metrics, last_log_ms }),
            Err(e) => {
                tracing::warn!(redis = %settings.masked, kind = ?e.kind(), "cannot use [coordination] redis");
                None
            }
        }
    }

    /// Counts a failed operation and logs it (at most every [`LOG_EVERY`]).
    fn failed(&self, op: &'static str, why: &str) {
        self.metrics.coordination_errors.with_label_values(&[op]).inc();
        let now = crate::metrics::unix(std::time::SystemTime::now()) as u64 * 1000;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self.last_log_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                redis = %self.settings.masked, op, error = why,
                "Redis failed; this process's own update-status guard answers"
            );
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(op, &format!("{:?}", e.kind()));
                None
            }
            Err(_) => {
                self.failed(op, "timeout");
                None
            }
        }
    }

    /// The kept 200 and back-off 429, as far as Redis holds them.
    async fn read(&self, keys: &Keys) -> Option<Vec<Arc<Stored>>> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys.answer).arg(&keys.backoff);
        let values: Vec<Option<Vec<u8>>> = self.run("read", &cmd).await?;
        Some(values.iter().flatten().filter_map(|v| Stored::decode(v)).map(|(s, _)| Arc::new(s)).collect())
    }

    /// Before calling upstream: what other processes already know, or the lock (or,
    /// when Redis fails, leave to call without it).
    pub(super) async fn before_call(&self, key: &str, ttl: Duration, response_timeout: Duration) -> View {
        let keys = Keys::of(key);
        let Some(known) = self.read(&keys).await else { return View::Go(None) };
        if super::state::settles(&known, ttl) {
            return View::Known(known);
        }
        let token = format!("{:016x}", fastrand::u64(..));
        let hold = (response_timeout + Duration::from_secs(1)).min(Duration::from_secs(120));
        let mut set = redis::cmd("SET");
        set.arg(&keys.lock).arg(&token).arg("NX").arg("PX").arg(hold.as_millis() as u64);
        match self.run::<Option<String>>("lock", &set).await {
            None => View::Go(None),
            Some(Some(_)) => match self.read(&keys).await {
                // Another process may have stored its answer and let go just before.
                Some(known) if super::state::settles(&known, ttl) => {
                    self.release(&keys, &token).await;
                    View::Known(known)
                }
                _ => View::Go(Some(Lock { token })),
            },
            Some(None) => self.wait(&keys, ttl, response_timeout.min(WAIT_CAP), known).await,
        }
    }

    /// Another process holds the lock: look for its answer until `bound` has passed.
    async fn wait(&self, keys: &Keys, ttl: Duration, bound: Duration, mut known: Vec<Arc<Stored>>) -> View {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            tokio::time::sleep(POLL_EVERY).await;
            match self.read(keys).await {
                None => return View::Go(None),
                Some(now) if super::state::settles(&now, ttl) => return View::Known(now),
                Some(now) => known = now,
            }
        }
        View::Known(known)
    }

    /// After calling upstream: keeps a 200 or a 429 for the fleet, then lets go of the
    /// lock. Runs on its own, so the caller is answered at once.
    pub(super) fn after_call(
        &self,
        key: &str,
        lock: Option<Lock>,
        stored: Option<Arc<Stored>>,
        ttl: Duration,
    ) {
        let (fleet, keys) = (self.clone(), Keys::of(key));
        tokio::spawn(async move {
            if let Some(stored) = stored {
                let kept = match stored.status {
                    http::StatusCode::OK => Some((&keys.answer, ttl + KEEP_STALE)),
                    http::StatusCode::TOO_MANY_REQUESTS => {
                        let wait = stored
                            .headers
                            .get(http::header::RETRY_AFTER)
                            .and_then(|v| {
                                crate::upstream::retry_after_delay(
                                    v,
                                    std::time::SystemTime::now(),
                                    super::state::BACKOFF_CAP,
                                )
                            })
                            .unwrap_or(ttl);
                        Some((&keys.backoff, wait))
                    }
                    _ => None,
                };
                if let Some((name, keep)) = kept {
                    let mut set = redis::cmd("SET");
                    set.arg(name)
                        .arg(stored.encode(serde_json::json!({})))
                        .arg("PX")
                        .arg(keep.as_millis().max(1) as u64);
                    let _ = fleet.run::<()>("write", &set).await;
                }
            }
            if let Some(lock) = lock {
                fleet.release(&keys, &lock.token).await;
            }
        });
    }

    async fn release(&self, keys: &Keys, token: &str) {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(RELEASE);
        let mut invocation = script.key(&keys.lock);
        invocation.arg(token);
        let released = tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
        if !matches!(released, Ok(Ok(_))) {
            // The lock expires on its own; the next call waits at most its hold.
            self.failed("write", "release");
        }
    }
}
