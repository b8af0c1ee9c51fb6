//! Reload every few seconds under steady load (`docs/reliability.md` row 30), against the real
//! binary with the default debounce: no request fails, and each new key is in use
//! within a second of the file change. The keys live in a Kubernetes-style secret
//! volume (`..data` swapped atomically), as in production.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::client::Conn;
use crate::support::files::{KubeMount, write_private};
use crate::support::poll::{SOON, eventually};
use crate::support::process::Keygate;
use crate::support::upstream::{FakeUpstream, echo};
use crate::{LOAD, config_text};

const ROTATIONS: usize = 5;
/// Time between two rotations.
const EVERY: Duration = Duration::from_millis(2000);
/// How soon after the swap the new key must be in use.
const WITHIN: Duration = Duration::from_secs(1);
const CONNECTIONS: usize = 4;

fn key(i: usize) -> String {
    format!("sentinel-steady-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_every_few_seconds_under_load_uses_each_new_key_within_a_second() {
    let _load = LOAD.write().await;
    let dir = tempfile::tempdir().unwrap();
    let echo = FakeUpstream::start(echo("x-api-key")).await;
    let mut kube = KubeMount::create(dir.path().join("kube"), &[("key", &format!("{}\n", key(0)))]);
    let config = dir.path().join("keygate.toml");
    // The shared config text pins a short debounce; this test runs with the default.
    let text = config_text(&format!("http://{}", echo.addr), &kube.dir.join("key"), "1h", "");
    let text = text.replace("debounce = \"50ms\"\n", "");
    assert!(!text.contains("debounce"));
    write_private(&config, &text);
    let kg = Keygate::start(&config).await;

    // first_seen[i]: when a caller first got an answer made with key i.
    let first_seen: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; ROTATIONS + 1]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (first_seen, stop, addr) = (first_seen.clone(), stop.clone(), kg.gateway);
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let (mut sent, mut last, mut problems) = (0u64, 0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                sent += 1;
                let Some(reply) = conn.get_ok("/echo/x", &mut problems).await else { continue };
                let at = Instant::now();
                let got = reply.key();
                let parsed = got.strip_prefix("sentinel-steady-").and_then(|n| n.parse::<usize>().ok());
                let Some(i) = parsed else {
                    problems.push(format!("unexpected key {got:?}"));
                    continue;
                };
                if i < last {
                    problems.push(format!("went back from key {last} to {i}"));
                }
                last = i;
                first_seen.lock().unwrap()[i].get_or_insert(at);
                // Steady, not flat out: keygate's reloader shares the two cores.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (sent, problems)
        }));
    }

    let mut swapped_at = Vec::new();
    for i in 1..=ROTATIONS {
        tokio::time::sleep(EVERY).await;
        swapped_at.push(Instant::now());
        kube.update(&[("key", &format!("{}\n", key(i)))]);
    }
    // Keep the load on until the last key is in use (the lag check below judges how soon).
    eventually("the last key in use", SOON, || {
        std::future::ready(first_seen.lock().unwrap()[ROTATIONS].map(|_| ()))
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for client in clients {
        let (sent, problems) = client.await.unwrap();
        assert!(problems.is_empty(), "{} failed or inconsistent request(s): {problems:?}", problems.len());
        total += sent;
    }
    assert!(total >= 500, "only {total} requests: not a steady load");

    let first_seen = first_seen.lock().unwrap().clone();
    let mut lags = Vec::new();
    for (i, swapped) in swapped_at.iter().enumerate() {
        let seen = first_seen[i + 1].unwrap_or_else(|| panic!("key {} was never used", i + 1));
        let lag = seen.saturating_duration_since(*swapped);
        assert!(lag < WITHIN, "key {} first used {lag:?} after the swap", i + 1);
        lags.push(lag);
    }
    let rotations = ROTATIONS as f64;
    assert_eq!(kg.reload_state().await, (rotations, 0.0, 1.0, rotations + 1.0));
    let keys: Vec<String> = (0..=ROTATIONS).map(key).collect();
    kg.assert_output_free_of(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!("steady reload: {total} requests, lags {lags:?}");
}
