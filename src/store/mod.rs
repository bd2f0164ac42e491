//! The desired-state store: what should run, kept in an embedded sled database under
//! `[daemon] state_dir` (SPEC §4, §11).
//!
//! Config files and API calls only write here; the reconcile loop reads it and is woken by
//! [`DesiredStore::subscribe`] after every committed write. Layout of `state_dir`:
//!
//! - `daemon.lock` — `flock`ed for the store's lifetime: one daemon per state directory.
//! - `db/` — the sled database, with trees `programs` ([`ProgramRecord`] by program name),
//!   `instances` ([`InstanceRecord`] by instance name) and `meta` (`schema_version`).
//!
//! Reads run on the caller's thread (sled reads are lock-free). Writes go to one writer thread,
//! which serializes them, commits each batch in sled transactions and flushes before answering,
//! so an acknowledged write survives `kill -9`; a batch ([`DesiredStore::apply`]) is one flush
//! however many records it touches. `docs/store.md` has the details.

mod error;
mod lock;
pub mod migrations;
mod records;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::ConflictableTransactionError;
use sled::IVec;
use sled::Transactional;
use tokio::sync::{oneshot, watch};

use crate::config::{ProgramSpec, Source};

pub use error::StoreError;
pub use lock::LOCK_FILE;
pub use migrations::{SchemaOutcome, CURRENT_SCHEMA};
pub use records::{
    resolve_instance, DesiredRun, InstanceDesired, InstanceRecord, ProgramRecord, RunRequest,
    RunSeq, StoreWrite,
};

/// The sled database's directory inside the state directory.
pub const DB_DIR: &str = "db";

const PROGRAMS_TREE: &str = "programs";
const INSTANCES_TREE: &str = "instances";
const META_TREE: &str = "meta";
const SCHEMA_KEY: &str = "schema_version";

/// sled's page cache bound; its default is 1 GiB. 1000 programs are about 0.6 MiB of JSON, so
/// 4 MiB keeps them all hot. Measured with 1000 programs, RSS is the same at 256 KiB as at
/// 4 MiB: sled's cache is not where the memory goes (see `docs/store.md`).
const CACHE_CAPACITY: u64 = 4 << 20;

/// Most records committed in one sled transaction. sled keeps a transaction's writes in memory
/// several times over until it commits: measured, one 1000-record transaction peaks ~3 MiB above
/// the same writes in transactions of 100, a tenth of the daemon's RSS budget. Batches larger
/// than this (a first load of a big programs directory) are committed in several transactions
/// and flushed once; see [`DesiredStore::apply`] for what that means after a crash.
const RECORDS_PER_TRANSACTION: usize = 128;

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
    db_path: PathBuf,
    db: sled::Db,
    programs: sled::Tree,
    instances: sled::Tree,
    /// Counts committed writes; receivers are woken on every commit.
    commits: watch::Sender<u64>,
}

type WriteJob = (
    Vec<StoreWrite>,
    oneshot::Sender<Result<Vec<bool>, StoreError>>,
);

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

