//! Reload beside busy files (`docs/configuration.md#reload`; `docs/reliability.md` row 37), against the
//! real binary: a file written 50 times a second next to the config and next to each
//! secret never holds off a rotation (editor save, Kubernetes `..data` swap, in-place
//! edit + SIGHUP, in-place edit found by the poll), a key rewritten without pause is
//! applied within the debounce ceiling, and debug logging into the config directory
//! makes keygate attempt no reload at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::noise::Noise;
use crate::support::files::{KubeMount, write_by_rename, write_in_place, write_private};
use crate::support::poll::{SOON, eventually};
use crate::support::process::{Keygate, Launch};
use crate::support::upstream::{FakeUpstream, echo};
use crate::{LOAD, config_text};

/// How soon a rotated key must be in use, busy neighbours or not.
const WITHIN: Duration = Duration::from_millis(1500);
/// How often the busy neighbours are written.
const NOISE_PER_SECOND: u32 = 50;
/// Debug level: the start-up look and every attempt say so.
const DEBUG: &str = "[log]\nlevel = \"debug\"\n";

/// The test config with the default debounce (200 ms): a short one would let the
/// neighbours' gaps end a debounce by chance.
fn config(echo: &FakeUpstream, key: &std::path::Path, poll: &str) -> String {
    let text = config_text(&format!("http://{}", echo.addr), key, poll, DEBUG);
    text.replace("debounce = \"50ms\"", "debounce = \"200ms\"")
}

/// keygate looks once more right after start (a change between its first read and its
/// watches would raise no event); a change made before that look would be found by it
/// instead of by the trigger under test.
async fn wait_start_up_look(kg: &Keygate) {
    kg.wait_log(0, "inputs unchanged; nothing to apply", |l| l["trigger"] == "watch").await;
    kg.watches_settled().await;
}

/// `<dir>/keygate.toml` naming `<dir>/secrets/key`, also reachable as the hard link
/// `<dir>/hidden/key`: a write through the link raises no event in the watched
/// `secrets/` (inotify reports it to the directory the file was opened through, which
/// keygate does not watch), so only SIGHUP or the poll can find it.
struct Rig {
    dir: tempfile::TempDir,
    _echo: FakeUpstream,
    key: PathBuf,
    hidden_key: PathBuf,
    kg: Keygate,
}

