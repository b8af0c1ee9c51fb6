//! The update-status guard: callers arriving together make one upstream call, answers
//! are shared for the TTL and served stale during a 429 back-off, and with
//! `[coordination] redis` two keygate processes share one call per TTL, keep working
//! when Redis dies, and never put a key into Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::client::{Reply, get};
use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway};
use crate::support::keys::{CID, assert_no_key};
use crate::support::poll::{SOON, eventually};
use crate::support::process::{Keygate, Launch};
use crate::support::redis::Redis;
use crate::support::upstream::{FakeUpstream, Handler, Recorded, reply};

fn status_path() -> String {
    format!("/export/0.1/client/{CID}/fullupdatestatus")
}

/// Answers `answers[n]` to the n-th call (the last one from then on) and notes when
/// each call came. Each 200 echoes the export key it got, to show keygate scrubs it.
fn scripted(answers: &'static [(u16, &'static str)]) -> (Handler, Arc<Mutex<Vec<Instant>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let handler: Handler = Arc::new(move |r: &Recorded| {
        let mut seen = seen.lock().unwrap();
        let (status, retry_after) = answers[seen.len().min(answers.len() - 1)];
        seen.push(Instant::now());
        let key = r.header("x-rjm-api-key").join(",");
        let body = json!({"clientId": CID, "call": seen.len(), "echo": key}).to_string();
        let mut headers = vec![("content-type", "application/json"), ("set-cookie", "s=private")];
        if !retry_after.is_empty() {
            headers.push(("retry-after", retry_after));
        }
        reply(status, &headers, &body)
    });
    (handler, calls)
}

async fn guarded(upstream: &str, ttl: &str, extra: &str) -> TestGateway {
    GatewayBuilder::new()
        .extra(extra)
        .route(RouteSpec::export(upstream).set("update_status_ttl", ttl))
        .start()
        .await
}

fn source(gw: &TestGateway, source: &str) -> f64 {
    gw.metric("keygate_update_status_answers_total", &[("route", "bi-export"), ("source", source)])
        .unwrap_or(0.0)
}

#[tokio::test]
async fn fifty_callers_at_once_make_one_upstream_call() {
    // The upstream's `/gate` answers only once released: all 50 are waiting by then.
    let upstream = FakeUpstream::faults().await;
    let gw = guarded(&format!("{}/gate", upstream.url()), "\"60s\"", "").await;
    let addr = gw.addr;
    let callers: Vec<_> =
        (0..50).map(|_| tokio::spawn(async move { get(addr, &status_path(), &[]).await })).collect();
    // All 50 in keygate, and the one call made (it may land a moment after the last caller).
    eventually("50 callers in flight and one upstream call", SOON, || async {
        gw.in_flight() == 50.0 && !upstream.recorded().is_empty()
    })
    .await;
    assert_eq!(upstream.recorded().len(), 1);
    upstream.release();
    for caller in callers {
        let reply = caller.await.unwrap();
        assert_eq!((reply.status, reply.text().as_str()), (200, "released"));
    }
    assert_eq!(upstream.recorded().len(), 1, "one upstream call for 50 callers");
    assert_eq!((source(&gw, "upstream"), source(&gw, "shared") + source(&gw, "cached")), (1.0, 49.0));
    let later = get(gw.addr, &status_path(), &[]).await;
    assert_eq!((later.status, later.header("cache-control").is_some()), (200, true));
    assert_eq!(upstream.recorded().len(), 1);
}

#[tokio::test]
async fn answers_are_shared_for_the_ttl_with_age_and_no_key_or_cookie() {
    let (handler, calls) = scripted(&[(200, "")]);
    let upstream = FakeUpstream::start(handler).await;
    let gw = guarded(&upstream.url(), "\"60s\"", "").await;
    let first = get(gw.addr, &status_path(), &[]).await;
    let second = get(gw.addr, &status_path(), &[]).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    assert_eq!(first.json()["echo"], "[REDACTED]", "a shared 2xx body is scrubbed too");
    for reply in [&first, &second] {
        let age: u64 = reply.header("age").unwrap().parse().unwrap();
        let max_age: u64 =
            reply.header("cache-control").unwrap().trim_start_matches("max-age=").parse().unwrap();
        assert!(age <= 1 && (59..=60).contains(&max_age), "{}", reply.dump());
        assert!(reply.header("set-cookie").is_none(), "{}", reply.dump());
    }
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!((source(&gw, "upstream"), source(&gw, "cached")), (1.0, 1.0));
}

