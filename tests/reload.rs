//! Hot reload of config and secrets (issue 5; design §5, §2 and §6; reliability items
//! 30–32), driven against the real binary: Kubernetes `..data` swaps, editor saves,
//! in-place writes, touches, deletions, bad reloads, SIGHUP, the poll, a listen address
//! change, and reloads under load. Every test also checks that no secret value ever
//! reached keygate's stdout or stderr.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod reload_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use reload_support::*;
use serde_json::Value;

/// A temp dir with `keygate.toml` and `secrets/key`, an echo upstream, and keygate.
struct Rig {
    _dir: tempfile::TempDir,
    echo: Echo,
    config: PathBuf,
    key: PathBuf,
    kg: Keygate,
}

impl Rig {
    async fn start(poll: &str, key: &str, extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let echo = Echo::start().await;
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        let key_file = dir.path().join("secrets/key");
        write_new(&key_file, key);
        let config = dir.path().join("keygate.toml");
        write_new(&config, &config_text(&format!("http://{}", echo.addr), &key_file, poll, extra));
        let kg = Keygate::start(&config).await;
        Rig { _dir: dir, echo, config, key: key_file, kg }
    }

    /// The config as written at start, with the route's upstream base path set to `base`.
    fn config_with_base(&self, poll: &str, base: &str, extra: &str) -> String {
        config_text(&format!("http://{}{base}", self.echo.addr), &self.key, poll, extra)
    }
}

