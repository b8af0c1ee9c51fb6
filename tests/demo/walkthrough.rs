//! `keygate demo` end to end: spawn the built binary on free ports, check it prints the
//! walkthrough, run exactly those steps through the gateway (never directly against the
//! sandbox), and check the downloaded zip's CSV holds the pushed rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Method};
use keygate::demo::{Ports, walkthrough};

use crate::support::client::{request, send};
use crate::support::process::{Keygate, Launch, run};

fn addr_after(output: &str, label: &str) -> SocketAddr {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in:\n{output}"));
    let url = line.split_whitespace().nth(1).unwrap();
    url.trim_start_matches("http://").parse().unwrap()
}

/// Starts `keygate demo --port 0` and returns it with everything it printed up to the
/// end of the walkthrough.
async fn start_demo() -> (Keygate, String) {
    let demo = Launch::args(["demo", "--port", "0"]).spawn();
    let printed = demo
        .wait_line("the demo's walkthrough", Duration::from_secs(30), |l| {
            l.starts_with("Access log lines follow")
        })
        .await;
    (demo, printed)
}

#[tokio::test]
async fn demo_walkthrough_runs_through_the_gateway() {
    let (mut demo, printed) = start_demo().await;
    let ports = Ports {
        gateway: addr_after(&printed, "gateway"),
        admin: addr_after(&printed, "admin"),
        sandbox: addr_after(&printed, "sandbox"),
    };
    let steps = walkthrough(&ports);
    assert_eq!(steps.len(), 11);
    for step in &steps {
        assert!(printed.contains(&step.curl()), "the demo must print `{}`", step.curl());
        assert!(step.url.starts_with("http://127.0.0.1:"), "literal loopback URLs: {}", step.url);
        assert!(!step.url.contains(&ports.sandbox.to_string()), "steps go through keygate: {}", step.url);
    }

    let mut answers = Vec::new();
    let mut heads = Vec::new();
    for step in &steps {
        // Exactly the printed step: its method, URL (host and port, path and query),
        // content type and body.
        let uri: http::Uri = step.url.parse().unwrap();
        let authority = uri.authority().unwrap().as_str();
        let headers: Vec<(&str, &str)> = step.content_type.iter().map(|ct| ("content-type", *ct)).collect();
        let method = Method::from_bytes(step.method.as_bytes()).unwrap();
        // A step whose body a shell command prints sends exactly what it printed.
        let body = match step.body_command {
            Some(command) => std::process::Command::new("sh").args(["-c", command]).output().unwrap().stdout,
            None => step.body.unwrap_or("").as_bytes().to_vec(),
        };
        let mut req = request(method, uri.path_and_query().unwrap().as_str(), &headers, &body);
        req.headers_mut().insert("host", HeaderValue::from_str(authority).unwrap());
        let reply = send(authority.parse().unwrap(), req).await;
        let error = reply.header("x-keygate-error");
        heads.push((reply.header("x-keygate-batches"), reply.header("age"), reply.header("cache-control")));
        answers.push((reply.status, error, reply.body));
    }

    let text = |i: usize| String::from_utf8_lossy(&answers[i].2).into_owned();
    assert_eq!(answers[0].0, 201, "push: {}", text(0));
    assert_eq!(answers[1].0, 200);
    assert!(text(1).contains("\"orders\""), "tables: {}", text(1));
    assert_eq!(answers[2].0, 200);
    let created: serde_json::Value = serde_json::from_slice(&answers[2].2).unwrap();
    assert_eq!(created["export_id"], 1, "{created}");
    assert_eq!(answers[3].0, 200);
    assert_eq!(answers[4].0, 200, "download: {}", text(4));
    assert_eq!((answers[5].0, answers[5].1.as_deref()), (403, Some("client_mismatch")));
    assert_eq!(answers[6].0, 200);
    for line in [
        "keygate_requests_total{caller=\"local\",code=\"201\",operation=\"upsert\",route=\"bi-import\"} 1",
        "keygate_requests_total{caller=\"local\",code=\"403\",operation=\"-\",route=\"bi-export\"} 1",
        "keygate_requests_total{caller=\"local\",code=\"200\",operation=\"download_export\",route=\"bi-export\"} 1",
    ] {
        assert!(text(6).contains(line), "metrics lack {line}:\n{}", text(6));
    }

    // 1,050 rows in one push: 11 batches, all stored.
    assert_eq!(answers[7].0, 201, "bulk push: {}", text(7));
    assert_eq!(heads[7].0.as_deref(), Some("11"));
    let bulk: serde_json::Value = serde_json::from_slice(&answers[7].2).unwrap();
    assert_eq!(bulk["batches"].as_array().map(Vec::len), Some(11), "{bulk}");
    // The second update-status call is the guard's (the sandbox would answer 429).
    assert_eq!((answers[8].0, answers[9].0), (200, 200), "{} / {}", text(8), text(9));
    assert_eq!(answers[8].2, answers[9].2);
    assert!(
        heads[9].1.is_some() && heads[9].2.as_deref().is_some_and(|c| c.starts_with("max-age=")),
        "{:?}",
        heads[9]
    );
    for line in [
        "keygate_import_batches_total{result=\"created\",route=\"bi-import\"} 11",
        "keygate_update_status_answers_total{route=\"bi-export\",source=\"cached\"} 1",
        "keygate_update_status_answers_total{route=\"bi-export\",source=\"upstream\"} 1",
    ] {
        assert!(text(10).contains(line), "metrics lack {line}:\n{}", text(10));
    }

    // The download is a real zip holding orders.csv with the pushed rows.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(answers[4].2.to_vec())).unwrap();
    let mut csv = String::new();
    zip.by_name("orders.csv").unwrap().read_to_string(&mut csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines, ["id,item,total", "1,lamp,19.5", "2,desk,120"], "{csv}");

    // Ctrl-C stops it cleanly and removes the generated keys.
    let key_dir = printed
        .lines()
        .find_map(|l| l.split(" live in ").nth(1))
        .map(|rest| rest.trim_end_matches('.').to_owned())
        .unwrap();
    assert!(std::path::Path::new(&key_dir).exists());
    demo.signal("INT");
    let exit = demo.exit_code(Duration::from_secs(20)).await;
    assert_eq!(exit, Some(0), "the demo exits 0 on Ctrl-C");
    assert!(!std::path::Path::new(&key_dir).exists(), "the demo removes its keys");
    let stderr = demo.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn demo_refuses_a_busy_port_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    // The sandbox takes PORT+2: make PORT itself the busy one by asking for PORT.
    let out = run(&["demo", "--port", &port.to_string()]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cannot listen on"), "{}", out.stderr);
}
