//! The config parser and compiler turn any text into a snapshot or a list of problems:
//! never a panic, and never a problem, warning or `Debug` line that shows a secret. A
//! recognisable inline secret is appended to the text so that a leak of it is caught.
//! A snapshot compiled again with itself as the previous one (a reload with nothing
//! changed) compiles to the same digest.
//!
//! The whole load runs in memory ([`keygate::config::Inputs::parse`] then
//! [`keygate::config::compile`]); the files a config names are read from the current
//! directory only (`fuzz/targets/`, whose `fixtures/` the seeds name): inputs naming an
//! absolute path or a `..` are skipped, so the fuzzer never reads the machine's files.

use std::path::{Component, Path};

use keygate::config::schema::File;

/// The inline secret appended to every input.
const SENTINEL: &str = "fuzzsentinelsecret";

/// The target: raw bytes as the text of a config file.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The schema layer alone, on the text as it is.
    let _ = toml::from_str::<File>(text);
    if text.to_ascii_lowercase().contains(SENTINEL) {
        return;
    }
    let config = format!("{text}\n[secrets.fuzz_sentinel]\nvalue = \"{SENTINEL}\"\n");
    if let Ok(file) = toml::from_str::<File>(&config) {
        let sentinel = file
            .secrets
            .iter()
            .any(|(name, spec)| name == "fuzz_sentinel" && spec.value.as_deref() == Some(SENTINEL));
        // Absorbed into some other value, the sentinel is no secret: nothing to check.
        if !sentinel || !names_only_files_here(&file) {
            return;
        }
    }
    let path = Path::new("fuzz.toml");
    let loaded = keygate::config::Inputs::parse(path, config.as_bytes())
        .and_then(|inputs| keygate::config::compile(&inputs, 1, None).map(|s| (inputs, s)));
    match loaded {
        Err(problems) => {
            assert_shows_no_secret("a problem", &problems.to_string());
            assert_shows_no_secret("a problem's Debug", &format!("{problems:?}"));
        }
        Ok((inputs, snapshot)) => {
            assert_shows_no_secret("the snapshot's Debug", &format!("{snapshot:?}"));
            assert_shows_no_secret("a warning", &snapshot.warnings.join("\n"));
            let again = keygate::config::compile(&inputs, 2, Some(&snapshot))
                .unwrap_or_else(|p| panic!("the same inputs failed on reload: {p}"));
            assert_eq!(again.digest, snapshot.digest, "the same inputs gave another digest");
            assert_eq!(again.routes.routes().len(), snapshot.routes.routes().len());
        }
    }
}

fn assert_shows_no_secret(what: &str, text: &str) {
    assert!(!text.to_ascii_lowercase().contains(SENTINEL), "{what} shows the secret: {text}");
}

/// True when every file the config names is a relative path below the current directory.
fn names_only_files_here(file: &File) -> bool {
    let secrets = file.secrets.iter().filter_map(|(_, spec)| spec.file.as_deref());
    let cas = file.routes.iter().filter_map(|route| route.ca_file.as_deref());
    let tls = file.server.tls.iter().flat_map(|t| [Some(&*t.cert), Some(&*t.key), t.client_ca.as_deref()]);
    secrets.chain(cas).chain(tls.flatten()).all(|path| {
        path.components().next().is_some() && path.components().all(|c| matches!(c, Component::Normal(_)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_relative_paths_below_here_are_read() {
        let file = |path: &str| toml::from_str::<File>(&format!("[secrets.s]\nfile = {path:?}\n")).unwrap();
        assert!(names_only_files_here(&file("key")));
        assert!(names_only_files_here(&file("a/key")));
        for outside in ["/dev/zero", "../key", "a/../../key", "./key", ""] {
            assert!(!names_only_files_here(&file(outside)), "{outside}");
        }
    }

    #[test]
    #[should_panic(expected = "shows the secret")]
    fn a_message_with_the_secret_fails_the_check() {
        assert_shows_no_secret("test", "value FUZZSENTINELSECRET is wrong");
    }
}
