//! Hot reload (design §5): watch the directories holding the config and every file it
//! names (Kubernetes swaps a `..data` symlink and editors save by rename, so watching
//! the files themselves would miss changes), debounce on the trailing edge, re-read
//! everything, and publish a new snapshot in one swap — or keep the running one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{self, Inputs, LogFormat, ServerSettings, Snapshot};
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
    /// Settings the listeners and the runtime were built with; a reload cannot change them.
    bound: Bound,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Identity of the last failed attempt: the poll re-reading the same broken files
    /// must not count (or log) the same failure again.
    last_failure: Option<[u8; 32]>,
    /// Files named by the last config that parsed, even if it did not compile: a
    /// missing secret file must be watched so that creating it is seen.
    named: Vec<PathBuf>,
}

impl Reloader {
    pub fn new(gw: Arc<Gateway>, path: PathBuf, log: Option<LogHandle>) -> Reloader {
        let bound = Bound::of(&gw.snapshot());
        Reloader { gw, path, log, bound, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads everything once and applies it if it changed and is valid.
    pub fn reload(&self) -> Outcome {
        self.attempt("request")
    }

    fn attempt(&self, trigger: &'static str) -> Outcome {
        let current = self.gw.snapshot();
        let inputs = match Inputs::read(&self.path) {
            Ok(inputs) => inputs,
            Err(problems) => return self.failed(trigger, problems.to_string(), None),
        };
        self.state().named = inputs.named_files();
        if inputs.digest == current.digest {
            // The files say what is running: any earlier failure is moot now.
            self.state().last_failure = None;
            self.gw.metrics.last_reload_successful.set(1);
            tracing::debug!(trigger, "inputs unchanged; nothing to apply");
            return Outcome::Unchanged;
        }
        let next = match config::compile(&inputs, current.generation + 1, Some(&current)) {
            Ok(next) => next,
            Err(problems) => return self.failed(trigger, problems.to_string(), Some(inputs.digest)),
        };
        self.state().last_failure = None;
        log_changes(trigger, &self.bound, &current, &next);
        if let Some(log) = &self.log {
            log.apply(&next.log);
        }
        let generation = next.generation;
        let next = Arc::new(next);
        self.gw.publish(next.clone());
        self.gw.metrics.reload_succeeded(&next);
        Outcome::Applied(generation)
    }

    fn failed(&self, trigger: &'static str, reason: String, digest: Option<[u8; 32]>) -> Outcome {
        let mut id = Sha256::new();
        id.update(digest.unwrap_or_default());
        id.update(reason.as_bytes());
        let id: [u8; 32] = id.finalize().into();
        if self.state().last_failure.replace(id) == Some(id) {
            tracing::debug!(trigger, "reload still fails for the same reason");
        } else {
            // Problems name files, fields and values, never a secret (see config).
            tracing::error!(trigger, reason = %reason, "reload failed; the running config stays");
            self.gw.metrics.reload_failed();
        }
        Outcome::Failed(reason)
    }

    /// The files to watch: those of the running snapshot and of the last config read.
    fn watch_list(&self, snapshot: &Snapshot) -> BTreeSet<PathBuf> {
        let mut files: BTreeSet<PathBuf> = snapshot.watched.iter().cloned().collect();
        files.extend(self.state().named.iter().cloned());
        files.insert(self.path.clone());
        files
    }

    /// Starts watching and listening for SIGHUP now (so that a change or a signal right
    /// after start is not lost), then reloads in a task until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let this = Arc::new(self);
        let (tx, rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watches = Watches::start(tx);
        let hup = hangup_stream();
        if let Some(w) = watches.as_mut() {
            w.update(&this.watch_list(&this.gw.snapshot()), &mut BTreeSet::new());
        }
        // A change made between the first read and the watches raised no event.
        tokio::spawn(run(this, watches, rx, hup, true))
    }
}

async fn run(
    this: Arc<Reloader>,
    mut watches: Option<Watches>,
    mut rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    mut hup: Hangup,
    mut recheck: bool,
) {
    // Paths that left or entered a directory: a watch on one of them may have ended.
    let mut moved: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let snapshot = this.gw.snapshot();
        if let Some(w) = watches.as_mut() {
            // Re-resolves symlinks and notices replaced or deleted directories.
            recheck |= w.update(&this.watch_list(&snapshot), &mut moved);
        }
        drop(snapshot);
        if recheck {
            // A directory watched only now may have changed before: look once.
            recheck = false;
            attempt(&this, "watch").await;
            continue;
        }
        // Timing comes from the running snapshot, so it follows reloads too.
        let timing = this.gw.snapshot().reload;
        tokio::select! {
            _ = tokio::time::sleep(timing.poll_interval) => {
                attempt(&this, "poll").await;
            }
            Some(paths) = rx.recv() => {
                moved.extend(paths);
                // Trailing-edge debounce: wait for a quiet spell, then re-read.
                let mut deadline = Instant::now() + timing.debounce;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => break,
                        Some(paths) = rx.recv() => {
                            moved.extend(paths);
                            deadline = Instant::now() + timing.debounce;
                        }
                    }
                }
                attempt(&this, "event").await;
            }
            Some(()) = recv_hangup(&mut hup) => {
                tracing::info!("SIGHUP: reloading");
                attempt(&this, "signal").await;
            }
        }
    }
}

