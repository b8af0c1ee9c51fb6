//! The directory watches behind reload: which directories decide what a named file
//! resolves to (symlinks included, as Kubernetes mounts secrets), which filesystem
//! events matter, and re-arming watches on directories that were replaced or removed.
//!
//! Only events about the entries on a named file's resolution path count (the file,
//! every symlink met on the way, the directories leading to them): the notify handler
//! drops every other event of a watched directory before it reaches the reload task,
//! so a busy neighbour (a log, a temp file) costs no wake-up, no read and no hashing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// The paths whose events count, shared with the notify handler.
type Relevant = Arc<ArcSwap<HashSet<PathBuf>>>;

/// The directory watches: one per directory that decides what a named file resolves to.
pub(super) struct Watches {
    watcher: RecommendedWatcher,
    /// Watched directory → its identity when the watch was set.
    active: BTreeMap<PathBuf, DirId>,
    /// Directories that could not be watched (warned about once).
    refused: BTreeSet<PathBuf>,
    /// The entries whose events count, as the handler sees them.
    relevant: Relevant,
}

impl Watches {
    pub(super) fn start(tx: mpsc::UnboundedSender<Vec<PathBuf>>) -> Option<Watches> {
        let relevant: Relevant = Arc::default();
        let seen = relevant.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            if triggers_reload(&event) && concerns(&seen.load(), &event) {
                let _ = tx.send(moved_paths(&event));
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => {
                Some(Watches { watcher, active: BTreeMap::new(), refused: BTreeSet::new(), relevant })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; relying on the periodic poll");
                None
            }
        }
    }

    /// How many directories are watched now.
    pub(super) fn watched(&self) -> usize {
        self.active.len()
    }

    /// Watches what `files` need now and drops the rest. A directory replaced since it
    /// was watched (renamed over, deleted and recreated) is watched again; a missing one
    /// is stood in for by its nearest existing ancestor, which sees it come back. A
    /// directory among `moved` is watched again too: notify ends the watch of a
    /// directory that moves or is deleted inside another watched one, even if it comes
    /// back as the same directory. True when a watch was added or an entry became
    /// relevant: a change made to it before now raised no event that counted.
    pub(super) fn update(&mut self, files: &BTreeSet<PathBuf>, moved: &mut BTreeSet<PathBuf>) -> bool {
        let mut wanted: BTreeMap<PathBuf, DirId> = BTreeMap::new();
        let mut relevant: HashSet<PathBuf> = HashSet::new();
        for resolved in files.iter().map(|f| resolve(f)) {
            for dir in &resolved.dirs {
                if let Some((dir, id)) = nearest_existing_dir(dir) {
                    wanted.insert(dir, id);
                }
            }
            relevant.extend(resolved.entries);
        }
        // Before the new watches exist, so that their first events are judged by it.
        let grew = !relevant.is_subset(&self.relevant.load());
        self.relevant.store(Arc::new(relevant));
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
        added || grew
    }
}

/// Which kinds of filesystem event mean "look at the files again".
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

