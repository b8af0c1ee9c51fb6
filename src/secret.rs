//! Secret values: where they come from, how they are held, how they are shown.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` are redacted, it has no
//! `Serialize`, and its memory is wiped on drop. The one way to read it is
//! [`Secret::expose`], used only where a credential is injected or scrubbed.
//!
//! Where a request carries the key, the bytes it travels in ([`Wiped`], [`WipedText`])
//! are wiped when they are dropped, and so is a buffer they outgrow on the way: no copy
//! of a key is left behind in freed memory by keygate's own code.

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// How keygate percent-encodes a secret it sends in a query: everything but the RFC 3986
/// unreserved characters. The scrubber looks for this form too.
pub(crate) const QUERY_VALUE: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A credential held in memory: redacted when printed, zeroized when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value. Callers validate it first with [`Secret::parse`] when it comes
    /// from outside.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// Trims trailing whitespace/CR/LF and checks the rest is a usable credential.
    pub fn parse(raw: &str) -> Result<Self, SecretProblem> {
        let value = raw.trim_end_matches([' ', '\t', '\r', '\n']);
        if value.is_empty() {
            return Err(SecretProblem::Empty);
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(SecretProblem::ControlCharacters);
        }
        Ok(Secret::new(value.to_owned()))
    }

    /// The raw value. Only credential injection and response scrubbing call this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// First 8 hex characters of the value's SHA-256: enough to tell keys apart,
    /// useless for recovering one.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.digest()[..4])
    }

    /// The value's whole SHA-256: how a value is recognised again (a rejected candidate
    /// seen by the next poll) without keeping a copy of it.
    pub(crate) fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Why a secret value was refused. Never carries the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("is empty")]
    Empty,
    #[error("contains control characters")]
    ControlCharacters,
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("environment variable {0} is not set or not UTF-8")]
    EnvMissing(String),
}

/// Bytes that may hold a key for a while (a request head, a target): wiped when dropped.
/// When they outgrow their buffer, the old one is wiped before it is freed (a `Vec`
/// that grows leaves its old buffer as it was). Sized up front, they never grow.
///
/// Wiping is a `memset` the compiler may not remove, not a byte-by-byte loop: a head of
/// a few hundred bytes costs a few dozen instructions.
#[derive(Default)]
pub(crate) struct Wiped(Vec<u8>);

impl Wiped {
    pub(crate) fn with_capacity(capacity: usize) -> Wiped {
        Wiped(Vec::with_capacity(capacity))
    }

    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.0.capacity() - self.0.len() < bytes.len() {
            self.grow(bytes.len());
        }
        self.0.extend_from_slice(bytes);
    }

    pub(crate) fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    /// A buffer twice as large (or as large as needed), the old one wiped.
    #[cold]
    fn grow(&mut self, more: usize) {
        let capacity = (self.0.len() + more).max(self.0.capacity() * 2);
        let mut larger = Vec::with_capacity(capacity);
        larger.extend_from_slice(&self.0);
        wipe(std::mem::replace(&mut self.0, larger));
    }
}

impl Deref for Wiped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        // Only `len` bytes were ever written: the rest of the buffer is as it was given.
        wipe(std::mem::take(&mut self.0));
    }
}

impl fmt::Debug for Wiped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wiped([REDACTED; {}])", self.0.len())
    }
}

/// [`Wiped`], for text (a query with a key in it).
#[derive(Default, PartialEq, Eq)]
pub struct WipedText(String);

impl From<&str> for WipedText {
    fn from(text: &str) -> WipedText {
        let mut wiped = WipedText::with_capacity(text.len());
        wiped.push_str(text);
        wiped
    }
}

impl WipedText {
    pub fn with_capacity(capacity: usize) -> WipedText {
        WipedText(String::with_capacity(capacity))
    }

