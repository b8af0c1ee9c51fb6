//! The README's lines for the official Python client, run as written against the demo
//! (only the port changes): the real `rjmetrics` package from PyPI, installed in a venv
//! with the README's commands, authenticates and pushes 250 rows through keygate.
//!
//! The venv is `$KEYGATE_RJMETRICS_VENV` (`.ci/run` makes it) or one under Cargo's
//! target directory, made on first use. Without python3 or PyPI the test says why it
//! skipped; with `KEYGATE_REQUIRE_TOOLS=1` it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::client::get;
use crate::support::tools::unavailable;
use crate::walkthrough::start_demo;

const README: &str = include_str!("../../README.md");

/// The README's one ```python block.
fn readme_python() -> &'static str {
    let blocks: Vec<&str> =
        README.split("```python\n").skip(1).map(|rest| rest.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 1, "the README has one Python block");
    blocks[0]
}

/// The README's install commands for the client, one per line (after the venv line).
fn readme_installs() -> Vec<&'static str> {
    let block = README.split("python3 -m venv rjvenv").nth(1).expect("the README makes a venv");
    let block = block.split("```").next().unwrap();
    let lines: Vec<&str> = block.lines().filter(|l| l.starts_with("pip install")).collect();
    assert_eq!(lines, ["pip install wheel 'setuptools<58'", "pip install --no-build-isolation rjmetrics"]);
    lines
}

fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A venv's python with `rjmetrics` installed by the README's commands, or None (the
/// test is then skipped, or failed under `KEYGATE_REQUIRE_TOOLS=1`).
fn rjmetrics_python(test: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("KEYGATE_RJMETRICS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("rjmetrics-venv"));
    let python = venv.join("bin").join("python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import rjmetrics.client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return Some(python);
    }
    let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return unavailable(test, &format!("python3 -m venv failed: {}", describe(&out)))
                .then_some(python);
        }
        Err(e) => return unavailable(test, &format!("python3 is not available ({e})")).then_some(python),
    }
    for line in readme_installs() {
        // The README's line, run with the venv's pip and a bounded wait for PyPI.
        let args = line.strip_prefix("pip ").unwrap();
        let script = format!("\"$0\" -m pip --disable-pip-version-check --timeout 30 --retries 1 {args}");
        let out = Command::new("sh").arg("-c").arg(script).arg(&python).output().unwrap();
        if !out.status.success() {
            let why = format!("`{line}` failed (is PyPI reachable?): {}", describe(&out));
            return unavailable(test, &why).then_some(python);
        }
    }
    assert!(ready(), "rjmetrics installed but `import rjmetrics.client` fails");
    Some(python)
}

#[tokio::test]
async fn the_readme_python_lines_push_through_the_demo() {
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
