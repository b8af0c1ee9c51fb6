//! Secret values: where they come from, how they are held, how they are shown.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` are redacted, it has no
//! `Serialize`, and its memory is wiped on drop. The one way to read it is
//! [`Secret::expose`], used only where a credential is injected or scrubbed.

use std::fmt;
use std::path::{Path, PathBuf};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

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
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..4])
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

    #[test]
    fn fingerprint_is_first_eight_hex_of_sha256() {
        // sha256("abc") = ba7816bf...
        assert_eq!(Secret::parse("abc").unwrap().fingerprint(), "ba7816bf");
    }
}
