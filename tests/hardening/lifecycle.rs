//! The built binary under signals (`docs/reliability.md` row 29; `docs/configuration.md#shutdown`), and its logs under
//! upstream faults: SIGTERM flips readiness at once, stops the listener, closes idle
//! keep-alives, lets requests in flight finish within `shutdown_grace` and exits 0; a
//! second signal exits at once; no log line ever carries a caller's query or the key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::support::client::get;
use crate::support::inprocess::{faults_config, faults_route};
use crate::support::keys::{QUERY_SENTINEL, SECRET};
use crate::support::poll::eventually;
use crate::support::process::{Keygate, Launch};
use crate::support::raw::{Raw, Received, exchange};
use crate::support::upstream::{FakeUpstream, closed_port};

const SECOND: Duration = Duration::from_secs(1);

async fn spawn(stub: &FakeUpstream, grace: &str) -> (Keygate, std::net::SocketAddr, std::net::SocketAddr) {
    let config =
        faults_config(&format!("shutdown_grace = \"{grace}\""), &faults_route("f", "/f", &stub.url(), ""));
    let process = Launch::with_config(&config).start().await;
    let (gateway, admin) = (process.gateway, process.admin);
    (process, gateway, admin)
}

/// Starts `GET /f/gate` on its own connection; it answers once the stub is released.
fn in_flight(gateway: std::net::SocketAddr) -> tokio::task::JoinHandle<Received> {
    tokio::spawn(
        async move { exchange(gateway, b"GET /f/gate HTTP/1.1\r\nhost: k\r\n\r\n", 30 * SECOND).await },
    )
}

async fn wait_until_draining(admin: std::net::SocketAddr) {
    let deadline = Instant::now() + SECOND;
    loop {
        let reply = get(admin, "/readyz", &[]).await;
        if reply.status == 503 {
            reply.assert_refusal(503, "shutting_down");
            return;
        }
        assert!(Instant::now() < deadline, "/readyz still {} a second after SIGTERM", reply.status);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_closes_idle_connections_and_exits_zero() {
    let stub = FakeUpstream::faults().await;
    let (mut process, gateway, admin) = spawn(&stub, "10s").await;
    assert_eq!(get(admin, "/readyz", &[]).await.status, 200);

    // An idle keep-alive connection, after two answered requests: it has waited for a
    // head between them, as well as after them.
    let mut idle = Raw::connect(gateway).await;
    for _ in 0..2 {
        idle.send(b"GET /f/ok HTTP/1.1\r\nhost: k\r\n\r\n").await;
        let answer = idle.answer_text().await;
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("\r\n\r\nok"), "{answer}");
    }
    // A long request, held by the stub.
    let long = in_flight(gateway);
    eventually("the long request reaches the upstream", 5 * SECOND, || async {
        stub.recorded().iter().any(|s| s.path == "/gate")
    })
    .await;

    process.signal("TERM");
    wait_until_draining(admin).await;
    let closed = idle.read_until_close(3 * SECOND).await;
    assert!(closed.closed && closed.bytes.is_empty(), "idle keep-alive not closed: {closed:?}");
    // The listener is gone: new connections are refused.
    let deadline = Instant::now() + 3 * SECOND;
    while TcpStream::connect(gateway).await.is_ok() {
        assert!(Instant::now() < deadline, "the gateway still accepts connections while draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!long.is_finished(), "the in-flight request is still waiting for its upstream");
    assert_eq!(process.exit_code(Duration::ZERO).await, None, "keygate waits for the request in flight");

    stub.release();
    let answer = long.await.unwrap();
    assert_eq!(answer.statuses(), [200], "{}", answer.text());
    assert!(answer.text().ends_with("released"), "{}", answer.text());
    assert_eq!(process.exit_code(5 * SECOND).await, Some(0), "{}", process.output());
    assert_eq!(process.logs("stopped").len(), 1, "{}", process.output());
    assert!(process.logs("shutdown_grace ran out with requests still in flight").is_empty());
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let stub = FakeUpstream::faults().await;
    let (mut process, gateway, admin) = spawn(&stub, "60s").await;
    let long = in_flight(gateway);
    eventually("the long request reaches the upstream", 5 * SECOND, || async { !stub.recorded().is_empty() })
        .await;
    process.signal("TERM");
    wait_until_draining(admin).await;
    assert_eq!(process.exit_code(Duration::ZERO).await, None, "the first signal drains");
    let second = Instant::now();
    process.signal("INT");
    let code = process.exit_code(3 * SECOND).await;
    assert_eq!(code, Some(1), "{}", process.output());
    assert!(second.elapsed() < 2 * SECOND, "took {:?}", second.elapsed());
    assert_eq!(process.logs("second signal: exiting at once").len(), 1, "{}", process.output());
    let cut = long.await.unwrap();
    assert!(cut.closed && cut.statuses().is_empty(), "{cut:?}");
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let stub = FakeUpstream::faults().await;
    let (mut process, gateway, _) = spawn(&stub, "1s").await;
    let long = in_flight(gateway);
    eventually("the long request reaches the upstream", 5 * SECOND, || async { !stub.recorded().is_empty() })
        .await;
    let started = Instant::now();
    process.signal("TERM");
    assert_eq!(process.exit_code(5 * SECOND).await, Some(0), "{}", process.output());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950) && took < 3 * SECOND, "exited after {took:?}");
    assert_eq!(process.logs("shutdown_grace ran out with requests still in flight").len(), 1);
    assert!(long.await.unwrap().statuses().is_empty(), "the held request never got an answer");
}

#[tokio::test]
async fn error_answers_and_logs_never_carry_the_query_or_the_key() {
    let stub = FakeUpstream::faults().await;
    let refused = format!("http://{}", closed_port());
    let routes = faults_route("f", "/f", &stub.url(), "response_timeout = \"500ms\"")
        + &faults_route("r", "/r", &refused, "")
        + &faults_route("d", "/d", "http://nonexistent.invalid:8080", "");
    let process = Launch::with_config(&faults_config("", &routes)).start().await;
    let gateway = process.gateway;
    let cases = [
        ("/r/x", 502, "upstream_unavailable"),
        ("/d/x", 502, "upstream_unavailable"),
        ("/f/hang", 504, "upstream_timeout"),
        ("/f/reset-before-headers", 502, "upstream_unavailable"),
        ("/f/cl-te", 502, "upstream_unavailable"),
        ("/f/bad-status", 502, "upstream_unavailable"),
    ];
    for (path, status, code) in cases {
        let reply = get(gateway, &format!("{path}?q={QUERY_SENTINEL}&apikey=caller"), &[]).await;
        reply.assert_refusal(status, code);
    }
    eventually("every request has its access line", 5 * SECOND, || async {
        process.logs("request").len() == cases.len()
    })
    .await;
    let access = process.logs("request");
    for ((path, status, code), line) in cases.iter().zip(&access) {
        assert_eq!(
            (line["path"].as_str(), line["status"].as_u64(), line["error"].as_str()),
            (Some(*path), Some(*status as u64), Some(*code))
        );
    }
    let output = process.output();
    assert!(output.contains("keygate::"), "debug logging is on, so keygate's own lines are present");
    for needle in [QUERY_SENTINEL, SECRET, "apikey=caller", "api_key="] {
        assert!(!output.contains(needle), "{needle:?} appears in the logs:\n{output}");
    }
}
