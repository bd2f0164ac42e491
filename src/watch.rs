//! The programs-directory watcher: decides *when* the daemon rescans its configuration.
//!
//! It owns one inotify watcher (`notify`'s `RecommendedWatcher`) on the programs directory, its
//! parent (to see the directory being removed, replaced or renamed) and the directories of the
//! main config and its env files, and one tokio task that turns bursts of file-system events into
//! single calls of the caller's `on_change`. What a rescan does (validate, write the store, keep a
//! broken file's last good spec) is the caller's business: a call means "look again", never "do X",
//! so a merged, lost or extra call can never leave the daemon wrong (DESIGN.md: level-triggered).
//!
//! Rules, and why:
//! - **Directories, never single files.** Editors replace files by renaming over them, which would
//!   silently orphan a watch on the old inode; a directory watch sees every name it holds. No per-file
//!   watches, no polling: while nothing happens, the task waits on a channel with no timer armed.
//! - **Trailing-edge debounce.** After the first relevant event the task waits until events have been
//!   quiet for [`Debounce::quiet`], bounded by [`Debounce::max_delay`] from the first event so a
//!   directory written continuously is still rescanned. A save in several writes (truncate, write,
//!   write, close; or write a temp file, rename over) becomes one call, after the last write.
//! - **Only events that can matter.** Program file names per [`config::is_program_file_name`] (so
//!   vim's `4913` probe, `file~` backups, `.swp` files and `sed`'s temp files are ignored on their
//!   own), the watched config/env files, and the programs directory itself. Reads never count: the
//!   rescan opens every file, and counting opens would make every rescan trigger the next one.
//! - **When in doubt, rescan.** A watcher error, an inotify queue overflow (`Flag::Rescan`) or an
//!   event kind notify cannot name causes a call; a full rescan is always safe.
//! - **A replaced directory is watched again.** `rm -rf dir && mkdir dir` or `mv new dir` drops the
//!   inotify watch with the old inode; events on the directory's own name (seen through its parent)
//!   re-add it, and each burst ends with a check that the watched inode is still the one at the path.
//!
//! - **A file still open for writing is not done.** The quiet period alone cannot tell a finished
//!   save from a writer pausing mid-file, and a half-written file cut at a line end may well parse
//!   (and run). So a program or config file written to (`IN_MODIFY`, or created) counts as being
//!   written until its writer closes it (`IN_CLOSE_WRITE`), is removed or renamed away, and no
//!   rescan happens while one is: the burst waits for the close, then for the quiet period. When
//!   the programs directory is watched anew (replaced: `rm -rf dir; mkdir dir; write`), closes
//!   may have gone with the old watch, and events still queued from it may report writes whose
//!   close is lost: none of its files is held back in that burst, once it is quiet. A
//!   writer that keeps a file open longer than [`WRITE_HOLD`] gets it scanned anyway, so a
//!   forgotten descriptor cannot stop reloads for good. `docs/hot-reload.md` has the user-facing
//!   version.
//!
//! The debounce is written here rather than taken from `notify-debouncer-full`: that crate
//! debounces per path and has no notion of a file still open for writing, and a burst must end
//! on the whole directory being quiet *and* closed.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{self, Settings};

/// What to watch: the programs directory and single files (main config, env files) that live in
/// other directories. Files are watched through their directory, so editors that save by renaming
/// are seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchTargets {
    pub programs_dir: PathBuf,
    pub files: Vec<PathBuf>,
}

impl WatchTargets {
    /// Just the programs directory.
    pub fn new(programs_dir: impl Into<PathBuf>) -> WatchTargets {
        WatchTargets {
            programs_dir: programs_dir.into(),
            files: Vec::new(),
        }
    }

    /// Also watch this file (a main config or env file).
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> WatchTargets {
        self.files.push(file.into());
        self
    }

    /// Everything a rescan with these settings reads: the programs directory, the main config
    /// file (if any) and its env files. Compare with [`WatchHandle::targets`] after a reload to
    /// see whether [`WatchHandle::set_targets`] is needed (it is a no-op when nothing changed).
    pub fn from_settings(settings: &Settings) -> WatchTargets {
        WatchTargets {
            programs_dir: settings.programs_directory.clone(),
            files: settings
                .config_file
                .iter()
                .chain(&settings.env_files)
                .cloned()
                .collect(),
        }
    }
}

