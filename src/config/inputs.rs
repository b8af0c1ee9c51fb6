//! Everything one load reads before compiling: the config text parsed into its schema,
//! the bytes of every file and environment value it names, and one digest over all of
//! them, with the [`Manifest`] that lets a reload tell "nothing changed" without
//! parsing again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::problems::problem;
use super::{Problem, Problems, schema, unknown};

/// What a config file names, in the order the inputs digest covers them, with the hash
/// of the file's text. With it, a reload can tell that nothing changed without parsing
/// the file again (parsing a large allowlist takes tens of MiB of transient memory).
#[derive(Debug, Clone, Default)]
pub(crate) struct Manifest {
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
    pub(crate) fn digest_if_same_text(&self, text: &[u8]) -> Option<[u8; 32]> {
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

/// What one load reads besides the config file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Every secret file and variable, TLS and CA file the config names: what `run`,
    /// reloads and `check` read.
    Everything,
    /// Nothing but the config file (`check --no-secrets`): its structure is checked, the
    /// files and variables it names are not read, so their contents are not checked.
    StructureOnly,
}

/// Everything one load reads, before compiling: the parsed file plus the bytes of every
/// file and environment value it names, and a digest over all of them.
pub struct Inputs {
    pub(crate) path: PathBuf,
    pub(crate) file: schema::File,
    /// Keys the schema does not know, each a problem reported with the compile's.
    pub(crate) unknown: Vec<Problem>,
    pub(crate) reading: Reading,
    pub(crate) manifest: Manifest,
    files: BTreeMap<PathBuf, Result<Zeroizing<Vec<u8>>, String>>,
    env: BTreeMap<String, Option<Zeroizing<String>>>,
    pub(crate) digest: [u8; 32],
}

impl Inputs {
    /// Reads and parses the config file, then every file and variable it names.
    pub(crate) fn read(path: &Path) -> Result<Inputs, Problems> {
        Inputs::parse(path, &read_text(path)?)
    }

    /// Parses `bytes`, the text of the config file at `path`, then reads every file and
    /// variable it names.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Inputs, Problems> {
        Inputs::parse_reading(path, bytes, Reading::Everything)
    }

    /// [`Inputs::parse`], reading only what `reading` says.
    pub(crate) fn parse_reading(path: &Path, bytes: &[u8], reading: Reading) -> Result<Inputs, Problems> {
        let text = std::str::from_utf8(bytes).map_err(|_| problem(path, "the file is not UTF-8".into()))?;
        let (file, unknown) =
            unknown::parse(text).map_err(|e| problem(path, describe_toml_error(text, &e)))?;
        let manifest = Manifest::of(&file, Sha256::digest(bytes).into());
        let Gathered { files, env, digest } = match reading {
            Reading::Everything => manifest.gather(bytes),
            Reading::StructureOnly => Gathered {
                files: BTreeMap::new(),
                env: BTreeMap::new(),
                digest: Sha256::digest(bytes).into(),
            },
        };
        Ok(Inputs { path: path.to_owned(), file, unknown, reading, manifest, files, env, digest })
    }

    /// The bytes of a file named by the config, or why it could not be read.
    pub(crate) fn file_bytes(&self, path: &Path) -> Result<&[u8], String> {
        match self.files.get(path) {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(e)) => Err(e.clone()),
            None => Err("was not read".into()),
        }
    }

    /// The value of an environment variable named by the config.
    pub(crate) fn env_value(&self, name: &str) -> Option<&str> {
        self.env.get(name).and_then(|v| v.as_deref().map(String::as_str))
    }

    /// Every file the config names (for the watcher).
    pub(crate) fn named_files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.path.clone()];
        out.extend(self.files.keys().cloned());
        out
    }
}

/// The bytes of the config file at `path` (wiped when dropped: the file may hold a key).
pub(crate) fn read_text(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problems> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| problem(path, format!("cannot read the file: {}", describe_io(&e))))
}

/// Why a file could not be read, in words for the person who named it.
pub(crate) fn describe_io(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound => "no such file".into(),
        ErrorKind::PermissionDenied => "permission denied (keygate's user may not read it)".into(),
        ErrorKind::IsADirectory => "it is a directory, not a file".into(),
        // The system's own words ("Too many open files (os error 24)"): clearer than the
        // kind's name for the rest.
        _ => error.to_string(),
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
    let read = std::fs::read(path).map(Zeroizing::new).map_err(|e| describe_io(&e));
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
            let (line, column) = unknown::line_column(text, span.start);
            let before = &text[..span.start.min(text.len())];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_do_not_echo_values() {
        let text =
            "[secrets.x]\nvalue = \"sentinel-abc\"\nfile = 3\n[[routes]]\nclient_id = \"sentinel-def\"\n";
        let err = unknown::parse(text).err().unwrap();
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
        assert!(gone.ends_with("cannot read the file: no such file"), "{gone}");
    }

    #[test]
    fn type_errors_in_a_route_name_the_route() {
        let text = "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nclient_id = []\n";
        let err = unknown::parse(text).err().unwrap();
        let msg = describe_toml_error(text, &err);
        assert!(msg.starts_with("line 5, column 13: routes[1] \"b\": invalid type"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_kept_for_the_report_and_the_rest_is_parsed() {
        let text = "[[routes]]\nname = \"a\"\nalow = []\nallow = [\"10.0.0.0/8\"]\n";
        let inputs = Inputs::parse(Path::new("k.toml"), text.as_bytes()).unwrap();
        assert_eq!(inputs.file.routes[0].allow.as_deref(), Some(&["10.0.0.0/8".to_owned()][..]));
        let unknown: Vec<(&str, &str)> =
            inputs.unknown.iter().map(|p| (p.location.as_str(), p.field.as_str())).collect();
        assert_eq!(unknown, [("routes[0] \"a\"", "alow")]);
    }

    #[test]
    fn a_structure_only_read_reads_no_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k\n").unwrap();
        let text = format!("[secrets.s]\nfile = \"{}\"\n", key.display());
        let all = Inputs::parse(Path::new("k.toml"), text.as_bytes()).unwrap();
        assert!(all.file_bytes(&key).is_ok());
        let structure =
            Inputs::parse_reading(Path::new("k.toml"), text.as_bytes(), Reading::StructureOnly).unwrap();
        assert!(structure.file_bytes(&key).is_err(), "a structure-only read reads no secret file");
    }

    #[test]
    fn unreadable_files_are_described_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let missing = std::fs::read(dir.path().join("gone")).unwrap_err();
        assert_eq!(describe_io(&missing), "no such file");
        let directory = std::fs::read(dir.path()).unwrap_err();
        assert_eq!(describe_io(&directory), "it is a directory, not a file");
    }
}
