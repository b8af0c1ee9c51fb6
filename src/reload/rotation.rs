//! The reloader's part of key rotation ([`crate::rotation`]): one proof task per
//! candidate of the running snapshot ([`Proofs`]), and what a proof's end and an
//! overlap's end publish. Every one of these runs in the reload loop, one at a time, so
//! that attempts, promotions, rejections and expiries never race: each recompiles the
//! running snapshot's own inputs (kept for that while something is pending) with what
//! the proofs decided, and publishes the result in one swap.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Reloader, log_changes};
use crate::config::{self, Snapshot};
use crate::gateway::Gateway;
use crate::rotation::proof::{self, Verdict};
use crate::rotation::{Rejected, Verdicts};

/// A proof task's report: which candidate (by digest) of which secret, and its verdict.
#[derive(Debug)]
pub(super) struct ProofDone {
    pub secret: String,
    pub digest: [u8; 32],
    pub verdict: Verdict,
}

/// The running proof tasks, one per secret with a candidate; aborted when dropped.
#[derive(Default)]
pub(super) struct Proofs {
    running: HashMap<String, ([u8; 32], JoinHandle<()>)>,
}

impl Drop for Proofs {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

impl Proofs {
    /// Makes the tasks match the candidates of `snapshot`: a proof for each new one (in
    /// that snapshot's routes), none for a candidate that is gone or was replaced.
    pub(super) fn sync(
        &mut self,
        gw: &Arc<Gateway>,
        snapshot: &Snapshot,
        done: &mpsc::UnboundedSender<ProofDone>,
    ) {
        let wanted: HashMap<&str, [u8; 32]> = snapshot
            .secrets
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.candidate.as_ref()?.value.digest())))
            .collect();
        // A finished task stays while its candidate does: its verdict may still be on
        // its way, and a candidate is proven once.
        self.running.retain(|name, (digest, task)| {
            let keep = wanted.get(name.as_str()) == Some(digest);
            if !keep {
                task.abort();
            }
            keep
        });
        for secret in &snapshot.secrets {
            let Some(candidate) = &secret.candidate else { continue };
            if self.running.contains_key(&secret.name) {
                continue;
            }
            let routes: Vec<_> = snapshot
                .routes
                .routes()
                .iter()
                .filter(|r| r.secret_name == secret.name && r.proof.is_some())
                .cloned()
                .collect();
            let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
            tracing::info!(
                secret = %secret.name,
                candidate = %candidate.fingerprint,
                routes = ?names,
                "a changed key is being proven before use; the running key stays meanwhile"
            );
            let (name, value, digest) =
                (secret.name.clone(), candidate.value.clone(), candidate.value.digest());
            let (within, counts, tx) =
                (snapshot.reload.verify_timeout, gw.metrics.secret_verifications.clone(), done.clone());
            let task = tokio::spawn(async move {
                let verdict = proof::prove(&name, &value, &routes, within, &counts).await;
                let _ = tx.send(ProofDone { secret: name, digest, verdict });
            });
            self.running.insert(secret.name.clone(), (digest, task));
        }
    }
}

/// When the next previous key of `snapshot` expires, if one is kept.
pub(super) fn next_expiry(snapshot: &Snapshot) -> Option<Instant> {
    snapshot.secrets.iter().filter_map(|s| s.previous.as_ref().map(|p| p.until)).min()
}

