//! The rotation rules ([`resolve`], [`Verdicts`]) one transition at a time, and the
//! proof loop ([`proof::prove`]) against a local upstream that answers a fixed status.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::proof::{self, Verdict};
use super::*;

const OVERLAP: Duration = Duration::from_secs(600);
const PROVES: Rules = Rules { proves: true, overlap: OVERLAP };

fn loaded(value: &str, at: SystemTime) -> LoadedSecret {
    LoadedSecret::fresh("s", Secret::new(value.to_owned()), at)
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn now(secs: u64) -> Now {
    Now { wall: t(secs), mono: Instant::now() }
}

/// What a resolved secret holds, by value: (current, candidate, previous, rejected).
fn shape(s: &LoadedSecret) -> (String, Option<String>, Option<String>, Option<String>) {
    (
        s.value.expose().to_owned(),
        s.candidate.as_ref().map(|c| c.value.expose().to_owned()),
        s.previous.as_ref().map(|p| p.value.expose().to_owned()),
        s.rejected.as_ref().map(|r| r.fingerprint.clone()),
    )
}

fn held(
    current: &str,
    candidate: Option<&str>,
    previous: Option<&str>,
) -> (String, Option<String>, Option<String>, Option<String>) {
    (current.to_owned(), candidate.map(str::to_owned), previous.map(str::to_owned), None)
}

#[test]
fn a_first_load_uses_the_value_as_loaded() {
    let first = resolve(loaded("k1", t(0)), None, PROVES, &Verdicts::default(), now(0));
    assert_eq!(shape(&first), held("k1", None, None));
    assert_eq!(first.fingerprint, Secret::new("k1".into()).fingerprint());
}

#[test]
fn a_changed_value_waits_as_a_candidate_while_the_running_value_stays() {
    let verdicts = Verdicts::default();
    let running = resolve(loaded("k1", t(0)), None, PROVES, &verdicts, now(0));
    let next = resolve(loaded("k2", t(5)), Some(&running), PROVES, &verdicts, now(5));
    assert_eq!(shape(&next), held("k1", Some("k2"), None));
    assert_eq!(next.loaded_at, t(0), "the running value keeps its load time");
    assert_eq!(next.candidate.as_ref().unwrap().since, t(5));
    // Seen again (the poll): the same candidate, since its first sighting.
    let again = resolve(loaded("k2", t(9)), Some(&next), PROVES, &verdicts, now(9));
    assert_eq!(shape(&again), held("k1", Some("k2"), None));
    assert_eq!(again.candidate.as_ref().unwrap().since, t(5));
    // Changed again before its proof ended: the newest value is the candidate.
    let third = resolve(loaded("k3", t(10)), Some(&again), PROVES, &verdicts, now(10));
    assert_eq!(shape(&third), held("k1", Some("k3"), None));
    // Changed back: no candidate.
    let back = resolve(loaded("k1", t(11)), Some(&third), PROVES, &verdicts, now(11));
    assert_eq!(shape(&back), held("k1", None, None));
    assert_eq!(back.loaded_at, t(0));
    assert!(Arc::ptr_eq(&back.value, &running.value), "the running allocation is kept");
}

#[test]
fn an_accepted_candidate_becomes_current_and_the_old_value_previous_for_the_overlap() {
    let mut verdicts = Verdicts::default();
    let running = resolve(loaded("k1", t(0)), None, PROVES, &verdicts, now(0));
    let waiting = resolve(loaded("k2", t(5)), Some(&running), PROVES, &verdicts, now(5));
    verdicts.accept("s", waiting.candidate.as_ref().unwrap().value.digest());
    let at = now(7);
    let promoted = resolve(loaded("k2", t(7)), Some(&waiting), PROVES, &verdicts, at);
    assert_eq!(shape(&promoted), held("k2", None, Some("k1")));
    assert_eq!(promoted.loaded_at, t(7));
    let previous = promoted.previous.as_ref().unwrap();
    assert_eq!((previous.until, previous.expires_at), (at.mono + OVERLAP, t(7) + OVERLAP));
    assert_eq!(previous.fingerprint, running.fingerprint);
    // Applied: the verdict is spent, and the promoted value is simply unchanged now.
    verdicts.settle(std::slice::from_ref(&promoted));
    let later = resolve(loaded("k2", t(8)), Some(&promoted), PROVES, &verdicts, now(8));
    assert_eq!(shape(&later), held("k2", None, Some("k1")));
    // The next rotation replaces the previous value with the one it replaces.
    let next = resolve(loaded("k3", t(9)), Some(&later), PROVES, &verdicts, now(9));
    verdicts.accept("s", next.candidate.as_ref().unwrap().value.digest());
    let again = resolve(loaded("k3", t(9)), Some(&next), PROVES, &verdicts, now(9));
    assert_eq!(shape(&again), held("k3", None, Some("k2")));
}

#[test]
fn a_rejected_candidate_is_not_proven_again_until_the_files_move_past_it_or_sighup() {
    let mut verdicts = Verdicts::default();
    let running = resolve(loaded("k1", t(0)), None, PROVES, &verdicts, now(0));
    let waiting = resolve(loaded("bad", t(1)), Some(&running), PROVES, &verdicts, now(1));
    let candidate = waiting.candidate.clone().unwrap();
    let rejected = Rejected {
        digest: candidate.value.digest(),
        fingerprint: candidate.fingerprint.clone(),
        reason: "refused".into(),
    };
    verdicts.reject("s", rejected.clone());
    let after = resolve(loaded("bad", t(2)), Some(&waiting), PROVES, &verdicts, now(2));
    assert_eq!(shape(&after), (String::from("k1"), None, None, Some(candidate.fingerprint.clone())));
    verdicts.settle(std::slice::from_ref(&after));
    // The poll reads the same file: still rejected, no new candidate.
    let polled = resolve(loaded("bad", t(3)), Some(&after), PROVES, &verdicts, now(3));
    assert_eq!(polled.rejected, Some(rejected));
    assert!(polled.candidate.is_none());
    // SIGHUP forgets it: the same value is a candidate again.
    let mut asked = verdicts.clone();
    assert!(asked.forget_rejections());
    assert!(!asked.forget_rejections(), "nothing left to forget");
    let retried = resolve(loaded("bad", t(4)), Some(&polled), PROVES, &asked, now(4));
    assert_eq!(shape(&retried), held("k1", Some("bad"), None));
    // A new value moves past it; once published, the rejection is dropped.
    let moved = resolve(loaded("k2", t(5)), Some(&polled), PROVES, &verdicts, now(5));
    assert_eq!(shape(&moved), held("k1", Some("k2"), None));
    verdicts.settle(std::slice::from_ref(&moved));
    let back = resolve(loaded("bad", t(6)), Some(&moved), PROVES, &verdicts, now(6));
    assert_eq!(shape(&back), held("k1", Some("bad"), None), "forgotten once the files moved past it");
}

#[test]
fn without_a_proof_a_changed_value_is_current_at_once() {
    let verdicts = Verdicts::default();
    let rules = Rules { proves: false, overlap: OVERLAP };
    let running = resolve(loaded("k1", t(0)), None, rules, &verdicts, now(0));
    let next = resolve(loaded("k2", t(5)), Some(&running), rules, &verdicts, now(5));
    assert_eq!(shape(&next), held("k2", None, Some("k1")));
    assert_eq!(next.loaded_at, t(5));
    // `overlap = "0s"` keeps nothing.
    let none = Rules { proves: false, overlap: Duration::ZERO };
    let next = resolve(loaded("k2", t(5)), Some(&running), none, &verdicts, now(5));
    assert_eq!(shape(&next), held("k2", None, None));
}

#[tokio::test(start_paused = true)]
async fn the_previous_value_goes_when_the_overlap_ends() {
    let verdicts = Verdicts::default();
    let rules = Rules { proves: false, overlap: Duration::from_secs(60) };
    let running = resolve(loaded("k1", t(0)), None, rules, &verdicts, Now::current());
    let rotated = resolve(loaded("k2", t(0)), Some(&running), rules, &verdicts, Now::current());
    let until = rotated.previous.as_ref().unwrap().until;
    tokio::time::advance(Duration::from_secs(59)).await;
    let kept = resolve(loaded("k2", t(59)), Some(&rotated), rules, &verdicts, Now::current());
    assert_eq!(shape(&kept), held("k2", None, Some("k1")));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(Instant::now(), until);
    let gone = resolve(loaded("k2", t(60)), Some(&kept), rules, &verdicts, Now::current());
    assert_eq!(shape(&gone), held("k2", None, None));
    // A candidate arriving after the end does not bring it back.
    let next = resolve(loaded("k3", t(61)), Some(&kept), PROVES, &verdicts, Now::current());
    assert_eq!(shape(&next), held("k2", Some("k3"), None));
}

#[test]
fn every_value_a_secret_holds_is_scrubbed() {
    let mut verdicts = Verdicts::default();
    let running = resolve(loaded("k1", t(0)), None, PROVES, &verdicts, now(0));
    let waiting = resolve(loaded("k2", t(1)), Some(&running), PROVES, &verdicts, now(1));
    verdicts.accept("s", waiting.candidate.as_ref().unwrap().value.digest());
    let promoted = resolve(loaded("k2", t(2)), Some(&waiting), PROVES, &verdicts, now(2));
    let next = resolve(loaded("k3", t(3)), Some(&promoted), PROVES, &Verdicts::default(), now(3));
    let values: Vec<&str> = next.values().map(Secret::expose).collect();
    assert_eq!(values, ["k2", "k3", "k1"]);
    assert!(!format!("{next:?}").contains("k3"), "Debug shows no value");
}

/// An upstream that answers every request with `status` (and counts them).
async fn answering(status: u16) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

/// Routes `a` and `b` (generic, each with a proof) to the two upstreams.
fn routes(a: &str, b: &str) -> Vec<Arc<crate::routes::Route>> {
    let route = |name: &str, url: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nsecret = \"s\"\nupstream = \"{url}\"\n\
             inject = {{ header = \"x-key\" }}\nallow = [\"127.0.0.1\"]\nverify = {{ path = \"/me\" }}\n"
        )
    };
    let text = format!("[secrets.s]\nvalue = \"k\"\n{}{}", route("a", a), route("b", b));
    let inputs = crate::config::Inputs::parse(std::path::Path::new("k.toml"), text.as_bytes()).unwrap();
    crate::config::compile(&inputs, 1, None).unwrap().routes.routes().to_vec()
}

