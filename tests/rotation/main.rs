//! Key rotation with proof, driven against the real binary and the keyed fake BI
//! upstream (`tests/support/upstream/keyed.rs`), which accepts a changeable set of keys
//! and judges every request by the set at that moment: a key the upstream refuses is
//! never used, an accepted one is in use within about a second of the file change, a
//! revoked current key is covered by one retry with the previous key during the
//! overlap, a proof survives the upstream going down, no request fails across many
//! rotations under load, and `keygate check --verify` proves every key once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod accept;
mod check;
mod down;
mod fallback;
mod load;
mod reject;

use std::path::{Path, PathBuf};

use support::files::{write_by_rename, write_private};
use support::keys::CID;
use support::poll::{SOON, eventually};
use support::process::Keygate;
use support::upstream::keyed::KeyedUpstream;

/// Held alone by the load test; read by the tests that bound a rotation's delay, so the
/// load never eats their time bound.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The import route's secret file, the export route's and the generic route's.
const SECRETS: [&str; 3] = ["bi_import", "bi_export", "acme"];

/// What the rig's config sets besides its routes.
#[derive(Clone)]
pub struct Timing {
    pub poll: &'static str,
    pub verify_timeout: &'static str,
    pub overlap: &'static str,
    /// More TOML (e.g. `verify = false` for a secret) appended to the config.
    pub extra: String,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { poll: "1h", verify_timeout: "2m", overlap: "10m", extra: String::new() }
    }
}

/// The config: an import route `/import`, an export route `/export` and a generic route
/// `/acme` (key in `X-Api-Key`, proven with `GET /me`) to `upstream`, each with its own
/// secret file in `dir`.
pub fn config_text(dir: &Path, upstream: &str, timing: &Timing) -> String {
    let d = dir.display();
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[reload]
poll_interval = "{poll}"
debounce = "50ms"
verify_timeout = "{verify_timeout}"
overlap = "{overlap}"

[secrets.bi_import]
file = "{d}/bi_import.key"

[secrets.bi_export]
file = "{d}/bi_export.key"

[secrets.acme]
file = "{d}/acme.key"

[[routes]]
name = "bi-import"
prefix = "/import"
preset = "rjmetrics-import"
client_id = {CID}
secret = "bi_import"
upstream = "{upstream}"
allow = ["127.0.0.0/8"]

[[routes]]
name = "bi-export"
prefix = "/export"
preset = "rjmetrics-export"
client_id = {CID}
secret = "bi_export"
upstream = "{upstream}"
allow = ["127.0.0.0/8"]

[[routes]]
name = "acme"
prefix = "/acme"
upstream = "{upstream}"
inject = {{ header = "X-Api-Key" }}
verify = {{ path = "/me" }}
secret = "acme"
allow = ["127.0.0.0/8"]
{extra}"#,
        poll = timing.poll,
        verify_timeout = timing.verify_timeout,
        overlap = timing.overlap,
        extra = timing.extra,
    )
}

/// A sentinel key of `secret`: `sentinel-<secret>-<tag>`.
pub fn key(secret: &str, tag: &str) -> String {
    format!("sentinel-{secret}-{tag}")
}

/// The key each secret starts with, which the upstream accepts at start.
pub fn first_key(secret: &str) -> String {
    key(secret, "1")
}

/// keygate in front of the keyed upstream, which accepts each secret's first key.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub upstream: KeyedUpstream,
    pub kg: Keygate,
}

impl Rig {
    pub async fn start(timing: Timing) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let firsts: Vec<String> = SECRETS.iter().map(|s| first_key(s)).collect();
        let upstream = KeyedUpstream::start(&firsts.iter().map(String::as_str).collect::<Vec<_>>()).await;
        for secret in SECRETS {
            write_private(&Rig::key_path(dir.path(), secret), &format!("{}\n", first_key(secret)));
        }
        let config = dir.path().join("keygate.toml");
        write_private(&config, &config_text(dir.path(), &upstream.url(), &timing));
        let kg = Keygate::start(&config).await;
        Rig { dir, upstream, kg }
    }

    fn key_path(dir: &Path, secret: &str) -> PathBuf {
        dir.join(format!("{secret}.key"))
    }

    /// Replaces the secret's file (by rename, as editors and `install` + `mv` do).
    pub fn rotate(&self, secret: &str, key: &str) {
        write_by_rename(&Rig::key_path(self.dir.path(), secret), &format!("{key}\n"));
    }

    /// The entry of `secret` in `/config`.
    pub async fn secret(&self, secret: &str) -> serde_json::Value {
        let config = self.kg.config().await;
        config["secrets"].as_array().unwrap().iter().find(|s| s["name"] == secret).unwrap().clone()
    }

    /// One series of `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = support::client::get(self.kg.admin, "/metrics", &[]).await.text();
        support::metrics::sample(&text, series).unwrap_or(0.0)
    }

    /// `keygate_secret_verifications_total{result, secret}`.
    pub async fn verifications(&self, secret: &str, result: &str) -> f64 {
        self.metric(&format!("keygate_secret_verifications_total{{result=\"{result}\",secret=\"{secret}\"}}"))
            .await
    }

    /// Waits until the reload counters read (successes, failures, last successful): they
    /// move right after the snapshot they count is published.
    pub async fn reloads(&self, expected: (f64, f64, f64)) {
        eventually(&format!("reloads (successes, failures, last ok) = {expected:?}"), SOON, || async {
            let (s, f, ok, _) = self.kg.reload_state().await;
            (s, f, ok) == expected
        })
        .await;
    }

    /// `keygate_secret_fallbacks_total{secret}`.
    pub async fn fallbacks(&self, secret: &str) -> f64 {
        self.metric(&format!("keygate_secret_fallbacks_total{{secret=\"{secret}\"}}")).await
    }
}

/// The import route's `authenticate` through keygate (what callers use to check a key).
pub const IMPORT_GET: &str = "/import/v2/client/12345/authenticate";
/// An import upsert through keygate.
pub const IMPORT_UPSERT: &str = "/import/v2/client/12345/table/orders/data";
/// The export route's table list through keygate.
pub const EXPORT_GET: &str = "/export/0.1/client/12345/table";
