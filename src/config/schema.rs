//! The on-disk config file (docs/configuration.md): plain serde structs.
//! Every field here is documented for operators; `compile` turns them into typed,
//! checked settings. Unknown keys are errors, but serde does not refuse them here: the
//! config is read through `super::unknown`, which collects every one of them so that
//! they are reported together with the problems of the rest of the file. Deserializing
//! a [`File`] any other way ignores unknown keys.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

/// The whole file.
#[derive(Debug, Deserialize, Default)]
pub struct File {
    /// The gateway listener and its limits.
    #[serde(default)]
    pub server: Server,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/config`); absent: none.
    pub admin: Option<Admin>,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// When config and secret files are re-read.
    #[serde(default)]
    pub reload: Reload,
    /// Caller groups and trusted proxies.
    #[serde(default)]
    pub callers: Callers,
    /// Named secrets, each from a file, an environment variable or an inline value.
    #[serde(default, deserialize_with = "ordered")]
    pub secrets: Vec<(String, SecretSpec)>,
    /// The routes, matched by longest prefix.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// What several keygate processes share (the update-status guard's answers).
    pub coordination: Option<Coordination>,
}

/// `[coordination]`.
#[derive(Deserialize, Default)]
pub struct Coordination {
    /// `redis://[user:password@]host[:port][/db]`: where sidecars of one client id share
    /// update-status answers and the lock that lets one of them call upstream.
    pub redis: Option<String>,
}

impl fmt::Debug for Coordination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("Coordination").field("redis", &self.redis.as_ref().map(|_| "[REDACTED]")).finish()
    }
}

/// One socket address or a list of them.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    pub fn addrs(&self) -> Vec<String> {
        match self {
            Listen::One(a) => vec![a.clone()],
            Listen::Many(list) => list.clone(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize, Default)]
pub struct Server {
    /// Socket address(es) to listen on. Default `127.0.0.1:8080`.
    pub listen: Option<Listen>,
    /// Time allowed to receive a request's headers. Default `10s`.
    pub header_timeout: Option<String>,
    /// Keep-alive connections idle longer are closed. Default `60s`.
    pub idle_timeout: Option<String>,
    /// Beyond this many open connections, new ones are refused. Default 10000.
    pub max_connections: Option<u64>,
    /// Larger request heads get 431. Default 32768.
    pub max_header_bytes: Option<u64>,
    /// Drain time after SIGTERM/SIGINT. Default `20s`.
    pub shutdown_grace: Option<String>,
    /// Runtime worker threads. Default: the number of CPUs.
    pub worker_threads: Option<u64>,
    /// Terminate TLS for callers.
    pub tls: Option<ServerTls>,
    /// Accept `CONNECT` for the hosts that routes name, and terminate TLS inside the
    /// tunnel with this certificate.
    pub intercept: Option<Intercept>,
}

