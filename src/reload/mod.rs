//! Hot reload (docs/configuration.md, "Reload"): watch the directories holding the
//! config and every file it names (Kubernetes swaps a `..data` symlink and editors save
//! by rename, so watching the files themselves would miss changes), debounce on the
//! trailing edge with a ceiling, re-read everything, and publish a new snapshot in one
//! swap — or keep the running one. File events, SIGHUP and the poll are served by one
//! loop, so no amount of event traffic holds off the other two. The same loop runs key
//! rotation ([`rotation`]): a changed key that must be proven waits as a candidate while
//! its proof runs, and the proof's end and the overlap's end publish from here too.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{self, Inputs, LogFormat, ServerSettings, Snapshot};
use crate::gateway::Gateway;
use crate::rotation::Verdicts;
use crate::telemetry::LogHandle;
use rotation::{ProofDone, Proofs};
use watch::Watches;

mod rotation;
mod watch;

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The inputs are byte-identical to the running ones.
    Unchanged,
    /// A new generation is running.
    Applied(u64),
    /// A new generation is running, with a changed key waiting for its proof: the
    /// attempt counts when the proof ends.
    Proving(u64),
    /// The running snapshot stays; the reason is logged.
    Failed(String),
}

/// Reloads config and secrets on file events, SIGHUP and a periodic poll.
pub(crate) struct Reloader {
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
    /// What proofs decided, for the next compile.
    verdicts: Verdicts,
    /// The running snapshot's inputs, kept while it has a candidate or a previous key:
    /// a proof's end and an overlap's end recompile them.
    inputs: Option<Inputs>,
}

