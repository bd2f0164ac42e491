//! The desired-state store: what should run, kept in an embedded sled database under
//! `[daemon] state_dir` (`docs/store.md`).
//!
//! Config files and API calls only write here, through `desired::DesiredState`, which refreshes
//! its in-memory mirror after each write and then wakes the reconcile loop; the store itself only
//! counts its commits ([`DesiredStore::subscribe`]), so a caller can tell a write that committed
//! nothing. Layout of `state_dir`:
//!
//! - `daemon.lock` — `flock`ed for the store's lifetime: one daemon per state directory.
//! - `db2/` — the sled 1.x database: one keyspace whose keys carry the record kind as a prefix,
//!   `p/<program>` ([`ProgramRecord`]), `i/<instance>` ([`InstanceRecord`]) and
//!   `m/schema_version`, so that one atomic `apply_batch` covers every kind.
//! - `db.sled-0.34.backup/` — only after an upgrade: the store as sled 0.34 wrote it (`db/`
//!   before the upgrade), kept untouched; see [`migrations`].
//!
//! Reads run on the caller's thread. Writes go to one writer thread, which serializes them,
//! commits each batch as one atomic sled batch and flushes before answering, so an acknowledged
//! write survives `kill -9`; a batch ([`DesiredStore::apply`]) is one flush however many records
//! it touches. A write the file system cannot take is refused before sled starts it, and after a
//! failed flush the store refuses everything rather than hang ([`StoreError::NoRoom`],
//! [`StoreError::Failed`]). `docs/store.md` has the details.

mod compact;
mod error;
mod lock;
pub mod migrations;
mod presync;
mod records;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::InlineArray;
use tokio::sync::{oneshot, watch};

use crate::config::{ProgramSpec, Source};

pub use error::StoreError;
pub use lock::LOCK_FILE;
pub use migrations::{SchemaOutcome, CURRENT_SCHEMA};
pub use records::{
    resolve_instance, CronChange, CronRun, CronState, DesiredRun, Finished, InstanceDesired,
    InstanceRecord, Launch, Owner, ProgramRecord, RunCause, RunRequest, RunResult, RunSeq,
    StoreWrite,
};

/// The sled 1.x database's directory inside the state directory (schema version 2 on).
pub const DB_DIR: &str = "db2";

/// A kind of record: the key prefix its records live under, and the name errors use for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kind {
    pub(crate) prefix: &'static str,
    pub(crate) name: &'static str,
}

pub(crate) const PROGRAMS: Kind = Kind {
    prefix: "p/",
    name: "programs",
};
pub(crate) const INSTANCES: Kind = Kind {
    prefix: "i/",
    name: "instances",
};
/// The key holding the schema version (a JSON number).
pub(crate) const SCHEMA_KEY: &str = "m/schema_version";

/// Free space the store keeps on its file system, beyond twice the bytes a batch writes: a
/// write that would leave less is refused before sled starts it (see [`StoreError::NoRoom`]).
pub const RESERVE_BYTES: u64 = 2 << 20;

