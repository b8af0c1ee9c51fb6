//! Secrets and config changed on disk the ways real tools change them, against the real
//! binary: a Kubernetes `..data` swap, an editor's save by rename, an in-place rewrite,
//! a touch that changes nothing, a file a failed reload named appearing later, and a
//! watched directory moved away and back. Every test also checks that no secret value
//! reached keygate's stdout or stderr.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::files::{KubeMount, write_by_rename, write_in_place, write_private};
use crate::support::keys::fingerprint;
use crate::support::poll::{SOON, eventually};
use crate::support::process::Keygate;
use crate::support::upstream::{FakeUpstream, echo};
use crate::{Rig, config_text};

fn secret_entry(config: &Value, name: &str) -> Value {
    config["secrets"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
}

fn loaded_series(name: &str) -> String {
    format!("keygate_secret_loaded_timestamp_seconds{{secret=\"{name}\"}}")
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_update_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let echo = FakeUpstream::start(echo("x-api-key")).await;
    let mut kube = KubeMount::create(dir.path().join("kube"), &[("key", "sentinel-kube-1\n")]);
    // A second secret in its own file, never rotated: its load time must not move.
    let other = dir.path().join("other-key");
    write_private(&other, "sentinel-kube-other\n");
    let extra = format!("[secrets.other]\nfile = \"{}\"\n", other.display());
    let config = dir.path().join("keygate.toml");
    write_private(
        &config,
        &config_text(&format!("http://{}", echo.addr), &kube.dir.join("key"), "1h", &extra),
    );
    let kg = Keygate::start(&config).await;
    assert_eq!(kg.get("/echo/x").await.key(), "sentinel-kube-1");
    let before = kg.config().await;
    let echo_loaded = kg.metric(&loaded_series("echo")).await;
    let other_loaded = kg.metric(&loaded_series("other")).await;
    let applied_at = kg.metric("keygate_config_last_reload_success_timestamp_seconds").await;

    kube.update(&[("key", "sentinel-kube-2\n")]);
    kg.wait_key("/echo/x", "sentinel-kube-2", Duration::from_secs(2)).await;
    assert_eq!(kg.reload_state().await, (1.0, 0.0, 1.0, 2.0));

    // /config and the load-time gauges move for the rotated secret only.
    let after = kg.config().await;
    assert_eq!(after["generation"], 2);
    let (echo_before, echo_after) = (secret_entry(&before, "echo"), secret_entry(&after, "echo"));
    assert_eq!(echo_before["fingerprint"], fingerprint("sentinel-kube-1"));
    assert_eq!(echo_after["fingerprint"], fingerprint("sentinel-kube-2"));
    assert!(echo_after["loaded_at"].as_f64() > echo_before["loaded_at"].as_f64());
    assert_eq!(secret_entry(&after, "other"), secret_entry(&before, "other"));
    let echo_now = kg.metric(&loaded_series("echo")).await;
    assert!(echo_now > echo_loaded, "{echo_now} <= {echo_loaded}");
    assert!((echo_now - echo_after["loaded_at"].as_f64().unwrap()).abs() < 1e-3);
    assert_eq!(kg.metric(&loaded_series("other")).await, other_loaded);
    assert!(kg.metric("keygate_config_last_reload_success_timestamp_seconds").await > applied_at);

    // One line per reload, naming what changed.
    let lines = kg.logs("config reloaded");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["generation"], 2);
    assert_eq!(lines[0]["trigger"], "event");
    assert_eq!(lines[0]["secrets_changed"], format!("[\"echo ({})\"]", fingerprint("sentinel-kube-2")));
    assert_eq!(lines[0]["routes_changed"], "[]");

    // Again: the watch followed `..data` to the new timestamped dir; the old one is gone.
    kube.update(&[("key", "sentinel-kube-3\n")]);
    kg.wait_key("/echo/x", "sentinel-kube-3", Duration::from_secs(2)).await;
    assert_eq!(kg.reload_state().await, (2.0, 0.0, 1.0, 3.0));
    assert_eq!(kg.config().await["generation"], 3);
    kg.assert_output_free_of(&[
        "sentinel-kube-1",
        "sentinel-kube-2",
        "sentinel-kube-3",
        "sentinel-kube-other",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_save_by_rename_is_picked_up() {
    let rig = Rig::start("1h", "sentinel-editor-1\n", "").await;
    write_by_rename(&rig.key, "sentinel-editor-2\n");
    rig.kg.wait_key("/echo/x", "sentinel-editor-2", SOON).await;
    assert_eq!(rig.kg.reload_state().await, (1.0, 0.0, 1.0, 2.0));

    // The config file saved the same way: a route added.
    let extra = format!(
        "[[routes]]\nname = \"echo2\"\nprefix = \"/echo2\"\nupstream = \"http://{}/two\"\n\
         inject = {{ header = \"X-Api-Key\" }}\nsecret = \"echo\"\nallow = [\"127.0.0.0/8\"]\n",
        rig.echo.addr
    );
    write_by_rename(&rig.config, &rig.config_with_base("1h", "", &extra));
    let reply = eventually("the added route", SOON, || async {
        let r = rig.kg.get("/echo2/x").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(reply.echo()["path"], "/two/x");
    assert_eq!(reply.key(), "sentinel-editor-2");
    assert_eq!(rig.kg.reload_state().await, (2.0, 0.0, 1.0, 3.0));
    let line = rig.kg.wait_log(0, "config reloaded", |l| l["generation"] == 3).await;
    assert_eq!(line["routes_added"], "[\"echo2\"]");
    assert_eq!(line["secrets_changed"], "[]");
    rig.kg.assert_output_free_of(&["sentinel-editor-1", "sentinel-editor-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_rewrite_is_picked_up() {
    let rig = Rig::start("1h", "sentinel-inplace-1\n", "").await;
    write_in_place(&rig.key, "sentinel-inplace-2\n");
    rig.kg.wait_key("/echo/x", "sentinel-inplace-2", SOON).await;
    // Not the failure count: a reader may catch the file between truncate and write
    // (an empty key, one counted failure) — that is what in-place writes risk.
    let (success, _, last_ok, generation) = rig.kg.reload_state().await;
    assert_eq!((success, last_ok, generation), (1.0, 1.0, 2.0));
    rig.kg.assert_output_free_of(&["sentinel-inplace-1", "sentinel-inplace-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_with_the_same_content_changes_nothing() {
    let rig = Rig::start("1h", "sentinel-touch-1\n", "[log]\nlevel = \"debug\"\n").await;
    let before = rig.kg.config().await;
    let loaded = rig.kg.metric(&loaded_series("echo")).await;
    let applied_at = rig.kg.metric("keygate_config_last_reload_success_timestamp_seconds").await;
    for file in [&rig.key, &rig.config] {
        let mark = rig.kg.mark();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(file).unwrap().set_modified(later).unwrap();
        // The event was seen and the files re-read: only then is "nothing changed" shown.
        rig.kg.wait_log(mark, "inputs unchanged; nothing to apply", |l| l["trigger"] == "event").await;
    }
    assert_eq!(rig.kg.reload_state().await, (0.0, 0.0, 1.0, 1.0));
    assert_eq!(rig.kg.config().await, before);
    assert_eq!(rig.kg.metric(&loaded_series("echo")).await, loaded);
    assert_eq!(rig.kg.metric("keygate_config_last_reload_success_timestamp_seconds").await, applied_at);
    assert!(rig.kg.logs("config reloaded").is_empty());
    rig.kg.assert_output_free_of(&["sentinel-touch-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_by_a_failed_reload_is_watched_until_it_appears() {
    let debug = "[log]\nlevel = \"debug\"\n";
    let rig = Rig::start("1h", "sentinel-late-1\n", debug).await;
    // A directory nothing watches yet; the config starts naming a file in it that is
    // not there, so the reload fails.
    let elsewhere = rig.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let late = elsewhere.join("key");
    let extra = format!(
        "{debug}[secrets.late]\nfile = \"{}\"\n[[routes]]\nname = \"late\"\nprefix = \"/late\"\n\
         upstream = \"http://{}/late\"\ninject = {{ header = \"X-Api-Key\" }}\nsecret = \"late\"\n\
         allow = [\"127.0.0.0/8\"]\n",
        late.display(),
        rig.echo.addr
    );
    write_by_rename(&rig.config, &rig.config_with_base("1h", "", &extra));
    rig.kg.wait_failures(1.0).await;
    assert_eq!(rig.kg.get("/late/x").await.status, 404);
    // Once it watches the new directory, keygate looks once more (a file created before
    // the watch would raise no event); a file written before that look would be found by
    // it instead of by the event under test.
    rig.kg.wait_log(0, "reload still fails for the same reason", |l| l["trigger"] == "watch").await;
    // The file appears: an event in its directory, now watched, applies the config.
    write_by_rename(&late, "sentinel-late-2\n");
    rig.kg.wait_key("/late/x", "sentinel-late-2", SOON).await;
    assert_eq!(rig.kg.reload_state().await, (1.0, 1.0, 1.0, 2.0));
    let line = rig.kg.wait_log(0, "config reloaded", |l| l["generation"] == 2).await;
    assert_eq!(line["trigger"], "event");
    rig.kg.assert_output_free_of(&["sentinel-late-1", "sentinel-late-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_away_and_back_is_still_watched() {
    // `secrets/` sits in the watched config directory: moving it out and back ends its
    // watch inside notify although it is the very same directory again.
    let rig = Rig::start("1h", "sentinel-moved-1\n", "[log]\nlevel = \"debug\"\n").await;
    let secrets = rig.key.parent().unwrap().to_owned();
    let aside = rig.dir.path().join("secrets.aside");
    let mark = rig.kg.mark();
    std::fs::rename(&secrets, &aside).unwrap();
    std::fs::rename(&aside, &secrets).unwrap();
    // The moves were seen (an attempt found nothing changed) before the key changes.
    rig.kg.wait_log(mark, "inputs unchanged; nothing to apply", |l| l["trigger"] == "event").await;
    write_by_rename(&rig.key, "sentinel-moved-2\n");
    rig.kg.wait_key("/echo/x", "sentinel-moved-2", SOON).await;
    assert_eq!(rig.kg.reload_state().await, (1.0, 0.0, 1.0, 2.0));
    rig.kg.assert_output_free_of(&["sentinel-moved-1", "sentinel-moved-2"]);
}