fn secret_entry(config: &Value, name: &str) -> Value {
    config["secrets"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
}

fn loaded_series(name: &str) -> String {
    format!("keygate_secret_loaded_timestamp_seconds{{secret=\"{name}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_update_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let mut kube = KubeMount::create(dir.path().join("kube"), &[("key", "sentinel-kube-1\n")]);
    // A second secret in its own file, never rotated: its load time must not move.
    let other = dir.path().join("other-key");
    write_new(&other, "sentinel-kube-other\n");
    let extra = format!("[secrets.other]\nfile = \"{}\"\n", other.display());
    let config = dir.path().join("keygate.toml");
    write_new(&config, &config_text(&format!("http://{}", echo.addr), &kube.dir.join("key"), "1h", &extra));
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
async fn deleted_secret_keeps_the_last_good_key_until_recreated() {
    let rig = Rig::start("1h", "sentinel-deleted-1\n", "").await;
    std::fs::remove_file(&rig.key).unwrap();
    rig.kg.wait_failures(1.0).await;
    assert_eq!(rig.kg.reload_state().await, (0.0, 1.0, 0.0, 1.0));
    assert_eq!(rig.kg.get("/echo/x").await.key(), "sentinel-deleted-1");
    let ready = get(rig.kg.admin, "/readyz").await;
    assert_eq!((ready.status, ready.text.contains("\"generation\":1")), (200, true), "{}", ready.text);
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
        assert_eq!(get(rig.kg.admin, "/readyz").await.status, 200, "{what}");

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
async fn a_file_named_by_a_failed_reload_is_watched_until_it_appears() {
    let debug = "[log]\nlevel = \"debug\"\n";
    let rig = Rig::start("1h", "sentinel-late-1\n", debug).await;
    // A directory nothing watches yet; the config starts naming a file in it that is
    // not there, so the reload fails.
    let elsewhere = rig._dir.path().join("elsewhere");
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
    let aside = rig._dir.path().join("secrets.aside");
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

/// `<dir>/sec/live/inner/key`, swapped by renaming `live` away and a new tree in: the
/// watched `inner` directory is not renamed itself (its parent is), and `sec` is not
/// watched, so the swap raises no event keygate receives.
struct Unwatched {
    sec: PathBuf,
    key: PathBuf,
    swaps: u32,
}

impl Unwatched {
    fn create(dir: &Path, key: &str) -> Unwatched {
        let sec = dir.join("sec");
        std::fs::create_dir_all(sec.join("live/inner")).unwrap();
        let key_file = sec.join("live/inner/key");
        write_new(&key_file, key);
        Unwatched { sec, key: key_file, swaps: 0 }
    }

    fn swap(&mut self, key: &str) {
        self.swaps += 1;
        let next = self.sec.join(format!("next{}", self.swaps));
        std::fs::create_dir_all(next.join("inner")).unwrap();
        write_new(&next.join("inner/key"), key);
        std::fs::rename(self.sec.join("live"), self.sec.join(format!("old{}", self.swaps))).unwrap();
        std::fs::rename(next, self.sec.join("live")).unwrap();
    }
}

async fn start_unwatched(poll: &str, key: &str) -> (tempfile::TempDir, Echo, Unwatched, Keygate) {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let tree = Unwatched::create(dir.path(), key);
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let config = dir.path().join("conf/keygate.toml");
    let debug = "[log]\nlevel = \"debug\"\n";
    write_new(&config, &config_text(&format!("http://{}", echo.addr), &tree.key, poll, debug));
    let kg = Keygate::start(&config).await;
    // keygate looks once more right after start (a change between its first read and
    // its watches would raise no event); a change made before that look would be found
    // by it instead of by the trigger under test.
    kg.wait_log(0, "inputs unchanged; nothing to apply", |l| l["trigger"] == "watch").await;
    (dir, echo, tree, kg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_replaced_directory_is_watched_again() {
    let (_dir, _echo, mut tree, kg) = start_unwatched("1h", "sentinel-hup-1\n").await;
    tree.swap("sentinel-hup-2\n");
    kg.sighup();
    kg.wait_key("/echo/x", "sentinel-hup-2", SOON).await;
    assert_eq!(kg.reload_state().await, (1.0, 0.0, 1.0, 2.0));
    let line = kg.wait_log(0, "config reloaded", |l| l["generation"] == 2).await;
    assert_eq!(line["trigger"], "signal");
    assert_eq!(kg.logs("SIGHUP: reloading").len(), 1);

    // The new `inner` directory is watched now: an editor save in it is an event.
    let mark = kg.mark();
    write_by_rename(&tree.key, "sentinel-hup-3\n");
    kg.wait_key("/echo/x", "sentinel-hup-3", SOON).await;
    let line = kg.wait_log(mark, "config reloaded", |l| l["generation"] == 3).await;
    assert_eq!(line["trigger"], "event");
    assert_eq!(kg.reload_state().await, (2.0, 0.0, 1.0, 3.0));
    kg.assert_output_free_of(&["sentinel-hup-1", "sentinel-hup-2", "sentinel-hup-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_catches_a_change_no_event_announced() {
    let (_dir, _echo, mut tree, kg) = start_unwatched("300ms", "sentinel-poll-1\n").await;
    tree.swap("sentinel-poll-2\n");
    kg.wait_key("/echo/x", "sentinel-poll-2", SOON).await;
    assert_eq!(kg.reload_state().await, (1.0, 0.0, 1.0, 2.0));
    let line = kg.wait_log(0, "config reloaded", |l| l["generation"] == 2).await;
    assert_eq!(line["trigger"], "poll");
    kg.assert_output_free_of(&["sentinel-poll-1", "sentinel-poll-2"]);
}

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

/// Reloads under load never fail a request, and no request mixes two generations.
///
/// How a mix would show: generation `i` of the config names the key file `keys/key-i`
/// (holding `sentinel-load-i`, written before config `i` and never changed after) and
/// routes `/echo` to the echo upstream at base path `/g{i}`. So whichever moment a
/// reload reads the files, every snapshot pairs base `/g{i}` with key `i`: the two
/// come from one file read. A request whose upstream sees path `/g{i}/x` with key
/// `sentinel-load-{j}`, j ≠ i, took its route from one snapshot and its key from
/// another. Each connection also checks that generations never go backwards: a request
/// sent after an answer that used generation `i` must not use an older one.
///
/// The writer publishes 50 generations (new key file, then the config saved by
/// rename), each once the clients have seen the previous one, while 8 keep-alive
/// connections send at least 20,000 requests in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_mixes_no_generations() {
    const GENERATIONS: u64 = 50;
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: u64 = 2_500;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let config = dir.path().join("keygate.toml");
    let write_generation = |i: u64| {
        let key = keys.join(format!("key-{i}"));
        write_new(&key, &format!("sentinel-load-{i}\n"));
        write_by_rename(&config, &config_text(&format!("http://{}/g{i}", echo.addr), &key, "1h", ""));
    };
    write_generation(0);
    let kg = Keygate::start(&config).await;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (stop, seen, addr) = (stop.clone(), seen.clone(), kg.gateway);
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let (mut sent, mut last, mut problems) = (0u64, 0u64, Vec::new());
            while sent < PER_CONNECTION || !stop.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the load ran past its time bound");
                sent += 1;
                let Some(reply) = conn.get_ok("/echo/x", &mut problems).await else { continue };
                let reply = reply.echo();
                let path = reply["path"].as_str().unwrap();
                let key = reply["key"].as_str().unwrap();
                let from_path: u64 =
                    path.strip_prefix("/g").and_then(|p| p.strip_suffix("/x")).unwrap().parse().unwrap();
                let from_key: u64 = key.strip_prefix("sentinel-load-").unwrap().parse().unwrap();
                if from_path != from_key {
                    problems.push(format!("mixed generations: path {path} with key {from_key}"));
                }
                if from_path < last {
                    problems.push(format!("went back from generation {last} to {from_path}"));
                }
                last = from_path;
                seen.fetch_max(from_path, Ordering::SeqCst);
            }
            (sent, problems)
        }));
    }

    for i in 1..=GENERATIONS {
        write_generation(i);
        let seen = seen.clone();
        eventually(&format!("requests using generation {i}"), SOON, || {
            std::future::ready((seen.load(Ordering::SeqCst) >= i).then_some(()))
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for client in clients {
        let (sent, problems) = client.await.unwrap();
        assert!(
            problems.is_empty(),
            "{} failed or inconsistent request(s): {:?}",
            problems.len(),
            &problems[..problems.len().min(10)]
        );
        total += sent;
    }
    assert!(total >= CONNECTIONS as u64 * PER_CONNECTION);
    let generations = GENERATIONS as f64;
    assert_eq!(kg.reload_state().await, (generations, 0.0, 1.0, generations + 1.0));
    assert_eq!(kg.logs("config reloaded").len(), GENERATIONS as usize);
    let sentinels: Vec<String> = (0..=GENERATIONS).map(|i| format!("sentinel-load-{i}")).collect();
    kg.assert_output_free_of(&sentinels.iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!("reload under load: {total} requests, {GENERATIONS} reloads, {:?}", started.elapsed());
}

/// `[log] level` and `access` follow reloads (design §2: applied live).
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

/// Every SIGHUP gets one `info` line with its outcome, even when nothing changed (at the
/// default level a no-op reload is otherwise silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sighup_is_acknowledged_at_info_with_its_outcome() {
    let rig = Rig::start("1h", "sentinel-ack-1\n", "").await;
    let kg = &rig.kg;
    kg.wait_key("/echo/x", "sentinel-ack-1", SOON).await;

    let mark = kg.mark();
    kg.sighup();
    let line = kg.wait_log(mark, "SIGHUP handled: nothing changed, nothing to apply", |_| true).await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["outcome"], "unchanged");

    let mark = kg.mark();
    write_in_place(&rig.key, "sentinel-ack-2\n");
    kg.sighup();
    kg.wait_key("/echo/x", "sentinel-ack-2", SOON).await;
    // The in-place write may be found by its event first; the SIGHUP still gets its line.
    let line = eventually("the SIGHUP acknowledged", SOON, || {
        let mut lines = kg.logs_since(mark, "SIGHUP handled: new config applied");
        lines.extend(kg.logs_since(mark, "SIGHUP handled: nothing changed, nothing to apply"));
        std::future::ready(lines.into_iter().next())
    })
    .await;
    assert!(line["outcome"] == "applied" || line["outcome"] == "unchanged", "{line}");

    let mark = kg.mark();
    std::fs::remove_file(&rig.key).unwrap();
    kg.sighup();
    let line = kg.wait_log(mark, "SIGHUP handled: reload failed; the running config stays", |_| true).await;
    assert_eq!(line["outcome"], "failed");
    kg.assert_output_free_of(&["sentinel-ack-1", "sentinel-ack-2"]);
}
