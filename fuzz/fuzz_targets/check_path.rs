//! `check_path` must never panic, and whatever it accepts must be free of the tricks
//! design §3 lists: dot segments, empty segments, backslashes, encoded `/ \ .` or NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if keygate::routes::check_path(path).is_err() {
        return;
    }
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    let lower = path.to_ascii_lowercase();
    for encoded in ["%2f", "%5c", "%2e", "%00"] {
        assert!(!lower.contains(encoded), "{path:?}");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(*segment != "." && *segment != "..", "{path:?}");
        assert!(!segment.is_empty() || i == segments.len() - 1, "{path:?}");
    }
});
