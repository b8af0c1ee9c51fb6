//! A busy neighbour for the reload tests: an action (appending to a file, saving one)
//! repeated at a fixed rate on a thread, bounded in time, stopped when dropped.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::poll::{SOON, eventually};

/// A busy neighbour: an action repeated `per_second` times a second on a thread (e.g.
/// appending to a log), until dropped or for a minute at most.
pub struct Noise {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Noise {
    /// Appends a line to each of `files` on every round.
    pub fn start(files: Vec<PathBuf>, per_second: u32) -> Noise {
        Noise::run(per_second, move |round| {
            for file in &files {
                let mut f = std::fs::File::options().create(true).append(true).open(file).unwrap();
                writeln!(f, "noise {round}").unwrap();
            }
        })
    }

    /// Calls `action` with the round number on every round.
    pub fn run(per_second: u32, mut action: impl FnMut(u64) + Send + 'static) -> Noise {
        const LIMIT: Duration = Duration::from_secs(60);
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), writes.clone());
        let every = Duration::from_secs(1) / per_second;
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut next = started;
            while !flag.load(Ordering::SeqCst) && started.elapsed() < LIMIT {
                action(count.fetch_add(1, Ordering::SeqCst));
                // Pacing a load, not waiting for keygate.
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Noise { stop, writes, thread: Some(thread) }
    }

    /// Rounds begun so far.
    pub fn rounds(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Waits until `n` rounds have run: the noise is under way.
    pub async fn wait_rounds(&self, n: u64) {
        eventually(&format!("{n} rounds of noise"), SOON, || {
            std::future::ready((self.rounds() >= n).then_some(()))
        })
        .await;
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
