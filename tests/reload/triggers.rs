//! What makes keygate look again, against the real binary: SIGHUP (acknowledged at
//! `info` with its outcome, every time) and the poll, for a change no file event
//! announces.

use std::path::{Path, PathBuf};

use crate::support::files::{write_by_rename, write_in_place, write_private};
use crate::support::poll::{SOON, eventually};
use crate::support::process::Keygate;
use crate::support::upstream::{FakeUpstream, echo};
use crate::{Rig, config_text};

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
        write_private(&key_file, key);
        Unwatched { sec, key: key_file, swaps: 0 }
    }

    fn swap(&mut self, key: &str) {
        self.swaps += 1;
        let next = self.sec.join(format!("next{}", self.swaps));
        std::fs::create_dir_all(next.join("inner")).unwrap();
        write_private(&next.join("inner/key"), key);
        std::fs::rename(self.sec.join("live"), self.sec.join(format!("old{}", self.swaps))).unwrap();
        std::fs::rename(next, self.sec.join("live")).unwrap();
    }
}

async fn start_unwatched(poll: &str, key: &str) -> (tempfile::TempDir, FakeUpstream, Unwatched, Keygate) {
    let dir = tempfile::tempdir().unwrap();
    let echo = FakeUpstream::start(echo("x-api-key")).await;
    let tree = Unwatched::create(dir.path(), key);
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let config = dir.path().join("conf/keygate.toml");
    let debug = "[log]\nlevel = \"debug\"\n";
    write_private(&config, &config_text(&format!("http://{}", echo.addr), &tree.key, poll, debug));
    let kg = Keygate::start(&config).await;
    // keygate looks once more right after start (a change between its first read and
    // its watches would raise no event); a change made before that look would be found
    // by it instead of by the trigger under test.
    kg.wait_log(0, "inputs unchanged; nothing to apply", |l| l["trigger"] == "watch").await;
    // And its watches are re-armed after that look: a change made before then may be
    // found by the look the re-arming asks for (trigger `watch`), not by the trigger
    // under test.
    kg.watches_settled().await;
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
