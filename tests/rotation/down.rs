//! The upstream is down while a key is being proven: the running key stays, the proof
//! is retried with backoff, and the key is promoted once the upstream is back — or,
//! when it does not come back within `verify_timeout`, given up as a failed reload.

use crate::accept::call;
use crate::support::keys::fingerprint;
use crate::support::poll::{SOON, eventually};
use crate::{LOAD, Rig, Timing, first_key, key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_is_retried_while_the_upstream_is_down_and_succeeds_when_it_is_back() {
    let _load = LOAD.read().await;
    let mut rig = Rig::start(Timing::default()).await;
    let (old, new) = (first_key("bi_export"), key("bi_export", "2"));
    assert_eq!(call(&rig, "bi_export").await.json()["key"], old.as_str());
    rig.upstream.create(&new);
    rig.upstream.go_down();
    rig.rotate("bi_export", &new);
    eventually("two failed proof calls", SOON, || async {
        rig.verifications("bi_export", "error").await >= 2.0
    })
    .await;
    let entry = rig.secret("bi_export").await;
    assert_eq!(entry["fingerprint"], fingerprint(&old), "the running key stays");
    assert_eq!(entry["candidate"]["fingerprint"], fingerprint(&new));
    assert_eq!(rig.metric("keygate_secret_candidate{secret=\"bi_export\"}").await, 1.0);
    let (_, failures, last_ok, _) = rig.kg.reload_state().await;
    assert_eq!((failures, last_ok), (0.0, 1.0), "nothing has failed yet");
    rig.kg
        .wait_log(0, "key proof failed; retrying while the running key stays", |l| {
            l["reason"] == "connect failure" && l["secret"] == "bi_export"
        })
        .await;

    rig.upstream.come_back().await;
    eventually("the new key in use", SOON, || async {
        rig.secret("bi_export").await["fingerprint"] == fingerprint(&new)
    })
    .await;
    assert_eq!(call(&rig, "bi_export").await.json()["key"], new.as_str());
    assert_eq!(rig.verifications("bi_export", "ok").await, 1.0);
    assert_eq!(rig.metric("keygate_secret_candidate{secret=\"bi_export\"}").await, 0.0);
    rig.reloads((1.0, 0.0, 1.0)).await;
    let forwarded = rig.upstream.forwarded();
    assert!(forwarded.iter().all(|s| s.accepted), "{forwarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_that_cannot_finish_within_verify_timeout_is_a_failed_reload() {
    let _load = LOAD.read().await;
    let mut rig = Rig::start(Timing { verify_timeout: "1s", ..Timing::default() }).await;
    let (old, new) = (first_key("acme"), key("acme", "2"));
    rig.upstream.create(&new);
    rig.upstream.go_down();
    rig.rotate("acme", &new);
    rig.kg.wait_failures(1.0).await;
    let entry = rig.secret("acme").await;
    assert_eq!(entry["fingerprint"], fingerprint(&old));
    assert_eq!(entry["candidate"], serde_json::Value::Null);
    let reason = entry["rejected"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("not proven within 1s") && reason.contains("connect failure"), "{reason}");
    assert_eq!(rig.metric("keygate_config_last_reload_successful").await, 0.0);
    rig.upstream.come_back().await;
    // Back up: the running key still serves; the given-up candidate waits for a change
    // or SIGHUP.
    assert_eq!(call(&rig, "acme").await.json()["key"], old.as_str());
    rig.kg.sighup();
    eventually("the new key in use after SIGHUP", SOON, || async {
        rig.secret("acme").await["fingerprint"] == fingerprint(&new)
    })
    .await;
    rig.reloads((1.0, 1.0, 1.0)).await;
}
