//! Log files: appending, size rotation, and the background work on rotated files.
//!
//! Rotation itself is a handful of renames (`file.N-1` → `file.N`, …, `file` → `file.1`) done
//! inline on the write path: it is cheap and keeps the numbering exact at all times. Everything
//! that reads or rewrites whole files — gzip of rotated files, pruning by age, removing backups
//! beyond `max_backups` — is queued to one background thread, so a child writing fast is never
//! held up by it.
//!
//! The write path and the background work agree on names through [`Chain`]: both rename only
//! while holding its lock, and a compression job remembers how many rotations had happened when
//! it started, so it knows where its file has moved to by the time it finishes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::config::LogSpec;

use super::{LogError, Stream};

/// How often a file that could not be opened or written is tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(5);

/// Rotation settings of one log file, in the units the code works with.
///
/// [`Rotation::from_spec`] converts a program's [`LogSpec`]; building one directly allows sizes
/// finer than a MiB (used by tests and benchmarks that rotate at a few KiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would take the file past this many bytes. `0` never rotates.
    pub max_bytes: u64,
    /// Rotated files kept: `file.1` (newest) … `file.N`. `0` keeps none.
    pub max_backups: u32,
    /// Rotated files whose last write is older than this are deleted. `None` keeps them.
    pub max_age: Option<Duration>,
    /// Gzip rotated files (`file.1.gz` …) in the background.
    pub compress: bool,
}

impl Rotation {
    /// The settings of `docs/logs.md`: `max_size_mb` MiB, `max_backups`, `max_age_days` (0 = no age
    /// limit), `compress`.
    pub fn from_spec(spec: &LogSpec) -> Rotation {
        Rotation {
            max_bytes: spec.max_size_mb.saturating_mul(1024 * 1024),
            max_backups: spec.max_backups,
            max_age: (spec.max_age_days > 0)
                .then(|| Duration::from_secs(u64::from(spec.max_age_days) * 24 * 60 * 60)),
            compress: spec.compress,
        }
    }
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation::from_spec(&LogSpec::default())
    }
}

/// `base` + `.k`, or `.k.gz` when `gz`.
pub(crate) fn backup_path(base: &Path, k: u32, gz: bool) -> PathBuf {
    let mut s = OsString::from(base.as_os_str());
    s.push(if gz {
        format!(".{k}.gz")
    } else {
        format!(".{k}")
    });
    PathBuf::from(s)
}

/// The backup index of `name` if it is `file_name.K` or `file_name.K.gz`.
fn backup_index(name: &str, file_name: &str) -> Option<u32> {
    let rest = name.strip_prefix(file_name)?.strip_prefix('.')?;
    let digits = rest.strip_suffix(".gz").unwrap_or(rest);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&k| k > 0)
}

/// A hidden name next to `base`: `.<file name>.<n><suffix>`. Not a chain name, so rotation never
/// moves it.
fn hidden_path(base: &Path, n: u64, suffix: &str) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.with_file_name(format!(".{name}.{n}{suffix}"))
}

/// What a compression job writes before renaming it into the chain.
fn temp_path(base: &Path, k: u32) -> PathBuf {
    hidden_path(base, u64::from(k), TEMP_SUFFIX)
}

/// Where rotation moves a file that falls off the chain: unlinking a big file frees its page
/// cache synchronously, so the write path only renames it and the background pass deletes it.
fn dropped_path(base: &Path, rotation: u64, gz: bool) -> PathBuf {
    hidden_path(base, rotation, if gz { ".gz.dropped" } else { ".dropped" })
}

const TEMP_SUFFIX: &str = ".gz.tmp";
const HIDDEN_SUFFIXES: [&str; 3] = [TEMP_SUFFIX, ".gz.dropped", ".dropped"];

