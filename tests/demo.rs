//! `keygate demo` end to end: spawn the built binary on free ports, check it prints the
//! walkthrough, run exactly those steps through the gateway (never directly against the
//! sandbox), and check the downloaded zip's CSV holds the pushed rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::demo::{Ports, walkthrough};

/// Kills the child if the test fails before it is stopped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
fn start_demo() -> (Guard, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let guard = Guard(child);
    let mut printed = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the demo did not print its walkthrough in time:\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Access log lines follow") {
            return (guard, printed, rx);
        }
    }
}

#[tokio::test]
async fn demo_walkthrough_runs_through_the_gateway() {
    let (mut demo, printed, _rest) = start_demo();
    let ports = Ports {
        gateway: addr_after(&printed, "gateway"),
        admin: addr_after(&printed, "admin"),
        sandbox: addr_after(&printed, "sandbox"),
    };
    let steps = walkthrough(&ports);
    assert_eq!(steps.len(), 7);
    for step in &steps {
        assert!(printed.contains(&step.curl()), "the demo must print `{}`", step.curl());
        assert!(step.url.starts_with("http://127.0.0.1:"), "literal loopback URLs: {}", step.url);
        assert!(!step.url.contains(&ports.sandbox.to_string()), "steps go through keygate: {}", step.url);
    }

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut answers = Vec::new();
    for step in &steps {
        let mut req = hyper::Request::builder().method(step.method).uri(&step.url);
        if let Some(ct) = step.content_type {
            req = req.header("content-type", ct);
        }
        let body = Full::new(Bytes::from(step.body.unwrap_or("")));
        let resp = client.request(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let error = resp.headers().get("x-keygate-error").map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, error, bytes));
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
    let status = Command::new("kill").args(["-INT", &demo.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = wait_exit(&mut demo.0);
    assert_eq!(exit, Some(0), "the demo exits 0 on Ctrl-C");
    assert!(!std::path::Path::new(&key_dir).exists(), "the demo removes its keys");
    let mut stderr = String::new();
    demo.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(std::time::Instant::now() < deadline, "the demo did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn demo_refuses_a_busy_port_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    // The sandbox takes PORT+2: make PORT itself the busy one by asking for PORT.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["demo", "--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}
