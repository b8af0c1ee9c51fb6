//! Import upserts of more than 100 records, re-batched by keygate: the official Python
//! client and a raw POST of 1,050 records, retries after 503 and 429, and a batch the
//! upstream refuses stopping the ones after it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::data_path;
use crate::support::client::post;
use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway, query_params};
use crate::support::keys::{CID, IMPORT_KEY};
use crate::support::poll::{SOON, eventually};
use crate::support::python::rjmetrics_python;
use crate::support::raw::Raw;
use crate::support::upstream::{FakeUpstream, Handler, Recorded, reply};

fn records(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"keys": ["id"], "id": i, "name": format!("row {i}")})).collect()
}

/// Answers each upsert with `status_of(n)` for the n-th request (from 0).
fn numbered(
    status_of: impl Fn(usize) -> (u16, Vec<(&'static str, &'static str)>) + Send + Sync + 'static,
) -> Handler {
    let seen = AtomicUsize::new(0);
    Arc::new(move |_: &Recorded| {
        let (status, headers) = status_of(seen.fetch_add(1, Ordering::SeqCst));
        let body = json!({"code": status, "message": "from the fake upstream"}).to_string();
        let mut all = vec![("content-type", "application/json")];
        all.extend(headers);
        reply(status, &all, &body)
    })
}

async fn gateway(upstream: &FakeUpstream, extra: &[(&str, &str)]) -> TestGateway {
    let mut route = RouteSpec::import(&upstream.url());
    for (k, v) in extra {
        route = route.set(k, v);
    }
    GatewayBuilder::new().route(route).start().await
}

/// The ids of every upsert the upstream received, one list per upsert, each checked to
/// be ≤ 100 records carrying the real key exactly once.
fn upserts(upstream: &FakeUpstream) -> Vec<Vec<u64>> {
    upstream
        .recorded()
        .iter()
        .map(|r| {
            assert_eq!(r.path, format!("/v2/client/{CID}/table/orders/data"));
            assert_eq!(query_params(r.query.as_deref(), "apikey"), [format!("apikey={IMPORT_KEY}")]);
            let rows: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
            assert!((1..=100).contains(&rows.len()), "{}", rows.len());
            rows.iter().map(|row| row["id"].as_u64().unwrap()).collect()
        })
        .collect()
}

