//! Reloads that fail, against the real binary: a deleted secret, a syntax error, a bad
//! CIDR, a duplicate route, an empty key file, a half-written config, a key the route
//! cannot carry, and the same failure seen again by the poll. The last good config and
//! key keep serving; each failure is counted once and logged with its reason.

use std::path::Path;

use crate::Rig;
use crate::support::client::get;
use crate::support::files::write_by_rename;
use crate::support::poll::{SOON, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_secret_keeps_the_last_good_key_until_recreated() {
    let rig = Rig::start("1h", "sentinel-deleted-1\n", "").await;
    std::fs::remove_file(&rig.key).unwrap();
    rig.kg.wait_failures(1.0).await;
    assert_eq!(rig.kg.reload_state().await, (0.0, 1.0, 0.0, 1.0));
    assert_eq!(rig.kg.get("/echo/x").await.key(), "sentinel-deleted-1");
    let ready = get(rig.kg.admin, "/readyz", &[]).await;
    assert_eq!((ready.status, ready.text().contains("\"generation\":1")), (200, true), "{}", ready.text());
    let failures = rig.kg.logs("reload failed; the running config stays");
    assert_eq!(failures.len(), 1, "{failures:?}");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(reason.contains("secrets.echo") && reason.contains(&rig.key.display().to_string()), "{reason}");

    // Recreated (by rename, so no reader sees it half written): picked up.
    write_by_rename(&rig.key, "sentinel-deleted-2\n");
    rig.kg.wait_key("/echo/x", "sentinel-deleted-2", SOON).await;
    assert_eq!(rig.kg.reload_state().await, (1.0, 1.0, 1.0, 2.0));
    rig.kg.assert_output_free_of(&["sentinel-deleted-1", "sentinel-deleted-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_keep_the_last_good_config_until_fixed() {
    let rig = Rig::start("1h", "sentinel-bad-0\n", "").await;
    let good = |base: &str| rig.config_with_base("1h", base, "");
    let duplicate = format!(
        "[[routes]]\nname = \"echo\"\nprefix = \"/again\"\nupstream = \"http://{}\"\n\
         inject = {{ header = \"X-Api-Key\" }}\nsecret = \"echo\"\nallow = [\"127.0.0.0/8\"]\n",
        rig.echo.addr
    );
    let half = good("");
    let half = half[..half.len() / 2].to_owned();
    // (what, the file and its bad contents, a phrase of the logged reason)
    let cases: Vec<(&str, &Path, String, &str)> = vec![
        ("toml syntax error", &rig.config, good("").replace("[admin]", "[admin"), "line 4"),
        ("bad cidr", &rig.config, good("").replace("127.0.0.0/8", "10.0.0.300/8"), "\"10.0.0.300/8\""),
        ("duplicate route", &rig.config, rig.config_with_base("1h", "", &duplicate), "used by another route"),
        ("empty key file", &rig.key, String::new(), "is empty"),
        ("half-written config", &rig.config, half, ""),
    ];
    let mut key = "sentinel-bad-0".to_owned();
    let mut base = String::new();
    for (i, (what, file, contents, phrase)) in cases.into_iter().enumerate() {
        let n = i as f64;
        let mark = rig.kg.mark();
        write_by_rename(file, &contents);
        rig.kg.wait_failures(n + 1.0).await;
        assert_eq!(rig.kg.reload_state().await, (n, n + 1.0, 0.0, n + 1.0), "{what}");
        let failed = rig.kg.logs_since(mark, "reload failed; the running config stays");
        assert_eq!(failed.len(), 1, "{what}: {failed:?}");
        assert!(failed[0]["reason"].as_str().unwrap().contains(phrase), "{what}: {failed:?}");
        // The old config and key keep serving, and readiness does not change.
        let reply = rig.kg.get("/echo/x").await.echo();
        assert_eq!(
            (reply["key"].as_str().unwrap(), reply["path"].as_str().unwrap()),
            (&*key, &*format!("{base}/x"))
        );
        assert_eq!(get(rig.kg.admin, "/readyz", &[]).await.status, 200, "{what}");

        // The fix: a good file again, different from what runs.
        if file == rig.key.as_path() {
            key = format!("sentinel-bad-{}", i + 1);
            write_by_rename(file, &format!("{key}\n"));
        } else {
            base = format!("/v{}", i + 1);
            write_by_rename(file, &good(&base));
        }
        eventually(&format!("the fix of the {what}"), SOON, || async {
            let r = rig.kg.get("/echo/x").await.echo();
            (r["key"] == *key && r["path"] == format!("{base}/x")).then_some(())
        })
        .await;
        assert_eq!(rig.kg.reload_state().await, (n + 1.0, n + 1.0, 1.0, n + 2.0), "{what} fixed");
    }
    let keys: Vec<String> = (0..5).map(|i| format!("sentinel-bad-{i}")).collect();
    rig.kg.assert_output_free_of(&keys.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_seen_again_by_the_poll_counts_once() {
    let rig = Rig::start("100ms", "sentinel-again-1\n", "[log]\nlevel = \"debug\"\n").await;
    let broken =
        rig.config_with_base("100ms", "", "[log]\nlevel = \"debug\"\n").replace("127.0.0.0/8", "nope");
    let mark = rig.kg.mark();
    write_by_rename(&rig.config, &broken);
    rig.kg.wait_failures(1.0).await;
    // Three more polls read the same broken files.
    eventually("three polls of the broken config", SOON, || {
        let again = rig.kg.logs_since(mark, "reload still fails for the same reason");
        std::future::ready((again.iter().filter(|l| l["trigger"] == "poll").count() >= 3).then_some(()))
    })
    .await;
    assert_eq!(rig.kg.reload_state().await, (0.0, 1.0, 0.0, 1.0));
    assert_eq!(rig.kg.logs("reload failed; the running config stays").len(), 1);
    // A different failure is a new one.
    write_by_rename(&rig.config, &broken.replace("nope", "nope2"));
    rig.kg.wait_failures(2.0).await;
    assert_eq!(rig.kg.reload_state().await, (0.0, 2.0, 0.0, 1.0));
    rig.kg.assert_output_free_of(&["sentinel-again-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_the_route_cannot_carry_is_a_failed_reload() {
    let rig = Rig::start("1h", "sentinel-carry-1\n", "").await;
    // The route injects a header: a non-ASCII key would go out as raw UTF-8.
    write_by_rename(&rig.key, "sentinel-carry-\u{e9}2\n");
    rig.kg.wait_failures(1.0).await;
    assert_eq!(rig.kg.reload_state().await, (0.0, 1.0, 0.0, 1.0));
    assert_eq!(rig.kg.get("/echo/x").await.key(), "sentinel-carry-1", "the running key stays");
    let failures = rig.kg.logs("reload failed; the running config stays");
    assert_eq!(failures.len(), 1, "{failures:?}");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(reason.contains("routes[0] \"echo\": secret: \"echo\" cannot be sent"), "{reason}");
    assert!(reason.contains("non-ASCII"), "{reason}");

    write_by_rename(&rig.key, "sentinel-carry-3\n");
    rig.kg.wait_key("/echo/x", "sentinel-carry-3", SOON).await;
    rig.kg.assert_output_free_of(&["sentinel-carry-1", "sentinel-carry-\u{e9}2", "sentinel-carry-3"]);
}
