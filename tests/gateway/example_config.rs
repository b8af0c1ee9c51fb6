//! The shipped production example (`config/keygate.toml`) is valid once its secret
//! files exist: `keygate check` accepts it, prints its routes with fingerprints, and
//! warns about nothing. `keygate check --no-secrets` checks its structure anywhere.
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
    for name in ["bi-import", "bi-export"] {
        let file = root.join(name).join("key");
        let problem = format!("file ({}): cannot be read: no such file", file.display());
        assert!(stderr.contains(&problem), "{problem:?} missing from:\n{stderr}");
    }
}

#[test]
fn production_example_checks_its_structure_anywhere_with_no_secrets() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("keygate check --no-secrets"), "the example says how to check it anywhere");
    // The files it names do not exist here (the test would prove nothing otherwise).
    assert!(!std::path::Path::new("/run/secrets/keygate/bi-import/key").exists());
    let out = run(&["check", "--no-secrets", "-c", path]);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(out.code, Some(0), "{stdout}{stderr}");
    assert_eq!(stderr, "", "no warnings expected");
    for expected in [
        "structure valid; 3 route(s), 2 secret(s)",
        "--no-secrets: no secret file or variable, TLS or CA file was read",
        "bi_import (not read)",
        "bi_export (not read)",
        "https://sandbox-connect.rjmetrics.com",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("sha256:"), "no fingerprint of a secret that was not read: {stdout}");
}

#[test]
fn no_secrets_still_finds_every_structural_problem_and_says_what_it_did_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml"))
        .unwrap()
        .replace("allow = [\"etl\"]\noperations", "allow = [\"etl\", \"10.1.2.3/8\"]\noperaions")
        .replace("secret = \"bi_export\"", "secret = \"bi_exprot\"");
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, text).unwrap();
    let out = run(&["check", "--no-secrets", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    for expected in [
        "routes[0] \"bi-import\": operaions: unknown key",
        "routes[0] \"bi-import\": allow: \"10.1.2.3/8\" has host bits set",
        "routes[2] \"bi-export\": secret: \"bi_exprot\" is not a [secrets.bi_exprot] entry",
        "3 problem(s)",
        "(--no-secrets: secret, TLS and CA files were not read)",
    ] {
        assert!(out.stderr.contains(expected), "missing {expected:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("cannot be read"), "no secret file was read: {}", out.stderr);
}