#[tokio::test]
async fn a_429_serves_the_last_good_answer_marked_stale() {
    let (handler, calls) = scripted(&[(200, ""), (429, "30")]);
    let upstream = FakeUpstream::start(handler).await;
    let gw = guarded(&upstream.url(), "\"1s\"", "").await;
    let good = get(gw.addr, &status_path(), &[]).await;
    assert_eq!(good.status, 200);
    // Once the TTL has passed, the next caller's upstream call gets the 429.
    let stale: Reply = eventually("a stale answer", SOON, || async {
        let reply = get(gw.addr, &status_path(), &[]).await;
        reply.header("warning").is_some().then_some(reply)
    })
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, good.body);
    assert_eq!(stale.header("warning").as_deref(), Some("110 - \"Response is Stale\""));
    assert!(stale.header("age").unwrap().parse::<u64>().unwrap() >= 1);
    let during = get(gw.addr, &status_path(), &[]).await;
    assert_eq!((during.status, during.body.clone()), (200, good.body.clone()));
    assert_eq!(calls.lock().unwrap().len(), 2, "no call during the back-off");
    assert!(source(&gw, "stale") >= 1.0);
}

#[tokio::test]
async fn a_429_without_a_good_answer_is_served_with_its_retry_after() {
    let (handler, calls) = scripted(&[(429, "30")]);
    let upstream = FakeUpstream::start(handler).await;
    let gw = guarded(&upstream.url(), "\"60s\"", "").await;
    for _ in 0..2 {
        let reply = get(gw.addr, &status_path(), &[]).await;
        assert_eq!(reply.status, 429);
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((29..=30).contains(&wait), "{wait}");
    }
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(source(&gw, "limited"), 1.0);
}