/// The longest a burst waits for program or config files still open for writing, from its
/// first event: past it they are scanned as they are.
pub const WRITE_HOLD: Duration = Duration::from_secs(10);

/// How long to wait before calling back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// The call comes once no relevant event has arrived for this long.
    pub quiet: Duration,
    /// … but at most this long after the first event of a burst, so a directory that is written
    /// without pause is still rescanned.
    pub max_delay: Duration,
}

impl Default for Debounce {
    /// 50 ms quiet, so a saved file is applied well within 100 ms; 1 s at most.
    fn default() -> Debounce {
        Debounce {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Why the watcher could not start or follow new targets.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the file watcher: it must be started from inside a tokio runtime")]
    NoRuntime,
    #[error("cannot start the file watcher (inotify): {source}")]
    Init {
        #[source]
        source: notify::Error,
    },
    #[error("cannot resolve {path} for watching: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch directory {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running watcher. Dropping it stops watching: no call starts after the drop (a call already
/// running finishes). [`WatchHandle::stop`] does the same and waits for that call.
pub struct WatchHandle {
    state: Arc<Mutex<Watching>>,
    signals: mpsc::UnboundedSender<Signal>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// The targets currently watched, as given.
    pub fn targets(&self) -> WatchTargets {
        lock(&self.state).given.clone()
    }

    /// Follows new targets (after a reload changed `programs_directory` or the env files). A no-op
    /// when they equal the current ones; otherwise the watches move and one rescan is scheduled,
    /// covering whatever changed between the caller's load and the new watches. Safe to call from
    /// inside `on_change`. On [`WatchError::Watch`] the targets are still switched and every
    /// directory that could be watched is; the error names one that could not, and calling again
    /// with the same targets retries it.
    pub fn set_targets(&self, targets: WatchTargets) -> Result<(), WatchError> {
        let result = lock(&self.state).retarget(targets);
        // A partial switch still moved watches: rescan then too.
        if !matches!(result, Ok(false)) {
            // Ignored when the task has stopped: nobody is left to call.
            let _ = self.signals.send(Signal::Retargeted);
        }
        result.map(|_| ())
    }

    /// Stops watching and waits until a call of `on_change` in progress has returned.
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            // A panic in `on_change` ends the task; there is nothing more to stop then.
            let _ = task.await;
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which returns before its next call.
        self.stop.take();
    }
}

/// Starts watching `targets` and calls `on_change` (awaiting it) once after each burst of relevant
/// changes, as [`Debounce`] says. Calls never overlap: events arriving during a call are collected
/// into the next burst. Must be called inside a tokio runtime; `on_change` runs on one of its tasks.
/// Returns once the watches are in place, so any change after `spawn` returns is seen. No call is
/// made at start: the caller has just loaded.
///
/// The programs directory may be missing (it is watched as soon as it appears); the directories
/// of the other targets and the parent of the programs directory must exist.
pub fn spawn<F, Fut>(
    targets: WatchTargets,
    debounce: Debounce,
    on_change: F,
) -> Result<WatchHandle, WatchError>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
    let (signals, rx) = mpsc::unbounded_channel();
    let events = signals.clone();
    let filter = Arc::new(RwLock::new(Resolved::default()));
    let rules = filter.clone();
    // notify calls this on its own thread; an unbounded send never blocks it. Events that cannot
    // matter are dropped right here: inotify reports every write to every file in a watched
    // directory, and a log file written line by line next to the config would otherwise wake
    // the task once per line.
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let relevant = match rules.read() {
            Ok(r) => r.classify(&event) != Reaction::Ignore,
            Err(_) => true,
        };
        if relevant {
            let _ = events.send(Signal::Fs(event));
        }
    })
    .map_err(|source| WatchError::Init { source })?;
    let mut watching = Watching {
        watcher,
        filter,
        given: WatchTargets::default(),
        resolved: Resolved::default(),
        watched: BTreeSet::new(),
        dir_id: None,
        writing: BTreeSet::new(),
        rewatched: false,
    };
    watching.retarget(targets)?;
    let state = Arc::new(Mutex::new(watching));
    let (stop, stopped) = oneshot::channel();
    let task = runtime.spawn(run(state.clone(), rx, stopped, debounce, on_change));
    Ok(WatchHandle {
        state,
        signals,
        stop: Some(stop),
        task: Some(task),
    })
}