/// One attempt off the async workers: reading files and compiling may block.
async fn attempt(this: &Arc<Reloader>, trigger: &'static str) {
    let this = this.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || this.attempt(trigger)).await {
        tracing::error!(error = %e, "reload attempt did not finish; the running config stays");
    }
}

/// The directory watches: one per directory that decides what a named file resolves to.
struct Watches {
    watcher: RecommendedWatcher,
    /// Watched directory → its identity when the watch was set.
    active: BTreeMap<PathBuf, DirId>,
    /// Directories that could not be watched (warned about once).
    refused: BTreeSet<PathBuf>,
}

impl Watches {
    fn start(tx: mpsc::UnboundedSender<Vec<PathBuf>>) -> Option<Watches> {
        let handler = move |event: notify::Result<notify::Event>| {
            if triggers_reload(&event) {
                let _ = tx.send(moved_paths(&event));
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(Watches { watcher, active: BTreeMap::new(), refused: BTreeSet::new() }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; relying on the periodic poll");
                None
            }
        }
    }

    /// Watches what `files` need now and drops the rest. A directory replaced since it
    /// was watched (renamed over, deleted and recreated) is watched again; a missing one
    /// is stood in for by its nearest existing ancestor, which sees it come back. A
    /// directory among `moved` is watched again too: notify ends the watch of a
    /// directory that moves or is deleted inside another watched one, even if it comes
    /// back as the same directory. True when a watch was added.
    fn update(&mut self, files: &BTreeSet<PathBuf>, moved: &mut BTreeSet<PathBuf>) -> bool {
        let mut wanted: BTreeMap<PathBuf, DirId> = BTreeMap::new();
        for dir in files.iter().flat_map(|f| deciding_dirs(f)) {
            if let Some((dir, id)) = nearest_existing_dir(&dir) {
                wanted.insert(dir, id);
            }
        }
        let stale: Vec<PathBuf> = self
            .active
            .iter()
            .filter(|(d, id)| wanted.get(*d) != Some(id) || moved.contains(*d))
            .map(|(d, _)| d.clone())
            .collect();
        moved.clear();
        for dir in stale {
            // The directory may be gone already, and its watch with it.
            let _ = self.watcher.unwatch(&dir);
            self.active.remove(&dir);
        }
        let mut added = false;
        for (dir, id) in wanted {
            if self.active.contains_key(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.refused.remove(&dir);
                    self.active.insert(dir, id);
                    added = true;
                }
                Err(e) => {
                    if self.refused.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; the poll covers it");
                    }
                }
            }
        }
        added
    }
}

/// Which filesystem events mean "look at the files again".
fn triggers_reload(event: &notify::Result<notify::Event>) -> bool {
    match event {
        // An error may mean lost events (a full queue): look again rather than miss one.
        Err(_) => true,
        Ok(e) => match e.kind {
            // A writer closing the file is the end of an in-place write.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            // Reloads themselves open and read the files: counting those would loop.
            EventKind::Access(_) => false,
            _ => true,
        },
    }
}

/// The paths of an event that may have ended a watch: renamed or deleted entries.
fn moved_paths(event: &notify::Result<notify::Event>) -> Vec<PathBuf> {
    match event {
        Ok(e) if matches!(e.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) => {
            e.paths.clone()
        }
        _ => Vec::new(),
    }
}

/// The directories whose entries decide what `file` resolves to: the one holding the
/// file it finally resolves to, and the one holding every symlink met on the way (in
/// the path or in a link's target). Resolved afresh on every call, so a swapped
/// `..data` link moves the watch to the new timestamped directory.
fn deciding_dirs(file: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let mut path = file.to_owned();
    // Like the kernel, give up on long or looping chains of links.
    'resolve: for _ in 0..40 {
        let mut prefix = PathBuf::new();
        let mut components = path.components();
        while let Some(c) = components.next() {
            prefix.push(c);
            let is_link = std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            let Ok(target) = std::fs::read_link(&prefix) else { break };
            let holder = parent_dir(&prefix);
            let mut next = holder.join(target);
            next.push(components.as_path());
            dirs.insert(holder);
            path = next;
            continue 'resolve;
        }
        break;
    }
    dirs.insert(parent_dir(&path));
    dirs
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `dir`, or when it does not exist its nearest existing ancestor, with its identity.
fn nearest_existing_dir(dir: &Path) -> Option<(PathBuf, DirId)> {
    let mut dir = dir.to_owned();
    loop {
        if let Ok(meta) = std::fs::metadata(&dir) {
            if meta.is_dir() {
                return Some((dir, DirId::of(&meta)));
            }
        }
        let parent = dir.parent()?.to_owned();
        dir = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent };
        if dir == Path::new(".") && std::fs::metadata(&dir).is_err() {
            return None;
        }
    }
}