impl Kind {
    fn key(self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// sled's cache bound; its default is 512 MiB. 1000 programs are about 0.6 MiB of JSON, so
/// 4 MiB keeps them all hot.
const CACHE_CAPACITY: usize = 4 << 20;

/// Opens (creating if needed) the sled 1.x database at `path` the way the store uses it.
///
/// sled's background flusher is off: it would wake the daemon every few hundred milliseconds
/// forever, and every write here flushes explicitly before it is acknowledged. Before sled
/// recovers, the database's own files are flushed rather than the whole machine's ([`presync`]).
pub(crate) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity_bytes(CACHE_CAPACITY)
        .flush_every_ms(None);
    presync::open_after_own_sync(path, || config.open()).map_err(|source| StoreError::Sled {
        operation: "open the database".to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// The desired-state store. Cheap to clone: clones share one database, one writer and one lock.
#[derive(Clone)]
pub struct DesiredStore {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    /// Jobs for the writer thread; dropping it ends the thread.
    jobs: Option<mpsc::Sender<WriteJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Declared last so it is released only after the database has been closed.
    _lock: lock::StateDirLock,
}

/// What both readers (any thread) and the writer thread use.
struct Core {
    state_dir: PathBuf,
    /// The readers' handle on the database. A sled 1.x handle is `Send` but not `Sync` (its
    /// epoch-based reclamation state is per handle), so readers take turns on this one; the
    /// writer thread has its own and never waits for readers.
    reader: Mutex<Handle>,
    /// Counts committed writes; receivers are woken on every commit.
    commits: watch::Sender<u64>,
}

/// Set once a flush has failed, with the error: sled then fails every later operation and its
/// next flush (including the one in its `Drop`) waits forever for the failed one, so from then
/// on the store answers [`StoreError::Failed`] itself and never flushes again.
type Latch = Arc<OnceLock<String>>;

/// One handle on the database, with the path errors name.
struct Handle {
    db_path: PathBuf,
    /// Always `Some` until the handle is dropped.
    db: Option<sled::Db>,
    failed: Latch,
}

impl Drop for Handle {
    /// Closes the database, unless a flush failed: then sled's flush on drop would never return,
    /// and the handle is leaked instead (nothing unflushed could be saved anyway).
    fn drop(&mut self) {
        if self.failed.get().is_some() {
            std::mem::forget(self.db.take());
        }
    }
}

impl Core {
    /// Runs `read` with the readers' handle. A reader that panicked leaves nothing half-done
    /// in the handle (reads do not modify it), so a poisoned lock is used as it is.
    fn read<T>(&self, read: impl FnOnce(&Handle) -> T) -> T {
        let handle = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        read(&handle)
    }
}

type WriteJob = (
    Vec<StoreWrite>,
    oneshot::Sender<Result<Written, StoreError>>,
);

/// What a committed batch did.
#[derive(Debug)]
struct Written {
    /// Per write, whether it changed something.
    changed: Vec<bool>,
    /// Every program record the batch touched, as the batch left it (`None`: there is none).
    programs: BTreeMap<String, Option<ProgramRecord>>,
}

/// What [`DesiredStore::commit`] committed.
#[derive(Debug)]
pub struct Committed {
    /// How many writes changed something.
    pub changed: usize,
    /// Every program record the writes touched, as committed (`None`: there is none): the
    /// very values written, so a reader need not read them back (their specs are the ones the
    /// writes carried, or decoded from the store for writes that carry none).
    pub programs: BTreeMap<String, Option<ProgramRecord>>,
}

impl Drop for Inner {
    /// Stops the writer and waits for it, so the database is closed (its last handle dropped)
    /// before the lock field is released and another daemon may open it.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the store writer thread had panicked");
            }
        }
    }
}

/// One key's new value (`None` removes it), key prefix included.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawWrite {
    key: String,
    value: Option<Vec<u8>>,
}