/// What reaches the task.
enum Signal {
    Fs(notify::Result<Event>),
    Retargeted,
}

/// What an event asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reaction {
    /// Cannot change what a rescan sees.
    Ignore,
    Rescan,
    /// The programs directory itself was created, removed or renamed: watch what is now at its
    /// path, then rescan.
    RewatchDir,
}

/// The targets made absolute, as the watcher compares event paths with them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Resolved {
    programs_dir: PathBuf,
    files: BTreeSet<PathBuf>,
    /// Directories watched as they are: the programs directory's parent and the files'
    /// directories (never the programs directory itself, which has its own rules).
    dirs: BTreeSet<PathBuf>,
}

impl Resolved {
    fn new(targets: &WatchTargets) -> Result<Resolved, WatchError> {
        let absolute = |path: &Path| {
            std::path::absolute(path).map_err(|source| WatchError::Resolve {
                path: path.to_path_buf(),
                source,
            })
        };
        let programs_dir = absolute(&targets.programs_dir)?;
        let files = targets
            .files
            .iter()
            .map(|f| absolute(f))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let dirs = programs_dir
            .parent()
            .into_iter()
            .chain(files.iter().filter_map(|f| f.parent()))
            .filter(|d| *d != programs_dir)
            .map(Path::to_path_buf)
            .collect();
        Ok(Resolved {
            programs_dir,
            files,
            dirs,
        })
    }

    /// A file whose content a rescan reads: a program file or a watched config or env file.
    fn is_read_file(&self, path: &Path) -> bool {
        self.files.contains(path)
            || (path.parent() == Some(self.programs_dir.as_path())
                && config::is_program_file_name(path))
    }

    /// Decides what one event asks for. Pure, so the rules are table-tested.
    fn classify(&self, event: &notify::Result<Event>) -> Reaction {
        let event = match event {
            Ok(event) => event,
            // Events may have been lost: only a full rescan is sure to be right.
            Err(_) => return Reaction::Rescan,
        };
        if event.need_rescan() {
            return Reaction::Rescan;
        }
        match event.kind {
            // A writer closing the file: the end of a save, worth waiting for.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            // Opens and reads, the rescan's own included, change nothing.
            EventKind::Access(_) => return Reaction::Ignore,
            // A kind notify cannot name: be safe.
            EventKind::Any | EventKind::Other if event.paths.is_empty() => return Reaction::Rescan,
            _ => {}
        }
        let moves_dir = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Any
                | EventKind::Other
        );
        // A subdirectory is never a program, whatever its name.
        let is_subdir = matches!(
            event.kind,
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
        );
        let is_program = |path: &Path| {
            !is_subdir
                && path.parent() == Some(self.programs_dir.as_path())
                && config::is_program_file_name(path)
        };
        event
            .paths
            .iter()
            .map(|path| {
                if *path == self.programs_dir {
                    if moves_dir {
                        Reaction::RewatchDir
                    } else {
                        // Permissions or times of the directory: may change what a scan can read.
                        Reaction::Rescan
                    }
                } else if self.files.contains(path) || is_program(path) {
                    Reaction::Rescan
                } else {
                    Reaction::Ignore
                }
            })
            .max()
            .unwrap_or(Reaction::Ignore)
    }
}

