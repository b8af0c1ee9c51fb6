//! The directory watches behind reload: which directories decide what a named file
//! resolves to (symlinks included, as Kubernetes mounts secrets), which filesystem
//! events matter, and re-arming watches on directories that were replaced or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// The directory watches: one per directory that decides what a named file resolves to.
pub(super) struct Watches {
    watcher: RecommendedWatcher,
    /// Watched directory → its identity when the watch was set.
    active: BTreeMap<PathBuf, DirId>,
    /// Directories that could not be watched (warned about once).
    refused: BTreeSet<PathBuf>,
}

impl Watches {
    pub(super) fn start(tx: mpsc::UnboundedSender<Vec<PathBuf>>) -> Option<Watches> {
        let handler = move |event: notify::Result<notify::Event>| {
            if triggers_reload(&event) {
                let _ = tx.send(moved_paths(&event));
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(Watches { watcher, active: BTreeMap::new(), refused: BTreeSet::new() }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; relying on the periodic poll");
                None
            }
        }
    }

    /// Watches what `files` need now and drops the rest. A directory replaced since it
    /// was watched (renamed over, deleted and recreated) is watched again; a missing one
    /// is stood in for by its nearest existing ancestor, which sees it come back. A
    /// directory among `moved` is watched again too: notify ends the watch of a
    /// directory that moves or is deleted inside another watched one, even if it comes
    /// back as the same directory. True when a watch was added.
    pub(super) fn update(&mut self, files: &BTreeSet<PathBuf>, moved: &mut BTreeSet<PathBuf>) -> bool {
        let mut wanted: BTreeMap<PathBuf, DirId> = BTreeMap::new();
        for dir in files.iter().flat_map(|f| deciding_dirs(f)) {
            if let Some((dir, id)) = nearest_existing_dir(&dir) {
                wanted.insert(dir, id);
            }
        }
        let stale: Vec<PathBuf> = self
            .active
            .iter()
            .filter(|(d, id)| wanted.get(*d) != Some(id) || moved.contains(*d))
            .map(|(d, _)| d.clone())
            .collect();
        moved.clear();
        for dir in stale {
            // The directory may be gone already, and its watch with it.
            let _ = self.watcher.unwatch(&dir);
            self.active.remove(&dir);
        }
        let mut added = false;
        for (dir, id) in wanted {
            if self.active.contains_key(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.refused.remove(&dir);
                    self.active.insert(dir, id);
                    added = true;
                }
                Err(e) => {
                    if self.refused.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; the poll covers it");
                    }
                }
            }
        }
        added
    }
}

/// Which filesystem events mean "look at the files again".
fn triggers_reload(event: &notify::Result<notify::Event>) -> bool {
    match event {
        // An error may mean lost events (a full queue): look again rather than miss one.
        Err(_) => true,
        Ok(e) => match e.kind {
            // A writer closing the file is the end of an in-place write.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            // Reloads themselves open and read the files: counting those would loop.
            EventKind::Access(_) => false,
            _ => true,
        },
    }
}

/// The paths of an event that may have ended a watch: renamed or deleted entries.
fn moved_paths(event: &notify::Result<notify::Event>) -> Vec<PathBuf> {
    match event {
        Ok(e) if matches!(e.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) => {
            e.paths.clone()
        }
        _ => Vec::new(),
    }
}

/// The directories whose entries decide what `file` resolves to: the one holding the
/// file it finally resolves to, and the one holding every symlink met on the way (in
/// the path or in a link's target). Resolved afresh on every call, so a swapped
/// `..data` link moves the watch to the new timestamped directory.
fn deciding_dirs(file: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let mut path = file.to_owned();
    // Like the kernel, give up on long or looping chains of links.
    'resolve: for _ in 0..40 {
        let mut prefix = PathBuf::new();
        let mut components = path.components();
        while let Some(c) = components.next() {
            prefix.push(c);
            let is_link = std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            let Ok(target) = std::fs::read_link(&prefix) else { break };
            let holder = parent_dir(&prefix);
            let mut next = holder.join(target);
            next.push(components.as_path());
            dirs.insert(holder);
            path = next;
            continue 'resolve;
        }
        break;
    }
    dirs.insert(parent_dir(&path));
    dirs
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `dir`, or when it does not exist its nearest existing ancestor, with its identity.
fn nearest_existing_dir(dir: &Path) -> Option<(PathBuf, DirId)> {
    let mut dir = dir.to_owned();
    loop {
        if let Ok(meta) = std::fs::metadata(&dir) {
            if meta.is_dir() {
                return Some((dir, DirId::of(&meta)));
            }
        }
        let parent = dir.parent()?.to_owned();
        dir = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent };
        if dir == Path::new(".") && std::fs::metadata(&dir).is_err() {
            return None;
        }
    }
}

/// Which directory a path names: a new one at the same path needs a new watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId(u64, u64);

impl DirId {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> DirId {
        use std::os::unix::fs::MetadataExt;
        DirId(meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> DirId {
        DirId(0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, RenameMode};

    fn event(kind: EventKind) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind))
    }

    #[test]
    fn reads_do_not_trigger_but_writes_renames_and_errors_do() {
        assert!(!triggers_reload(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))));
        assert!(!triggers_reload(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)))));
        assert!(triggers_reload(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)))));
        assert!(triggers_reload(&event(EventKind::Modify(ModifyKind::Name(RenameMode::To)))));
        assert!(triggers_reload(&event(EventKind::Create(CreateKind::File))));
        assert!(triggers_reload(&event(EventKind::Other)));
        assert!(triggers_reload(&Err(notify::Error::generic("queue overflow"))));
    }

    #[cfg(unix)]
    #[test]
    fn follows_kubernetes_links_to_the_timestamped_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        std::fs::create_dir(mount.join("..2026_01_01_00_00_00.1")).unwrap();
        std::fs::write(mount.join("..2026_01_01_00_00_00.1/key"), "k").unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", mount.join("key")).unwrap();
        let dirs = deciding_dirs(&mount.join("key"));
        let expected: BTreeSet<PathBuf> =
            [mount.to_owned(), mount.join("..2026_01_01_00_00_00.1")].into_iter().collect();
        assert_eq!(dirs, expected);
    }

    #[test]
    fn a_plain_file_needs_only_its_directory() {
        assert_eq!(deciding_dirs(Path::new("/nonexistent/x/key")), [PathBuf::from("/nonexistent/x")].into());
        assert_eq!(deciding_dirs(Path::new("key")), [PathBuf::from(".")].into());
    }

    #[test]
    fn a_missing_directory_is_stood_in_for_by_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let (found, _) = nearest_existing_dir(&dir.path().join("a/b")).unwrap();
        assert_eq!(found, dir.path());
    }
}