impl DesiredStore {
    /// Opens (creating if needed) the store in `state_dir`.
    ///
    /// Takes `state_dir/daemon.lock` first, so a second daemon on the same directory fails at
    /// once with [`StoreError::Locked`] before touching the database; then opens sled in
    /// `state_dir/db` and brings its schema to [`CURRENT_SCHEMA`] (or refuses a newer one).
    pub fn open(state_dir: &Path) -> Result<DesiredStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            operation: "create the state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let mut lock = lock::StateDirLock::acquire(state_dir)?;
        let db_path = state_dir.join(DB_DIR);
        // sled `flock`s its database directory while open. A sled handle dropped a moment ago
        // in this process may still hold it (see `StateDirLock::drop`).
        lock::wait_until_unlocked(&db_path);
        lock.release_after_sled_closes(db_path.clone());
        let (db, outcome) = migrations::open_current(state_dir)?;
        match outcome {
            SchemaOutcome::Upgraded { from } => tracing::info!(
                store = %db_path.display(),
                from,
                to = CURRENT_SCHEMA,
                "store upgraded"
            ),
            SchemaOutcome::Created | SchemaOutcome::Current => {}
        }
        let failed = Latch::default();
        let writer_handle = Handle {
            db_path: db_path.clone(),
            db: Some(db.clone()),
            failed: failed.clone(),
        };
        let core = Arc::new(Core {
            state_dir: state_dir.to_path_buf(),
            reader: Mutex::new(Handle {
                db_path,
                db: Some(db),
                failed,
            }),
            commits: watch::channel(0).0,
        });
        let (jobs, queue) = mpsc::channel::<WriteJob>();
        let writer_core = Arc::clone(&core);
        // One thread for every write: it serializes writers (a write's read-compare-write sees no
        // other writer in between), keeps fsyncs off the async runtime's threads, and sleeps in
        // `recv` while idle.
        let writer = std::thread::Builder::new()
            .name("provisr-store".to_string())
            .spawn(move || {
                for (writes, reply) in queue {
                    // The caller may have stopped waiting; the write stands either way.
                    let _ = reply.send(writer_handle.write(writes, &writer_core.commits));
                }
            })
            .map_err(|source| StoreError::Io {
                operation: "start the store writer thread for",
                path: state_dir.to_path_buf(),
                source,
            })?;
        Ok(DesiredStore {
            inner: Arc::new(Inner {
                core,
                jobs: Some(jobs),
                writer: Some(writer),
                _lock: lock,
            }),
        })
    }

    /// The state directory this store lives in.
    pub fn state_dir(&self) -> &Path {
        &self.inner.core.state_dir
    }

    /// A receiver whose value (the number of committed writes since open) changes after every
    /// write that changed something. Level-triggered: it means "look again", and several writes
    /// may be seen as one change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.core.commits.subscribe()
    }

    /// One program's record.
    pub fn get_program(&self, name: &str) -> Result<Option<ProgramRecord>, StoreError> {
        self.inner.core.read(|h| h.get(PROGRAMS, name))
    }

    /// Every program's record, sorted by name.
    pub fn list_programs(&self) -> Result<Vec<ProgramRecord>, StoreError> {
        Ok(self
            .inner
            .core
            .read(|h| h.list(PROGRAMS))?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    /// One instance's record.
    pub fn get_instance(&self, name: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner.core.read(|h| h.get(INSTANCES, name))
    }

    /// Every instance record with its instance name, sorted by name.
    pub fn list_instances(&self) -> Result<Vec<(String, InstanceRecord)>, StoreError> {
        self.inner.core.read(|h| h.list(INSTANCES))
    }

    /// The instance records of one program, sorted by instance name.
    pub fn instances_of(&self, program: &str) -> Result<Vec<(String, InstanceRecord)>, StoreError> {
        let mut all = self.list_instances()?;
        all.retain(|(_, record)| record.program == program);
        Ok(all)
    }

    /// Creates or updates a program from a good spec; returns whether anything changed.
    ///
    /// A new program gets generation 1 and the desired state its `autostart` asks for. An existing
    /// one keeps its desired state (an explicit stop survives file edits), gets generation + 1
    /// when the spec differs and keeps it when identical, takes the new source and loses any
    /// error. Writing what is already stored commits nothing and wakes nobody.
    pub async fn put_program(
        &self,
        spec: impl Into<Arc<ProgramSpec>>,
        source: Source,
    ) -> Result<bool, StoreError> {
        let spec = spec.into();
        self.write_one("put a program", StoreWrite::PutProgram { spec, source })
            .await
    }

    /// Sets (or, with `None`, clears) the error of a program whose source no longer validates;
    /// its last good spec stays. [`StoreError::ProgramNotFound`] if there is no such program.
    pub async fn set_error(
        &self,
        name: &str,
        error: Option<Vec<String>>,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_one(
            "set a program's error",
            StoreWrite::SetError { name, error },
        )
        .await
    }

    /// An explicit start or stop. [`StoreError::ProgramNotFound`] if there is no such program.
    pub async fn set_desired(&self, name: &str, desired: DesiredRun) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_one(
            "set a program's desired state",
            StoreWrite::SetDesired { name, desired },
        )
        .await
    }

    /// Removes a program and every instance record that belongs to it; false if there was none.
    pub async fn delete_program(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_one("delete a program", StoreWrite::DeleteProgram { name })
            .await
    }

    /// Records an instance's process; returns whether anything changed.
    pub async fn put_instance(
        &self,
        name: &str,
        record: InstanceRecord,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        let record = Box::new(record);
        self.write_one("put an instance", StoreWrite::PutInstance { name, record })
            .await
    }

    /// Forgets an instance; false if there was none.
    pub async fn delete_instance(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_one("delete an instance", StoreWrite::DeleteInstance { name })
            .await
    }

    /// Applies `writes` in order with one flush, and returns how many of them changed something
    /// (each judged against the state the writes before it left).
    ///
    /// Writes are first checked and netted per record, so a failing write (e.g.
    /// [`StoreError::ProgramNotFound`]) commits nothing, and a batch that changes nothing writes
    /// nothing and wakes nobody. The net records (one per touched key) are committed as one sled
    /// batch, which is atomic also across a crash (all of it or none of it is recovered), and
    /// flushed before this returns.
    pub async fn apply(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        Ok(self.commit(writes).await?.changed)
    }

    /// [`DesiredStore::apply`], answering also with the program records the batch committed.
    pub async fn commit(&self, writes: Vec<StoreWrite>) -> Result<Committed, StoreError> {
        let batch = self.submit("apply a batch of writes", writes).await?;
        Ok(Committed {
            changed: batch.changed.into_iter().filter(|c| *c).count(),
            programs: batch.programs,
        })
    }

    /// Flushes sled's buffers to disk. Writes already flush before returning; this is for
    /// shutdown, to leave nothing for the next open to recover.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.core.read(Handle::flush)
    }

    async fn write_one(
        &self,
        operation: &'static str,
        write: StoreWrite,
    ) -> Result<bool, StoreError> {
        let batch = self.submit(operation, vec![write]).await?;
        Ok(batch.changed.first().copied().unwrap_or(false))
    }

    /// Hands `writes` to the writer thread and waits for its answer without blocking the runtime.
    async fn submit(
        &self,
        operation: &'static str,
        writes: Vec<StoreWrite>,
    ) -> Result<Written, StoreError> {
        let gone = || StoreError::WriterGone { operation };
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(gone)?
            .send((writes, reply))
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl std::fmt::Debug for DesiredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredStore")
            .field("state_dir", &self.inner.core.state_dir)
            .finish_non_exhaustive()
    }
}

