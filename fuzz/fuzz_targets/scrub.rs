//! cargo-fuzz harness for `keygate_fuzz_targets::scrub` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz_targets::scrub(data));