/// `[server.intercept]`: the certificate keygate presents inside a `CONNECT` tunnel, for
/// the hostnames routes name, issued by a CA the callers trust (keygate never holds a
/// CA key).
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub struct Intercept {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[server.tls]`.
#[derive(Debug, Deserialize, Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, callers must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
pub struct Admin {
    /// Socket address of the admin listener.
    pub listen: String,
    /// Who may read `/metrics` and `/config`. Default loopback only.
    pub allow: Option<Vec<String>>,
}

/// `[log]`.
#[derive(Debug, Deserialize, Default)]
pub struct Log {
    /// `json` (default) or `text`.
    pub format: Option<String>,
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    pub level: Option<String>,
    /// One line per request. Default true.
    pub access: Option<bool>,
}

/// `[reload]`.
#[derive(Debug, Deserialize, Default)]
pub struct Reload {
    /// Re-check files even without a filesystem event. Default `30s`.
    pub poll_interval: Option<String>,
    /// Quiet time after the last event before re-reading. Default `200ms`.
    pub debounce: Option<String>,
    /// How long a changed key may take to be proven before it is given up. Default `2m`.
    pub verify_timeout: Option<String>,
    /// How long the replaced key is kept after a rotation, for one retry of a safe
    /// request the upstream refused with the new key. Default `10m`; `0s` keeps none.
    pub overlap: Option<String>,
}

/// `[callers]`.
#[derive(Debug, Deserialize, Default)]
pub struct Callers {
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Named groups, in file order.
    #[serde(default, deserialize_with = "ordered")]
    pub groups: Vec<(String, Group)>,
}

/// `[callers.groups.NAME]`.
#[derive(Debug, Deserialize, Default)]
pub struct Group {
    /// Networks of the group's callers.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// mTLS client certificate SAN URIs / DNS names, matched exactly.
    #[serde(default)]
    pub identities: Vec<String>,
}

/// `[secrets.NAME]`: exactly one of `file`, `env`, `value`.
#[derive(Deserialize, Default)]
pub struct SecretSpec {
    /// A file holding the key (trailing whitespace trimmed).
    pub file: Option<PathBuf>,
    /// An environment variable holding the key.
    pub env: Option<String>,
    /// The key itself (development only; `check` warns).
    pub value: Option<String>,
    /// Prove a changed value against the upstream before using it. Default true.
    pub verify: Option<bool>,
}

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("file", &self.file)
            .field("env", &self.env)
            .field("value", &self.value.as_ref().map(|_| "[REDACTED]"))
            .field("verify", &self.verify)
            .finish()
    }
}

impl Drop for SecretSpec {
    fn drop(&mut self) {
        if let Some(v) = self.value.as_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

/// `[[routes]]`.
#[derive(Debug, Deserialize, Default)]
pub struct RouteSpec {
    /// Unique, `[a-z0-9_-]+`; used in logs and metric labels.
    pub name: Option<String>,
    /// The request host this route serves (`Host`, `:authority` or an absolute-form
    /// target's authority; any letter case, the default port ignored). Routes with a host
    /// are tried before routes without one.
    pub host: Option<String>,
    /// Unique per host; matches the prefix and everything below it on a segment
    /// boundary. Required without `host`; with it, the default is `/`.
    pub prefix: Option<String>,
    /// `rjmetrics-import` or `rjmetrics-export`; absent for a generic route.
    pub preset: Option<String>,
    /// The BI client id the route is pinned to (both presets).
    pub client_id: Option<u64>,
    /// The name of a `[secrets.NAME]` entry.
    pub secret: Option<String>,
    /// Group names and/or CIDR literals allowed to use the route. Required.
    pub allow: Option<Vec<String>>,
    /// Evaluated and counted, never enforced.
    pub shadow_allow: Option<Vec<String>>,
    /// Preset operations forwarded. Default: all of the preset's.
    pub operations: Option<Vec<String>>,
    /// Upstream base URL. Default: the preset's production host; required for generic routes.
    pub upstream: Option<String>,
    /// Extra PEM trust anchors for this upstream.
    pub ca_file: Option<PathBuf>,
    /// Default `5s`.
    pub connect_timeout: Option<String>,
    /// Until upstream response headers. Default `60s`.
    pub response_timeout: Option<String>,
    /// Largest request body forwarded. Default 5242880.
    pub max_body_bytes: Option<u64>,
    /// Import preset: check upsert bodies locally. Default true.
    pub validate_body: Option<bool>,
    /// Import preset: batches of a re-batched upsert in flight at once (1..=16). Default 1.
    pub batch_concurrency: Option<u64>,
    /// Import preset: retries of one batch answered 429, 5xx or not at all (0..=10). Default 3.
    pub batch_retries: Option<u64>,
    /// Export preset: how long an `update_status` answer is shared. Default `60s`; `0s` turns
    /// the guard off.
    pub update_status_ttl: Option<String>,
    /// Generic routes: how the key is carried.
    pub inject: Option<Inject>,
    /// Generic routes: methods forwarded.
    pub methods: Option<Vec<String>>,
    /// Generic routes: the read-only call that proves a changed key before it is used.
    pub verify: Option<Verify>,
}

/// `verify = { method = "GET", path = "/…", expect = [200] }` on a generic route.
#[derive(Debug, Deserialize, Default)]
pub struct Verify {
    /// `GET` (default) or `HEAD`.
    pub method: Option<String>,
    /// The path after the upstream's base, with an optional query. Required.
    pub path: Option<String>,
    /// The statuses that accept the key. Default: any 2xx.
    pub expect: Option<Vec<u16>>,
}

/// `inject = { header = "...", format = "..." }` or `inject = { query = "..." }`.
#[derive(Debug, Deserialize, Default)]
pub struct Inject {
    pub header: Option<String>,
    /// Must contain `{secret}` once. Default `{secret}`.
    pub format: Option<String>,
    pub query: Option<String>,
}

/// Deserializes a table into `(key, value)` pairs in file order.
fn ordered<'de, D, T>(deserializer: D) -> Result<Vec<(String, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Ordered<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Ordered<T> {
        type Value = Vec<(String, T)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Ordered(std::marker::PhantomData))
}
