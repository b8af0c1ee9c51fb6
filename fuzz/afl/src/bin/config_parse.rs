//! AFL harness for `keygate_fuzz_targets::config_parse` (what it checks is documented there).

fn main() {
    afl::fuzz!(|data: &[u8]| keygate_fuzz_targets::config_parse(data));
}