/// The file name whose leftover `name` is, if it is one: `.<file name>.<n><suffix>` with a
/// suffix of [`HIDDEN_SUFFIXES`] (a compression temp file or a dropped file).
fn hidden_leftover_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    HIDDEN_SUFFIXES.iter().find_map(|suffix| {
        let (file_name, n) = rest.strip_suffix(suffix)?.rsplit_once('.')?;
        (!file_name.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then_some(file_name)
    })
}

/// The file name and number of the backup `name` is, if it is one: `<file name>.K` or
/// `<file name>.K.gz`.
fn backup_of(name: &str) -> Option<(&str, u32)> {
    let (file_name, _) = name.strip_suffix(".gz").unwrap_or(name).rsplit_once('.')?;
    backup_index(name, file_name).map(|k| (file_name, k))
}

/// What an earlier daemon may have left next to one log file: hidden leftovers to delete, and
/// the highest backup number present (backups beyond `max_backups` are deleted).
#[derive(Default)]
struct Earlier {
    hidden: Vec<PathBuf>,
    highest_backup: u32,
}

/// Per log directory, what its listing found per file name, taken by each chain's first pass.
///
/// A directory is listed once per daemon, at its first chain's first pass: listing it per chain
/// made a boot of N programs sharing a directory read N × 2N entries. Files a chain creates
/// afterwards it tracks itself (`ChainState::dropped`, `ChainState::highest`), and a chain
/// dropped with work left hands it back here for the next chain of that file.
static EARLIER: LazyLock<Mutex<HashMap<PathBuf, HashMap<String, Earlier>>>> =
    LazyLock::new(Mutex::default);

fn earlier() -> std::sync::MutexGuard<'static, HashMap<PathBuf, HashMap<String, Earlier>>> {
    EARLIER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lists `dir` into what it holds per file name: only names with leftovers or backups.
fn list_earlier(dir: &Path) -> HashMap<String, Earlier> {
    let mut found: HashMap<String, Earlier> = HashMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(file_name) = hidden_leftover_of(name) {
            let e = found.entry(file_name.to_string()).or_default();
            e.hidden.push(entry.path());
        } else if let Some((file_name, k)) = backup_of(name) {
            let e = found.entry(file_name.to_string()).or_default();
            e.highest_backup = e.highest_backup.max(k);
        }
    }
    found
}

/// What an earlier daemon (or an earlier chain of this daemon) left next to `base`, taken so
/// that only one chain deletes it.
fn take_earlier(base: &Path) -> Earlier {
    let (Some(dir), Some(file_name)) =
        (parent_dir(base), base.file_name().and_then(|n| n.to_str()))
    else {
        return Earlier::default();
    };
    let mut all = earlier();
    all.entry(dir.to_path_buf())
        .or_insert_with(|| list_earlier(dir))
        .remove(file_name)
        .unwrap_or_default()
}

fn parent_dir(base: &Path) -> Option<&Path> {
    match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => Some(p),
        Some(_) => Some(Path::new(".")),
        None => None,
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The rotation state of one log file path, shared by its writer and the background work.
pub(crate) struct Chain {
    instance: String,
    base: PathBuf,
    state: Mutex<ChainState>,
    /// In the maintenance queue (set by `schedule`, cleared when its pass starts).
    queued: AtomicBool,
}

struct ChainState {
    /// Rotations done so far: a file that was `file.k` when this read `r` is now
    /// `file.(k + rotations - r)`.
    rotations: u64,
    policy: Rotation,
    /// Whether the first background pass took what an earlier daemon left ([`take_earlier`]).
    swept: bool,
    /// The highest backup number that may exist: files beyond `policy.max_backups` up to this are
    /// deleted by the next pass (left when `max_backups` was lowered, or by an earlier daemon).
    highest: u32,
    /// Files rotation dropped off the chain, deleted by the next pass.
    dropped: Vec<PathBuf>,
}

/// The next chain of this file (an instance started anew, a program added back) deletes the
/// backups this one kept beyond its own `max_backups`, as if an earlier daemon had left them.
impl Drop for Chain {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let (Some(dir), Some(file_name)) = (
            parent_dir(&self.base),
            self.base.file_name().and_then(|n| n.to_str()),
        ) else {
            return;
        };
        // A directory not listed yet is listed by that next chain anyway.
        if let Some(listed) = earlier().get_mut(dir) {
            let e = listed.entry(file_name.to_string()).or_default();
            e.highest_backup = e.highest_backup.max(st.highest);
            e.hidden.append(&mut st.dropped);
        }
    }
}

