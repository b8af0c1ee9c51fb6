//! The upstream revokes the current key while the previous one is still valid: during
//! the overlap every safe request (BI GETs, import upserts, generic GET and HEAD) goes
//! through with exactly one retry on the previous key, counted and marked in the access
//! log; other requests are never retried; after the overlap nothing is.

use http::Method;

use crate::support::client::{Reply, request, send};
use crate::support::keys::fingerprint;
use crate::support::poll::{SOON, eventually};
use crate::{EXPORT_GET, IMPORT_UPSERT, LOAD, Rig, Timing, first_key, key};

/// Rotates `secret` to `<secret>-2` (created at the vendor first) and waits until it is
/// in use; returns the new key.
async fn promote(rig: &Rig, secret: &str) -> String {
    let new = key(secret, "2");
    rig.upstream.create(&new);
    rig.rotate(secret, &new);
    eventually(&format!("{secret}'s new key in use"), SOON, || async {
        rig.secret(secret).await["fingerprint"] == fingerprint(&new)
    })
    .await;
    new
}

async fn call(rig: &Rig, method: Method, target: &str, body: &[u8]) -> Reply {
    send(rig.kg.gateway, request(method, target, &[], body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_current_key_is_covered_by_one_retry_with_the_previous_key() {
    let _load = LOAD.read().await;
    let rig = Rig::start(Timing::default()).await;
    let mut new = Vec::new();
    for secret in ["bi_import", "bi_export", "acme"] {
        new.push(promote(&rig, secret).await);
        // The vendor revokes the new key (the wrong one was pasted, or it was
        // regenerated); the old one still works.
        rig.upstream.revoke(new.last().unwrap());
    }
    let upsert = br#"[{"keys":["id"],"id":7,"total":1}]"#;
    let safe: [(Method, &str, &[u8], u16, &str); 5] = [
        (Method::GET, "/import/v2/client/12345/authenticate", b"", 200, "bi_import"),
        (Method::POST, IMPORT_UPSERT, upsert, 201, "bi_import"),
        (Method::GET, EXPORT_GET, b"", 200, "bi_export"),
        (Method::GET, "/acme/things?page=2", b"", 200, "acme"),
        (Method::HEAD, "/acme/things", b"", 200, "acme"),
    ];
    for (method, target, body, status, secret) in &safe {
        let before = rig.upstream.forwarded().len();
        let reply = call(&rig, method.clone(), target, body).await;
        assert_eq!(reply.status, *status, "{method} {target}: {}", reply.text());
        assert_eq!(reply.header("x-keygate-error"), None);
        let sent = &rig.upstream.forwarded()[before..];
        let keys: Vec<(&str, bool)> = sent.iter().map(|s| (s.key(), s.accepted)).collect();
        let (current, previous) = (key(secret, "2"), first_key(secret));
        assert_eq!(keys, [(current.as_str(), false), (previous.as_str(), true)], "{method} {target}");
        assert_eq!(sent[0].path, sent[1].path);
    }
    // The upsert's body went up whole, twice.
    let stored: Vec<_> = rig.upstream.forwarded().into_iter().filter(|s| s.path.ends_with("/data")).collect();
    assert_eq!(stored.len(), 2);
    for (secret, count) in [("bi_import", 2.0), ("bi_export", 1.0), ("acme", 2.0)] {
        assert_eq!(rig.fallbacks(secret).await, count, "{secret}");
    }
    assert_eq!(rig.metric("keygate_upstream_auth_failures_total{route=\"acme\"}").await, 2.0);
    let marked = rig.kg.logs("request").into_iter().filter(|l| l["key"] == "previous").count();
    assert_eq!(marked, 5, "each retried request's access line says so");

    // Not safe to send twice: the caller gets the upstream's refusal, sent once.
    let once: [(Method, &str, &[u8], u16); 3] = [
        (Method::POST, "/acme/things", b"{}", 401),
        (Method::DELETE, "/acme/things/1", b"", 401),
        (Method::POST, "/export/0.1/export/e1/copy", b"name=x", 403),
    ];
    for (method, target, body, status) in &once {
        let before = rig.upstream.forwarded().len();
        let reply = call(&rig, method.clone(), target, body).await;
        assert_eq!(reply.status, *status, "{method} {target}");
        assert_eq!(rig.upstream.forwarded().len() - before, 1, "{method} {target} was sent once");
    }
    // A generic GET with a body cannot be resent either.
    let before = rig.upstream.forwarded().len();
    assert_eq!(call(&rig, Method::GET, "/acme/search", b"q=1").await.status, 401);
    assert_eq!(rig.upstream.forwarded().len() - before, 1);
    assert_eq!(rig.fallbacks("acme").await, 2.0, "nothing more was retried");
    let keys: Vec<String> =
        ["bi_import", "bi_export", "acme"].iter().flat_map(|s| [first_key(s), key(s, "2")]).collect();
    rig.kg.assert_output_free_of(&keys.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_overlap_the_previous_key_is_gone_and_nothing_is_retried() {
    let _load = LOAD.read().await;
    let rig = Rig::start(Timing { overlap: "3s", ..Timing::default() }).await;
    let new = promote(&rig, "acme").await;
    rig.upstream.revoke(&new);
    // Within the overlap: covered.
    assert_eq!(call(&rig, Method::GET, "/acme/x", b"").await.status, 200);
    assert_eq!(rig.fallbacks("acme").await, 1.0);
    eventually("the end of the overlap", SOON, || async {
        rig.secret("acme").await["previous"] == serde_json::Value::Null
    })
    .await;
    let mark = rig.kg.mark();
    rig.kg
        .wait_log(0, "the overlap ended: the previous key is no longer used", |l| l["secret"] == "acme")
        .await;
    let before = rig.upstream.forwarded().len();
    assert_eq!(call(&rig, Method::GET, "/acme/x", b"").await.status, 401);
    assert_eq!(rig.upstream.forwarded().len() - before, 1, "no retry after the overlap");
    assert_eq!(rig.fallbacks("acme").await, 1.0);
    assert!(rig.kg.logs_since(mark, "config reloaded").is_empty(), "an expiry is not a reload");
}
