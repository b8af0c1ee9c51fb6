//! Hot reload of config and secrets, driven against the real binary: files changed the
//! ways real tools change them, failed reloads, SIGHUP and the poll, settings that apply
//! live or at restart, reloads under load and every few seconds, and rotations beside
//! files that change all the time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod busy;
mod failures;
mod files;
mod noise;
mod settings;
mod steady;
mod triggers;
mod under_load;

use std::path::{Path, PathBuf};

use support::files::write_private;
use support::process::Keygate;
use support::upstream::{FakeUpstream, echo};

/// Written (held alone) by the tests that load the machine with steady requests; read
/// by the tests that bound a rotation tightly (1.5 s beside busy files). So one test's
/// load never eats another's time bound, and the tight tests still run side by side as
/// they did in their own binary.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The test config: one generic route `/echo` to the echo upstream injecting secret
/// `echo` as `X-Api-Key`, plus whatever `extra` adds.
fn config_text(upstream: &str, key_file: &Path, poll: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[reload]
poll_interval = "{poll}"
debounce = "50ms"

[secrets.echo]
file = "{key}"
{extra}
[[routes]]
name = "echo"
prefix = "/echo"
upstream = "{upstream}"
inject = {{ header = "X-Api-Key" }}
secret = "echo"
allow = ["127.0.0.0/8"]
"#,
        key = key_file.display()
    )
}

/// A temp dir with `keygate.toml` and `secrets/key`, an echo upstream, and keygate.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub echo: FakeUpstream,
    pub config: PathBuf,
    pub key: PathBuf,
    pub kg: Keygate,
}

impl Rig {
    /// Starts keygate on the [`config_text`] with `poll`, the key `key` and `extra` TOML.
    pub async fn start(poll: &str, key: &str, extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let echo = FakeUpstream::start(echo("x-api-key")).await;
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        let key_file = dir.path().join("secrets/key");
        write_private(&key_file, key);
        let config = dir.path().join("keygate.toml");
        write_private(&config, &config_text(&format!("http://{}", echo.addr), &key_file, poll, extra));
        let kg = Keygate::start(&config).await;
        Rig { dir, echo, config, key: key_file, kg }
    }

    /// The config as written at start, with the route's upstream base path set to `base`.
    pub fn config_with_base(&self, poll: &str, base: &str, extra: &str) -> String {
        config_text(&format!("http://{}{base}", self.echo.addr), &self.key, poll, extra)
    }
}
