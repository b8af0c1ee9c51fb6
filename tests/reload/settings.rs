//! Settings on reload, against the real binary: a `listen` change applies the rest and
//! keeps the listeners (with one warning), and `[log] level` and `access` follow reloads.

use crate::Rig;
use crate::support::files::write_by_rename;
use crate::support::poll::{SOON, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_change_applies_the_rest_and_keeps_the_listeners() {
    let rig = Rig::start("1h", "sentinel-listen-1\n", "").await;
    let moved = rig.config_with_base("1h", "/v2", "").replace("\"127.0.0.1:0\"", "\"127.0.0.2:0\"");
    assert_eq!(moved.matches("127.0.0.2:0").count(), 2);
    write_by_rename(&rig.config, &moved);
    write_by_rename(&rig.key, "sentinel-listen-2\n");
    // Served by the listener bound at start, with the new route and key.
    eventually("the new config on the old listener", SOON, || async {
        let r = rig.kg.get("/echo/x").await.echo();
        (r["path"] == "/v2/x" && r["key"] == "sentinel-listen-2").then_some(())
    })
    .await;
    let warning =
        "these settings changed but apply only at the next restart; the rest of the config is applied";
    let warned = rig.kg.wait_log(0, warning, |_| true).await;
    assert_eq!(warned["settings"], "[\"server.listen\", \"admin.listen\"]");
    assert_eq!(warned["level"], "WARN");
    // The admin listener bound at start still answers too.
    assert_eq!(rig.kg.config().await["generation"].as_u64().unwrap(), rig.kg.reload_state().await.3 as u64);
    // Later reloads that leave the listen addresses alone do not warn again.
    let mark = rig.kg.mark();
    write_by_rename(&rig.key, "sentinel-listen-3\n");
    rig.kg.wait_key("/echo/x", "sentinel-listen-3", SOON).await;
    assert!(rig.kg.logs_since(mark, warning).is_empty());
    assert_eq!(rig.kg.logs(warning).len(), 1);
    rig.kg.assert_output_free_of(&["sentinel-listen-1", "sentinel-listen-2", "sentinel-listen-3"]);
}

/// `[log] level` and `access` follow reloads (applied live: `docs/configuration.md#log`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_and_access_switch_follow_reloads() {
    let quiet = "[log]\nlevel = \"info\"\naccess = false\n";
    let rig = Rig::start("1h", "sentinel-level-1\n", quiet).await;
    let start = rig.kg.mark();
    assert_eq!(rig.kg.get("/echo/before").await.key(), "sentinel-level-1");

    let loud = "[log]\nlevel = \"debug\"\naccess = true\n";
    write_by_rename(&rig.config, &rig.config_with_base("1h", "", loud));
    eventually("generation 2", SOON, || async { (rig.kg.config().await["generation"] == 2).then_some(()) })
        .await;
    assert_eq!(rig.kg.get("/echo/after").await.key(), "sentinel-level-1");
    rig.kg.wait_log(start, "request", |v| v["path"] == "/echo/after").await;
    // Lines are written in order: the request before the reload left no access line.
    let requests = rig.kg.logs_since(start, "request");
    assert_eq!(requests.len(), 1, "{requests:?}");
    // Debug lines now appear (at "info" they never would): a SIGHUP with unchanged
    // inputs says so at debug level.
    let mark = rig.kg.mark();
    rig.kg.sighup();
    let unchanged = rig.kg.wait_log(mark, "inputs unchanged; nothing to apply", |_| true).await;
    assert_eq!(unchanged["level"], "DEBUG");
    rig.kg.assert_output_free_of(&["sentinel-level-1"]);
}