async fn push(gw: &TestGateway, rows: &[Value]) -> crate::support::client::Reply {
    let json = [("content-type", "application/json")];
    post(
        gw.addr,
        &format!("{}?apikey=caller", data_path("orders")),
        &json,
        &serde_json::to_vec(rows).unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_raw_post_of_1050_records_goes_up_as_11_ordered_upserts() {
    let upstream = FakeUpstream::start(numbered(|_| (201, vec![]))).await;
    let gw = gateway(&upstream, &[]).await;
    let reply = push(&gw, &records(1050)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("x-keygate-batches").as_deref(), Some("11"));
    assert_eq!(reply.header("content-type").as_deref(), Some("application/vnd.keygate.import+json"));
    let body = reply.json();
    assert_eq!(body["code"], 201);
    assert_eq!(body["reasons"], json!([]));
    let batches = body["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 11);
    for (i, b) in batches.iter().enumerate() {
        let to = (i * 100 + 100).min(1050);
        assert_eq!(b, &json!({"records": [i * 100, to], "sent": true, "status": 201, "attempts": 1}));
    }
    let sent = upserts(&upstream);
    assert_eq!(sent.len(), 11);
    assert_eq!(sent.concat(), (0..1050).collect::<Vec<u64>>(), "every row once, in order");
    assert_eq!(
        gw.metric("keygate_import_batches_total", &[("route", "bi-import"), ("result", "created")]),
        Some(11.0)
    );
    assert_eq!(gw.metric("keygate_import_retries_total", &[("route", "bi-import")]), Some(0.0));
}

#[tokio::test]
async fn a_hundred_records_still_go_up_byte_for_byte_in_one_upsert() {
    let upstream = FakeUpstream::start(numbered(|_| (201, vec![]))).await;
    let gw = gateway(&upstream, &[]).await;
    let text = serde_json::to_vec(&records(100)).unwrap();
    let reply = post(gw.addr, &data_path("orders"), &[("content-type", "application/json")], &text).await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.json(),
        json!({"code": 201, "message": "from the fake upstream"}),
        "the upstream's own answer"
    );
    assert!(reply.header("x-keygate-batches").is_none());
    assert_eq!(upstream.recorded().len(), 1);
    assert_eq!(upstream.recorded()[0].body, text);
}

#[tokio::test]
async fn the_official_python_client_pushes_1050_records_through_keygate() {
    let Some(python) = rjmetrics_python("the_official_python_client_pushes_1050_records_through_keygate")
    else {
        return;
    };
    let upstream = FakeUpstream::start(numbered(|_| (201, vec![]))).await;
    let gw = gateway(&upstream, &[]).await;
    let script = "import json, sys, rjmetrics.client as c\n\
        client = c.Client(int(sys.argv[1]), 'dummy-key-from-the-client')\n\
        rows = [{'keys': ['id'], 'id': i, 'name': 'row %d' % i} for i in range(1050)]\n\
        print(json.dumps([r.status_code for r in client.push_data('orders', rows, sys.argv[2])]))\n";
    let base = format!("http://{}/import/v2", gw.addr);
    let cid = CID.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).args(["-c", script, &cid, &base]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let statuses: Vec<u16> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses, [201; 11]);
    let sent = upserts(&upstream);
    assert_eq!(sent.len(), 11, "the client's own batches of 100 pass through as they are");
    assert_eq!(sent.concat(), (0..1050).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_batch_answered_503_twice_is_sent_again_and_stored() {
    // Requests 1 and 2 (the second batch, twice) are answered 503.
    let upstream =
        FakeUpstream::start(numbered(|n| (if n == 1 || n == 2 { 503 } else { 201 }, vec![]))).await;
    let gw = gateway(&upstream, &[]).await;
    let reply = push(&gw, &records(250)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let attempts: Vec<u64> =
        reply.json()["batches"].as_array().unwrap().iter().map(|b| b["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 3, 1]);
    let sent = upserts(&upstream);
    assert_eq!(sent.iter().map(|ids| ids[0]).collect::<Vec<_>>(), [0, 100, 100, 100, 200]);
    assert_eq!(gw.metric("keygate_import_retries_total", &[("route", "bi-import")]), Some(2.0));
    assert_eq!(
        gw.metric("keygate_import_batches_total", &[("route", "bi-import"), ("result", "created")]),
        Some(3.0)
    );
}

#[tokio::test]
async fn a_batch_answered_400_stops_the_ones_after_it() {
    let upstream = FakeUpstream::start(numbered(|n| (if n == 3 { 400 } else { 201 }, vec![]))).await;
    let gw = gateway(&upstream, &[]).await;
    let reply = push(&gw, &records(1050)).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["code"], 400);
    let batches = body["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 11);
    for b in &batches[..3] {
        assert_eq!((b["sent"].as_bool(), b["status"].as_u64()), (Some(true), Some(201)), "{b}");
    }
    assert_eq!(batches[3], json!({"records": [300, 400], "sent": true, "status": 400, "attempts": 1}));
    for b in &batches[4..] {
        assert_eq!(
            (b["sent"].as_bool(), &b["status"], b["attempts"].as_u64()),
            (Some(false), &Value::Null, Some(0)),
            "{b}"
        );
    }
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("records 300 to 399") && message.contains("300 of 1050"), "{message}");
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 8, "{reasons:?}");
    assert_eq!(upserts(&upstream).len(), 4, "batches 5 to 11 were never sent");
    let result =
        |r: &str| gw.metric("keygate_import_batches_total", &[("route", "bi-import"), ("result", r)]);
    assert_eq!((result("created"), result("failed"), result("not_sent")), (Some(3.0), Some(1.0), Some(7.0)));
    assert_eq!(
        gw.metric("keygate_import_retries_total", &[("route", "bi-import")]),
        Some(0.0),
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn retry_after_on_a_429_is_honoured() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let handler: Handler = Arc::new(move |_: &Recorded| {
        let mut seen = seen.lock().unwrap();
        seen.push(Instant::now());
        if seen.len() == 2 { reply(429, &[("retry-after", "1")], "{}") } else { reply(201, &[], "{}") }
    });
    let upstream = FakeUpstream::start(handler).await;
    let gw = gateway(&upstream, &[("batch_retries", "1")]).await;
    let reply = push(&gw, &records(101)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let at = arrivals.lock().unwrap().clone();
    assert_eq!(at.len(), 3);
    let waited = at[2] - at[1];
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}, before Retry-After: 1");
}

#[tokio::test]
async fn a_batch_out_of_retries_answers_with_its_status_and_retry_after() {
    let upstream =
        FakeUpstream::start(numbered(
            |n| if n == 0 { (201, vec![]) } else { (429, vec![("retry-after", "0")]) },
        ))
        .await;
    let gw = gateway(&upstream, &[("batch_retries", "2")]).await;
    let reply = push(&gw, &records(300)).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.header("retry-after").as_deref(), Some("0"));
    let batches = reply.json()["batches"].clone();
    assert_eq!(batches[1], json!({"records": [100, 200], "sent": true, "status": 429, "attempts": 3}));
    assert_eq!(batches[2]["sent"], false);
    assert_eq!(upstream.recorded().len(), 4);
}

#[tokio::test]
async fn every_record_past_100_is_still_checked_and_named() {
    let upstream = FakeUpstream::start(numbered(|_| (201, vec![]))).await;
    let gw = gateway(&upstream, &[]).await;
    let mut rows = records(150);
    rows[120] = json!({"id": 120});
    let reply = push(&gw, &rows).await;
    reply.assert_refusal(400, "invalid_body");
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("record 120: the keys field is missing"), "{message}");
    assert!(upstream.recorded().is_empty());
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_is_retried_then_reported() {
    let closed = crate::support::upstream::closed_port();
    let route = RouteSpec::import(&format!("http://{closed}")).set("batch_retries", "1");
    let gw = GatewayBuilder::new().route(route).start().await;
    let reply = push(&gw, &records(101)).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let batches = reply.json()["batches"].clone();
    assert_eq!(
        batches[0],
        json!({"records": [0, 100], "sent": true, "status": 502, "attempts": 2, "error": "upstream_unavailable"})
    );
    assert_eq!(batches[1]["sent"], false);
}

#[tokio::test]
async fn batch_concurrency_bounds_the_batches_in_flight() {
    // `/gate` holds every answer until released: what arrives meanwhile is in flight.
    let upstream = FakeUpstream::faults().await;
    let route = RouteSpec::import(&format!("{}/gate", upstream.url())).set("batch_concurrency", "4");
    let gw = GatewayBuilder::new().route(route).start().await;
    let addr = gw.addr;
    let pushing = tokio::spawn(async move {
        let json = [("content-type", "application/json")];
        post(addr, &data_path("orders"), &json, &serde_json::to_vec(&records(800)).unwrap()).await
    });
    eventually("4 batches in flight", SOON, || async { upstream.recorded().len() == 4 }).await;
    // A bounded look for a fifth, which must not come while four are held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.recorded().len(), 4);
    upstream.release();
    let reply = pushing.await.unwrap();
    assert_eq!(reply.status, 201, "{}", reply.text());
    let mut first_ids: Vec<u64> = upstream
        .recorded()
        .iter()
        .map(|r| serde_json::from_slice::<Vec<Value>>(&r.body).unwrap()[0]["id"].as_u64().unwrap())
        .collect();
    first_ids[..4].sort_unstable();
    assert_eq!(first_ids[..4], [0, 100, 200, 300], "the first four batches start first");
    assert_eq!(first_ids.len(), 8);
}

#[tokio::test]
async fn the_whole_push_is_bounded_by_response_timeout() {
    let upstream = FakeUpstream::faults().await;
    let route = RouteSpec::import(&format!("{}/hang", upstream.url())).set("response_timeout", "\"1s\"");
    let gw = GatewayBuilder::new().route(route).start().await;
    let started = Instant::now();
    let reply = push(&gw, &records(300)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(reply.status, 504, "{}", reply.text());
    let batches = reply.json()["batches"].clone();
    assert_eq!(
        batches[0],
        json!({"records": [0, 100], "sent": true, "status": 504, "attempts": 1, "error": "upstream_timeout"})
    );
    assert_eq!((batches[1]["sent"].clone(), batches[2]["sent"].clone()), (json!(false), json!(false)));
}

#[tokio::test]
async fn a_caller_that_goes_away_stops_the_batches() {
    // `/gate` holds the first batch; the caller leaves while it is held.
    let upstream = FakeUpstream::faults().await;
    let route = RouteSpec::import(&format!("{}/gate", upstream.url()));
    let gw = GatewayBuilder::new().route(route).start().await;
    let body = serde_json::to_vec(&records(300)).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: keygate\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        data_path("orders"),
        body.len()
    );
    let mut caller = Raw::connect(gw.addr).await;
    caller.send(&[head.as_bytes(), &body].concat()).await;
    eventually("the first batch is in flight", SOON, || async { upstream.recorded().len() == 1 }).await;
    drop(caller);
    // The connection's end drops the request it was serving, batches and all.
    eventually("keygate closes the caller's connection", SOON, || async {
        gw.metric("keygate_connections_open", &[]) == Some(0.0)
    })
    .await;
    // Every `/gate` request now answers at once: a batch still going would show up.
    upstream.release();
    eventually("the first batch's upstream connection is dropped", SOON, || async {
        upstream.recorded().first().is_some_and(|r| r.peer_gone)
    })
    .await;
    // A bounded look for the second batch, which must never start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.recorded().len(), 1, "no batch starts after the caller left");
}

#[tokio::test]
async fn a_batch_answer_never_carries_the_upstreams_retry_after_bytes() {
    // A hostile upstream puts the key it was sent into Retry-After: on a 503 (which
    // keygate does not pass a wait for) and on a 429 (where the value is no wait).
    for status in [503, 429] {
        let upstream = FakeUpstream::start(numbered(move |n| {
            if n == 0 { (201, vec![]) } else { (status, vec![("retry-after", IMPORT_KEY)]) }
        }))
        .await;
        let gw = gateway(&upstream, &[("batch_retries", "0")]).await;
        let reply = push(&gw, &records(150)).await;
        assert_eq!(reply.status, status, "{}", reply.text());
        assert_eq!(reply.header("retry-after"), None, "{status}");
        let head = format!("{:?}", reply.headers);
        assert!(!head.contains(IMPORT_KEY) && !reply.text().contains(IMPORT_KEY), "{status}: {head}");
    }
}

#[tokio::test]
async fn a_batch_answered_in_time_stands_however_slow_its_body() {
    // The upstream's head comes at once; its 60-byte body takes 3 s, past the push's
    // 1 s deadline. The first batch was answered in time: it is stored, not a timeout.
    let upstream = FakeUpstream::faults().await;
    let route =
        RouteSpec::import(&format!("{}/trickle/60/50", upstream.url())).set("response_timeout", "\"1s\"");
    let gw = GatewayBuilder::new().route(route).start().await;
    let reply = push(&gw, &records(150)).await;
    let batches = reply.json()["batches"].clone();
    assert_eq!(batches[0]["status"], 200, "{batches}");
    assert_eq!(batches[0]["sent"], true, "{batches}");
}