fn counts() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("v", "v"), &["secret", "result"]).unwrap()
}

#[tokio::test]
async fn a_proof_accepts_only_when_every_route_accepts() {
    let (ok, _) = answering(200).await;
    let (refusing, _) = answering(401).await;
    let key = Secret::new("candidate".into());
    let c = counts();
    let within = Duration::from_secs(5);
    assert_eq!(proof::prove("s", &key, &routes(&ok, &ok), within, &c).await, Verdict::Accepted);
    assert_eq!(c.with_label_values(&["s", "ok"]).get(), 2, "one call per route");
    let verdict = proof::prove("s", &key, &routes(&ok, &refusing), within, &c).await;
    assert_eq!(verdict, Verdict::Rejected("route \"b\" answered 401".into()));
    assert_eq!(c.with_label_values(&["s", "rejected"]).get(), 1);
}

#[tokio::test]
async fn a_proof_that_keeps_failing_is_retried_until_its_time_runs_out() {
    let (failing, calls) = answering(503).await;
    let key = Secret::new("candidate".into());
    let c = counts();
    let started = std::time::Instant::now();
    let verdict = proof::prove("s", &key, &routes(&failing, &failing), Duration::from_millis(700), &c).await;
    let elapsed = started.elapsed();
    assert_eq!(verdict, Verdict::TimedOut("not proven within 700ms (last: route \"a\" answered 503)".into()));
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    // Backoff from 200 ms (jittered, 100–200 ms), then 400 ms (200–400 ms): 2 to 4 calls.
    let made = calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=4).contains(&made), "{made} calls");
    assert_eq!(c.with_label_values(&["s", "error"]).get() as usize, made);
}
