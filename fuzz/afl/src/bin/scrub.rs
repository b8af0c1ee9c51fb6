//! AFL harness for `keygate_fuzz_targets::scrub` (what it checks is documented there).

fn main() {
    afl::fuzz!(|data: &[u8]| keygate_fuzz_targets::scrub(data));
}
