//! External tools some tests need (promtool, python3, systemd-analyze): optional
//! locally, where a test without its tool says why it skipped; required in CI, where
//! `KEYGATE_REQUIRE_TOOLS=1` makes a missing tool a failure.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `probe`; true when it succeeds. Otherwise fails the test when
/// `KEYGATE_REQUIRE_TOOLS=1`, else prints why `test` is skipped and returns false.
pub fn have_tool(test: &str, tool: &str, install: &str, probe: &mut Command) -> bool {
    let ok = probe.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    ok || unavailable(test, &format!("{tool} is not available (install: {install})"))
}

/// Something `test` needs is missing, as `why` says: fails the test when
/// `KEYGATE_REQUIRE_TOOLS=1`, else prints that `test` is skipped, and returns false.
pub fn unavailable(test: &str, why: &str) -> bool {
    let msg = format!("{test}: {why}");
    if std::env::var("KEYGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg}; KEYGATE_REQUIRE_TOOLS=1 makes this a failure");
    }
    // Straight to the process's stderr: the test harness captures eprintln! of passing
    // tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {msg}; set KEYGATE_REQUIRE_TOOLS=1 to fail instead");
    false
}

/// [`have_tool`] for promtool (from the `prometheus` package).
pub fn have_promtool(test: &str) -> bool {
    have_tool(test, "promtool", "apt-get install prometheus", Command::new("promtool").arg("--version"))
}