/// A record a batch has touched: its bytes as stored before the batch (a cheap shared handle
/// into sled's cache) and the record as the batch leaves it.
struct Slot<T> {
    stored: Option<InlineArray>,
    now: Option<T>,
}

type Staged<T> = BTreeMap<String, Slot<T>>;

#[derive(Default)]
struct Pending {
    programs: Staged<ProgramRecord>,
    instances: Staged<InstanceRecord>,
}

impl Handle {
    fn db(&self) -> &sled::Db {
        match &self.db {
            Some(db) => db,
            None => unreachable!("the database is only taken out when the handle is dropped"),
        }
    }

    fn sled_error(&self, operation: String, source: std::io::Error) -> StoreError {
        StoreError::Sled {
            operation,
            path: self.db_path.clone(),
            source,
        }
    }

    /// [`StoreError::Failed`] once a flush has failed.
    fn check_latch(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(cause) => Err(StoreError::Failed {
                path: self.db_path.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Flushes; a failure latches the store (see [`Latch`]).
    fn flush(&self) -> Result<(), StoreError> {
        self.check_latch()?;
        self.db().flush().map(drop).map_err(|e| {
            let _ = self.failed.set(e.to_string());
            self.sled_error("flush".to_string(), e)
        })
    }

    /// Refuses a write of `bytes` the file system cannot take: read-only, or fewer than
    /// [`RESERVE_BYTES`] + 2 × `bytes` free. A file system that cannot tell lets sled try.
    fn check_room(&self, bytes: usize) -> Result<(), StoreError> {
        use nix::sys::statvfs::{statvfs, FsFlags};
        let Ok(fs) = statvfs(&self.db_path) else {
            return Ok(());
        };
        let no_room = |why: String| StoreError::NoRoom {
            path: self.db_path.clone(),
            why,
        };
        if fs.flags().contains(FsFlags::ST_RDONLY) {
            return Err(no_room("its file system is mounted read-only".to_string()));
        }
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        let need = RESERVE_BYTES.saturating_add(2 * bytes as u64);
        if free < need {
            return Err(no_room(format!(
                "its file system has {} KiB free, and the store keeps {} KiB free so a flush never \
                 fails halfway; free some space",
                free / 1024,
                need / 1024
            )));
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            tree: kind.name,
            key: name.to_string(),
            path: self.db_path.clone(),
            source,
        })
    }

    fn get_raw(&self, kind: Kind, name: &str) -> Result<Option<InlineArray>, StoreError> {
        self.db()
            .get(kind.key(name))
            .map_err(|e| self.sled_error(format!("read {}/{name}", kind.name), e))
    }

    fn get<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<Option<T>, StoreError> {
        self.get_raw(kind, name)?
            .map(|b| self.decode(kind, name, &b))
            .transpose()
    }

    /// Every record of `kind` with its raw bytes, in key byte order (name order for our ASCII
    /// names: the prefix is the same for all of them).
    fn scan(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = Result<(String, InlineArray), StoreError>> + '_ {
        self.db().scan_prefix(kind.prefix).map(move |entry| {
            let (key, value) =
                entry.map_err(|e| self.sled_error(format!("list {}", kind.name), e))?;
            let name = String::from_utf8_lossy(&key[kind.prefix.len()..]).into_owned();
            Ok((name, value))
        })
    }

    fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<(String, T)>, StoreError> {
        self.scan(kind)
            .map(|entry| {
                let (name, value) = entry?;
                let record = self.decode(kind, &name, &value)?;
                Ok((name, record))
            })
            .collect()
    }

    /// Stages every write, commits the net result as one atomic sled batch, flushes, then counts
    /// the commit for subscribers. Returns, per write, whether it changed something, and the
    /// program records as the batch left them. Runs on the writer thread only, so nothing else
    /// writes in between.
    fn write(
        &self,
        writes: Vec<StoreWrite>,
        commits: &watch::Sender<u64>,
    ) -> Result<Written, StoreError> {
        // After a failed flush nothing is acknowledged, a no-op included: what it would confirm
        // may be exactly what was not flushed.
        self.check_latch()?;
        let mut pending = Pending::default();
        let changed = writes
            .into_iter()
            .map(|write| self.stage(&mut pending, write))
            .collect::<Result<Vec<bool>, StoreError>>()?;
        let mut raw = Vec::new();
        self.net_writes(PROGRAMS, &pending.programs, &mut raw)?;
        self.net_writes(INSTANCES, &pending.instances, &mut raw)?;
        let written = Written {
            changed,
            programs: (pending.programs.into_iter())
                .map(|(name, slot)| (name, slot.now))
                .collect(),
        };
        if raw.is_empty() {
            return Ok(written);
        }
        let bytes = raw
            .iter()
            .map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.check_room(bytes)?;
        let records = raw.len();
        self.db()
            .apply_batch(batch(raw))
            .map_err(|e| self.sled_error(format!("commit {records} records"), e))?;
        // Committed means visible to readers: count it even if the flush fails, so a subscriber
        // looks at what it can already read.
        let flushed = self.flush();
        commits.send_modify(|n| *n += 1);
        flushed.map(|()| written)
    }

    fn stage(&self, pending: &mut Pending, write: StoreWrite) -> Result<bool, StoreError> {
        if let Some(name) = write.program() {
            let slot = self.program_slot(pending, name)?;
            let removed = match &write {
                StoreWrite::DeleteProgram { .. } => slot.now.clone(),
                _ => None,
            };
            let mut changed = write.apply_to_program(&mut slot.now)?;
            if let StoreWrite::DeleteProgram { name } = &write {
                changed |= self.retire_instances(pending, name, removed)?;
            }
            return Ok(changed);
        }
        match write {
            StoreWrite::PutInstance { name, record } => {
                let slot = self.instance_slot(pending, &name)?;
                let changed = slot.now.as_ref() != Some(&*record);
                slot.now = Some(*record);
                Ok(changed)
            }
            StoreWrite::DeleteInstance { name } => {
                Ok(self.instance_slot(pending, &name)?.now.take().is_some())
            }
            _ => Ok(false),
        }
    }

    /// The instance records of a deleted program: those without a process go; those that may
    /// still have one stay as tombstones, carrying the spec a later daemon needs to stop it.
    fn retire_instances(
        &self,
        pending: &mut Pending,
        program: &str,
        removed: Option<ProgramRecord>,
    ) -> Result<bool, StoreError> {
        let mut changed = false;
        self.load_all_instances(pending)?;
        for slot in pending.instances.values_mut() {
            let Some(record) = slot.now.as_mut().filter(|r| r.program == program) else {
                continue;
            };
            if !record.may_run() {
                slot.now = None;
                changed = true;
            } else {
                changed |= !record.removed;
                record.removed = true;
                if record.spec.is_none() {
                    record.spec = removed.as_ref().map(|p| (*p.spec).clone());
                    changed |= record.spec.is_some();
                }
            }
        }
        Ok(changed)
    }

    /// The program's slot, loaded from the store on first touch.
    fn program_slot<'p>(
        &self,
        pending: &'p mut Pending,
        name: &str,
    ) -> Result<&'p mut Slot<ProgramRecord>, StoreError> {
        load_slot(&mut pending.programs, name, |key| self.load(PROGRAMS, key))
    }

