//! The flush before sled recovers a database: the store's own files, not the whole machine's.
//!
//! sled 1.0.0-alpha.124 runs the system's `sync` command twice when it opens a database, before
//! it recovers (`Heap::recover`, `MetadataStore::recover`), so that what it reads back is on disk
//! before it builds on it. `sync` writes back every dirty page of every file system: on a host
//! that has just written a lot, a daemon's start waited for that (`docs/store.md`, "Opening").
//! What recovery needs is only the database's own files on disk, so when it is sound to do so
//! this module fsyncs those files and directories itself and lets sled's command not be found.
//!
//! Hiding the command means changing `PATH` for the duration of the open, which is sound only
//! while the process has a single thread (another thread could read the environment
//! meanwhile). `provisr serve` opens its store before it starts the async runtime, so the daemon
//! takes this path; a process with more threads (the test harness, a store opened later) keeps
//! sled's own `sync`, which is slower but equally safe. sled reports the command it could not
//! find as a warning; its warnings during that open are not logged (its errors are).

use std::io;
use std::path::Path;

/// Opens with `open`; if this process has one thread and the database's files could be synced,
/// with sled's `sync` command hidden from it.
pub(crate) fn open_after_own_sync<T>(db_path: &Path, open: impl FnOnce() -> T) -> T {
    if !single_threaded() || sync_tree(db_path).is_err() {
        return open();
    }
    let saved = std::env::var_os("PATH");
    // `/dev/null` is never a directory, so no `sync` can be found through it; an empty `PATH`
    // would search the current directory.
    std::env::set_var("PATH", "/dev/null");
    let level = log::max_level();
    log::set_max_level(log::LevelFilter::Error);
    let opened = open();
    log::set_max_level(level);
    match saved {
        Some(path) => std::env::set_var("PATH", path),
        None => std::env::remove_var("PATH"),
    }
    opened
}

/// True when the process runs one thread (`Threads:` in `/proc/self/status`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.strip_prefix("Threads:").map(str::trim) == Some("1"))
    })
}

/// fsyncs every file and directory under `dir`, and `dir` itself; a `dir` that does not exist
/// yet has nothing to sync.
fn sync_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_process_has_threads_so_sled_keeps_its_own_sync() {
        // The harness runs each test on a thread of its own beside the main one.
        assert!(!single_threaded());
        let path_before = std::env::var_os("PATH");
        let dir = tempfile::tempdir().unwrap();
        let seen = open_after_own_sync(dir.path(), || std::env::var_os("PATH"));
        assert_eq!(seen, path_before);
    }

    #[test]
    fn syncing_a_tree_reaches_nested_files_and_tolerates_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("slabs")).unwrap();
        std::fs::write(dir.path().join("slabs/a"), b"x").unwrap();
        std::fs::write(dir.path().join("meta"), b"y").unwrap();
        sync_tree(dir.path()).unwrap();
        sync_tree(&dir.path().join("absent")).unwrap();
        std::fs::write(dir.path().join("file"), b"z").unwrap();
        assert!(sync_tree(&dir.path().join("file/inside")).is_err());
    }
}
