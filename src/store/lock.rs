//! The state directory's `daemon.lock`: one daemon per state directory (`docs/reliability.md`).
//!
//! An exclusive, non-blocking `flock` on the file is held for the store's lifetime and dies with
//! the process, so a crashed daemon never leaves a stale lock behind. The holder writes its pid in
//! the file only so the refusal can name it; the lock itself is the `flock`, not the file's content.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

/// File name of the lock inside the state directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// Longest a dropped lock waits for sled to let go of its database.
const SLED_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Holds the state directory's lock until dropped.
#[derive(Debug)]
pub struct StateDirLock {
    flock: Option<Flock<File>>,
    /// What sled `flock`s while the database is open (sled 1.x: its directory).
    db_file: Option<PathBuf>,
}

impl Drop for StateDirLock {
    /// Releases the lock only once sled has released its database.
    ///
    /// If sled still held its own `flock` for a moment after the last handle is dropped (its
    /// background threads end asynchronously), releasing our lock first would let the next
    /// opener in this process pass our lock and then fail inside sled with a lock error.
    /// Between processes this never waits: exit releases both.
    fn drop(&mut self) {
        if let Some(db_file) = self.db_file.take() {
            wait_until_unlocked(&db_file);
        }
        drop(self.flock.take());
    }
}

impl StateDirLock {
    /// Takes the lock on `state_dir/daemon.lock` at once or fails with [`StoreError::Locked`].
    pub fn acquire(state_dir: &Path) -> Result<StateDirLock, StoreError> {
        let path = state_dir.join(LOCK_FILE);
        // Not truncating on open: the file may belong to a live holder whose pid we want to read.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Io {
                operation: "open the lock file",
                path: path.clone(),
                source,
            })?;
        let mut flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => flock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(StoreError::Locked {
                    state_dir: state_dir.to_path_buf(),
                    holder_pid: read_pid(&mut file),
                })
            }
            Err((_, source)) => return Err(StoreError::Lock { path, source }),
        };
        write_pid(&mut flock, &path)?;
        Ok(StateDirLock {
            flock: Some(flock),
            db_file: None,
        })
    }

    /// Makes dropping this lock wait until sled has let go of `db_file` (a file or directory).
    pub fn release_after_sled_closes(&mut self, db_file: PathBuf) {
        self.db_file = Some(db_file);
    }
}

/// Polls until `db_file` (a file or a directory) can be `flock`ed, so no sled instance holds it,
/// or gives up with a warning after [`SLED_CLOSE_TIMEOUT`]. Used before opening sled too: with
/// the state directory lock held, only a sled still closing in this process (or a foreign tool)
/// can hold it. sled 0.34 (read during an upgrade) locks its `db` file, sled 1.x its directory.
pub fn wait_until_unlocked(db_file: &Path) {
    let Ok(mut file) = File::open(db_file) else {
        return;
    };
    let deadline = Instant::now() + SLED_CLOSE_TIMEOUT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Dropping the probe unlocks it at once.
            Ok(_probe) => return,
            Err((still, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = still;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, errno)) => {
                tracing::warn!(
                    file = %db_file.display(),
                    %errno,
                    "sled's database is still locked by another handle"
                );
                return;
            }
        }
    }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File, path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        operation: "write the pid into the lock file",
        path: path.to_path_buf(),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(())
}
