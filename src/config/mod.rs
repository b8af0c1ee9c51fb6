//! Configuration: the file schema ([`schema`]), the inputs read for one load (config
//! text, secret and certificate files, environment values: [`inputs`]), and their
//! compilation into one immutable [`Snapshot`] that the request path reads without
//! touching a string from config. What can be wrong with a config is in [`problems`].

mod compile;
mod ctx;
mod duration;
mod inputs;
mod kind;
mod limits;
mod problems;
mod proof;
mod route;
pub mod schema;
mod settings;
mod snapshot;
mod unknown;

use std::path::Path;

pub use compile::compile;
pub(crate) use compile::compile_with;
pub(crate) use duration::parse_duration;
pub use inputs::Inputs;
pub(crate) use inputs::{Manifest, Reading, read_text};
pub(crate) use limits::CoordinationSettings;
pub use problems::{Problem, Problems};
pub(crate) use settings::{AdminSettings, LogFormat, LogSettings, ReloadSettings, ServerSettings};
pub(crate) use snapshot::LoadedSecret;
pub use snapshot::Snapshot;

/// Reads and compiles a config file as generation `generation`, with upstream clients
/// of its own (a running gateway's reloads share the gateway's, see [`compile_with`]).
pub fn load(path: &Path, generation: u64, previous: Option<&Snapshot>) -> Result<Snapshot, Problems> {
    compile(&Inputs::read(path)?, generation, previous)
}

/// What `check --no-secrets` checks: the config file alone, compiled with a stand-in
/// for every secret read from a file or variable, and without its TLS and CA files. The
/// result shows what would run, but is never served.
pub(crate) fn load_structure(path: &Path) -> Result<Snapshot, Problems> {
    compile(&Inputs::parse_reading(path, &read_text(path)?, Reading::StructureOnly)?, 1, None)
}