/// The watcher and what it watches. Shared by the task and the handle behind a std mutex: every
/// critical section is short and synchronous (never held across an `.await`), and notify's own
/// thread never takes it (its event handler only reads `filter` and sends on a channel), so `watch`/`unwatch` calls
/// made under the lock, which wait for notify's thread, cannot deadlock.
struct Watching {
    watcher: RecommendedWatcher,
    /// A copy of `resolved` for notify's thread, which drops irrelevant events before they reach
    /// the task. Its own lock, never held while calling into notify, so the rule above holds.
    filter: Arc<RwLock<Resolved>>,
    given: WatchTargets,
    resolved: Resolved,
    /// The plain directories (`resolved.dirs`) that are watched.
    watched: BTreeSet<PathBuf>,
    /// (device, inode) of the programs directory we hold a watch on; `None` when it is not watched.
    dir_id: Option<(u64, u64)>,
    /// Files read by a rescan that a writer has written to and not yet closed.
    writing: BTreeSet<PathBuf>,
    /// The programs directory was watched again since the current burst began.
    rewatched: bool,
}

fn lock(state: &Mutex<Watching>) -> MutexGuard<'_, Watching> {
    // A panic under the lock leaves no half-done invariant worth refusing to go on with: at
    // worst a watch is missing, which the next burst's directory check repairs.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

impl Watching {
    /// Switches to `targets`; returns whether anything changed. Directories that could not be
    /// watched last time are tried again, even when the targets are the same.
    fn retarget(&mut self, targets: WatchTargets) -> Result<bool, WatchError> {
        let new = Resolved::new(&targets)?;
        if new == self.resolved && self.watched == new.dirs {
            return Ok(false);
        }
        let old = std::mem::replace(&mut self.resolved, new);
        // Before any watch moves, so events from the new watches are judged by the new targets.
        match self.filter.write() {
            Ok(mut f) => *f = self.resolved.clone(),
            Err(p) => *p.into_inner() = self.resolved.clone(),
        }
        self.given = targets;
        let stale: Vec<PathBuf> = self
            .watched
            .difference(&self.resolved.dirs)
            .cloned()
            .collect();
        for dir in stale {
            // Fails only when notify already dropped it (the directory was removed).
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        if old.programs_dir != self.resolved.programs_dir && self.dir_id.take().is_some() {
            let _ = self.watcher.unwatch(&old.programs_dir);
        }
        let mut first_error = None;
        let missing: Vec<PathBuf> = self
            .resolved
            .dirs
            .difference(&self.watched)
            .cloned()
            .collect();
        for dir in missing {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(source) => {
                    first_error.get_or_insert(WatchError::Watch { path: dir, source });
                }
            }
        }
        if self.dir_id.is_none() {
            self.rewatch_programs_dir();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Drops the watch on the programs directory (whatever inode it followed) and watches what is
    /// at its path now, if anything. A change between the two calls is not lost: the rescan this
    /// always precedes reads the directory after the new watch is in place.
    fn rewatch_programs_dir(&mut self) {
        let dir = self.resolved.programs_dir.clone();
        if self.dir_id.take().is_some() {
            // notify may already have dropped it (the directory was deleted or moved away).
            let _ = self.watcher.unwatch(&dir);
        }
        // A writer's close in the directory may be lost with the old watch, or while the new one
        // is not yet in place: no file there is held back as still being written (else a
        // `rm -rf; mkdir; write` waited for the whole write hold).
        self.forget_writers_in_programs_dir();
        self.rewatched = true;
        // Identity first: if the directory is replaced between here and the watch, the recorded
        // inode is the old one and the next check watches again rather than trusting a stale one.
        let Some(id) = dir_identity(&dir) else {
            tracing::debug!(dir = %dir.display(), "programs directory absent; waiting for it to appear");
            return;
        };
        match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching programs directory");
                self.dir_id = Some(id);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch programs directory; it is rescanned when its entry changes");
            }
        }
    }

    /// Holds back no file of the programs directory as still being written.
    fn forget_writers_in_programs_dir(&mut self) {
        let dir = &self.resolved.programs_dir;
        self.writing.retain(|p| p.parent() != Some(dir.as_path()));
    }

    /// Backstop for lost events (overflow): watch again when the inode at the path is not the
    /// one watched.
    fn check_programs_dir(&mut self) {
        if dir_identity(&self.resolved.programs_dir) != self.dir_id {
            tracing::info!(dir = %self.resolved.programs_dir.display(), "programs directory was created, removed or replaced; watching it again");
            self.rewatch_programs_dir();
        }
    }