impl Chain {
    fn new(instance: &str, base: PathBuf, policy: Rotation) -> Chain {
        Chain {
            instance: instance.to_string(),
            base,
            state: Mutex::new(ChainState {
                rotations: 0,
                highest: policy.max_backups,
                policy,
                swept: false,
                dropped: Vec::new(),
            }),
            queued: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChainState> {
        // The state stays consistent at every step (plain counters), so a panic elsewhere
        // while holding the lock leaves nothing half-done worth refusing to continue for.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the policy; true when it changed.
    fn set_policy(&self, policy: &Rotation) -> bool {
        let mut st = self.lock();
        let changed = st.policy != *policy;
        st.highest = st.highest.max(policy.max_backups);
        st.policy = policy.clone();
        changed
    }

    /// Moves `file` to `file.1`, shifting older backups up and dropping the one beyond
    /// `max_backups`. Runs on the write path: renames only. Returns whether a dropped file now
    /// waits for the background pass to delete it.
    fn shift(&self) -> (bool, Result<(), LogError>) {
        let mut st = self.lock();
        let n = st.policy.max_backups;
        let r = st.rotations;
        let mut dropped = Vec::new();
        let mut first_err = None;
        let mut note = |r: io::Result<()>, from: &Path, to: &Path| {
            if let Err(source) = ignore_missing(r) {
                first_err.get_or_insert(LogError::Rotate {
                    instance: self.instance.clone(),
                    from: from.to_path_buf(),
                    to: to.to_path_buf(),
                    source,
                });
            }
        };
        let mut drop_file = |from: &Path, gz: bool| {
            let to = dropped_path(&self.base, r, gz);
            match fs::rename(from, &to) {
                Ok(()) => dropped.push(to),
                Err(e) => note(Err(e), from, &to),
            }
        };
        if n == 0 {
            drop_file(&self.base, false);
        } else {
            for gz in [false, true] {
                drop_file(&backup_path(&self.base, n, gz), gz);
            }
            for k in (1..n).rev() {
                for gz in [false, true] {
                    let from = backup_path(&self.base, k, gz);
                    let to = backup_path(&self.base, k + 1, gz);
                    note(fs::rename(&from, &to), &from, &to);
                }
            }
            let to = backup_path(&self.base, 1, false);
            note(fs::rename(&self.base, &to), &self.base, &to);
        }
        st.rotations += 1;
        let any_dropped = !dropped.is_empty();
        st.dropped.append(&mut dropped);
        drop(st);
        (any_dropped, first_err.map_or(Ok(()), Err))
    }

    /// One background pass: clear leftovers, prune, compress. Only ever one pass per chain at a
    /// time (the maintenance queue guarantees it), so any temp file found at the start is stale.
    fn maintain(&self) {
        let policy = self.lock().policy.clone();
        self.remove_leftovers();
        if let Some(max_age) = policy.max_age {
            self.prune_older_than(max_age);
        }
        if policy.compress {
            self.compress_backups();
        }
    }

    fn warn(&self, err: &LogError) {
        tracing::warn!(instance = %self.instance, error = %err, "log maintenance");
    }

    /// Removes dropped files, stale compression temp files and backups numbered beyond
    /// `max_backups` (left when `max_backups` was lowered, or by an earlier daemon). Only the
    /// first pass of a chain looks at the directory (through [`take_earlier`]); later passes
    /// know by name what is left to delete.
    fn remove_leftovers(&self) {
        let first = !std::mem::replace(&mut self.lock().swept, true);
        let earlier = if first {
            take_earlier(&self.base)
        } else {
            Earlier::default()
        };
        let mut doomed = earlier.hidden;
        let mut st = self.lock();
        doomed.append(&mut st.dropped);
        st.highest = st.highest.max(earlier.highest_backup);
        // Under the lock: a rotation running meanwhile only moves files up to the current
        // max_backups, never beyond it.
        for k in st.policy.max_backups + 1..=st.highest {
            for gz in [false, true] {
                let path = backup_path(&self.base, k, gz);
                if let Err(source) = ignore_missing(fs::remove_file(&path)) {
                    self.warn(&LogError::Prune { path, source });
                }
            }
        }
        st.highest = st.policy.max_backups;
        drop(st);
        for path in doomed {
            if let Err(source) = ignore_missing(fs::remove_file(&path)) {
                self.warn(&LogError::Prune { path, source });
            }
        }
    }

    fn prune_older_than(&self, max_age: Duration) {
        let now = SystemTime::now();
        let st = self.lock();
        for k in 1..=st.policy.max_backups {
            for gz in [false, true] {
                let path = backup_path(&self.base, k, gz);
                let Ok(modified) = fs::metadata(&path).and_then(|m| m.modified()) else {
                    continue;
                };
                if now.duration_since(modified).unwrap_or_default() > max_age {
                    if let Err(source) = ignore_missing(fs::remove_file(&path)) {
                        self.warn(&LogError::Prune { path, source });
                    }
                }
            }
        }
    }

    /// Gzips every uncompressed backup, newest first, one at a time. The lock is held only to
    /// pick a file and to rename the result into place, never while compressing.
    fn compress_backups(&self) {
        let mut failed: HashSet<(u64, u64)> = HashSet::new();
        loop {
            let job = {
                let st = self.lock();
                if !st.policy.compress {
                    return;
                }
                (1..=st.policy.max_backups).find_map(|k| {
                    let path = backup_path(&self.base, k, false);
                    let file = File::open(&path).ok()?;
                    let meta = file.metadata().ok()?;
                    let id = (meta.dev(), meta.ino());
                    (!failed.contains(&id)).then_some((k, file, meta, id, st.rotations))
                })
            };
            let Some((k, file, meta, id, rotations_then)) = job else {
                return;
            };
            let tmp = temp_path(&self.base, k);
            if let Err(source) = gzip_to(file, &tmp, meta.modified().ok()) {
                let _ = fs::remove_file(&tmp);
                failed.insert(id);
                self.warn(&LogError::Compress {
                    path: backup_path(&self.base, k, false),
                    source,
                });
                continue;
            }
            let st = self.lock();
            let moved = st.rotations - rotations_then;
            let now_at = u64::from(k) + moved;
            let plain = u32::try_from(now_at)
                .ok()
                .filter(|&k| k <= st.policy.max_backups)
                .map(|k| (k, backup_path(&self.base, k, false)));
            let still_there = plain
                .as_ref()
                .is_some_and(|(_, p)| fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == id));
            match plain {
                Some((k, plain)) if still_there => {
                    let gz = backup_path(&self.base, k, true);
                    let result = fs::rename(&tmp, &gz).and_then(|()| fs::remove_file(&plain));
                    if let Err(source) = result {
                        let _ = fs::remove_file(&tmp);
                        failed.insert(id);
                        self.warn(&LogError::Compress {
                            path: plain,
                            source,
                        });
                    }
                }
                // Dropped off the end of the chain (or pruned) while being compressed.
                _ => {
                    let _ = fs::remove_file(&tmp);
                }
            }
        }
    }
}

/// Writes the gzip of `src` to `dst`, carrying over the modification time so age pruning sees
/// when the output was written, not when it was compressed.
fn gzip_to(mut src: File, dst: &Path, modified: Option<SystemTime>) -> io::Result<()> {
    let out = File::create(dst)?;
    let mut enc = flate2::write::GzEncoder::new(
        BufWriter::with_capacity(256 * 1024, out),
        flate2::Compression::default(),
    );
    io::copy(&mut src, &mut enc)?;
    let out = enc
        .finish()?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    if let Some(t) = modified {
        out.set_modified(t)?;
    }
    Ok(())
}

/// The queue of chains waiting for a background pass, drained by at most one thread.
///
/// A plain thread rather than tokio's blocking pool: the queue must never be orphaned by a
/// runtime shutting down with the task still queued (every test has its own runtime), and one
/// thread serialises the passes, so two never touch one chain at once.
struct MaintenanceQueue {
    pending: VecDeque<Arc<Chain>>,
    draining: bool,
}

static QUEUE: Mutex<MaintenanceQueue> = Mutex::new(MaintenanceQueue {
    pending: VecDeque::new(),
    draining: false,
});

fn queue() -> std::sync::MutexGuard<'static, MaintenanceQueue> {
    QUEUE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Queues a background pass over `chain` (once, however often it is asked before it runs).
pub(crate) fn schedule(chain: &Arc<Chain>) {
    if chain.queued.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = {
        let mut q = queue();
        q.pending.push_back(Arc::clone(chain));
        !std::mem::replace(&mut q.draining, true)
    };
    if start {
        let spawned = std::thread::Builder::new()
            .name("provisr-log-maint".into())
            .spawn(drain_queue);
        if let Err(err) = spawned {
            // The queued passes run when the next rotation schedules one.
            queue().draining = false;
            tracing::warn!(error = %err, "cannot start the log maintenance thread");
        }
    }
}

fn drain_queue() {
    // Resets `draining` even if a pass panics, so later rotations start a new drainer.
    struct Draining;
    impl Drop for Draining {
        fn drop(&mut self) {
            if std::thread::panicking() {
                queue().draining = false;
            }
        }
    }
    let _guard = Draining;
    loop {
        let chain = {
            let mut q = queue();
            match q.pending.pop_front() {
                Some(c) => c,
                None => {
                    q.draining = false;
                    return;
                }
            }
        };
        chain.queued.store(false, Ordering::Release);
        chain.maintain();
    }
}

/// The file side of one stream: which file it goes to now, and the chains of every path it has
/// used (kept so that a path that comes back after `update` finds its rotation count intact).
pub(crate) struct FileSlot {
    instance: String,
    stream: Stream,
    sink: Option<FileSink>,
    chains: HashMap<PathBuf, Arc<Chain>>,
}

impl FileSlot {
    pub fn new(instance: &str, stream: Stream) -> FileSlot {
        FileSlot {
            instance: instance.to_string(),
            stream,
            sink: None,
            chains: HashMap::new(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().map(|s| s.path.as_path())
    }

    /// Points the stream at `path` (or memory only) with `rotation`, opening the file if the
    /// path changed. Existing backups get a background pass when the file is (re)opened or the
    /// policy changed.
    pub fn configure(&mut self, path: Option<PathBuf>, rotation: &Rotation) {
        let Some(path) = path else {
            self.sink = None;
            return;
        };
        let chain = self.chains.entry(path.clone()).or_insert_with(|| {
            Arc::new(Chain::new(&self.instance, path.clone(), rotation.clone()))
        });
        let policy_changed = chain.set_policy(rotation);
        let chain = Arc::clone(chain);
        match &mut self.sink {
            Some(sink) if sink.path == path => {
                sink.max_bytes = rotation.max_bytes;
                if policy_changed {
                    schedule(&chain);
                }
            }
            _ => {
                let mut sink = FileSink {
                    instance: self.instance.clone(),
                    stream: self.stream,
                    path,
                    file: None,
                    size: 0,
                    mid_line: false,
                    max_bytes: rotation.max_bytes,
                    chain: Arc::clone(&chain),
                    retry_at: None,
                    failing: false,
                };
                sink.open();
                self.sink = Some(sink);
                schedule(&chain);
            }
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        if let Some(sink) = &mut self.sink {
            sink.write(data);
        }
    }
}

/// One open log file and its size, rotating when a write would pass `max_bytes`.
struct FileSink {
    instance: String,
    stream: Stream,
    path: PathBuf,
    /// `None` after a failed open or write, until `retry_at`.
    file: Option<File>,
    size: u64,
    /// The last byte written to this file is not a newline: the file ends inside a line.
    mid_line: bool,
    max_bytes: u64,
    chain: Arc<Chain>,
    retry_at: Option<Instant>,
    /// A failure was logged and no success since: log the next failure quietly, the recovery loudly.
    failing: bool,
}

impl FileSink {
    fn fail(&mut self, err: LogError) {
        if !self.failing {
            tracing::warn!(
                instance = %self.instance, stream = %self.stream, error = %err,
                "log file unavailable; output is kept in memory only until it can be written again"
            );
        }
        self.failing = true;
        self.file = None;
        self.retry_at = Some(Instant::now() + REOPEN_INTERVAL);
    }

    /// Opens (creating directories and the file as needed) in append mode; std opens with
    /// O_CLOEXEC, so no child inherits it.
    fn open(&mut self) -> bool {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(source) = fs::create_dir_all(dir) {
                self.fail(LogError::CreateDir {
                    instance: self.instance.clone(),
                    path: dir.to_path_buf(),
                    source,
                });
                return false;
            }
        }
        let opened = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .and_then(|f| Ok((f.metadata()?.len(), f)));
        match opened {
            Ok((size, file)) => {
                if self.failing {
                    tracing::info!(instance = %self.instance, stream = %self.stream,
                        path = %self.path.display(), "log file writable again");
                }
                self.failing = false;
                self.retry_at = None;
                self.size = size;
                // A file found with content is taken to end where a line does.
                self.mid_line = false;
                self.file = Some(file);
                true
            }
            Err(source) => {
                self.fail(LogError::Open {
                    instance: self.instance.clone(),
                    path: self.path.clone(),
                    source,
                });
                false
            }
        }
    }

    fn ready(&mut self) -> bool {
        if self.file.is_some() {
            return true;
        }
        match self.retry_at {
            Some(at) if Instant::now() < at => false,
            _ => self.open(),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> bool {
        let Some(file) = &mut self.file else {
            return false;
        };
        match file.write_all(data) {
            Ok(()) => {
                self.size += data.len() as u64;
                if let Some(&last) = data.last() {
                    self.mid_line = last != b'\n';
                }
                true
            }
            Err(source) => {
                let path = self.path.clone();
                self.fail(LogError::Write {
                    instance: self.instance.clone(),
                    path,
                    source,
                });
                false
            }
        }
    }

    /// Writes `data`, rotating whenever the next piece would take the file past `max_bytes`.
    /// Cuts fall after a newline where one exists in range, so lines stay whole across files;
    /// only a single line longer than `max_bytes` is split. A read from a pipe can end inside a
    /// line: when the file ends inside one and its end is in `data` but past the room left, the
    /// line is finished in this file, past `max_bytes` by less than a line.
    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if !self.ready() {
                return;
            }
            let room = if self.max_bytes == 0 {
                u64::MAX
            } else {
                self.max_bytes.saturating_sub(self.size)
            };
            if data.len() as u64 <= room {
                self.write_all(data);
                return;
            }
            // Less than `data.len()`.
            let room = room as usize;
            // Only a file that ends inside a line finishes it; scanned only then.
            let line_end = || {
                if !self.mid_line {
                    return None;
                }
                let within = data.len().min(self.max_bytes as usize);
                let end = data[..within].iter().position(|&b| b == b'\n')?;
                Some(end + 1)
            };
            let cut = data[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1)
                .or((self.size == 0).then_some(room))
                .or_else(line_end);
            if let Some(cut) = cut {
                if !self.write_all(&data[..cut]) {
                    return;
                }
                data = &data[cut..];
            }
            if !self.rotate() {
                // The old file could not be moved away; keep appending rather than lose output.
                self.write_all(data);
                return;
            }
        }
    }

    /// Rotates and opens a fresh file; false when the file is still not empty afterwards.
    fn rotate(&mut self) -> bool {
        let (dropped, shifted) = self.chain.shift();
        if let Err(err) = shifted {
            tracing::warn!(instance = %self.instance, stream = %self.stream, error = %err, "log rotation");
        }
        self.file = None;
        let reopened = self.open() && self.size == 0;
        let policy = self.chain.lock().policy.clone();
        if dropped || policy.compress || policy.max_age.is_some() {
            schedule(&self.chain);
        }
        reopened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(max_bytes: u64, max_backups: u32, compress: bool) -> Rotation {
        Rotation {
            max_bytes,
            max_backups,
            max_age: None,
            compress,
        }
    }

    #[test]
    fn spec_sizes_are_mebibytes_and_zero_days_means_no_age_limit() {
        let mut spec = LogSpec::default();
        let r = Rotation::from_spec(&spec);
        assert_eq!(r.max_bytes, 10 * 1024 * 1024);
        assert_eq!(r.max_age, Some(Duration::from_secs(7 * 86400)));
        spec.max_age_days = 0;
        assert_eq!(Rotation::from_spec(&spec).max_age, None);
    }

    #[test]
    fn backup_names() {
        let base = Path::new("/l/app.log");
        assert_eq!(backup_path(base, 2, false), Path::new("/l/app.log.2"));
        assert_eq!(backup_path(base, 1, true), Path::new("/l/app.log.1.gz"));
        assert_eq!(backup_index("app.log.3", "app.log"), Some(3));
        assert_eq!(backup_index("app.log.12.gz", "app.log"), Some(12));
        for no in [
            "app.log",
            "app.log.",
            "app.log.0",
            "app.log.x",
            "app.log.1.tmp",
            "app.2.log",
        ] {
            assert_eq!(backup_index(no, "app.log"), None, "{no}");
        }
        assert_eq!(hidden_leftover_of(".app.log.3.gz.tmp"), Some("app.log"));
        assert_eq!(hidden_leftover_of(".app.log.17.dropped"), Some("app.log"));
        assert_eq!(hidden_leftover_of(".app.log.0.gz.dropped"), Some("app.log"));
        assert_eq!(backup_of("app.log.12.gz"), Some(("app.log", 12)));
        assert_eq!(backup_of("app.log"), None);
        for no in [
            ".app.log.gz.tmp",
            ".app.log.x.dropped",
            "app.log.1.dropped",
            ".other.1.dropped",
        ] {
            assert_ne!(hidden_leftover_of(no), Some("app.log"), "{no}");
        }
        assert_eq!(temp_path(base, 3).file_name().unwrap(), ".app.log.3.gz.tmp");
    }

    fn slot(dir: &Path, r: &Rotation) -> (FileSlot, PathBuf) {
        let path = dir.join("sub/dir/out.log");
        let mut slot = FileSlot::new("t", Stream::Stdout);
        slot.configure(Some(path.clone()), r);
        (slot, path)
    }

    #[test]
    fn rotation_cuts_after_newlines_and_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slot, path) = slot(dir.path(), &rotation(10, 2, false));
        assert!(path.exists(), "created with its directories");
        // Lines of 4 bytes: two fit in 10, the third rotates.
        for i in 0..7 {
            slot.write(format!("{i:03}\n").as_bytes());
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "006\n");
        assert_eq!(
            fs::read_to_string(backup_path(&path, 1, false)).unwrap(),
            "004\n005\n"
        );
        assert_eq!(
            fs::read_to_string(backup_path(&path, 2, false)).unwrap(),
            "002\n003\n"
        );
        assert!(!backup_path(&path, 3, false).exists());

        // One big chunk is split across files at line boundaries.
        slot.write(b"a\nbb\nccc\ndddd\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "ccc\ndddd\n");
        assert_eq!(
            fs::read_to_string(backup_path(&path, 1, false)).unwrap(),
            "006\na\nbb\n"
        );
        assert_eq!(
            fs::read_to_string(backup_path(&path, 2, false)).unwrap(),
            "004\n005\n"
        );
    }

    #[test]
    fn a_line_begun_by_one_read_is_finished_before_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slot, path) = slot(dir.path(), &rotation(10, 2, false));
        // A pipe's read ends inside a line; the next read holds its end past the room left.
        slot.write(b"aaaa\nbbbb");
        slot.write(b"bb\ncc\n");
        assert_eq!(
            fs::read_to_string(backup_path(&path, 1, false)).unwrap(),
            "aaaa\nbbbbbb\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "cc\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slot, path) = slot(dir.path(), &rotation(4, 5, false));
        slot.write(b"abcdefghij\n");
        assert_eq!(
            fs::read_to_string(backup_path(&path, 2, false)).unwrap(),
            "abcd"
        );
        assert_eq!(
            fs::read_to_string(backup_path(&path, 1, false)).unwrap(),
            "efgh"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "ij\n");
    }

    #[test]
    fn no_backups_means_the_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slot, path) = slot(dir.path(), &rotation(6, 0, false));
        slot.write(b"111\n222\n333\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "333\n");
        assert!(!backup_path(&path, 1, false).exists());
        // The old contents were renamed away on the write path and are deleted in the background.
        let dir = path.parent().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            if names == ["out.log"] {
                break;
            }
            assert!(Instant::now() < deadline, "left behind: {names:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn zero_max_bytes_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slot, path) = slot(dir.path(), &rotation(0, 3, false));
        let data = vec![b'x'; 100_000];
        slot.write(&data);
        slot.write(&data);
        assert_eq!(fs::metadata(&path).unwrap().len(), 200_000);
        assert!(!backup_path(&path, 1, false).exists());
    }

    #[test]
    fn reopening_appends_and_counts_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        fs::write(&path, b"12345678\n").unwrap();
        let mut slot = FileSlot::new("t", Stream::Stderr);
        slot.configure(Some(path.clone()), &rotation(12, 1, false));
        slot.write(b"abcd\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "abcd\n");
        assert_eq!(
            fs::read_to_string(backup_path(&path, 1, false)).unwrap(),
            "12345678\n"
        );
    }

    #[test]
    fn lowering_max_backups_removes_the_extra_ones_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slot, path) = slot(dir.path(), &rotation(4, 4, false));
        for i in 0..5 {
            slot.write(format!("{i:03}\n").as_bytes());
        }
        assert!(backup_path(&path, 4, false).exists());
        slot.configure(Some(path.clone()), &rotation(4, 2, false));
        let deadline = Instant::now() + Duration::from_secs(20);
        while backup_path(&path, 3, false).exists() || backup_path(&path, 4, false).exists() {
            assert!(Instant::now() < deadline, "extra backups never removed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(backup_path(&path, 2, false).exists());
    }

    #[test]
    fn the_first_pass_deletes_what_an_earlier_daemon_left() {
        let dir = tempfile::tempdir().unwrap();
        // Where `slot` puts its file.
        let logs = dir.path().join("sub/dir");
        fs::create_dir_all(&logs).unwrap();
        let left = [
            ".out.log.3.dropped",
            ".out.log.2.gz.tmp",
            "out.log.3",
            "out.log.5.gz",
        ];
        for name in left.iter().chain(&["out.log.1", "other.log.9"]) {
            fs::write(logs.join(name), b"x\n").unwrap();
        }
        let (_slot, path) = slot(dir.path(), &rotation(1024, 2, false));
        let deadline = Instant::now() + Duration::from_secs(20);
        while left.iter().any(|n| logs.join(n).exists()) {
            assert!(
                Instant::now() < deadline,
                "an earlier daemon's files never removed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            backup_path(&path, 1, false).exists(),
            "a kept backup was removed"
        );
        assert!(
            logs.join("other.log.9").exists(),
            "another file's backup was removed"
        );
    }
}
