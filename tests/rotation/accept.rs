//! A rotated key the upstream accepts is proven with one call per route and in use
//! within about a second of the file change; the replaced key is kept for the overlap.
//! A secret with `verify = false` switches at once, without a proof.

use std::time::{Duration, Instant, SystemTime};

use http::Method;

use crate::support::client::{Reply, request, send};
use crate::support::keys::fingerprint;
use crate::support::poll::{SOON, eventually};
use crate::{EXPORT_GET, IMPORT_UPSERT, LOAD, Rig, Timing, first_key, key};

/// One request through the route of `secret`; the key the upstream saw is in its answer.
pub async fn call(rig: &Rig, secret: &str) -> Reply {
    let req = match secret {
        "bi_import" => request(Method::POST, IMPORT_UPSERT, &[], br#"{"keys":["id"],"id":1}"#),
        "bi_export" => request(Method::GET, EXPORT_GET, &[], b""),
        _ => request(Method::GET, "/acme/things", &[], b""),
    };
    send(rig.kg.gateway, req).await
}

/// The upstream's path of `secret`'s proof.
fn proof_path(secret: &str) -> &'static str {
    match secret {
        "bi_import" => "/v2/client/12345/authenticate",
        "bi_export" => "/0.1/export",
        _ => "/me",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_key_is_proven_then_in_use_within_a_second_of_the_file_change() {
    let _load = LOAD.read().await;
    let rig = Rig::start(Timing::default()).await;
    for (n, secret) in ["bi_import", "bi_export", "acme"].into_iter().enumerate() {
        let (old, new) = (first_key(secret), key(secret, "2"));
        assert_eq!(call(&rig, secret).await.json()["key"], old.as_str());
        rig.upstream.create(&new);
        let changed = Instant::now();
        rig.rotate(secret, &new);
        eventually(&format!("{secret}'s new key in use"), SOON, || async {
            let reply = call(&rig, secret).await;
            assert!(reply.status < 300, "{secret}: {} {}", reply.status, reply.text());
            reply.json()["key"] == new.as_str()
        })
        .await;
        let took = changed.elapsed();
        assert!(took < Duration::from_millis(1500), "{secret}: in use {took:?} after the change");

        // Proven once, on the route's own proof call, with the new key.
        let proofs: Vec<_> = rig.upstream.proofs().into_iter().filter(|p| p.key() == new).collect();
        assert_eq!(proofs.len(), 1, "{secret}: {proofs:?}");
        assert_eq!((proofs[0].method.as_str(), proofs[0].path.as_str()), ("GET", proof_path(secret)));
        assert_eq!(rig.verifications(secret, "ok").await, 1.0);
        assert_eq!(
            rig.verifications(secret, "rejected").await + rig.verifications(secret, "error").await,
            0.0
        );
        // Callers never saw the new key before its proof, nor a refused key.
        let forwarded = rig.upstream.forwarded();
        assert!(forwarded.iter().all(|s| s.accepted && s.keys.len() == 1), "{forwarded:?}");

        let entry = rig.secret(secret).await;
        assert_eq!(entry["fingerprint"], fingerprint(&new));
        assert_eq!(entry["candidate"], serde_json::Value::Null);
        assert_eq!(entry["previous"]["fingerprint"], fingerprint(&old));
        let expires = entry["previous"]["expires_at"].as_f64().unwrap();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((expires - now - 600.0).abs() < 30.0, "the previous key is kept for the 10 m overlap");
        assert_eq!(rig.metric(&format!("keygate_secret_candidate{{secret=\"{secret}\"}}")).await, 0.0);
        // One successful reload each.
        rig.reloads((n as f64 + 1.0, 0.0, 1.0)).await;
    }
    let promoted = rig.kg.logs("config reloaded");
    assert!(promoted.iter().filter(|l| l["trigger"] == "proof").count() == 3, "{promoted:?}");
    let keys: Vec<String> =
        ["bi_import", "bi_export", "acme"].iter().flat_map(|s| [first_key(s), key(s, "2")]).collect();
    rig.kg.assert_output_free_of(&keys.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_with_verify_false_switches_at_once_without_a_proof() {
    let _load = LOAD.read().await;
    let rig = Rig::start(Timing::default()).await;
    let config = rig.dir.path().join("keygate.toml");
    let text = crate::config_text(rig.dir.path(), &rig.upstream.url(), &Timing::default());
    let flagged = text.replace("[secrets.acme]\n", "[secrets.acme]\nverify = false\n");
    assert_ne!(flagged, text);
    crate::support::files::write_by_rename(&config, &flagged);
    eventually("the flagged config", SOON, || async { rig.kg.reload_state().await.0 == 1.0 }).await;

    // A key the upstream does not know: used at once, unproven (the previous key then
    // answers the caller, through the fallback of the overlap).
    let new = key("acme", "unproven");
    rig.rotate("acme", &new);
    eventually("the unproven key in use", SOON, || async {
        rig.secret("acme").await["fingerprint"] == fingerprint(&new)
    })
    .await;
    let reply = call(&rig, "acme").await;
    assert_eq!((reply.status, reply.json()["key"].as_str()), (200, Some(first_key("acme").as_str())));
    let forwarded = rig.upstream.forwarded();
    assert_eq!(forwarded[forwarded.len() - 2].key(), new, "the new key went first");
    assert!(rig.upstream.proofs().is_empty(), "no proof was made");
    assert_eq!(rig.verifications("acme", "ok").await + rig.verifications("acme", "rejected").await, 0.0);
    assert_eq!(rig.fallbacks("acme").await, 1.0);
    // A switch at once is one successful reload.
    rig.reloads((2.0, 0.0, 1.0)).await;
}
