//! The shipped production example (`config/keygate.toml`) is valid once its secret
//! files exist: `keygate check` accepts it, prints its routes with fingerprints, and
//! warns about nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support::files::write_private;
use crate::support::process::run;

#[test]
fn production_example_checks_clean_with_its_secrets_present() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml")).unwrap();
    assert!(text.contains("/run/secrets/keygate/"), "the example reads keys from mounted secret files");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("secrets");
    let text = text.replace("/run/secrets/keygate", root.to_str().unwrap());
    for (name, key) in [("bi-import", "example-import-key-0001"), ("bi-export", "example-export-key-0002")] {
        std::fs::create_dir_all(root.join(name)).unwrap();
        write_private(&root.join(name).join("key"), &format!("{key}\n"));
    }
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, text).unwrap();

    let out = run(&["check", "-c", config.to_str().unwrap()]);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(out.code, Some(0), "{stdout}{stderr}");
    assert_eq!(stderr, "", "no warnings expected");
    let import_fp = keygate::secret::Secret::parse("example-import-key-0001").unwrap().fingerprint();
    for expected in [
        "valid; 3 route(s), 2 secret(s)",
        "bi-import",
        "https://connect.rjmetrics.com",
        "https://sandbox-connect.rjmetrics.com",
        "https://api.rjmetrics.com",
        &format!("bi_import (sha256:{import_fp})"),
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("example-import-key") && !stdout.contains("example-export-key"));

    // Without the secret files it is refused, naming each missing file.
    std::fs::remove_dir_all(&root).unwrap();
    let out = run(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    let stderr = &out.stderr;
    assert!(
        stderr.contains("secrets.bi_import: file (") && stderr.contains("secrets.bi_export: file ("),
        "{stderr}"
    );
}
