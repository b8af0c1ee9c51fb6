//! The vendor's Python client (`rjmetrics` 0.1.0 from PyPI, unmodified) in a virtual
//! environment made once per build directory: the one place the tests install it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::tools::have_tool;

/// The `python` of a virtual environment holding `rjmetrics`, made on first use under
/// the build's temporary directory; `None` (the test skips) when python3 or the install
/// is not available, a failure with `KEYGATE_REQUIRE_TOOLS=1`.
pub fn rjmetrics_python(test: &str) -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = VENV.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rjmetrics-venv");
        let python = dir.join("bin").join("python");
        if python.exists() && run(Command::new(&python).args(["-c", "import rjmetrics.client"])).is_ok() {
            return Ok(python);
        }
        run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&dir))?;
        // rjmetrics 0.1.0 ships only a source archive whose setup.py needs an old
        // setuptools; build isolation would fetch a new one.
        run(Command::new(&python).args(["-m", "pip", "install", "-q", "wheel", "setuptools<58"]))?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--no-build-isolation",
            "rjmetrics==0.1.0",
        ]))?;
        Ok(python)
    });
    match made {
        Ok(python) => Some(python.clone()),
        Err(why) => {
            let install = format!("python3 -m venv, then pip install rjmetrics ({why})");
            // Fails the test under KEYGATE_REQUIRE_TOOLS=1, else says why it skips.
            let _ = have_tool(test, "the rjmetrics Python client", &install, &mut Command::new("false"));
            None
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{command:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}
