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

/// The Python of a virtualenv holding the official `rjmetrics` client from PyPI:
/// `$KEYGATE_RJMETRICS_VENV` (`.ci/run` makes it) or one made once per target directory; `None` (after saying why, or failing with
/// `KEYGATE_REQUIRE_TOOLS=1`) when python3 or the package cannot be had. Its old
/// `setup.py` needs `setuptools<58` and no build isolation.
pub fn rjmetrics_python(test: &str) -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("KEYGATE_RJMETRICS_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rjmetrics-venv"));
    let python = venv.join("bin/python");
    let import = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import rjmetrics.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !import(&python) {
        let pip = venv.join("bin/pip");
        let steps: [&[&str]; 3] = [
            &["python3", "-m", "venv", venv.to_str().unwrap_or_default()],
            &[pip.to_str().unwrap_or_default(), "install", "-q", "wheel", "setuptools<58"],
            &[pip.to_str().unwrap_or_default(), "install", "-q", "--no-build-isolation", "rjmetrics"],
        ];
        for step in steps {
            let _ =
                Command::new(step[0]).args(&step[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
    let mut probe = Command::new(&python);
    probe.args(["-c", "import rjmetrics.client"]);
    have_tool(test, "the rjmetrics Python client", "pip install --no-build-isolation rjmetrics", &mut probe)
        .then_some(python)
}
