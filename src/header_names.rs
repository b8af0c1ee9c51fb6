//! Header names as `HeaderName::from_bytes` reads them, kept per connection by the
//! place of their line in the head. The heads one peer sends on one connection repeat
//! their lines in the same order and letters, so the name at each place is almost
//! always the one seen there last: then it is a comparison of the bytes and a clone
//! instead of a lookup among the standard names (and, for any other name, an
//! allocation).

use std::fmt;
use std::ops::Range;

use http::header::HeaderName;

/// Places kept: a head's first lines. Later ones are read every time.
const KEPT: usize = 16;

/// The longest name kept (the longest standard one, `content-security-policy-report-only`,
/// has 35 bytes), so that what a connection keeps stays small whatever its peer sends:
/// at most [`KEPT`] names of this many bytes, where the head they came in may be 32 KiB.
const KEPT_LEN: usize = 40;

/// The names seen at the first [`KEPT`] places of this connection's last heads, each
/// with its bytes as they were sent.
#[derive(Default)]
pub(crate) struct Names(Vec<(Box<[u8]>, HeaderName)>);

/// Only how many are kept: a hostile upstream can send a key as a header's name (the
/// way down removes such a header, `scrub`), and `Debug` output must not show it.
impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Names").field("kept", &self.0.len()).finish()
    }
}

impl Names {
    /// The name `raw` of the head's line `at`, exactly as `HeaderName::from_bytes(raw)`
    /// reads it; `None` when that refuses it.
    pub(crate) fn read(&mut self, at: usize, raw: &[u8]) -> Option<HeaderName> {
        self.read_with(at, raw, |raw| HeaderName::from_bytes(raw).ok())
    }

    /// [`Names::read`], where a name not kept is read by `read`, which must answer as
    /// `HeaderName::from_bytes` does (it may hand out a static copy of the same name).
    /// The same bytes at the same place are the name kept for them; a comparison of
    /// them in any letter case would cost about what the lookup does.
    pub(crate) fn read_with(
        &mut self,
        at: usize,
        raw: &[u8],
        read: impl FnOnce(&[u8]) -> Option<HeaderName>,
    ) -> Option<HeaderName> {
        if let Some((seen, name)) = self.0.get(at) {
            if **seen == *raw {
                return Some(name.clone());
            }
        }
        let name = read(raw)?;
        if raw.len() <= KEPT_LEN {
            if let Some(kept) = self.0.get_mut(at) {
                *kept = (raw.into(), name.clone());
            } else if at == self.0.len() && at < KEPT {
                self.0.push((raw.into(), name.clone()));
            }
        }
        Some(name)
    }
}

/// Where a parsed header line's name and value lie in the head, as offsets from its
/// start. httparse's lines borrow the buffer they were parsed from; their places let
/// the head be taken off that buffer as one shared `Bytes` after the parse and the
/// values be cut from it, with one parse and no copy (BENCHMARKS.md, round 13).
#[derive(Debug)]
pub(crate) struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The place of a line whose `name` and `value` are slices of the head that begins
    /// at address `start`.
    pub(crate) fn of(start: usize, name: &[u8], value: &[u8]) -> Span {
        Span { name: offsets(start, name), value: offsets(start, value) }
    }

    /// The name's and the value's ranges, when both lie within a head of `len` bytes
    /// (httparse's slices are of the head: one past it would be a bug of its).
    pub(crate) fn within(&self, len: usize) -> Option<(Range<usize>, Range<usize>)> {
        Some((range(self.name, len)?, range(self.value, len)?))
    }
}

/// Where `bytes`, a slice of the head that begins at address `start`, lies in it. A
/// head is far shorter than 4 GiB (keygate's client caps it), so its offsets
/// fit in 32 bits; a slice from elsewhere could only give a range [`range`] refuses or
/// another range of the head, never a read past it.
fn offsets(start: usize, bytes: &[u8]) -> (u32, u32) {
    let from = (bytes.as_ptr() as usize).wrapping_sub(start);
    (from as u32, from.wrapping_add(bytes.len()) as u32)
}

/// `offsets` as a range, when it lies within `len` bytes.
fn range((from, to): (u32, u32), len: usize) -> Option<Range<usize>> {
    (from <= to && to as usize <= len).then_some(from as usize..to as usize)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Names as peers send them: a few common ones in any letter case, near misses of
    /// them, and arbitrary bytes (often invalid).
    fn raw_name() -> impl Strategy<Value = Vec<u8>> {
        let common = prop::sample::select(vec![
            "Content-Type",
            "content-type",
            "CONTENT-TYPE",
            "Content-Typ",
            "Content-Types",
            "X-Request-Id",
            "x-request-id",
            "X-Request_Id",
            "Date",
            "date ",
            "Server",
            "Connection",
        ])
        .prop_map(|s| s.as_bytes().to_vec());
        prop_oneof![
            4 => common,
            1 => prop::collection::vec(any::<u8>(), 0..20),
            1 => "[A-Za-z-]{1,48}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Over a connection's heads one after another, every line's name is what
        /// `from_bytes` reads, whatever was kept from the heads before.
        #[test]
        fn every_name_is_what_from_bytes_reads(
            heads in prop::collection::vec(prop::collection::vec(raw_name(), 0..20), 1..6),
        ) {
            let mut names = Names::default();
            for head in &heads {
                for (at, raw) in head.iter().enumerate() {
                    prop_assert_eq!(names.read(at, raw), HeaderName::from_bytes(raw).ok(), "line {} {:?}", at, raw);
                }
            }
            prop_assert!(names.0.len() <= KEPT);
            prop_assert!(names.0.iter().all(|(raw, _)| raw.len() <= KEPT_LEN));
        }
    }

    #[test]
    fn a_repeated_head_is_read_from_what_was_kept() {
        let mut names = Names::default();
        let custom = names.read(0, b"X-Request-Id").unwrap();
        let again = names.read(0, b"X-Request-Id").unwrap();
        assert_eq!(again, "x-request-id");
        // The kept name itself, not a new copy of its bytes.
        assert_eq!(custom.as_str().as_ptr(), again.as_str().as_ptr());
        // The same name in other letters is read again, and kept in its place.
        let other = names.read(0, b"x-request-ID").unwrap();
        assert_eq!(other, custom);
        assert_ne!(other.as_str().as_ptr(), custom.as_str().as_ptr());
        // Another name at that place takes it over.
        assert_eq!(names.read(0, b"Date").unwrap(), http::header::DATE);
        assert_eq!(names.0[0].1, http::header::DATE);
        assert_eq!(format!("{names:?}"), "Names { kept: 1 }");
        // A long name is read, and not kept: at its place, the name before stays.
        let long = "x-".repeat(21);
        assert_eq!(names.read(0, long.as_bytes()).unwrap(), long.as_str());
        assert_eq!(names.0[0].1, http::header::DATE);
        assert_eq!(names.read(1, long.as_bytes()).unwrap(), long.as_str());
        assert_eq!(names.0.len(), 1);
    }
}
