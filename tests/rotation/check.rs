//! `keygate check --verify`: every key proven once on each of its routes, with the
//! call a rotation makes; exit 0 only when every proof accepted its key, 1 when one was
//! rejected or could not be made.

use std::path::Path;

use crate::support::files::write_private;
use crate::support::process::{Outcome, run};
use crate::support::upstream::closed_port;
use crate::support::upstream::keyed::KeyedUpstream;
use crate::{SECRETS, Timing, config_text, first_key};

/// Writes the keys and a config naming `upstream` into `dir`, then runs
/// `keygate check --verify` on it (off the runtime, which serves the upstream).
async fn check_verify(dir: &Path, upstream: &str) -> Outcome {
    for secret in SECRETS {
        write_private(&dir.join(format!("{secret}.key")), &first_key(secret));
    }
    let config = dir.join("keygate.toml");
    write_private(&config, &config_text(dir, upstream, &Timing::default()));
    let path = config.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || run(&["check", "--verify", "-c", &path])).await.unwrap()
}

fn verify_lines(out: &Outcome) -> Vec<&str> {
    out.stdout.lines().filter(|l| l.starts_with("verify: ")).collect()
}

fn assert_no_keys(out: &Outcome) {
    for secret in SECRETS {
        let key = first_key(secret);
        assert!(!out.stdout.contains(&key) && !out.stderr.contains(&key), "{key} printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verify_exits_zero_when_every_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let firsts: Vec<String> = SECRETS.iter().map(|s| first_key(s)).collect();
    let upstream = KeyedUpstream::start(&firsts.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let out = check_verify(dir.path(), &upstream.url()).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let lines = verify_lines(&out);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for (line, route) in lines.iter().zip(["bi-import", "bi-export", "acme"]) {
        assert!(line.starts_with(&format!("verify: route {route} secret ")), "{line}");
        assert!(line.ends_with(": accepted (200)"), "{line}");
    }
    let proofs = upstream.proofs();
    let paths: Vec<&str> = proofs.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["/v2/client/12345/authenticate", "/0.1/export", "/me"]);
    assert!(proofs.iter().all(|p| p.accepted));
    assert_no_keys(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verify_exits_one_when_a_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // The vendor knows the import and generic keys, not the export one.
    let upstream = KeyedUpstream::start(&[&first_key("bi_import"), &first_key("acme")]).await;
    let out = check_verify(dir.path(), &upstream.url()).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let lines = verify_lines(&out);
    assert!(lines[0].ends_with(": accepted (200)"), "{lines:?}");
    assert!(
        lines[1].starts_with("verify: route bi-export") && lines[1].ends_with(": REJECTED: answered 403")
    );
    assert!(lines[2].ends_with(": accepted (200)"), "{lines:?}");
    assert!(out.stderr.contains("1 proof(s) did not accept a key"), "{}", out.stderr);
    assert_no_keys(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verify_exits_one_when_a_key_cannot_be_proven() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_verify(dir.path(), &format!("http://{}", closed_port())).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let lines = verify_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l.ends_with(": could not prove: connect failure")), "{lines:?}");
    assert!(out.stderr.contains("3 proof(s) did not accept a key"), "{}", out.stderr);
    // Without --verify the same config is valid, and nothing is called.
    let plain = run(&["check", "-c", dir.path().join("keygate.toml").to_str().unwrap()]);
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    assert!(verify_lines(&plain).is_empty());
}