/// One key's new value (`None` removes it) in the named tree; migration steps return these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawWrite {
    pub tree: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
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
        // sled's data file inside its directory, which sled `flock`s while open. A sled handle
        // dropped a moment ago in this process may still hold it (see `StateDirLock::drop`).
        let sled_file = db_path.join("db");
        lock::wait_until_unlocked(&sled_file);
        lock.release_after_sled_closes(sled_file);
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(CACHE_CAPACITY)
            // sled's background flusher would wake the process every 500 ms forever; every
            // write here flushes explicitly instead.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Sled {
                operation: "open the database".to_string(),
                path: db_path.clone(),
                source,
            })?;
        match migrations::bring_to_current(&db, &db_path)? {
            SchemaOutcome::Upgraded { from } => tracing::info!(
                store = %db_path.display(),
                from,
                to = CURRENT_SCHEMA,
                "store upgraded"
            ),
            SchemaOutcome::Created | SchemaOutcome::Current => {}
        }
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Sled {
                operation: format!("open tree {name}"),
                path: db_path.clone(),
                source,
            })
        };
        let programs = open_tree(PROGRAMS_TREE)?;
        let instances = open_tree(INSTANCES_TREE)?;
        let core = Arc::new(Core {
            state_dir: state_dir.to_path_buf(),
            db_path,
            db,
            programs,
            instances,
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
                    let _ = reply.send(writer_core.write(writes));
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
        let core = &self.inner.core;
        core.get(&core.programs, PROGRAMS_TREE, name)
    }

    /// Every program's record, sorted by name.
    pub fn list_programs(&self) -> Result<Vec<ProgramRecord>, StoreError> {
        let core = &self.inner.core;
        Ok(core
            .list(&core.programs, PROGRAMS_TREE)?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    /// One instance's record.
    pub fn get_instance(&self, name: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let core = &self.inner.core;
        core.get(&core.instances, INSTANCES_TREE, name)
    }

    /// Every instance record with its instance name, sorted by name.
    pub fn list_instances(&self) -> Result<Vec<(String, InstanceRecord)>, StoreError> {
        let core = &self.inner.core;
        core.list(&core.instances, INSTANCES_TREE)
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
    pub async fn put_program(&self, spec: ProgramSpec, source: Source) -> Result<bool, StoreError> {
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
    /// nothing and wakes nobody. The net records (one per touched key, programs before instances)
    /// are committed in transactions of at most 128 records and flushed once before this returns.
    /// A batch of up to 128 records is atomic even across a crash; a larger one is not: a crash
    /// before it is acknowledged may leave a prefix of it, programs first. Deletions put program
    /// records before their instance records, so a torn delete leaves orphan instance records
    /// (still findable, to be stopped) rather than a program that forgot its processes. The
    /// writers of big batches (programs-directory rescans) are level-triggered and rewrite the
    /// rest on their next pass.
    pub async fn apply(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        let changed = self.submit("apply a batch of writes", writes).await?;
        Ok(changed.into_iter().filter(|c| *c).count())
    }

    /// Flushes sled's buffers to disk. Writes already flush before returning; this is for
    /// shutdown, to leave nothing for the next open to recover.
    pub fn flush(&self) -> Result<(), StoreError> {
        let core = &self.inner.core;
        core.db
            .flush()
            .map(drop)
            .map_err(|source| core.sled_error("flush".to_string(), source))
    }

    async fn write_one(
        &self,
        operation: &'static str,
        write: StoreWrite,
    ) -> Result<bool, StoreError> {
        let changed = self.submit(operation, vec![write]).await?;
        Ok(changed.first().copied().unwrap_or(false))
    }

    /// Hands `writes` to the writer thread and waits for its answer without blocking the runtime.
    async fn submit(
        &self,
        operation: &'static str,
        writes: Vec<StoreWrite>,
    ) -> Result<Vec<bool>, StoreError> {
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
    stored: Option<IVec>,
    now: Option<T>,
}

type Staged<T> = BTreeMap<String, Slot<T>>;

#[derive(Default)]
struct Pending {
    programs: Staged<ProgramRecord>,
    instances: Staged<InstanceRecord>,
}

impl Core {
    fn sled_error(&self, operation: String, source: sled::Error) -> StoreError {
        StoreError::Sled {
            operation,
            path: self.db_path.clone(),
            source,
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            tree,
            key: String::from_utf8_lossy(key).into_owned(),
            path: self.db_path.clone(),
            source,
        })
    }

    fn get_raw(
        &self,
        tree: &sled::Tree,
        tree_name: &'static str,
        key: &str,
    ) -> Result<Option<IVec>, StoreError> {
        tree.get(key)
            .map_err(|e| self.sled_error(format!("read {tree_name}/{key}"), e))
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        tree_name: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get_raw(tree, tree_name, key)?
            .map(|b| self.decode(tree_name, key.as_bytes(), &b))
            .transpose()
    }

    /// sled iterates in key byte order, which is name order for our ASCII names.
    fn list<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        tree_name: &'static str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        tree.iter()
            .map(|entry| {
                let (key, value) =
                    entry.map_err(|e| self.sled_error(format!("list {tree_name}"), e))?;
                let record = self.decode(tree_name, &key, &value)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), record))
            })
            .collect()
    }

    /// Stages every write, commits the net result in one transaction, flushes, then wakes
    /// subscribers. Returns, per write, whether it changed something. Runs on the writer thread
    /// only, so nothing else writes in between.
    fn write(&self, writes: Vec<StoreWrite>) -> Result<Vec<bool>, StoreError> {
        let mut pending = Pending::default();
        let changed = writes
            .into_iter()
            .map(|write| self.stage(&mut pending, write))
            .collect::<Result<Vec<bool>, StoreError>>()?;
        let mut raw = Vec::new();
        self.net_writes(PROGRAMS_TREE, pending.programs, &mut raw)?;
        self.net_writes(INSTANCES_TREE, pending.instances, &mut raw)?;
        if raw.is_empty() {
            return Ok(changed);
        }
        let trees = [
            (PROGRAMS_TREE, &self.programs),
            (INSTANCES_TREE, &self.instances),
        ];
        let mut committed = 0;
        let mut result = Ok(());
        for chunk in raw.chunks(RECORDS_PER_TRANSACTION) {
            result = transact(&trees, chunk)
                .map_err(|e| self.sled_error(format!("commit {} records", chunk.len()), e));
            if result.is_err() {
                break;
            }
            committed += chunk.len();
        }
        if committed > 0 {
            // Even after a failed chunk: what did commit is visible to readers, so make it
            // durable and wake the reconcile loop to look at it.
            let flushed = self
                .db
                .flush()
                .map(drop)
                .map_err(|e| self.sled_error("flush".to_string(), e));
            self.commits.send_modify(|n| *n += 1);
            result = result.and(flushed);
        }
        result.map(|()| changed)
    }

    fn stage(&self, pending: &mut Pending, write: StoreWrite) -> Result<bool, StoreError> {
        match write {
            StoreWrite::PutProgram { spec, source } => {
                let slot = self.program_slot(pending, &spec.name)?;
                let next = match &slot.now {
                    None => ProgramRecord::new(spec, source),
                    Some(old) => ProgramRecord {
                        generation: if old.spec == spec {
                            old.generation
                        } else {
                            old.generation.saturating_add(1)
                        },
                        spec,
                        source,
                        error: None,
                        ..old.clone()
                    },
                };
                let changed = slot.now.as_ref() != Some(&next);
                slot.now = Some(next);
                Ok(changed)
            }
            StoreWrite::SetError { name, error } => {
                let slot = self.program_slot(pending, &name)?;
                let record = slot.now.as_mut().ok_or_else(|| not_found(&name))?;
                let changed = record.error != error;
                record.error = error;
                Ok(changed)
            }
            StoreWrite::SetDesired { name, desired } => {
                let slot = self.program_slot(pending, &name)?;
                let record = slot.now.as_mut().ok_or_else(|| not_found(&name))?;
                let changed = record.desired != desired;
                record.desired = desired;
                Ok(changed)
            }
            StoreWrite::Request {
                name,
                instance,
                request,
            } => {
                let slot = self.program_slot(pending, &name)?;
                let record = slot.now.as_mut().ok_or_else(|| not_found(&name))?;
                Ok(record.request(instance.as_deref(), request))
            }
            StoreWrite::DeleteProgram { name } => {
                let mut changed = self.program_slot(pending, &name)?.now.take().is_some();
                self.load_all_instances(pending)?;
                for slot in pending.instances.values_mut() {
                    if slot.now.as_ref().is_some_and(|r| r.program == name) {
                        slot.now = None;
                        changed = true;
                    }
                }
                Ok(changed)
            }
            StoreWrite::PutInstance { name, record } => {
                let slot = self.instance_slot(pending, &name)?;
                let changed = slot.now.as_ref() != Some(&record);
                slot.now = Some(record);
                Ok(changed)
            }
            StoreWrite::DeleteInstance { name } => {
                Ok(self.instance_slot(pending, &name)?.now.take().is_some())
            }
        }
    }

    /// The program's slot, loaded from the store on first touch.
    fn program_slot<'p>(
        &self,
        pending: &'p mut Pending,
        name: &str,
    ) -> Result<&'p mut Slot<ProgramRecord>, StoreError> {
        load_slot(&mut pending.programs, name, |key| {
            self.load(&self.programs, PROGRAMS_TREE, key)
        })
    }

    fn instance_slot<'p>(
        &self,
        pending: &'p mut Pending,
        name: &str,
    ) -> Result<&'p mut Slot<InstanceRecord>, StoreError> {
        load_slot(&mut pending.instances, name, |key| {
            self.load(&self.instances, INSTANCES_TREE, key)
        })
    }

    fn load<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        tree_name: &'static str,
        key: &str,
    ) -> Result<Slot<T>, StoreError> {
        let stored = self.get_raw(tree, tree_name, key)?;
        let now = stored
            .as_ref()
            .map(|b| self.decode(tree_name, key.as_bytes(), b))
            .transpose()?;
        Ok(Slot { stored, now })
    }

    fn load_all_instances(&self, pending: &mut Pending) -> Result<(), StoreError> {
        for entry in self.instances.iter() {
            let (key, value) =
                entry.map_err(|e| self.sled_error(format!("list {INSTANCES_TREE}"), e))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            if pending.instances.contains_key(&name) {
                continue;
            }
            let now = self.decode(INSTANCES_TREE, &key, &value)?;
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

    /// Appends the writes that take `tree` from its stored bytes to what the batch left.
    ///
    /// Compares bytes first (our encoding is deterministic); only when they differ but both exist
    /// does it decode the stored record, so a record stored in another field order (written by a
    /// migration, say) that equals the new one is not rewritten.
    fn net_writes<T: PartialEq + Serialize + DeserializeOwned>(
        &self,
        tree: &'static str,
        staged: Staged<T>,
        out: &mut Vec<RawWrite>,
    ) -> Result<(), StoreError> {
        for (key, slot) in staged {
            let value = slot
                .now
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()
                .map_err(|source| StoreError::Encode {
                    tree,
                    key: key.clone(),
                    source,
                })?;
            let same = match (&slot.stored, &value, &slot.now) {
                (None, None, _) => true,
                (Some(stored), Some(bytes), Some(now)) => {
                    stored.as_ref() == bytes.as_slice()
                        || self.decode::<T>(tree, key.as_bytes(), stored)? == *now
                }
                _ => false,
            };
            if !same {
                out.push(RawWrite {
                    tree,
                    key: key.into_bytes(),
                    value,
                });
            }
        }
        Ok(())
    }
}

fn not_found(name: &str) -> StoreError {
    StoreError::ProgramNotFound {
        name: name.to_string(),
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

/// Commits `writes` atomically across the named trees: all of them or none survive a crash.
///
/// The single writer thread never races another writer, so the transaction never conflicts;
/// sled would retry the closure if it did, which is safe because the closure only replays `writes`.
pub(crate) fn transact(trees: &[(&str, &sled::Tree)], writes: &[RawWrite]) -> sled::Result<()> {
    let index_of = |name: &str| trees.iter().position(|(n, _)| *n == name);
    let handles: Vec<&sled::Tree> = trees.iter().map(|(_, tree)| *tree).collect();
    let result = handles.as_slice().transaction(|views| {
        for write in writes {
            // A write to a tree the caller did not pass is a bug in this module; aborting
            // keeps it from being half-applied.
            let Some(i) = index_of(write.tree) else {
                return Err(ConflictableTransactionError::Abort(write.tree.to_string()));
            };
            match &write.value {
                Some(value) => views[i].insert(write.key.as_slice(), value.as_slice())?,
                None => views[i].remove(write.key.as_slice())?,
            };
        }
        Ok(())
    });
    result.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(tree) => sled::Error::Unsupported(format!(
            "write to tree {tree}, which is not part of this transaction"
        )),
        sled::transaction::TransactionError::Storage(e) => e,
    })
}
