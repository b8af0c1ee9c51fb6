//! What is wrong with a config: every problem found, located by file, section and field.

use std::fmt;
use std::path::{Path, PathBuf};

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

/// A problem with the config file as a whole.
pub(super) fn problem(path: &Path, message: String) -> Problems {
    Problems {
        file: path.to_owned(),
        list: vec![Problem { location: String::new(), field: String::new(), message }],
    }
}
