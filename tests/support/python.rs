//! The vendor's Python client (`rjmetrics` 0.1.0 from PyPI, unmodified) in a virtual
//! environment: the one place the tests find or install it. The venv is
//! `$KEYGATE_RJMETRICS_VENV` (`.ci/run` makes it) or one under Cargo's target directory,
//! made on first use with [`INSTALLS`] (the README's commands).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use super::tools::unavailable;

/// The pip lines that install the client, as the README gives them: rjmetrics 0.1.0
/// ships only a source archive whose setup.py needs an old setuptools, which build
/// isolation would replace with a new one.
pub const INSTALLS: [&str; 2] =
    ["pip install wheel 'setuptools<58'", "pip install --no-build-isolation rjmetrics"];

fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A venv's python with `rjmetrics` installed, or None (the test is then skipped, or
/// failed under `KEYGATE_REQUIRE_TOOLS=1`).
pub fn rjmetrics_python(test: &str) -> Option<PathBuf> {
    // Tests of one binary run in parallel: one of them installs, the others wait.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
    for line in INSTALLS {
        // The README's line, run with the venv's pip and a bounded wait for PyPI.
        let args = line.strip_prefix("pip ").unwrap_or(line);
        let script = format!("\"$0\" -m pip --disable-pip-version-check --timeout 30 --retries 1 {args}");
        let out = Command::new("sh").arg("-c").arg(script).arg(&python).output();
        let failed = match out {
            Ok(out) if out.status.success() => continue,
            Ok(out) => describe(&out),
            Err(e) => e.to_string(),
        };
        let why = format!("`{line}` failed (is PyPI reachable?): {failed}");
        return unavailable(test, &why).then_some(python);
    }
    assert!(ready(), "rjmetrics installed but `import rjmetrics.client` fails");
    Some(python)
}
