//! A rotated key the upstream refuses is never used: the running key stays, no request
//! fails, the rejection is one failed reload (the poll reading the same file again
//! proves and counts nothing), and SIGHUP proves it again once the vendor accepts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Method;

use crate::support::client::{Conn, request};
use crate::support::keys::fingerprint;
use crate::support::poll::{SOON, eventually};
use crate::{EXPORT_GET, IMPORT_UPSERT, LOAD, Rig, Timing, first_key, key};

/// Callers keep sending import upserts and export reads on one connection until `stop`;
/// returns how many were sent and every one that did not succeed.
pub fn traffic(rig: &Rig, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let addr = rig.kg.gateway;
    tokio::spawn(async move {
        let mut conn = Conn::open(addr).await;
        let (mut sent, mut problems) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            sent += 1;
            let upsert = request(Method::POST, IMPORT_UPSERT, &[], br#"{"keys":["id"],"id":1}"#);
            for (what, req) in [("upsert", upsert), ("export", request(Method::GET, EXPORT_GET, &[], b""))] {
                match conn.send(req).await {
                    Ok(r) if r.status < 300 => {}
                    Ok(r) => problems.push(format!("{what}: {} {}", r.status, r.text())),
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
        }
        (sent, problems)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_upstream_refuses_is_never_used_and_no_request_fails() {
    let _load = LOAD.read().await;
    let timing = Timing { poll: "200ms", extra: "[log]\nlevel = \"debug\"\n".into(), ..Timing::default() };
    let rig = Rig::start(timing).await;
    let stop = Arc::new(AtomicBool::new(false));
    let callers = traffic(&rig, stop.clone());
    let (old, bad) = (first_key("bi_import"), key("bi_import", "not-at-the-vendor"));
    let bad = bad.as_str();

    rig.rotate("bi_import", bad);
    // One failed reload.
    rig.reloads((0.0, 1.0, 0.0)).await;
    assert_eq!(rig.verifications("bi_import", "rejected").await, 1.0);
    let entry = rig.secret("bi_import").await;
    assert_eq!(entry["fingerprint"], fingerprint(&old), "the running key stays");
    assert_eq!(entry["candidate"], serde_json::Value::Null);
    assert_eq!(entry["rejected"]["fingerprint"], fingerprint(bad));
    assert_eq!(rig.metric("keygate_secret_candidate{secret=\"bi_import\"}").await, 0.0);
    let failed = rig.kg.wait_log(0, "reload failed; the running config stays", |_| true).await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("\"bi_import\"") && reason.contains(&fingerprint(bad)), "{reason}");
    assert!(reason.contains("route \"bi-import\" answered 401"), "{reason}");

    // The poll reads the rejected file again and again: no second proof, no count.
    let mark = rig.kg.mark();
    eventually("three polls after the rejection", SOON, || {
        let polls = rig.kg.logs_since(mark, "reload attempt").into_iter().filter(|l| l["trigger"] == "poll");
        std::future::ready(polls.count() >= 3)
    })
    .await;
    assert_eq!(rig.kg.reload_state().await.1, 1.0, "the same rejection is not counted again");
    assert_eq!(rig.metric("keygate_config_last_reload_successful").await, 0.0);
    let bad_proofs = || rig.upstream.proofs().into_iter().filter(|p| p.key() == bad).count();
    assert_eq!(bad_proofs(), 1, "proven once");

    stop.store(true, Ordering::SeqCst);
    let (sent, problems) = callers.await.unwrap();
    assert!(problems.is_empty(), "{} of {sent} failed: {problems:?}", problems.len());
    assert!(sent > 0);
    let forwarded = rig.upstream.forwarded();
    assert!(forwarded.iter().all(|s| s.accepted), "every forwarded request used an accepted key");
    assert!(forwarded.iter().filter(|s| s.path.ends_with("/data")).all(|s| s.key() == old));

    // The operator creates the key at the vendor and sends SIGHUP: proven again, used.
    rig.upstream.create(bad);
    rig.kg.sighup();
    eventually("the retried key in use", SOON, || async {
        rig.secret("bi_import").await["fingerprint"] == fingerprint(bad)
    })
    .await;
    assert_eq!(bad_proofs(), 2);
    rig.reloads((1.0, 1.0, 1.0)).await;
    assert_eq!(rig.secret("bi_import").await["rejected"], serde_json::Value::Null);
    rig.kg.assert_output_free_of(&[&old, bad]);
}
