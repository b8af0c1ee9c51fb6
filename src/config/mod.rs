//! Configuration: the file schema ([`schema`]), the inputs read for one load (config
//! text, secret and certificate files, environment values), and their compilation into
//! one immutable [`Snapshot`] that the request path reads without touching a string
//! from config.

mod compile;
mod ctx;
mod route;
pub mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::caller::{AddrSet, Callers};
use crate::routes::RouteTable;
use crate::scrub::Scrubber;
use crate::secret::{Secret, Source};
pub use compile::compile;

/// One problem found in a config, located by file, section and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `routes[1] "bi-export"`, `secrets.bi_import`, `server`…
    pub location: String,
    /// The field, e.g. `allow`.
    pub field: String,
    /// What is wrong, naming the bad value (never a secret).
    pub message: String,
}

/// Every problem found in one config load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub file: PathBuf,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: ", self.file.display())?;
            if !p.location.is_empty() {
                write!(f, "{}: ", p.location)?;
            }
            if !p.field.is_empty() {
                write!(f, "{}: ", p.field)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Gateway listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    pub worker_threads: Option<usize>,
    pub tls: Option<schema::ServerTls>,
}

impl PartialEq for schema::ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key && self.client_ca == other.client_ca
    }
}
impl Eq for schema::ServerTls {}

/// Admin listener settings.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub allow: AddrSet,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

/// Reload timing.
#[derive(Debug, Clone, Copy)]
pub struct ReloadSettings {
    pub poll_interval: Duration,
    pub debounce: Duration,
}

/// A secret as loaded: shown by name and fingerprint, never by value.
#[derive(Debug, Clone)]
pub struct LoadedSecret {
    pub name: String,
    pub source: Source,
    pub fingerprint: String,
    pub loaded_at: SystemTime,
    pub value: Arc<Secret>,
}

/// One compiled, immutable configuration. Requests load it once and use that one
/// version throughout.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub path: PathBuf,
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub log: LogSettings,
    pub reload: ReloadSettings,
    pub callers: Callers,
    pub secrets: Vec<LoadedSecret>,
    /// Every loaded secret, found and redacted in whatever goes back to callers.
    pub scrub: Arc<Scrubber>,
    pub routes: RouteTable,
    /// The compiled `[server.tls]`, when callers speak TLS to keygate.
    pub tls: Option<crate::tls::ServerTls>,
    /// Files whose change triggers a reload.
    pub watched: Vec<PathBuf>,
    /// SHA-256 over every input; equal digests mean a no-op reload.
    pub digest: [u8; 32],
    /// What the config file named, to recompute `digest` without parsing it again.
    pub manifest: Manifest,
    /// Non-fatal findings (inline secrets, plain HTTP to remote hosts, …).
    pub warnings: Vec<String>,
}

/// What a config file names, in the order the inputs digest covers them, with the hash
/// of the file's text. With it, a reload can tell that nothing changed without parsing
/// the file again (parsing a large allowlist takes tens of MiB of transient memory).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    text_digest: [u8; 32],
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    /// A secret's name.
    Name(String),
    File(PathBuf),
    Env(String),
}

impl Manifest {
    fn of(file: &schema::File, text_digest: [u8; 32]) -> Manifest {
        let mut parts = Vec::new();
        for (name, spec) in &file.secrets {
            parts.push(Part::Name(name.clone()));
            parts.extend(spec.file.iter().map(|p| Part::File(p.clone())));
            parts.extend(spec.env.iter().map(|v| Part::Env(v.clone())));
        }
        parts.extend(file.routes.iter().filter_map(|r| r.ca_file.clone()).map(Part::File));
        if let Some(tls) = &file.server.tls {
            let named = [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()];
            parts.extend(named.into_iter().flatten().map(|p| Part::File(p.clone())));
        }
        Manifest { text_digest, parts }
    }

    /// The digest a full read would give for a config file holding `text`, when that is
    /// the text this manifest was made from; `None` when the text changed.
    pub fn digest_if_same_text(&self, text: &[u8]) -> Option<[u8; 32]> {
        if <[u8; 32]>::from(Sha256::digest(text)) != self.text_digest {
            return None;
        }
        Some(self.gather(text).digest)
    }

