//! The config file parser and compiler must turn any input into a snapshot or a list
//! of problems: never a panic, and never a problem message that echoes a secret value.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SENTINEL: &str = "fuzzsentinelsecret";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The schema layer alone.
    let _ = toml::from_str::<keygate::config::schema::File>(text);
    // The whole load (read, parse, read named files, compile) from a real file, with a
    // recognisable inline secret appended so that a leak into a message is caught.
    if text.contains(SENTINEL) {
        return;
    }
    let path = std::env::temp_dir().join(format!("keygate-fuzz-{}.toml", std::process::id()));
    let config = format!("{text}\n[secrets.fuzz_sentinel]\nvalue = \"{SENTINEL}\"\n");
    if std::fs::write(&path, config).is_err() {
        return;
    }
    if let Err(problems) = keygate::config::load(&path, 1, None) {
        assert!(!problems.to_string().contains(SENTINEL), "a problem echoes the secret: {problems}");
    }
});