    fn instance_slot<'p>(
        &self,
        pending: &'p mut Pending,
        name: &str,
    ) -> Result<&'p mut Slot<InstanceRecord>, StoreError> {
        load_slot(&mut pending.instances, name, |key| {
            self.load(INSTANCES, key)
        })
    }

    fn load<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<Slot<T>, StoreError> {
        let stored = self.get_raw(kind, name)?;
        let now = stored
            .as_ref()
            .map(|b| self.decode(kind, name, b))
            .transpose()?;
        Ok(Slot { stored, now })
    }

    fn load_all_instances(&self, pending: &mut Pending) -> Result<(), StoreError> {
        for entry in self.scan(INSTANCES) {
            let (name, value) = entry?;
            if pending.instances.contains_key(&name) {
                continue;
            }
            let now = self.decode(INSTANCES, &name, &value)?;
            pending.instances.insert(
                name,
                Slot {
                    stored: Some(value),
                    now: Some(now),
                },
            );
        }
        Ok(())
    }

    /// Appends the writes that take `kind`'s records from their stored bytes to what the batch
    /// left.
    ///
    /// Compares bytes first (our encoding is deterministic); only when they differ but both exist
    /// does it decode the stored record, so a record stored in another field order (written by a
    /// migration, say) that equals the new one is not rewritten.
    fn net_writes<T: PartialEq + Serialize + DeserializeOwned>(
        &self,
        kind: Kind,
        staged: &Staged<T>,
        out: &mut Vec<RawWrite>,
    ) -> Result<(), StoreError> {
        for (name, slot) in staged {
            let value = slot
                .now
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()
                .map_err(|source| StoreError::Encode {
                    tree: kind.name,
                    key: name.clone(),
                    source,
                })?;
            let same = match (&slot.stored, &value, &slot.now) {
                (None, None, _) => true,
                (Some(stored), Some(bytes), Some(now)) => {
                    stored.as_ref() == bytes.as_slice()
                        || self.decode::<T>(kind, name, stored)? == *now
                }
                _ => false,
            };
            if !same {
                out.push(RawWrite {
                    key: kind.key(name),
                    value,
                });
            }
        }
        Ok(())
    }
}

fn load_slot<'s, T>(
    staged: &'s mut Staged<T>,
    key: &str,
    load: impl FnOnce(&str) -> Result<Slot<T>, StoreError>,
) -> Result<&'s mut Slot<T>, StoreError> {
    Ok(match staged.entry(key.to_string()) {
        Entry::Occupied(slot) => slot.into_mut(),
        Entry::Vacant(slot) => slot.insert(load(key)?),
    })
}

/// The sled batch of `writes`: applied atomically, across a crash too.
fn batch(writes: Vec<RawWrite>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for write in writes {
        match write.value {
            Some(value) => batch.insert(write.key.as_bytes(), value.as_slice()),
            None => batch.remove(write.key.as_bytes()),
        }
    }
    batch
}