/// Which directory a path names: a new one at the same path needs a new watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId(u64, u64);

impl DirId {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> DirId {
        use std::os::unix::fs::MetadataExt;
        DirId(meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> DirId {
        DirId(0, 0)
    }
}

/// The settings a running process was built with, which only a restart changes.
struct Bound(Vec<(&'static str, String)>);

impl Bound {
    fn of(s: &Snapshot) -> Bound {
        let server: &ServerSettings = &s.server;
        let admin: Option<SocketAddr> = s.admin.as_ref().map(|a| a.listen);
        let format: LogFormat = s.log.format;
        Bound(vec![
            ("server.listen", format!("{:?}", server.listen)),
            ("server.tls (on/off)", format!("{:?}", server.tls.is_some())),
            ("server.header_timeout", format!("{:?}", server.header_timeout)),
            ("server.idle_timeout", format!("{:?}", server.idle_timeout)),
            ("server.max_connections", format!("{:?}", server.max_connections)),
            ("server.max_header_bytes", format!("{:?}", server.max_header_bytes)),
            ("server.worker_threads", format!("{:?}", server.worker_threads)),
            ("admin.listen", format!("{admin:?}")),
            ("log.format", format!("{format:?}")),
        ])
    }

    /// The settings `new` changes from `old` that differ from what is running.
    fn changed(&self, old: &Snapshot, new: &Snapshot) -> Vec<&'static str> {
        let (old, new) = (Bound::of(old), Bound::of(new));
        self.0
            .iter()
            .zip(old.0.iter().zip(&new.0))
            .filter(|((_, running), ((_, o), (_, n)))| n != o && n != running)
            .map(|((name, _), _)| *name)
            .collect()
    }
}

/// Logs one line per applied reload: generation, route and secret changes.
fn log_changes(trigger: &'static str, bound: &Bound, old: &Snapshot, new: &Snapshot) {
    let describe = |s: &Snapshot| -> HashMap<String, String> {
        s.routes
            .routes()
            .iter()
            .map(|r| {
                let what = (
                    &r.prefix,
                    r.upstream.key(),
                    &r.kind,
                    &r.secret_name,
                    &r.allow_text,
                    &r.shadow_allow,
                    r.max_body_bytes,
                    r.response_timeout,
                );
                (r.name.clone(), format!("{what:?}"))
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
    let restart = bound.changed(old, new);
    if !restart.is_empty() {
        tracing::warn!(
            settings = ?restart,
            "these settings changed but apply only at the next restart; the rest of the config is applied"
        );
    }
    for w in &new.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    tracing::info!(
        generation = new.generation,
        trigger,
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, RenameMode};

    fn event(kind: EventKind) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind))
    }

    #[test]
    fn reads_do_not_trigger_but_writes_renames_and_errors_do() {
        assert!(!triggers_reload(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))));
        assert!(!triggers_reload(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)))));
        assert!(triggers_reload(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)))));
        assert!(triggers_reload(&event(EventKind::Modify(ModifyKind::Name(RenameMode::To)))));
        assert!(triggers_reload(&event(EventKind::Create(CreateKind::File))));
        assert!(triggers_reload(&event(EventKind::Other)));
        assert!(triggers_reload(&Err(notify::Error::generic("queue overflow"))));
    }

    #[cfg(unix)]
    #[test]
    fn follows_kubernetes_links_to_the_timestamped_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        std::fs::create_dir(mount.join("..2026_01_01_00_00_00.1")).unwrap();
        std::fs::write(mount.join("..2026_01_01_00_00_00.1/key"), "k").unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", mount.join("key")).unwrap();
        let dirs = deciding_dirs(&mount.join("key"));
        let expected: BTreeSet<PathBuf> =
            [mount.to_owned(), mount.join("..2026_01_01_00_00_00.1")].into_iter().collect();
        assert_eq!(dirs, expected);
    }

    #[test]
    fn a_plain_file_needs_only_its_directory() {
        assert_eq!(deciding_dirs(Path::new("/nonexistent/x/key")), [PathBuf::from("/nonexistent/x")].into());
        assert_eq!(deciding_dirs(Path::new("key")), [PathBuf::from(".")].into());
    }

    #[test]
    fn a_missing_directory_is_stood_in_for_by_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let (found, _) = nearest_existing_dir(&dir.path().join("a/b")).unwrap();
        assert_eq!(found, dir.path());
    }
}
