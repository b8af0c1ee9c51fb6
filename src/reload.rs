//! Hot reload (design §5): watch the directories holding the config and every file it
//! names (Kubernetes swaps a `..data` symlink and editors save by rename, so watching
//! the files themselves would miss changes), debounce on the trailing edge, re-read
//! everything, and publish a new snapshot in one swap — or keep the running one.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{self, Inputs, Snapshot};
use crate::gateway::Gateway;
use crate::telemetry::LogHandle;

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The inputs are byte-identical to the running ones.
    Unchanged,
    /// A new generation is running.
    Applied(u64),
    /// The running snapshot stays; the reason is logged.
    Failed(String),
}

/// Reloads config and secrets on file events, SIGHUP and a periodic poll.
pub struct Reloader {
    gw: Arc<Gateway>,
    path: PathBuf,
    log: Option<LogHandle>,
}

impl Reloader {
    pub fn new(gw: Arc<Gateway>, path: PathBuf, log: Option<LogHandle>) -> Reloader {
        Reloader { gw, path, log }
    }

    /// Re-reads everything once and applies it if it changed and is valid.
    pub fn reload(&self) -> Outcome {
        let current = self.gw.snapshot();
        let inputs = match Inputs::read(&self.path) {
            Ok(inputs) => inputs,
            Err(problems) => return self.failed(problems.to_string()),
        };
        if inputs.digest == current.digest {
            // The files say what is running: any earlier failure is moot now.
            self.gw.metrics.last_reload_successful.set(1);
            return Outcome::Unchanged;
        }
        let next = match config::compile(&inputs, current.generation + 1, Some(&current)) {
            Ok(next) => next,
            Err(problems) => return self.failed(problems.to_string()),
        };
        log_changes(&current, &next);
        if let Some(log) = &self.log {
            log.apply(&next.log);
        }
        let generation = next.generation;
        let next = Arc::new(next);
        self.gw.publish(next.clone());
        self.gw.metrics.reload_succeeded(&next);
        Outcome::Applied(generation)
    }

    fn failed(&self, reason: String) -> Outcome {
        // Problems name files, fields and values, never a secret (see config).
        tracing::error!(reason = %reason, "reload failed; the running config stays");
        self.gw.metrics.reload_failed();
        Outcome::Failed(reason)
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = start_watcher(tx);
        let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
        let mut hup = hangup_stream();
        loop {
            let snapshot = self.gw.snapshot();
            if let Some(w) = watcher.as_mut() {
                update_watches(w, &mut watched, &snapshot.watched);
            }
            let poll = tokio::time::sleep(snapshot.reload.poll_interval);
            tokio::select! {
                _ = poll => {
                    self.reload();
                }
                Some(()) = rx.recv() => {
                    // Trailing-edge debounce: wait for a quiet spell, then re-read.
                    let mut deadline = Instant::now() + snapshot.reload.debounce;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            Some(()) = rx.recv() => deadline = Instant::now() + snapshot.reload.debounce,
                        }
                    }
                    self.reload();
                }
                Some(()) = recv_hangup(&mut hup) => {
                    tracing::info!("SIGHUP: reloading");
                    self.reload();
                }
            }
        }
    }
}

fn start_watcher(tx: mpsc::UnboundedSender<()>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; relying on the periodic poll");
            None
        }
    }
}

/// Watches the parent directory of every named file (not the files: see module docs).
fn update_watches(watcher: &mut RecommendedWatcher, watched: &mut BTreeSet<PathBuf>, files: &[PathBuf]) {
    let wanted: BTreeSet<PathBuf> = files.iter().filter_map(|f| parent_dir(f)).collect();
    for gone in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    for dir in wanted {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; the poll covers it")
            }
        }
    }
}

fn parent_dir(file: &Path) -> Option<PathBuf> {
    let parent = file.parent()?;
    Some(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_owned() })
}

/// Logs one line per applied reload: generation, route and secret changes.
fn log_changes(old: &Snapshot, new: &Snapshot) {
    let describe = |s: &Snapshot| -> HashMap<String, String> {
        s.routes
            .routes()
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    format!("{}|{}|{:?}|{}", r.prefix, r.upstream.url(), r.operation_names(), r.secret_name),
                )
            })
            .collect()
    };
    let (a, b) = (describe(old), describe(new));
    let mut added: Vec<&str> = b.keys().filter(|k| !a.contains_key(*k)).map(String::as_str).collect();
    let mut removed: Vec<&str> = a.keys().filter(|k| !b.contains_key(*k)).map(String::as_str).collect();
    let mut changed: Vec<&str> =
        b.iter().filter(|(k, v)| a.get(*k).is_some_and(|o| o != *v)).map(|(k, _)| k.as_str()).collect();
    added.sort_unstable();
    removed.sort_unstable();
    changed.sort_unstable();
    let old_fp: HashMap<&str, &str> =
        old.secrets.iter().map(|s| (s.name.as_str(), s.fingerprint.as_str())).collect();
    let rotated: Vec<String> = new
        .secrets
        .iter()
        .filter(|s| old_fp.get(s.name.as_str()) != Some(&s.fingerprint.as_str()))
        .map(|s| format!("{} ({})", s.name, s.fingerprint))
        .collect();
    if old.server != new.server
        || old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen)
    {
        tracing::warn!("[server] or [admin] listen settings changed; they apply at the next restart");
    }
    for w in &new.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    tracing::info!(
        generation = new.generation,
        routes_added = ?added,
        routes_removed = ?removed,
        routes_changed = ?changed,
        secrets_changed = ?rotated,
        "config reloaded"
    );
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_stream() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_stream() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv_hangup(hup: &mut Hangup) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
