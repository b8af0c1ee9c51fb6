//! Writing the files keygate reads the way real tools do: editors (a temporary file
//! renamed over the old one), in-place rewrites (same inode), private secret files, and
//! a Kubernetes secret volume with its `..data` swap.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Creates (or replaces) `path` with mode 600, as secret files should be.
pub fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_private(path);
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Writes `path` the way editors (and Kubernetes) save: a private temporary file in the
/// same directory, renamed over the old one, so no reader sees it half written.
pub fn write_by_rename(path: &Path, contents: &str) {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.swp"));
    write_private(&tmp, contents);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Truncates `path` and writes it again (same inode).
pub fn write_in_place(path: &Path, contents: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open");
    f.write_all(contents.as_bytes()).expect("write");
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A Kubernetes secret volume as the kubelet lays it out: `..<timestamp>/<file>`,
/// `..data -> ..<timestamp>`, and `<file> -> ..data/<file>` for each file.
pub struct KubeMount {
    pub dir: PathBuf,
    version: u32,
    current: String,
}

impl KubeMount {
    /// Lays out `files` (name, contents) under `dir`.
    pub fn create(dir: PathBuf, files: &[(&str, &str)]) -> KubeMount {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut mount = KubeMount { dir, version: 0, current: String::new() };
        let ts = mount.write_version(files);
        std::os::unix::fs::symlink(&ts, mount.dir.join("..data")).expect("symlink");
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), mount.dir.join(name)).expect("symlink");
        }
        mount.current = ts;
        mount
    }

    fn write_version(&mut self, files: &[(&str, &str)]) -> String {
        self.version += 1;
        let ts = format!("..2026_03_01_12_00_{:02}.{:09}", self.version, 100 + self.version);
        let dir = self.dir.join(&ts);
        std::fs::create_dir(&dir).expect("mkdir");
        for (name, contents) in files {
            write_private(&dir.join(name), contents);
        }
        ts
    }

    /// The kubelet's atomic update: write a new timestamped directory, point
    /// `..data_tmp` at it, rename `..data_tmp` over `..data`, remove the old directory.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        let ts = self.write_version(files);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data");
        let old = std::mem::replace(&mut self.current, ts);
        std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old version");
    }
}