impl Reloader {
    pub(crate) fn new(gw: Arc<Gateway>, path: PathBuf, log: Option<LogHandle>) -> Reloader {
        let bound = Bound::of(&gw.snapshot());
        Reloader { gw, path, log, bound, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn attempt(&self, trigger: &'static str) -> Outcome {
        // One line per attempt, whatever its outcome: attempts can be counted.
        tracing::debug!(trigger, "reload attempt");
        let current = self.gw.snapshot();
        // SIGHUP asks for another try of a candidate that was refused or timed out.
        let retry = trigger == "signal" && self.state().verdicts.forget_rejections();
        let text = match config::read_text(&self.path) {
            Ok(text) => text,
            Err(problems) => return self.failed(trigger, problems.to_string(), None),
        };
        // Same text and same named files: nothing to parse or apply.
        if !retry && current.manifest.digest_if_same_text(&text) == Some(current.digest) {
            self.state().named = current.watched.clone();
            return self.unchanged(trigger, &current);
        }
        let inputs = match Inputs::parse(&self.path, &text) {
            Ok(inputs) => inputs,
            Err(problems) => return self.failed(trigger, problems.to_string(), None),
        };
        self.state().named = inputs.named_files();
        if !retry && inputs.digest == current.digest {
            return self.unchanged(trigger, &current);
        }
        let verdicts = rotation::verdicts_of(self);
        let generation = current.generation + 1;
        let next =
            match config::compile_with(&inputs, generation, Some(&current), self.gw.clients(), &verdicts) {
                Ok(next) => next,
                Err(problems) => return self.failed(trigger, problems.to_string(), Some(inputs.digest)),
            };
        log_changes(trigger, &self.bound, &current, &next);
        if let Some(log) = &self.log {
            log.apply(&next.log);
        }
        let next = self.publish(next, inputs);
        let new_candidate = next.secrets.iter().any(|s| {
            let old = current.secret(&s.name).and_then(|o| o.candidate.as_ref()).map(|c| &c.value);
            s.candidate.as_ref().is_some_and(|c| old != Some(&c.value))
        });
        if new_candidate {
            // Counted when the proof ends.
            self.state().last_failure = None;
            self.gw.metrics.published(&next);
            return Outcome::Proving(generation);
        }
        self.succeeded(&next);
        Outcome::Applied(generation)
    }

    /// Counts an applied reload. While the files still hold a rejected key, the last
    /// reload is not called successful: that key is not in use.
    fn succeeded(&self, next: &Snapshot) {
        self.state().last_failure = None;
        self.gw.metrics.reload_succeeded(next);
        if rotation::rejections(next).is_some() {
            self.gw.metrics.last_reload_successful.set(0);
        }
    }

    fn unchanged(&self, trigger: &'static str, current: &Snapshot) -> Outcome {
        // The files hold a rejected key: the failure stands (counted when it was
        // rejected; a key is not proven twice, see `Verdicts`).
        if let Some(reason) = rotation::rejections(current) {
            tracing::debug!(trigger, "inputs unchanged; they still hold a rejected key");
            return Outcome::Failed(reason);
        }
        // The files say what is running: any earlier failure is moot now. With a
        // candidate still being proven, the outcome waits for the proof.
        self.state().last_failure = None;
        if !current.secrets.iter().any(|s| s.candidate.is_some()) {
            self.gw.metrics.last_reload_successful.set(1);
        }
        tracing::debug!(trigger, "inputs unchanged; nothing to apply");
        Outcome::Unchanged
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
    pub(crate) fn spawn(self) -> tokio::task::JoinHandle<()> {
        let this = Arc::new(self);
        let (tx, rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watches = Watches::start(tx);
        let hup = hangup_stream();
        if let Some(w) = watches.as_mut() {
            w.update(&this.watch_list(&this.gw.snapshot()), &mut BTreeSet::new());
        }
        // A change made between the first read and the watches raised no event.
        tokio::spawn(run(this, Events { watches, rx, hup }, true))
    }
}

/// How long a burst of relevant events may put a reload off, from its first event: a
/// file rewritten without pause is still applied within this (or the debounce, if that
/// is set longer).
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Relevant events waiting for their reload.
#[derive(Debug, Clone, Copy)]
struct Burst {
    first: Instant,
    last: Instant,
}

impl Burst {
    /// When the burst is applied: after a quiet `debounce` (trailing edge), but no later
    /// than `MAX_DELAY` after its first event.
    fn due(&self, debounce: Duration) -> Instant {
        (self.last + debounce).min(self.first + debounce.max(MAX_DELAY))
    }
}

/// What the reload loop listens to besides its timers.
struct Events {
    watches: Option<Watches>,
    rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    hup: Hangup,
}

/// The reload loop: one select over the poll, file events, a pending burst's deadline,
/// SIGHUP, the end of a key's proof and the end of an overlap, so that none of them
/// waits on another.
async fn run(this: Arc<Reloader>, mut events: Events, mut recheck: bool) {
    // Paths that left or entered a directory: a watch on one of them may have ended.
    let mut moved: BTreeSet<PathBuf> = BTreeSet::new();
    let mut burst: Option<Burst> = None;
    let mut next_poll = Instant::now();
    let mut looked = true;
    let (proved, mut proofs_done) = mpsc::unbounded_channel::<ProofDone>();
    let mut proofs = Proofs::default();
    loop {
        if looked {
            looked = false;
            let snapshot = this.gw.snapshot();
            if let Some(w) = events.watches.as_mut() {
                // Re-resolves symlinks and notices replaced or deleted directories.
                recheck |= w.update(&this.watch_list(&snapshot), &mut moved);
                // A change made before this point may be found by the look it asks for
                // (trigger `watch`); from here on, a change raises its own event.
                tracing::debug!(directories = w.watched(), recheck, "watches in place");
            }
            // Timing comes from the running snapshot, so it follows reloads too.
            next_poll = Instant::now() + snapshot.reload.poll_interval;
        }
        let trigger = if recheck {
            // A directory watched only now may have changed before: look once.
            recheck = false;
            "watch"
        } else {
            let snapshot = this.gw.snapshot();
            let due = burst.map(|b| b.due(snapshot.reload.debounce));
            let expiry = rotation::next_expiry(&snapshot);
            tokio::select! {
                _ = tokio::time::sleep_until(next_poll) => "poll",
                _ = tokio::time::sleep_until(due.unwrap_or(next_poll)), if due.is_some() => "event",
                Some(paths) = events.rx.recv() => {
                    moved.extend(paths);
                    let now = Instant::now();
                    burst = Some(burst.map_or(Burst { first: now, last: now }, |b| Burst { last: now, ..b }));
                    continue;
                }
                Some(()) = recv_hangup(&mut events.hup) => {
                    tracing::info!("SIGHUP: reloading");
                    "signal"
                }
                Some(done) = proofs_done.recv() => {
                    off_loop(&this, move |r| r.conclude(done)).await;
                    proofs.sync(&this.gw, &this.gw.snapshot(), &proved);
                    continue;
                }
                () = rotation::until(expiry) => {
                    off_loop(&this, Reloader::expire).await;
                    continue;
                }
            }
        };
        // The attempt reads every file after the burst's events: they are covered.
        burst = None;
        let outcome = off_loop(&this, move |r| r.attempt(trigger)).await;
        if trigger == "signal" {
            // Whatever the log level, an operator who sent SIGHUP gets an answer.
            acknowledge_hangup(outcome.as_ref());
        }
        proofs.sync(&this.gw, &this.gw.snapshot(), &proved);
        looked = true;
    }
}

/// Runs `work` off the async workers: reading files and compiling may block.
async fn off_loop<T: Send + 'static>(
    this: &Arc<Reloader>,
    work: impl FnOnce(&Reloader) -> T + Send + 'static,
) -> Option<T> {
    let this = this.clone();
    match tokio::task::spawn_blocking(move || work(&this)).await {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            tracing::error!(error = %e, "reload work did not finish; the running config stays");
            None
        }
    }
}

/// One `info` line per SIGHUP, saying what it did (a failure's reason is logged by the
/// attempt itself).
fn acknowledge_hangup(outcome: Option<&Outcome>) {
    match outcome {
        Some(Outcome::Unchanged) => {
            tracing::info!(outcome = "unchanged", "SIGHUP handled: nothing changed, nothing to apply")
        }
        Some(Outcome::Applied(generation)) => {
            tracing::info!(outcome = "applied", generation, "SIGHUP handled: new config applied")
        }
        Some(Outcome::Proving(generation)) => tracing::info!(
            outcome = "proving",
            generation,
            "SIGHUP handled: new config applied; a changed key is being proven before use"
        ),
        Some(Outcome::Failed(_)) | None => {
            tracing::info!(outcome = "failed", "SIGHUP handled: reload failed; the running config stays")
        }
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
                    &r.proof,
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
    let candidate = |s: &Snapshot, name: &str| {
        s.secret(name).and_then(|s| s.candidate.as_ref()).map(|c| c.fingerprint.clone())
    };
    let proving: Vec<String> = new
        .secrets
        .iter()
        .filter_map(|s| Some((s, candidate(new, &s.name)?)))
        .filter(|(s, fp)| candidate(old, &s.name).as_ref() != Some(fp))
        .map(|(s, fp)| format!("{} ({fp})", s.name))
        .collect();
    let restart = bound.changed(old, new);
    if !restart.is_empty() {
        tracing::warn!(
            settings = ?restart,
            "these settings changed but apply only at the next restart; the rest of the config is applied"
        );
    }
    // A promotion recompiles the same files: their warnings were logged already.
    if trigger != "proof" {
        for w in &new.warnings {
            tracing::warn!(warning = %w, "config warning");
        }
    }
    tracing::info!(
        generation = new.generation,
        trigger,
        routes_added = ?added,
        routes_removed = ?removed,
        routes_changed = ?changed,
        secrets_changed = ?rotated,
        secrets_proving = ?proving,
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

    #[test]
    fn a_burst_is_due_after_a_quiet_debounce_but_within_the_ceiling() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let burst = |first: u64, last: u64| Burst { first: t0 + ms(first), last: t0 + ms(last) };
        // Trailing edge: a quiet debounce after the last event.
        assert_eq!(burst(0, 0).due(ms(200)), t0 + ms(200));
        assert_eq!(burst(0, 500).due(ms(200)), t0 + ms(700));
        // Events that never pause: the ceiling, measured from the first event.
        assert_eq!(burst(0, 900).due(ms(200)), t0 + MAX_DELAY);
        assert_eq!(burst(0, 60_000).due(ms(200)), t0 + MAX_DELAY);
        // A debounce set longer than the ceiling is the ceiling.
        assert_eq!(burst(0, 1_500).due(ms(3_000)), t0 + ms(3_000));
    }
}
