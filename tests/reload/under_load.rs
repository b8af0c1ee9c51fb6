//! Reloads under load, against the real binary: no request fails and none mixes two
//! generations of the config.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::Conn;
use crate::support::files::{write_by_rename, write_private};
use crate::support::poll::{SOON, eventually};
use crate::support::process::Keygate;
use crate::support::upstream::{FakeUpstream, echo};
use crate::{LOAD, config_text};

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
    let _load = LOAD.write().await;
    const GENERATIONS: u64 = 50;
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: u64 = 2_500;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let echo = FakeUpstream::start(echo("x-api-key")).await;
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let config = dir.path().join("keygate.toml");
    let write_generation = |i: u64| {
        let key = keys.join(format!("key-{i}"));
        write_private(&key, &format!("sentinel-load-{i}\n"));
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
