//! The README's lines for the official Python client, run as written against the demo
//! (only the port changes): the real `rjmetrics` package from PyPI, installed in a venv
//! with the README's commands, authenticates and pushes 250 rows through keygate.
//!
//! The venv is `support::python`'s, installed with the README's commands (checked
//! here). Without python3 or PyPI the test says why it skipped; with
//! `KEYGATE_REQUIRE_TOOLS=1` it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use crate::support::client::get;
use crate::support::python::{INSTALLS, rjmetrics_python};
use crate::walkthrough::start_demo;

const README: &str = include_str!("../../README.md");

/// The README's one ```python block.
fn readme_python() -> &'static str {
    let blocks: Vec<&str> =
        README.split("```python\n").skip(1).map(|rest| rest.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 1, "the README has one Python block");
    blocks[0]
}

/// The README's install commands for the client (after the venv line) are the ones the
/// tests install it with.
fn readme_installs() {
    let block = README.split("python3 -m venv rjvenv").nth(1).expect("the README makes a venv");
    let block = block.split("```").next().unwrap();
    let lines: Vec<&str> = block.lines().filter(|l| l.starts_with("pip install")).collect();
    assert_eq!(lines, INSTALLS, "the commands the tests install the client with");
}

#[tokio::test]
async fn the_readme_python_lines_push_through_the_demo() {
    readme_installs();
    let lines = readme_python();
    assert!(lines.contains("\"http://127.0.0.1:8080/import/v2\""), "{lines}");
    let Some(python) = rjmetrics_python("the_readme_python_lines_push_through_the_demo") else { return };
    let demo = start_demo().await;
    let script = lines.replace("127.0.0.1:8080", &demo.ports.gateway.to_string());
    let out = Command::new(&python).arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "True\n[201, 201, 201]\n", "what the README's comments promise");

    // Through keygate, from the `local` group: one authenticate and three batches.
    let metrics = get(demo.ports.admin, "/metrics", &[]).await.text();
    for line in [
        "keygate_requests_total{caller=\"local\",code=\"200\",operation=\"authenticate\",route=\"bi-import\"} 1",
        "keygate_requests_total{caller=\"local\",code=\"201\",operation=\"upsert\",route=\"bi-import\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "metrics lack {line}:\n{metrics}");
    }
    // Every row arrived: an export of the table counts 250.
    let target = "/export/0.1/client/12345/table/orders/export";
    let export = crate::support::client::post(demo.ports.gateway, target, &[], b"").await.json();
    assert_eq!(export["rows"], 250, "{export}");
}
