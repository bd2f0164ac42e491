//! The launch journal: which instance spawned which process, appended as each spawn succeeds,
//! so a daemon killed before it recorded a start can tell a start it had written ahead and
//! carried out (the process may have run and ended since) from one it never got to
//! (`docs/reliability.md`, "A start written ahead").
//!
//! Each line is `name pid start_time launch`: the process, and the launch it carried out — the
//! token of the start or restart the actor had taken in when it spawned it, which is when that
//! start was written ahead (`written_ns`, nanoseconds after boot). A start written ahead was
//! carried out exactly when the instance's latest launch carries its token: neither a process
//! spawned for an earlier start, nor one whose spawn was still under way when a newer start
//! was written, is taken for it. `0`: a spawn that carried out no start written ahead.
//!
//! One `write` per spawn to `<state_dir>/launches`, never flushed: it must survive the daemon's
//! death, not the machine's (after a reboot no record is adopted anyway). The file keeps the
//! latest launch per instance: past [`MAX_BYTES`] it is rewritten to just those.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "launches";

/// Past this size the journal is rewritten to the latest launch of each instance.
const MAX_BYTES: u64 = 1 << 20;

/// One launch: the process (pid, start time in clock ticks after boot) and when its spawn began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Launch {
    pid: i32,
    start_time: u64,
    launch: u64,
}

/// The launch each instance the journal at `path` names carried out last; empty when there is
/// none.
pub fn read_latest(path: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut latest = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [name, _pid, _start, launch] = f[..] else {
            continue;
        };
        // Lines are appended in the order of the spawns: the last one of a name is the latest.
        if let Ok(launch) = launch.parse::<u64>() {
            latest.insert(name.to_string(), launch);
        }
    }
    latest
}

/// The journal a daemon appends to.
#[derive(Debug)]
pub struct LaunchJournal {
    path: PathBuf,
    // The open file, its size and the latest launch per instance (to rewrite it from). A std
    // lock: held for one small write, or a rewrite every megabyte; never across an `.await`.
    inner: Mutex<Open>,
}

/// The open journal: its file, its size, and the latest launch per instance.
type Open = (File, u64, BTreeMap<String, Launch>);

impl Launch {
    fn line(&self, instance: &str) -> String {
        let Launch {
            pid,
            start_time,
            launch,
        } = self;
        format!("{instance} {pid} {start_time} {launch}\n")
    }
}

impl LaunchJournal {
    /// Starts the journal at `path` afresh; what it held was read by the takeover already.
    pub fn create(path: &Path) -> std::io::Result<LaunchJournal> {
        File::create(path)?;
        let file = reopen_append(path)?;
        Ok(LaunchJournal {
            path: path.to_path_buf(),
            inner: Mutex::new((file, 0, BTreeMap::new())),
        })
    }

    /// Notes that `instance` launched process `pid`, started at `start_time`, carrying out
    /// `launch` (0: none).
    pub fn launched(&self, instance: &str, pid: i32, start_time: u64, launch: u64) {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (file, size, latest) = &mut *inner;
        let launch = Launch {
            pid,
            start_time,
            launch,
        };
        latest.insert(instance.to_string(), launch);
        let line = launch.line(instance);
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!("cannot note a launch in {}: {e}", self.path.display());
            return;
        }
        *size += line.len() as u64;
        if *size > MAX_BYTES {
            match self.rewrite(latest) {
                Ok((f, s)) => (*file, *size) = (f, s),
                Err(e) => tracing::warn!("cannot compact {}: {e}", self.path.display()),
            }
        }
    }

    /// Rewrites the journal to the latest launch per instance, replacing it atomically.
    fn rewrite(&self, latest: &BTreeMap<String, Launch>) -> std::io::Result<(File, u64)> {
        let tmp = self.path.with_extension("new");
        let text: String = latest.iter().map(|(name, l)| l.line(name)).collect();
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok((reopen_append(&self.path)?, text.len() as u64))
    }
}

fn reopen_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_launch_per_instance_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "stale 1 1 1\n").unwrap();
        let j = LaunchJournal::create(&path).unwrap();
        assert!(read_latest(&path).is_empty(), "a new journal starts empty");
        j.launched("web", 10, 90, 100);
        j.launched("web", 11, 90, 105);
        j.launched("db", 12, 90, 101);
        // An automatic restart of db's that carried out no start written ahead: the last line
        // is the latest launch, whatever its token.
        j.launched("db", 14, 95, 0);
        let latest = read_latest(&path);
        assert_eq!(latest["web"], 105);
        assert_eq!(latest["db"], 0);
        // A line of an older format (no spawn time) says nothing.
        std::fs::write(dir.path().join("old"), "web 10 100\n").unwrap();
        assert!(read_latest(&dir.path().join("old")).is_empty());
        // Past a megabyte, only the latest launches are kept.
        for i in 0..40_000u64 {
            j.launched("busy", 20, 90, 200 + i);
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < MAX_BYTES, "{size}");
        let latest = read_latest(&path);
        assert_eq!(latest["busy"], 200 + 39_999);
        assert_eq!(latest["web"], 105);
        assert_eq!(latest["db"], 0);
    }
}