    pub fn push_str(&mut self, text: &str) {
        if self.0.capacity() - self.0.len() < text.len() {
            self.grow(text.len());
        }
        self.0.push_str(text);
    }

    pub fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    /// A buffer twice as large (or as large as needed), the old one wiped.
    #[cold]
    fn grow(&mut self, more: usize) {
        let capacity = (self.0.len() + more).max(self.0.capacity() * 2);
        let mut larger = String::with_capacity(capacity);
        larger.push_str(&self.0);
        wipe(std::mem::replace(&mut self.0, larger).into_bytes());
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for WipedText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for WipedText {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0).into_bytes());
    }
}

impl fmt::Debug for WipedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WipedText([REDACTED; {}])", self.0.len())
    }
}

/// Wipes the bytes written into `bytes`, then frees it. (`Zeroize` for a `Vec` wipes
/// byte by byte; a slice is wiped at once.)
fn wipe(mut bytes: Vec<u8>) {
    bytes.as_mut_slice().zeroize();
}

/// True when a file can be read by its group or by everyone (a warning, not an error).
#[cfg(unix)]
pub(crate) fn is_shared_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o044 != 0).unwrap_or(false)
}

#[cfg(not(unix))]
pub(crate) fn is_shared_readable(_path: &Path) -> bool {
    false
}

/// Where a secret comes from, as written in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    File(PathBuf),
    Env(String),
    /// Inline in config: accepted for development, `check` warns.
    Inline,
    /// A file or variable `check --no-secrets` did not read: the value is a stand-in.
    NotRead,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::parse("sentinel-value-123\n").unwrap();
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(s.expose(), "sentinel-value-123");
    }

    #[test]
    fn trims_trailing_whitespace_only() {
        let s = Secret::parse("  abc \r\n\t\n").unwrap();
        assert_eq!(s.expose(), "  abc");
    }

    #[test]
    fn refuses_empty_and_control_characters() {
        assert_eq!(Secret::parse(" \r\n"), Err(SecretProblem::Empty));
        assert_eq!(Secret::parse("ab\u{0}c"), Err(SecretProblem::ControlCharacters));
        assert_eq!(Secret::parse("a\nb"), Err(SecretProblem::ControlCharacters));
    }

    const KEY: &str = "watched-key-3f9c1d";

    /// A buffer that outgrows itself many times over, the key at its start.
    fn written<B: Default>(put: impl Fn(&mut B, &[u8])) -> B {
        let mut buf = B::default();
        put(&mut buf, KEY.as_bytes());
        for _ in 0..200 {
            put(&mut buf, b" and more bytes after it");
        }
        buf
    }

    #[test]
    fn a_vec_that_grows_leaves_copies_of_the_key_in_freed_memory() {
        // What the tests that say "no copy is left" would see, if one were.
        let held = crate::freed::holding(KEY.as_bytes(), || {
            drop(written::<Vec<u8>>(|b, bytes| b.extend_from_slice(bytes)));
        });
        assert!(held >= 2, "{held}");
    }

    #[test]
    fn wiped_bytes_and_text_leave_no_copy_of_the_key_when_they_grow_or_go() {
        let held = crate::freed::holding(KEY.as_bytes(), || {
            let bytes = written::<Wiped>(|b, bytes| b.extend_from_slice(bytes));
            assert!(bytes.starts_with(KEY.as_bytes()) && bytes.len() == KEY.len() + 200 * 24);
            drop(bytes);
            let text = written::<WipedText>(|t, bytes| t.push_str(std::str::from_utf8(bytes).unwrap()));
            assert!(text.starts_with(KEY));
            drop(text);
            drop(Secret::parse(KEY).unwrap());
        });
        assert_eq!(held, 0);
    }

    #[test]
    fn fingerprint_is_first_eight_hex_of_sha256() {
        // sha256("abc") = ba7816bf...
        assert_eq!(Secret::parse("abc").unwrap().fingerprint(), "ba7816bf");
    }
}
