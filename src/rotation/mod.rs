//! Key rotation (docs/configuration.md, "Key rotation"): what a secret holds besides the
//! value in use — a *candidate* being proven against the upstream, the *previous* value
//! kept for the overlap after a promotion, a *rejected* candidate remembered so that the
//! poll does not prove it again — and the one rule, [`resolve`], by which every compile
//! decides which value the routes inject. The proof calls are in [`proof`]; the reloader
//! runs them and hands their verdicts back to the next compile through [`Verdicts`].
//!
//! One secret, from one snapshot to the next:
//!
//! ```text
//! current ─ file changes ─▶ current + candidate ─ every route accepts ─▶ current = candidate,
//!    ▲                          │                                        previous = old current
//!    └── refused, or not proven ┘                                              │
//!        within verify_timeout (remembered as rejected)        overlap ends ─▶ previous gone
//! ```
//!
//! A secret that is `verify = false`, or whose routes have no proof call, skips the
//! candidate state: a changed value is current at once (and the old one previous). At
//! start there is no running value: what the files hold is current.

pub(crate) mod proof;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::secret::Secret;

/// One secret as a snapshot holds it: the value routes inject, and what rotation keeps
/// beside it. Shown by fingerprints only.
#[derive(Debug, Clone)]
pub(crate) struct LoadedSecret {
    pub name: String,
    /// The fingerprint of `value`.
    pub fingerprint: String,
    /// When `value` was loaded; kept by every reload that keeps the value.
    pub loaded_at: SystemTime,
    /// The value in use.
    pub value: Arc<Secret>,
    /// A changed value waiting for its proof; routes do not use it yet.
    pub candidate: Option<Candidate>,
    /// The value in use before the last promotion, kept for the overlap.
    pub previous: Option<Previous>,
    /// The candidate the files hold, refused by the upstream or not proven in time.
    pub rejected: Option<Rejected>,
}

/// A changed value waiting for its proof.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub value: Arc<Secret>,
    pub fingerprint: String,
    /// When it was first seen.
    pub since: SystemTime,
}

/// The value replaced by the last promotion, kept until `until` for one retry of a safe
/// request the upstream refused with the current value.
#[derive(Debug, Clone)]
pub(crate) struct Previous {
    pub value: Arc<Secret>,
    pub fingerprint: String,
    pub until: Instant,
    /// `until` as wall-clock time, for `/config`.
    pub expires_at: SystemTime,
}

/// A candidate that will not be used: what it was (by digest and fingerprint) and why.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub digest: [u8; 32],
    pub fingerprint: String,
    /// Names the secret's routes and statuses, never a value.
    pub reason: String,
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("fingerprint", &self.fingerprint)
            .field("reason", &self.reason)
            .finish()
    }
}

impl LoadedSecret {
    /// `value` as just loaded from its source, with nothing beside it.
    pub(crate) fn fresh(name: &str, value: Secret, loaded_at: SystemTime) -> LoadedSecret {
        LoadedSecret {
            name: name.to_owned(),
            fingerprint: value.fingerprint(),
            loaded_at,
            value: Arc::new(value),
            candidate: None,
            previous: None,
            rejected: None,
        }
    }

    /// Every value of this secret that can be on the wire: current, candidate, previous
    /// (what the scrubber looks for).
    pub(crate) fn values(&self) -> impl Iterator<Item = &Secret> {
        let candidate = self.candidate.as_ref().map(|c| &*c.value);
        let previous = self.previous.as_ref().map(|p| &*p.value);
        std::iter::once(&*self.value).chain(candidate).chain(previous)
    }
}

/// What a compile knows of one secret besides its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// A changed value waits for a proof: the secret is not `verify = false` and a route
    /// that uses it has a proof call.
    pub proves: bool,
    /// How long a replaced value is kept; zero keeps none.
    pub overlap: Duration,
}

/// The moment a compile runs, on both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Now {
    pub(crate) fn current() -> Now {
        Now { wall: SystemTime::now(), mono: Instant::now() }
    }
}

/// What the reloader learned from proofs, for the next compile: candidates every route
/// accepted (promoted by it) and candidates refused (not proven again while the files
/// hold them, until SIGHUP). Values are known by digest only.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdicts {
    accepted: BTreeMap<String, [u8; 32]>,
    rejected: BTreeMap<String, Rejected>,
}

impl Verdicts {
    /// The candidate of `secret` with this digest was accepted by every route.
    pub(crate) fn accept(&mut self, secret: &str, digest: [u8; 32]) {
        self.rejected.remove(secret);
        self.accepted.insert(secret.to_owned(), digest);
    }

    /// The candidate of `secret` was refused, or not proven in time.
    pub(crate) fn reject(&mut self, secret: &str, rejected: Rejected) {
        self.accepted.remove(secret);
        self.rejected.insert(secret.to_owned(), rejected);
    }

    /// Forgets every rejection (SIGHUP: the operator asks for another try). True when
    /// there was one.
    pub(crate) fn forget_rejections(&mut self) -> bool {
        let had = !self.rejected.is_empty();
        self.rejected.clear();
        had
    }

    /// After a publish: keeps only what the published `secrets` still need (no accepted
    /// candidate is promoted twice; a rejection ends when the files move past it).
    pub(crate) fn settle(&mut self, secrets: &[LoadedSecret]) {
        self.accepted.clear();
        self.rejected.retain(|name, _| secrets.iter().any(|s| &s.name == name && s.rejected.is_some()));
    }
}

/// What a compile uses for a secret whose source now holds `loaded`, given what the
/// running snapshot holds for it (`running`, absent at start and for a new secret).
pub(crate) fn resolve(
    loaded: LoadedSecret,
    running: Option<&LoadedSecret>,
    rules: Rules,
    verdicts: &Verdicts,
    now: Now,
) -> LoadedSecret {
    let Some(run) = running else { return loaded };
    let previous = run.previous.clone().filter(|p| p.until > now.mono);
    // The running value stays in use, with `candidate` and `rejected` beside it.
    let keep = |candidate: Option<Candidate>, rejected: Option<Rejected>| LoadedSecret {
        name: run.name.clone(),
        fingerprint: run.fingerprint.clone(),
        loaded_at: run.loaded_at,
        value: run.value.clone(),
        candidate,
        previous: previous.clone(),
        rejected,
    };
    if run.value == loaded.value {
        // Unchanged, or changed back: a candidate of another value is dropped.
        return keep(None, None);
    }
    let digest = loaded.value.digest();
    if !rules.proves || verdicts.accepted.get(&loaded.name) == Some(&digest) {
        let until = now.mono.checked_add(rules.overlap);
        let previous = until.filter(|_| !rules.overlap.is_zero()).map(|until| Previous {
            value: run.value.clone(),
            fingerprint: run.fingerprint.clone(),
            until,
            expires_at: now.wall + rules.overlap,
        });
        return LoadedSecret { previous, loaded_at: now.wall, ..loaded };
    }
    // Before the candidate check: the compile that applies a rejection runs while the
    // rejected value is still the running candidate.
    if let Some(rejected) = verdicts.rejected.get(&loaded.name).filter(|r| r.digest == digest) {
        return keep(None, Some(rejected.clone()));
    }
    if let Some(candidate) = run.candidate.as_ref().filter(|c| c.value == loaded.value) {
        return keep(Some(candidate.clone()), None);
    }
    let candidate = Candidate { fingerprint: loaded.fingerprint, since: now.wall, value: loaded.value };
    keep(Some(candidate), None)
}

#[cfg(test)]
mod tests;