#[tokio::test]
async fn errors_pass_through_and_are_not_kept() {
    let (handler, calls) = scripted(&[(503, ""), (200, "")]);
    let upstream = FakeUpstream::start(handler).await;
    let gw = guarded(&upstream.url(), "\"60s\"", "").await;
    assert_eq!(get(gw.addr, &status_path(), &[]).await.status, 503);
    assert_eq!(get(gw.addr, &status_path(), &[]).await.status, 200);
    assert_eq!(calls.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_ttl_of_zero_turns_the_guard_off() {
    let (handler, calls) = scripted(&[(200, "")]);
    let upstream = FakeUpstream::start(handler).await;
    let gw = guarded(&upstream.url(), "\"0s\"", "").await;
    for _ in 0..3 {
        let reply = get(gw.addr, &status_path(), &[]).await;
        assert!(reply.header("age").is_none());
    }
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn requests_keep_working_when_redis_dies() {
    let Some(mut redis) = Redis::start("requests_keep_working_when_redis_dies") else { return };
    let (handler, calls) = scripted(&[(200, "")]);
    let upstream = FakeUpstream::start(handler).await;
    let gw =
        guarded(&upstream.url(), "\"1s\"", &format!("[coordination]\nredis = {:?}\n", redis.url())).await;
    assert_eq!(get(gw.addr, &status_path(), &[]).await.status, 200);
    eventually("the answer in Redis", SOON, || async {
        redis.dump().iter().any(|(k, _)| k.ends_with(":answer"))
    })
    .await;
    redis.kill();
    // Past the TTL each new call reaches Redis, fails, and is served in-process.
    eventually("an upstream call without Redis", SOON, || async {
        assert_eq!(get(gw.addr, &status_path(), &[]).await.status, 200);
        calls.lock().unwrap().len() >= 2
    })
    .await;
    let errors: f64 = ["read", "lock", "write"]
        .iter()
        .map(|op| gw.metric("keygate_coordination_errors_total", &[("op", op)]).unwrap_or(0.0))
        .sum();
    assert!(errors >= 1.0, "{}", gw.metrics());
}

/// Starts the built binary on `config` (written beside the builder's key files).
async fn process(builder: &GatewayBuilder) -> Keygate {
    let path = builder.file("keygate.toml", &builder.config_text());
    Launch::run(&path).start().await
}

#[tokio::test]
async fn two_processes_sharing_redis_make_one_upstream_call_per_ttl() {
    let Some(redis) = Redis::start("two_processes_sharing_redis_make_one_upstream_call_per_ttl") else {
        return;
    };
    let (handler, calls) = scripted(&[(200, "")]);
    let upstream = FakeUpstream::start(handler).await;
    let coordination = format!("[coordination]\nredis = {:?}\n", redis.url());
    let route = || RouteSpec::export(&upstream.url()).set("update_status_ttl", "\"2s\"");
    let (a, b) = (
        GatewayBuilder::new().extra(&coordination).route(route()),
        GatewayBuilder::new().extra(&coordination).route(route()),
    );
    let (a_kg, b_kg) = (process(&a).await, process(&b).await);
    // A bounded observation window: both processes asked in turn for 5 s, each answer 200.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) {
        for kg in [&a_kg, &b_kg] {
            let reply = get(kg.gateway, &status_path(), &[]).await;
            assert_eq!(reply.status, 200, "{}", reply.dump());
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let at = calls.lock().unwrap().clone();
    assert!(answered > 50, "{answered}");
    assert!((2..=4).contains(&at.len()), "{} upstream calls in 5 s with a 2 s TTL", at.len());
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(1800),
            "two calls within one TTL: {:?}",
            pair[1] - pair[0]
        );
    }
    let stored = redis.dump();
    assert!(!stored.is_empty());
    for (key, value) in &stored {
        assert_no_key(&format!("{key}\n{}", String::from_utf8_lossy(value)));
    }
    assert!(stored.iter().any(|(_, v)| String::from_utf8_lossy(v).contains("[REDACTED]")), "{stored:?}");
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_a_bounded_wait_and_is_counted() {
    // Accepts connections, never answers: every Redis operation runs into its bound.
    let silent = FakeUpstream::silent().await;
    let (handler, calls) = scripted(&[(200, "")]);
    let upstream = FakeUpstream::start(handler).await;
    let coordination = format!("[coordination]\nredis = \"redis://{}/0\"\n", silent.addr);
    let gw = guarded(&upstream.url(), "\"60s\"", &coordination).await;
    let started = Instant::now();
    let reply = get(gw.addr, &status_path(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.dump());
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    assert_eq!(calls.lock().unwrap().len(), 1);
    eventually("the failed Redis read counted", SOON, || async {
        gw.metric("keygate_coordination_errors_total", &[("op", "read")]).unwrap_or(0.0) >= 1.0
    })
    .await;
    // The process's own copy answers the next caller without Redis or upstream.
    assert_eq!(get(gw.addr, &status_path(), &[]).await.status, 200);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_answer_dripped_slower_than_response_timeout_ends_the_shared_call() {
    // 100 body bytes, one every 200 ms (20 s in all), under a 1 s response timeout:
    // every caller of the client id waits on this one call, so it must end.
    let upstream = FakeUpstream::faults().await;
    let route =
        RouteSpec::export(&format!("{}/trickle/100/200", upstream.url())).set("response_timeout", "\"1s\"");
    let gw = GatewayBuilder::new().route(route).start().await;
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(10), get(gw.addr, &status_path(), &[]))
        .await
        .expect("the guard's call ends within the response timeout, not after the whole drip");
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.header("x-keygate-error").as_deref(), Some("upstream_timeout"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(gw.upstream_errors("bi-export", "timeout"), 1.0);
}
