//! The systemd unit is hardened and passes `systemd-analyze verify`.

use std::process::Command;

use crate::kit::*;
use crate::repo;
use crate::support::tools::have_tool;

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit_path = repo().join("deploy/systemd/keygate.service");
    let unit = std::fs::read_to_string(&unit_path).expect("keygate.service");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| directives.contains(&(k, v));
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert!(has(k, v), "keygate.service needs {k}={v}");
    }
    assert!(
        has("DynamicUser", "yes") || directives.iter().any(|(k, v)| *k == "User" && *v != "root"),
        "keygate.service must run as a non-root user"
    );
    // It must outwait keygate's default drain (shutdown_grace = 20s).
    let stop = directives
        .iter()
        .find(|(k, _)| *k == "TimeoutStopSec")
        .and_then(|(_, v)| duration_ms(v))
        .expect("TimeoutStopSec");
    assert!(stop > 20_000, "TimeoutStopSec must exceed shutdown_grace (20s)");

    let test = "systemd_unit_is_hardened_and_verifies";
    if !have_tool(
        test,
        "systemd-analyze",
        "apt-get install systemd",
        Command::new("systemd-analyze").arg("--version"),
    ) {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("keygate.service");
    std::fs::write(&copy, unit.replace("/usr/bin/keygate", env!("CARGO_BIN_EXE_keygate")))
        .expect("write unit");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    // Unknown or misspelt directives only print a warning, so any output is a failure.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
    // Offline exposure score (0-100 in tenths): 20 = "2.0 OK".
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy));
    assert!(out.status.success(), "systemd-analyze security: exposure above 2.0\n{}", text(&out));
}
