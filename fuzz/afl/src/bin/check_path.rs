//! AFL harness for `keygate_fuzz_targets::check_path` (what it checks is documented there).

fn main() {
    afl::fuzz!(|data: &[u8]| keygate_fuzz_targets::check_path(data));
}