impl Rig {
    async fn start(poll: &str, key: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let echo = FakeUpstream::start(echo("x-api-key")).await;
        for sub in ["secrets", "hidden"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let key_file = dir.path().join("secrets/key");
        write_private(&key_file, key);
        let hidden_key = dir.path().join("hidden/key");
        std::fs::hard_link(&key_file, &hidden_key).unwrap();
        let config_file = dir.path().join("keygate.toml");
        write_private(&config_file, &config(&echo, &key_file, poll));
        let kg = Keygate::start(&config_file).await;
        wait_start_up_look(&kg).await;
        Rig { dir, _echo: echo, key: key_file, hidden_key, kg }
    }

    /// A file beside the config and one beside the secret, each written 50 times a second.
    async fn noise(&self) -> Noise {
        let files = vec![self.dir.path().join("busy.log"), self.dir.path().join("secrets/busy.log")];
        let noise = Noise::start(files, NOISE_PER_SECOND);
        noise.wait_rounds(5).await;
        noise
    }
}

/// The trigger of the reload that made generation 2.
async fn trigger_of_generation_2(kg: &Keygate) -> String {
    let line = kg.wait_log(0, "config reloaded", |l| l["generation"] == 2).await;
    line["trigger"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_save_beside_busy_files_is_in_use_within_1_5_s() {
    let _load = LOAD.read().await;
    let rig = Rig::start("1h", "sentinel-busy-rename-1\n").await;
    let noise = rig.noise().await;
    write_by_rename(&rig.key, "sentinel-busy-rename-2\n");
    rig.kg.wait_key("/echo/x", "sentinel-busy-rename-2", WITHIN).await;
    assert_eq!(trigger_of_generation_2(&rig.kg).await, "event");
    assert!(noise.rounds() >= 5);
    drop(noise);
    rig.kg.assert_output_free_of(&["sentinel-busy-rename-1", "sentinel-busy-rename-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_swap_beside_busy_files_is_in_use_within_1_5_s() {
    let _load = LOAD.read().await;
    let dir = tempfile::tempdir().unwrap();
    let echo = FakeUpstream::start(echo("x-api-key")).await;
    let mut kube = KubeMount::create(dir.path().join("kube"), &[("key", "sentinel-busy-kube-1\n")]);
    let config_file = dir.path().join("keygate.toml");
    write_private(&config_file, &config(&echo, &kube.dir.join("key"), "1h"));
    let kg = Keygate::start(&config_file).await;
    wait_start_up_look(&kg).await;
    let noise = Noise::start(vec![dir.path().join("busy.log"), kube.dir.join("busy.log")], NOISE_PER_SECOND);
    noise.wait_rounds(5).await;

    kube.update(&[("key", "sentinel-busy-kube-2\n")]);
    kg.wait_key("/echo/x", "sentinel-busy-kube-2", WITHIN).await;
    assert_eq!(trigger_of_generation_2(&kg).await, "event");
    // Again: the watch followed `..data` to the new timestamped directory.
    kube.update(&[("key", "sentinel-busy-kube-3\n")]);
    kg.wait_key("/echo/x", "sentinel-busy-kube-3", WITHIN).await;
    assert_eq!(kg.reload_state().await, (2.0, 0.0, 1.0, 3.0));
    drop(noise);
    kg.assert_output_free_of(&["sentinel-busy-kube-1", "sentinel-busy-kube-2", "sentinel-busy-kube-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_beside_busy_files_is_served_within_1_5_s() {
    let _load = LOAD.read().await;
    let rig = Rig::start("1h", "sentinel-busy-hup-1\n").await;
    let noise = rig.noise().await;
    write_in_place(&rig.hidden_key, "sentinel-busy-hup-2\n");
    // Bounded proof that the write through the link raised no event that counts: well
    // past the debounce, the old key is still in use (the poll is an hour away).
    let quiet = Instant::now() + Duration::from_millis(600);
    while Instant::now() < quiet {
        assert_eq!(rig.kg.get("/echo/x").await.key(), "sentinel-busy-hup-1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.kg.sighup();
    rig.kg.wait_key("/echo/x", "sentinel-busy-hup-2", WITHIN).await;
    // The signal found the change, not an event about the key.
    assert_eq!(trigger_of_generation_2(&rig.kg).await, "signal");
    assert_eq!(rig.kg.logs("SIGHUP: reloading").len(), 1);
    drop(noise);
    rig.kg.assert_output_free_of(&["sentinel-busy-hup-1", "sentinel-busy-hup-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_beside_busy_files_is_served_within_1_5_s() {
    let _load = LOAD.read().await;
    let rig = Rig::start("300ms", "sentinel-busy-poll-1\n").await;
    let noise = rig.noise().await;
    write_in_place(&rig.hidden_key, "sentinel-busy-poll-2\n");
    rig.kg.wait_key("/echo/x", "sentinel-busy-poll-2", WITHIN).await;
    assert_eq!(trigger_of_generation_2(&rig.kg).await, "poll");
    drop(noise);
    rig.kg.assert_output_free_of(&["sentinel-busy-poll-1", "sentinel-busy-poll-2"]);
}

/// Relevant events that never pause (the key saved again and again) are applied within
/// the ceiling (~1 s after the first of them), not after a quiet spell that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_saved_without_pause_is_applied_within_the_ceiling() {
    let _load = LOAD.read().await;
    let rig = Rig::start("1h", "sentinel-busy-burst-1\n").await;
    let key = rig.key.clone();
    let started = Instant::now();
    let saves = Noise::run(NOISE_PER_SECOND, move |_| write_by_rename(&key, "sentinel-busy-burst-2\n"));
    rig.kg.wait_key("/echo/x", "sentinel-busy-burst-2", WITHIN).await;
    let lag = started.elapsed();
    // Still saving: the reload did not wait for the saves to stop.
    assert!(saves.rounds() as f64 >= lag.as_secs_f64() * f64::from(NOISE_PER_SECOND) * 0.5, "{lag:?}");
    assert_eq!(trigger_of_generation_2(&rig.kg).await, "event");
    drop(saves);
    rig.kg.assert_output_free_of(&["sentinel-busy-burst-1", "sentinel-busy-burst-2"]);
}

/// keygate's stdout in a file inside its config directory, at debug level, with requests
/// flowing: neither the access lines nor keygate's own debug lines are events that
/// count, so no reload is attempted while the inputs stay as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logging_into_the_config_directory_attempts_no_reload() {
    let _load = LOAD.read().await;
    /// The observation window, and the gap between two requests in it: longer than the
    /// debounce, so that a keygate counting these lines as events would attempt a reload
    /// after each of them rather than wait for a quiet spell.
    const WINDOW: Duration = Duration::from_secs(3);
    const GAP: Duration = Duration::from_millis(500);
    const ATTEMPT_LINES: [&str; 5] = [
        "reload attempt",
        "inputs unchanged; nothing to apply",
        "config reloaded",
        "reload failed; the running config stays",
        "reload still fails for the same reason",
    ];
    let dir = tempfile::tempdir().unwrap();
    let echo = FakeUpstream::start(echo("x-api-key")).await;
    let key = dir.path().join("key");
    write_private(&key, "sentinel-busy-log-1\n");
    let config_file = dir.path().join("keygate.toml");
    write_private(&config_file, &config(&echo, &key, "1h"));
    let kg = Launch::run(&config_file).stdout_to(&dir.path().join("keygate.log")).start().await;
    wait_start_up_look(&kg).await;

    let mark = kg.mark();
    let end = Instant::now() + WINDOW;
    let mut sent = 0;
    while Instant::now() < end {
        assert_eq!(kg.get("/echo/x").await.key(), "sentinel-busy-log-1");
        sent += 1;
        // Pacing the requests (see GAP), not waiting for keygate.
        tokio::time::sleep(GAP).await;
    }
    // Every request left its line in the watched directory.
    let requests = eventually("the access lines", SOON, || {
        std::future::ready(Some(kg.logs_since(mark, "request").len()).filter(|n| *n >= sent))
    })
    .await;
    assert!(requests >= 5, "{requests} access lines");
    for message in ATTEMPT_LINES {
        let lines = kg.logs_since(mark, message);
        assert!(lines.is_empty(), "{} {message:?} line(s) while idle: {lines:?}", lines.len());
    }
    // Attempts do show in this log: the start-up look, and one for a SIGHUP.
    assert_eq!(kg.logs("reload attempt").len(), 1);
    kg.sighup();
    kg.wait_log(mark, "reload attempt", |l| l["trigger"] == "signal").await;
    kg.assert_output_free_of(&["sentinel-busy-log-1"]);
}
