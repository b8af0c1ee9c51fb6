//! What each fuzz target checks, as one `fn(&[u8])` per target. The cargo-fuzz harnesses
//! in `fuzz/fuzz_targets/` and the AFL ones in `fuzz/afl/src/bin/` are one-line wrappers
//! around these, so both kinds of campaign check the same invariants. A target returns
//! quietly for input it cannot use and panics when an invariant breaks.

mod check_path;
mod config_parse;
mod rewrite_query;
mod scrub;

pub use check_path::check_path;
pub use config_parse::config_parse;
pub use rewrite_query::rewrite_query;
pub use scrub::scrub;

/// One fuzz target: returns for input it cannot use, panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/run.sh`, the seed and regression folders call them.
pub const TARGETS: [(&str, Target); 4] = [
    ("config_parse", config_parse),
    ("check_path", check_path),
    ("rewrite_query", rewrite_query),
    ("scrub", scrub),
];

/// True when `needle` occurs in `haystack`, ASCII letter case ignored.
pub(crate) fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}