/// The reason a snapshot's rejected candidates give for a failed reload, if it has any.
pub(super) fn rejections(snapshot: &Snapshot) -> Option<String> {
    let reasons: Vec<&str> =
        snapshot.secrets.iter().filter_map(|s| s.rejected.as_ref().map(|r| r.reason.as_str())).collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// True when `snapshot` has a candidate or a previous key: a proof's or an overlap's end
/// will recompile its inputs.
pub(super) fn pending(snapshot: &Snapshot) -> bool {
    snapshot.secrets.iter().any(|s| s.candidate.is_some() || s.previous.is_some())
}

impl Reloader {
    /// Applies a proof's verdict, if its candidate is still the running one: an accepted
    /// candidate is promoted (a counted, successful reload); a refused or unproven one is
    /// dropped and remembered (a counted, failed reload; the running key stays).
    pub(super) fn conclude(&self, done: ProofDone) {
        let current = self.gw.snapshot();
        let Some(secret) = current.secret(&done.secret) else { return };
        let Some(candidate) = secret.candidate.as_ref().filter(|c| c.value.digest() == done.digest) else {
            tracing::debug!(secret = %done.secret, "a proof ended for a candidate that is gone");
            return;
        };
        let tail = match &done.verdict {
            Verdict::Accepted => None,
            Verdict::Rejected(why) => Some(format!("was refused: {why}")),
            Verdict::TimedOut(why) => Some(format!("was {why}")),
        };
        let fingerprint = candidate.fingerprint.clone();
        {
            let mut state = self.state();
            match &tail {
                None => state.verdicts.accept(&done.secret, done.digest),
                Some(tail) => {
                    let reason = format!(
                        "secret {:?}: candidate {fingerprint} {tail}; the running key stays",
                        done.secret
                    );
                    state
                        .verdicts
                        .reject(&done.secret, Rejected { digest: done.digest, fingerprint, reason });
                }
            }
        }
        let Some((next, inputs)) = self.recompile(&current) else { return };
        let rejected = next.secret(&done.secret).and_then(|s| s.rejected.clone());
        if let Some(rejected) = rejected {
            // Each rejection is one failed reload, counted here only: the same key is
            // never proven again by the poll.
            let reason = rejected.reason;
            tracing::error!(trigger = "proof", reason = %reason, "reload failed; the running config stays");
            let next = self.publish(next, inputs);
            self.state().last_failure = None;
            self.gw.metrics.published(&next);
            self.gw.metrics.reload_failed();
            return;
        }
        if let Some(s) = next.secret(&done.secret) {
            tracing::info!(
                secret = %s.name,
                fingerprint = %s.fingerprint,
                previous = s.previous.as_ref().map(|p| p.fingerprint.as_str()),
                overlap_s = next.reload.overlap.as_secs(),
                "the new key was accepted by every route and is in use; the previous one is kept for the overlap"
            );
        }
        log_changes("proof", &self.bound, &current, &next);
        let next = self.publish(next, inputs);
        self.succeeded(&next);
    }

    /// Drops every previous key whose overlap has ended (their memory is wiped once the
    /// last request holding the snapshot is done).
    pub(super) fn expire(&self) {
        let current = self.gw.snapshot();
        let Some((next, inputs)) = self.recompile(&current) else { return };
        for (secret, previous) in current.secrets.iter().filter_map(|s| Some((s, s.previous.as_ref()?))) {
            let kept = next.secret(&secret.name).and_then(|s| s.previous.as_ref()).map(|p| p.until);
            if kept != Some(previous.until) {
                tracing::info!(
                    secret = %secret.name,
                    previous = %previous.fingerprint,
                    "the overlap ended: the previous key is no longer used"
                );
            }
        }
        let next = self.publish(next, inputs);
        self.gw.metrics.published(&next);
    }

    /// Recompiles the running snapshot's inputs with the proofs' verdicts as the next
    /// generation, to publish with its inputs. `None` when nothing is kept to recompile
    /// or the compile failed (logged; the running snapshot stays).
    fn recompile(&self, current: &Snapshot) -> Option<(Snapshot, config::Inputs)> {
        let (inputs, verdicts) = {
            let mut state = self.state();
            (state.inputs.take()?, state.verdicts.clone())
        };
        let compiled = config::compile_with(
            &inputs,
            current.generation + 1,
            Some(current),
            self.gw.clients(),
            &verdicts,
        );
        match compiled {
            Ok(next) => Some((next, inputs)),
            Err(problems) => {
                // The same inputs compiled before: only what they name on disk (a
                // certificate's permissions, say) can make this fail.
                tracing::error!(reason = %problems, "recompiling the running config failed; it stays");
                self.state().inputs = Some(inputs);
                None
            }
        }
    }

    /// Publishes `next`, compiled from `inputs`: keeps the inputs while `next` has
    /// something pending, and drops the verdicts it applied.
    pub(super) fn publish(&self, next: Snapshot, inputs: config::Inputs) -> Arc<Snapshot> {
        let next = Arc::new(next);
        self.gw.publish(next.clone());
        let mut state = self.state();
        state.verdicts.settle(&next.secrets);
        state.inputs = pending(&next).then_some(inputs);
        next
    }
}

/// The verdicts a compile applies now (a copy: the state is not held while compiling).
pub(super) fn verdicts_of(reloader: &Reloader) -> Verdicts {
    reloader.state().verdicts.clone()
}

/// How long to wait for `at`, when it is set (for a `select!` branch).
pub(super) async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending::<()>().await,
    }
}
