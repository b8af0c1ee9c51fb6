//! Many rotations under load: no request fails, and every request the upstream received
//! from a caller carried exactly one key, one the upstream accepted at that moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;

use crate::support::client::{Conn, request};
use crate::support::keys::fingerprint;
use crate::support::poll::{SOON, eventually};
use crate::{EXPORT_GET, IMPORT_UPSERT, LOAD, Rig, SECRETS, Timing, first_key, key};

/// 2,000 requests over 4 keep-alive connections (upserts, export reads and generic
/// reads in turn) while 20 rotations happen, every other one to a key the upstream does
/// not know. Each accepted rotation is waited for (the new key in `/config`), then the
/// key before the previous one is revoked at the vendor: from then on only the current
/// and previous keys work, so a request that still used an older one would show up as
/// refused. Each rejected rotation is waited for (its rejection counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_request_and_send_only_accepted_keys() {
    let _load = LOAD.write().await;
    const CONNECTIONS: usize = 4;
    const REQUESTS: usize = 2_000;
    const ROTATIONS: usize = 20;
    let started = Instant::now();
    let rig = Rig::start(Timing::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), rig.kg.gateway);
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut problems = Vec::new();
            let mut i = c;
            while sent.load(Ordering::SeqCst) < REQUESTS || !stop.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the load ran past its time bound");
                i += 1;
                let req = match i % 3 {
                    0 => request(Method::POST, IMPORT_UPSERT, &[], br#"{"keys":["id"],"id":1}"#),
                    1 => request(Method::GET, EXPORT_GET, &[], b""),
                    _ => request(Method::GET, "/acme/things", &[], b""),
                };
                sent.fetch_add(1, Ordering::SeqCst);
                match conn.send(req).await {
                    Ok(r) if r.status < 300 => {}
                    Ok(r) => problems.push(format!("{} {}", r.status, r.text())),
                    Err(e) => {
                        problems.push(e);
                        conn = Conn::open(addr).await;
                    }
                }
            }
            problems
        }));
    }

    // Per secret, the keys accepted so far, oldest first.
    let mut accepted: Vec<Vec<String>> = SECRETS.iter().map(|s| vec![first_key(s)]).collect();
    for r in 1..=ROTATIONS {
        let which = r % SECRETS.len();
        let secret = SECRETS[which];
        let next = key(secret, &format!("r{r}"));
        if r % 2 == 0 {
            rig.upstream.create(&next);
            rig.rotate(secret, &next);
            eventually(&format!("rotation {r} in use"), SOON, || async {
                rig.secret(secret).await["fingerprint"] == fingerprint(&next)
            })
            .await;
            accepted[which].push(next);
            let keys = &accepted[which];
            if keys.len() >= 3 {
                rig.upstream.revoke(&keys[keys.len() - 3]);
            }
        } else {
            let before = rig.verifications(secret, "rejected").await;
            rig.rotate(secret, &next);
            eventually(&format!("rotation {r} rejected"), SOON, || async {
                rig.verifications(secret, "rejected").await > before
            })
            .await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut problems = Vec::new();
    for client in clients {
        problems.extend(client.await.unwrap());
    }
    let total = sent.load(Ordering::SeqCst);
    assert!(
        problems.is_empty(),
        "{} of {total} failed: {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert!(total >= REQUESTS);

    let forwarded = rig.upstream.forwarded();
    assert_eq!(forwarded.len(), total, "each request reached the upstream once (no retry was needed)");
    let wrong: Vec<_> = forwarded.iter().filter(|s| !s.accepted || s.keys.len() != 1).collect();
    assert!(
        wrong.is_empty(),
        "{} request(s) with a refused or missing key: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Each new key was proven once: accepted ones accepted, the others refused.
    let proofs = rig.upstream.proofs();
    for r in 1..=ROTATIONS {
        let next = key(SECRETS[r % SECRETS.len()], &format!("r{r}"));
        let of_key: Vec<bool> = proofs.iter().filter(|p| p.key() == next).map(|p| p.accepted).collect();
        assert_eq!(of_key, [r % 2 == 0], "rotation {r}");
    }
    // Rotation 19 left a rejected key in bi_export's file: the last reload is not
    // called successful while it is there.
    rig.reloads((10.0, 10.0, 0.0)).await;
    eprintln!("rotation under load: {total} requests, {ROTATIONS} rotations, {:?}", started.elapsed());
}
