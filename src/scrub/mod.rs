//! What is scrubbed on the way down (docs/presets.md, "On the way down";
//! docs/operations.md, "Keys in answers"): one automaton over every loaded secret value
//! finds them in response header names and values, trailers and non-2xx bodies, in the
//! forms an upstream is likely to echo them, ASCII case-insensitively, and replaces
//! each with `[REDACTED]`. [`body`] decides which bodies are read and how.
//!
//! The scrubber belongs to a config snapshot and is rebuilt with it, from a plain list of
//! secret values, so a value kept beside the current one (a previous or a candidate key)
//! is covered by passing it too.

pub mod body;

use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use http::HeaderMap;
use http::header::HeaderValue;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

use crate::secret::{QUERY_VALUE, Secret};

/// The replacement for a secret found where it must not be.
pub const REDACTED: &str = "[REDACTED]";

/// Why the scrubber could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    /// The automaton grew past aho-corasick's limits. The message names no value.
    #[error("the secret values are too many or too long to build the response scrubber")]
    TooLarge,
}

/// Finds and redacts every secret of a snapshot in what goes back to callers.
///
/// Memory: the needle copies made here are zeroized once the automaton is built, and
/// none is kept. The automaton itself cannot be zeroized: aho-corasick offers no hook,
/// and its transition tables encode every needle, so the values stay reconstructable
/// from its memory until it is freed (as they are from the [`Secret`]s it was built
/// from). Its builder also copies the needles into transient buffers (for a prefilter
/// it does not use with case-insensitive search) that are freed without being wiped.
pub struct Scrubber {
    automaton: AhoCorasick,
    /// The longest needle, in bytes: a match can span at most this many bytes.
    longest: usize,
    /// The shortest needle, in bytes: anything shorter holds no match (most header
    /// names and many values), and is not searched.
    shortest: usize,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // aho-corasick's own Debug prints its transitions, from which the keys could be
        // read back: never delegate to it.
        write!(f, "Scrubber({} forms, [REDACTED])", self.automaton.patterns_len())
    }
}

impl Scrubber {
    /// Builds one automaton over every form of every value in `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Result<Self, ScrubError> {
        let mut needles: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for secret in secrets {
            for form in forms(secret.expose()) {
                // Case-insensitive search makes forms that differ only in case duplicates.
                if !form.is_empty() && !needles.iter().any(|n| n.eq_ignore_ascii_case(&form)) {
                    needles.push(form);
                }
            }
        }
        let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
        let shortest = needles.iter().map(|n| n.len()).min().unwrap_or(usize::MAX);
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            // Longest: a raw value inside a longer encoded one is never half-replaced.
            .match_kind(MatchKind::LeftmostLongest)
            .build(needles.iter().map(|n| n.as_slice()))
            .map_err(|_| ScrubError::TooLarge)?;
        Ok(Scrubber { automaton, longest, shortest })
    }

    /// True when `haystack` holds any form of any secret.
    pub fn finds(&self, haystack: &[u8]) -> bool {
        haystack.len() >= self.shortest && self.automaton.is_match(haystack)
    }

    /// A copy of `haystack` with every form of every secret replaced, or `None` when it
    /// holds none (the common case, which allocates nothing).
    pub fn scrub(&self, haystack: &[u8]) -> Option<Vec<u8>> {
        if haystack.len() < self.shortest {
            return None;
        }
        // One pass: the copy starts at the first match, if there is one.
        let mut matches = self.automaton.find_iter(haystack).peekable();
        matches.peek()?;
        let mut out = Vec::with_capacity(haystack.len());
        let mut sent = 0;
        for m in matches {
            out.extend_from_slice(&haystack[sent..m.start()]);
            out.extend_from_slice(REDACTED.as_bytes());
            sent = m.end();
        }
        out.extend_from_slice(&haystack[sent..]);
        Some(out)
    }

    /// Removes every header whose name holds a secret and redacts every value holding
    /// one. One automaton pass per distinct name and one per value.
    pub fn headers(&self, headers: &mut HeaderMap) {
        let mut named = Vec::new();
        for name in headers.keys() {
            if self.finds(name.as_str().as_bytes()) {
                named.push(name.clone());
            }
        }
        for name in named {
            headers.remove(name);
        }
        for value in headers.values_mut() {
            // `finds` (stops at any match state) is cheaper than a leftmost-longest
            // search on the clean values nearly every header has.
            if !self.finds(value.as_bytes()) {
                continue;
            }
            if let Some(clean) = self.scrub(value.as_bytes()) {
                // The scrubbed bytes are a valid value minus some bytes plus ASCII: still
                // valid, but never pass on a value that might not be.
                *value = HeaderValue::from_bytes(&clean).unwrap_or(HeaderValue::from_static(REDACTED));
            }
        }
    }

    /// Scrubs the next piece of a body that arrives in pieces. `held` carries bytes
    /// from one call to the next: the tail that could still be the start of a key
    /// split across pieces (fewer bytes than the longest needle). Returns what can be
    /// sent now; [`Scrubber::finish`] returns the rest at the end of the body.
    pub fn push(&self, held: &mut Vec<u8>, piece: &[u8]) -> Vec<u8> {
        held.extend_from_slice(piece);
        let keep = self.longest.saturating_sub(1);
        if held.len() <= keep {
            return Vec::new();
        }
        // A match starting before `safe` has all its bytes here, and so has every
        // match that could start further left: those are the matches a search over the
        // whole body finds. Anything from `safe` on waits for the next piece.
        let safe = held.len() - keep;
        let mut out = Vec::with_capacity(held.len());
        let mut sent = 0;
        for m in self.automaton.find_iter(held.as_slice()) {
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&held[sent..m.start()]);
            out.extend_from_slice(REDACTED.as_bytes());
            sent = m.end();
        }
        let cut = sent.max(safe);
        out.extend_from_slice(&held[sent..cut]);
        held.drain(..cut);
        out
    }

    /// The scrubbed rest of a body fed through [`Scrubber::push`].
    pub fn finish(&self, held: Vec<u8>) -> Vec<u8> {
        match self.scrub(&held) {
            Some(clean) => clean,
            None => held,
        }
    }
}

/// The forms of one value that are looked for: raw; percent-encoded keeping the RFC 3986
/// unreserved characters (what keygate itself sends) and encoding every non-alphanumeric
/// byte (stricter encoders), each also with `+` for space (form encoding); and raw with
/// `\/` for `/` (JSON encoders that escape slashes). Both hex cases are covered by the
/// case-insensitive search. A value partly encoded in some other way is not recognised.
fn forms(value: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = vec![Zeroizing::new(value.as_bytes().to_vec())];
    for set in [QUERY_VALUE, NON_ALPHANUMERIC] {
        // Sized up front: a buffer that grows leaves unwiped copies behind.
        let mut encoded = Zeroizing::new(Vec::with_capacity(value.len() * 3));
        for piece in utf8_percent_encode(value, set) {
            encoded.extend_from_slice(piece.as_bytes());
        }
        out.push(replaced(&encoded, b"%20", b"+"));
        out.push(encoded);
    }
    if value.contains('/') {
        out.push(replaced(value.as_bytes(), b"/", b"\\/"));
    }
    out
}

/// `text` with every `from` replaced by `to`, in a buffer that never reallocates.
fn replaced(text: &[u8], from: &[u8], to: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * to.len().max(1)));
    let mut rest = text;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests;