/// Whether an event is about a path that can change what keygate reads. A rename
/// counts when either of its names does (an editor's temporary name does not, the
/// name it is saved under does); an event naming no path (a queue overflow asking for
/// a rescan) or an error counts, since it may stand for events that were lost.
fn concerns(relevant: &HashSet<PathBuf>, event: &notify::Result<notify::Event>) -> bool {
    match event {
        Err(_) => true,
        Ok(e) => e.need_rescan() || e.paths.is_empty() || e.paths.iter().any(|p| relevant.contains(p)),
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

/// What a named file's resolution depends on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Resolution {
    /// The directories to watch: the one holding the file it finally resolves to, and
    /// the one holding every symlink met on the way (in the path or in a link's target).
    dirs: BTreeSet<PathBuf>,
    /// The entries whose change can change what the file resolves to or holds: the
    /// final path and every symlink met, with each directory on the way to them. A
    /// missing directory's own entry is among them, so its nearest existing ancestor,
    /// watched in its stead, reports it coming back.
    entries: BTreeSet<PathBuf>,
}

/// Resolves `file` the way the kernel would, link by link, in absolute paths (the form
/// notify reports events in). Done afresh on every call, so a swapped `..data` link
/// moves the watch to the new timestamped directory.
fn resolve(file: &Path) -> Resolution {
    let mut res = Resolution::default();
    let mut path = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let mut prefix = PathBuf::new();
    // Like the kernel, give up on long or looping chains of links.
    'resolve: for _ in 0..40 {
        prefix = PathBuf::new();
        let mut components = path.components();
        while let Some(c) = components.next() {
            match c {
                Component::CurDir => continue,
                // Every directory in `prefix` is a real one (links were replaced), so
                // its parent is the lexical one.
                Component::ParentDir => {
                    prefix.pop();
                    continue;
                }
                _ => prefix.push(c),
            }
            res.entries.insert(prefix.clone());
            let is_link = std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            let Ok(target) = std::fs::read_link(&prefix) else { break };
            let holder = parent_dir(&prefix);
            let mut next = holder.join(target);
            next.push(components.as_path());
            res.dirs.insert(holder);
            path = next;
            continue 'resolve;
        }
        break;
    }
    res.dirs.insert(parent_dir(&prefix));
    res
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
    use notify::event::{CreateKind, DataChange, RenameMode};

    fn event(kind: EventKind) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind))
    }

    fn about(kind: EventKind, paths: &[&Path]) -> notify::Result<notify::Event> {
        let mut e = notify::Event::new(kind);
        e.paths = paths.iter().map(|p| p.to_path_buf()).collect();
        Ok(e)
    }

    fn set(paths: &[&Path]) -> BTreeSet<PathBuf> {
        paths.iter().map(|p| p.to_path_buf()).collect()
    }

    /// What the handler would do with `event` if `files` were the named files.
    fn counts(files: &[&Path], event: notify::Result<notify::Event>) -> bool {
        let relevant: HashSet<PathBuf> = files.iter().flat_map(|f| resolve(f).entries).collect();
        triggers_reload(&event) && concerns(&relevant, &event)
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

    #[test]
    fn a_plain_file_counts_and_its_neighbours_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (key, log) = (dir.path().join("key"), dir.path().join("keygate.log"));
        std::fs::write(&key, "k").unwrap();
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(counts(&[&key], about(write, &[&key])));
        assert!(!counts(&[&key], about(write, &[&log])));
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::File), &[&dir.path().join("other")])));
        // The watched directory itself (deleted or moved away) and the way to it count.
        assert!(counts(&[&key], about(EventKind::Remove(notify::event::RemoveKind::Folder), &[dir.path()])));
        assert!(counts(&[&key], about(write, &[dir.path().parent().unwrap()])));
        // Events with no path (a rescan) and errors stand for lost events.
        assert!(counts(&[&key], event(EventKind::Other)));
        assert!(counts(&[&key], Err(notify::Error::generic("queue overflow"))));
        // Reading the file is not a change.
        assert!(!counts(&[&key], about(EventKind::Access(AccessKind::Open(AccessMode::Any)), &[&key])));
    }

    #[test]
    fn a_rename_counts_by_its_target_not_its_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let (key, tmp) = (dir.path().join("key"), dir.path().join(".key.swp"));
        let name = |mode| EventKind::Modify(ModifyKind::Name(mode));
        // An editor's save: `.key.swp` written, then renamed over `key`.
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::File), &[&tmp])));
        assert!(!counts(&[&key], about(EventKind::Access(AccessKind::Close(AccessMode::Write)), &[&tmp])));
        assert!(!counts(&[&key], about(name(RenameMode::From), &[&tmp])));
        assert!(counts(&[&key], about(name(RenameMode::To), &[&key])));
        assert!(counts(&[&key], about(name(RenameMode::Both), &[&tmp, &key])));
        // Moving the file away counts by its old name.
        assert!(counts(&[&key], about(name(RenameMode::Both), &[&key, &tmp])));
    }

    #[cfg(unix)]
    fn kube_mount(mount: &Path, ts: &str) {
        std::fs::create_dir(mount.join(ts)).unwrap();
        std::fs::write(mount.join(ts).join("key"), "k").unwrap();
        std::os::unix::fs::symlink(ts, mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", mount.join("key")).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn follows_kubernetes_links_to_the_timestamped_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        let ts = "..2026_01_01_00_00_00.1";
        kube_mount(mount, ts);
        let resolved = resolve(&mount.join("key"));
        assert_eq!(resolved.dirs, set(&[mount, &mount.join(ts)]));
        for entry in [mount.join("key"), mount.join("..data"), mount.join(ts), mount.join(ts).join("key")] {
            assert!(resolved.entries.contains(&entry), "{entry:?} not in {:?}", resolved.entries);
        }
        let key = mount.join("key");
        let name = |mode| EventKind::Modify(ModifyKind::Name(mode));
        // The kubelet's swap: `..data_tmp` renamed over `..data`; the new directory and
        // the temporary link are not on the path until then.
        assert!(counts(
            &[&key],
            about(name(RenameMode::Both), &[&mount.join("..data_tmp"), &mount.join("..data")])
        ));
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::Any), &[&mount.join("..data_tmp")])));
        let next = mount.join("..2026_01_01_00_01_00.2");
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::Folder), &[&next])));
        // The old timestamped directory going away counts; a stranger in the mount does not.
        assert!(counts(
            &[&key],
            about(EventKind::Remove(notify::event::RemoveKind::Folder), &[&mount.join(ts)])
        ));
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::File), &[&mount.join("other")])));
    }

    #[test]
    fn a_plain_file_needs_only_its_directory() {
        assert_eq!(resolve(Path::new("/nonexistent/x/key")).dirs, set(&[Path::new("/nonexistent/x")]));
        // Relative paths resolve in absolute form, as notify reports events.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(Path::new("key")).dirs, set(&[&cwd]));
        assert!(resolve(Path::new("./key")).entries.contains(&cwd.join("key")));
        assert_eq!(resolve(Path::new("/a/b/../c/./key")).dirs, set(&[Path::new("/a/c")]));
    }

    #[test]
    fn a_missing_file_counts_through_its_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a/b/key");
        let (found, _) = nearest_existing_dir(&resolve(&key).dirs.into_iter().next().unwrap()).unwrap();
        assert_eq!(found, dir.path());
        // Watching `dir` in its stead, the entry that leads towards the key counts.
        assert!(counts(&[&key], about(EventKind::Create(CreateKind::Folder), &[&dir.path().join("a")])));
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::Folder), &[&dir.path().join("z")])));
        // Once `a/b` exists, the key itself and not its neighbours.
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        assert!(counts(&[&key], about(EventKind::Create(CreateKind::File), &[&key])));
        assert!(!counts(&[&key], about(EventKind::Create(CreateKind::File), &[&dir.path().join("a/b/x")])));
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_link_counts_through_the_entry_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        std::os::unix::fs::symlink("..gone", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", mount.join("key")).unwrap();
        let resolved = resolve(&mount.join("key"));
        assert!(resolved.entries.contains(&mount.join("..gone")));
        let (found, _) = nearest_existing_dir(&mount.join("..gone")).unwrap();
        assert_eq!(found, mount);
    }
}