    /// Reads every named file and variable and hashes them after `text`.
    fn gather(&self, text: &[u8]) -> Gathered {
        let mut hasher = Sha256::new();
        hasher.update(text);
        let mut files = BTreeMap::new();
        let mut env = BTreeMap::new();
        for part in &self.parts {
            match part {
                Part::Name(name) => hasher.update(name.as_bytes()),
                Part::File(path) => read_into(&mut files, &mut hasher, path),
                Part::Env(var) => {
                    let value = std::env::var(var).ok().map(Zeroizing::new);
                    hasher.update([value.is_some() as u8]);
                    if let Some(v) = &value {
                        hasher.update(v.as_bytes());
                    }
                    env.insert(var.clone(), value);
                }
            }
        }
        Gathered { files, env, digest: hasher.finalize().into() }
    }
}

struct Gathered {
    files: BTreeMap<PathBuf, Result<Zeroizing<Vec<u8>>, String>>,
    env: BTreeMap<String, Option<Zeroizing<String>>>,
    digest: [u8; 32],
}

/// Everything one load reads, before compiling: the parsed file plus the bytes of every
/// file and environment value it names, and a digest over all of them.
pub struct Inputs {
    pub path: PathBuf,
    pub file: schema::File,
    pub manifest: Manifest,
    files: BTreeMap<PathBuf, Result<Zeroizing<Vec<u8>>, String>>,
    env: BTreeMap<String, Option<Zeroizing<String>>>,
    pub digest: [u8; 32],
}

impl Inputs {
    /// Reads and parses the config file, then every file and variable it names.
    pub fn read(path: &Path) -> Result<Inputs, Problems> {
        Inputs::parse(path, &read_text(path)?)
    }

    /// Parses `bytes`, the text of the config file at `path`, then reads every file and
    /// variable it names.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Inputs, Problems> {
        let text = std::str::from_utf8(bytes).map_err(|_| problem(path, "the file is not UTF-8".into()))?;
        let file: schema::File =
            toml::from_str(text).map_err(|e| problem(path, describe_toml_error(text, &e)))?;
        let manifest = Manifest::of(&file, Sha256::digest(bytes).into());
        let Gathered { files, env, digest } = manifest.gather(bytes);
        Ok(Inputs { path: path.to_owned(), file, manifest, files, env, digest })
    }

    /// The bytes of a file named by the config, or why it could not be read.
    pub fn file_bytes(&self, path: &Path) -> Result<&[u8], String> {
        match self.files.get(path) {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(e)) => Err(e.clone()),
            None => Err("was not read".into()),
        }
    }

    /// The value of an environment variable named by the config.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env.get(name).and_then(|v| v.as_deref().map(String::as_str))
    }

    /// Every file the config names (for the watcher).
    pub fn named_files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.path.clone()];
        out.extend(self.files.keys().cloned());
        out
    }
}

/// The bytes of the config file at `path` (wiped when dropped: the file may hold a key).
pub fn read_text(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problems> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| problem(path, format!("cannot read the file: {e}")))
}

/// A problem with the config file as a whole.
fn problem(path: &Path, message: String) -> Problems {
    Problems {
        file: path.to_owned(),
        list: vec![Problem { location: String::new(), field: String::new(), message }],
    }
}

fn read_into(
    files: &mut BTreeMap<PathBuf, Result<Zeroizing<Vec<u8>>, String>>,
    hasher: &mut Sha256,
    path: &Path,
) {
    if files.contains_key(path) {
        return;
    }
    let read = std::fs::read(path).map(Zeroizing::new).map_err(|e| e.kind().to_string());
    hasher.update(path.as_os_str().as_encoded_bytes());
    match &read {
        Ok(bytes) => {
            hasher.update([1]);
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes[..]);
        }
        Err(_) => hasher.update([0]),
    }
    files.insert(path.to_owned(), read);
}