    /// Takes in one signal; true when it asks for a rescan.
    fn absorb(&mut self, signal: Signal) -> bool {
        let event = match signal {
            Signal::Retargeted => return true,
            Signal::Fs(event) => event,
        };
        let effect = self.resolved.classify(&event);
        match (&event, effect) {
            (Err(e), _) => tracing::warn!(error = %e, "file watcher error; rescanning"),
            (Ok(e), Reaction::Rescan) if e.need_rescan() => {
                tracing::warn!("file watcher lost events (queue overflow); rescanning")
            }
            (Ok(e), Reaction::RewatchDir) => {
                tracing::debug!(event = ?e, "programs directory entry changed");
                self.rewatch_programs_dir();
            }
            (Ok(e), Reaction::Rescan) => tracing::trace!(event = ?e, "relevant change"),
            (Ok(_), Reaction::Ignore) => {}
        }
        if let (Ok(e), Reaction::Rescan) = (&event, effect) {
            self.track_writers(e);
        }
        effect != Reaction::Ignore
    }

    /// Follows which read files are open for writing: from their first write (or creation) to
    /// the writer's close, their removal or a rename away.
    fn track_writers(&mut self, event: &Event) {
        let paths = event.paths.iter().filter(|p| self.resolved.is_read_file(p));
        match event.kind {
            EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                self.writing.extend(paths.cloned());
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_)) => {
                for p in paths {
                    self.writing.remove(p);
                }
            }
            _ => {}
        }
    }
}

/// The task: idle until a relevant event, debounce, call, repeat.
async fn run<F, Fut>(
    state: Arc<Mutex<Watching>>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    mut stop: oneshot::Receiver<()>,
    debounce: Debounce,
    mut on_change: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        // Idle: no timer armed, only the channel and the stop signal.
        let burst_start = loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                signal = signals.recv() => match signal {
                    None => return,
                    Some(signal) => {
                        let mut watching = lock(&state);
                        // Only a rewatch within this burst (this event's included) counts.
                        watching.rewatched = false;
                        if watching.absorb(signal) {
                            break Instant::now();
                        }
                    }
                },
            }
        };
        let hard_deadline = burst_start + debounce.max_delay;
        let hold_deadline = burst_start + debounce.max_delay.max(WRITE_HOLD);
        let mut quiet_deadline = burst_start + debounce.quiet;
        loop {
            // A file still open for writing holds the rescan until its close (which restarts
            // the quiet period) or the hold runs out; in a burst that watched the directory
            // anew, only until the quiet period ends (below).
            let deadline = {
                let watching = lock(&state);
                if watching.writing.is_empty() {
                    quiet_deadline.min(hard_deadline)
                } else if watching.rewatched {
                    quiet_deadline.min(hold_deadline)
                } else {
                    hold_deadline
                }
            };
            tokio::select! {
                biased;
                _ = &mut stop => return,
                signal = signals.recv() => match signal {
                    None => return,
                    Some(signal) => {
                        if lock(&state).absorb(signal) {
                            quiet_deadline = Instant::now() + debounce.quiet;
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let mut watching = lock(&state);
                    // Quiet, in a burst that watched the directory anew: events still queued
                    // from a replaced watch can report a write whose close went with that
                    // watch, so, as at the replacement itself, no file of it is held back.
                    if std::mem::take(&mut watching.rewatched) {
                        watching.forget_writers_in_programs_dir();
                    }
                    if watching.writing.is_empty() || Instant::now() >= hold_deadline {
                        break;
                    }
                }
            }
        }
        {
            let mut watching = lock(&state);
            // Past the hold (or after a close event that never came), start tracking afresh.
            if !watching.writing.is_empty() {
                tracing::info!(files = ?watching.writing, "rescanning files still open for writing after {WRITE_HOLD:?}");
                watching.writing.clear();
            }
            watching.check_programs_dir();
        }
        tracing::debug!(
            waited_ms = burst_start.elapsed().as_millis() as u64,
            "configuration changed on disk; rescanning"
        );
        on_change().await;
    }
}

#[cfg(test)]
mod tests;