/// A TOML error as `line L, column C: message`, without echoing the source line (which
/// might hold an inline secret) or a string value serde quoted.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let mut message = error.message().to_owned();
    for marker in ["string \"", "invalid value: string \""] {
        if let Some(start) = message.find(marker) {
            let value_start = start + marker.len();
            if let Some(len) = message[value_start..].find("\", expected") {
                message.replace_range(value_start - 1..value_start + len + 1, "(value hidden)");
            }
        }
    }
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}{message}", route_context(text, before))
        }
        None => message,
    }
}

/// `routes[N] "name": ` when the error sits inside the N-th `[[routes]]` table, so a
/// typo in a route's key is reported against that route.
fn route_context(text: &str, before: &str) -> String {
    let tables: Vec<&str> = before.lines().map(str::trim).filter(|l| l.starts_with('[')).collect();
    if tables.last() != Some(&"[[routes]]") {
        return String::new();
    }
    let index = tables.iter().filter(|l| **l == "[[routes]]").count() - 1;
    // The name is found by a syntax-only parse (types and unknown keys are not checked).
    let name = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("routes")?.as_array()?.get(index)?.get("name")?.as_str().map(str::to_owned));
    match name {
        Some(name) => format!("routes[{index}] {name:?}: "),
        None => format!("routes[{index}]: "),
    }
}

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. \"250ms\", \"10s\", \"2m\")"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?} is not a duration (use e.g. \"250ms\", \"10s\", \"2m\")")),
    };
    Ok(d)
}

/// Reads and compiles a config file as generation `generation`, with upstream clients
/// of its own (a running gateway's reloads share the gateway's, see [`compile`]).
pub fn load(path: &Path, generation: u64, previous: Option<&Snapshot>) -> Result<Snapshot, Problems> {
    let inputs = Inputs::read(path)?;
    compile(&inputs, generation, previous, &crate::upstream::Cache::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.5s", "10 sec", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_errors_do_not_echo_values() {
        let text =
            "[secrets.x]\nvalue = \"sentinel-abc\"\nfile = 3\n[[routes]]\nclient_id = \"sentinel-def\"\n";
        let err = toml::from_str::<schema::File>(text).unwrap_err();
        let msg = describe_toml_error(text, &err);
        assert!(!msg.contains("sentinel"), "{msg}");
        assert!(msg.starts_with("line "), "{msg}");
    }

    #[test]
    fn the_manifest_gives_the_full_digest_without_parsing_and_only_for_the_same_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        let key = dir.path().join("key");
        std::fs::write(&key, "k\n").unwrap();
        let text = format!("[secrets.s]\nfile = \"{}\"\nenv = \"KEYGATE_MANIFEST_TEST\"\n", key.display());
        std::fs::write(&path, &text).unwrap();
        let first = Inputs::read(&path).unwrap();
        let text_now = || std::fs::read(&path).unwrap();
        assert_eq!(first.manifest.digest_if_same_text(&text_now()), Some(first.digest));

        // A named file that changed changes the digest, exactly as a full read does.
        std::fs::write(&key, "k2\n").unwrap();
        let rotated = Inputs::read(&path).unwrap();
        assert_ne!(rotated.digest, first.digest);
        assert_eq!(first.manifest.digest_if_same_text(&text_now()), Some(rotated.digest));

        // Another text needs a parse: no answer.
        std::fs::write(&path, format!("{text}[log]\nlevel = \"debug\"\n")).unwrap();
        assert_eq!(first.manifest.digest_if_same_text(&text_now()), None);
        std::fs::remove_file(&path).unwrap();
        let gone = read_text(&path).expect_err("a missing file is a problem").to_string();
        assert!(gone.contains("cannot read the file"), "{gone}");
    }

    #[test]
    fn unknown_route_keys_name_the_route() {
        let text = "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nalow = []\n";
        let err = toml::from_str::<schema::File>(text).unwrap_err();
        let msg = describe_toml_error(text, &err);
        assert!(msg.starts_with("line 5, column 1: routes[1] \"b\": unknown field `alow`"), "{msg}");
    }
}
