//! The single writer path for desired state, and the in-memory mirror the reconcile loop reads.
//!
//! Files (at start, on reload and from the watcher) and API calls change desired state only
//! through [`DesiredState::apply`]: the writes go to the sled store (flushed before it returns),
//! then the records the store committed replace the touched programs in the mirror and the
//! reconcile loop is woken. Reading the mirror costs an `Arc` clone, so a reconcile pass never
//! parses the store.
//!
//! A program's spec is in memory once: a record in the mirror holds the very `Arc` the write
//! carried (for a file, the scan cache's), or the one it held before when a write left the spec
//! as it was, and [`DesiredState::share_specs`] hands the mirror the scan's specs that equal its
//! own (the ones read from the store at start).
//!
//! Where desired state is kept is the [`Backend`]: the sled store of this host (the default), or
//! a fleet's shared store ([`SharedStore`], etcd; `docs/fleet.md`). With a shared store, writes go
//! there and are acknowledged once it has committed them; the fleet then hands this node its
//! share ([`DesiredState::mirror_share`]), which is kept in the local store like any program, so
//! the reconcile loop, the plan and the API work the same on either backend.
//!
//! The mirror follows the store under every failure: a write runs to its end in a task of its
//! own even when its caller goes away (an HTTP client that hangs up drops the handler's future),
//! and a write the store refused changes nothing in either.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::Notify;

use crate::config::{ConfigError, FileOutcome, Program, ProgramSpec, Source};
use crate::metrics::Metrics;
use crate::store::{DesiredStore, ProgramRecord, StoreError, StoreWrite};

/// Every program's record by name, shared without copying.
pub type Programs = Arc<BTreeMap<String, Arc<ProgramRecord>>>;

/// A future a [`SharedStore`] answers with.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store of desired state shared by a fleet of nodes (etcd; `docs/fleet.md`).
pub trait SharedStore: Send + Sync + 'static {
    /// Commits the program writes of `writes` by the store's own rule
    /// ([`StoreWrite::apply_to_program`]), all or nothing, and returns once the shared store has
    /// committed them and this node has seen them; how many changed something.
    fn apply(&self, writes: Vec<StoreWrite>) -> StoreFuture<'_, usize>;
    /// A program's record wherever in the fleet it runs.
    fn get(&self, name: &str) -> Option<Arc<ProgramRecord>>;
    /// Every program of the fleet.
    fn programs(&self) -> Programs;
}

/// Where desired state is kept.
pub enum Backend<'a> {
    /// This host's sled store (`docs/store.md`).
    Sled,
    /// A fleet's shared store; the local store keeps this node's share.
    Shared(&'a Arc<dyn SharedStore>),
}

/// Desired state: the store plus its mirror and the reconcile wakeup.
pub struct DesiredState {
    shared: Arc<Shared>,
    /// Set once, when the daemon joins a fleet, before anything writes.
    fleet: OnceLock<Arc<dyn SharedStore>>,
}

/// What a write, running in a task of its own, needs.
struct Shared {
    store: DesiredStore,
    // A std lock: held only to swap or clone an `Arc`, never across an `.await`.
    mirror: RwLock<Programs>,
    // Serializes writers so a mirror refresh never interleaves with another write.
    writer: tokio::sync::Mutex<()>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl DesiredState {
    /// Loads the mirror from the store.
    pub fn new(
        store: DesiredStore,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Result<DesiredState, StoreError> {
        let programs = store
            .list_programs()?
            .into_iter()
            .map(|r| (r.spec.name.clone(), Arc::new(r)))
            .collect();
        Ok(DesiredState {
            shared: Arc::new(Shared {
                store,
                mirror: RwLock::new(Arc::new(programs)),
                writer: tokio::sync::Mutex::new(()),
                wake,
                metrics,
            }),
            fleet: OnceLock::new(),
        })
    }

    /// Makes `store` the backend every later write goes to; false if one was set already.
    pub fn use_shared(&self, store: Arc<dyn SharedStore>) -> bool {
        self.fleet.set(store).is_ok()
    }

    pub fn backend(&self) -> Backend<'_> {
        match self.fleet.get() {
            Some(s) => Backend::Shared(s),
            None => Backend::Sled,
        }
    }

    /// Every program desired anywhere: the fleet's with a shared store, else this host's.
    pub fn all_programs(&self) -> Programs {
        match self.fleet.get() {
            Some(s) => s.programs(),
            None => self.snapshot(),
        }
    }

    /// Makes this node's store and mirror hold exactly `share`, the fleet's records of the
    /// programs this node runs, as they are: changed ones replaced, others left alone, ones no
    /// longer in it deleted (their processes are stopped by the loop, `docs/fleet.md`). Writes
    /// nothing when they agree already. Returns how many records changed.
    pub async fn mirror_share(
        &self,
        share: BTreeMap<String, Arc<ProgramRecord>>,
    ) -> Result<usize, StoreError> {
        let current = self.snapshot();
        let mut writes: Vec<StoreWrite> = current
            .keys()
            .filter(|name| !share.contains_key(*name))
            .map(|name| StoreWrite::DeleteProgram { name: name.clone() })
            .collect();
        writes.extend(
            share
                .into_iter()
                .filter(|(name, r)| current.get(name) != Some(r))
                .map(|(_, r)| StoreWrite::Mirror {
                    record: Box::new((*r).clone()),
                }),
        );
        self.apply_local(writes).await
    }

    pub fn store(&self) -> &DesiredStore {
        &self.shared.store
    }

    /// The programs as of the last committed write.
    pub fn snapshot(&self) -> Programs {
        self.shared.snapshot()
    }

    /// A program's record: this host's, or with a shared store the fleet's wherever it runs.
    pub fn get(&self, name: &str) -> Option<Arc<ProgramRecord>> {
        match self.fleet.get() {
            Some(s) => s.get(name),
            None => self.snapshot().get(name).cloned(),
        }
    }

    /// Commits `writes` as one flushed batch, refreshes the mirror and wakes the reconcile loop.
    /// Returns how many writes changed something.
    ///
    /// The write and the refresh run in a task of their own: once handed to the store, a write
    /// is carried through to the mirror even if this future is dropped.
    pub async fn apply(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        if writes.is_empty() {
            return Ok(0);
        }
        if let Some(fleet) = self.fleet.get() {
            return fleet.apply(writes).await;
        }
        self.apply_local(writes).await
    }

    /// [`DesiredState::apply`] to this host's store, whatever the backend.
    async fn apply_local(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        if writes.is_empty() {
            return Ok(0);
        }
        let shared = self.shared.clone();
        match tokio::spawn(async move { shared.apply(writes).await }).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::WriterGone {
                operation: "apply a batch of writes",
            }),
        }
    }

    /// Makes the mirror hold the specs of `programs` (a scan's, shared with its cache) in place
    /// of equal ones of its own, so each spec is in memory once: the records read from the store
    /// at start, and a file parsed again to the same spec, would otherwise stay copies. Changes
    /// no desired state, so it writes nothing and wakes nobody.
    pub async fn share_specs(&self, programs: &[Program]) {
        let _writer = self.shared.writer.lock().await;
        let current = self.snapshot();
        let mut next: Option<BTreeMap<String, Arc<ProgramRecord>>> = None;
        for p in programs {
            let Some(r) = current.get(&p.spec.name) else {
                continue;
            };
            if Arc::ptr_eq(&r.spec, &p.spec) || r.spec != p.spec {
                continue;
            }
            let record = ProgramRecord {
                spec: Arc::clone(&p.spec),
                ..(**r).clone()
            };
            (next.get_or_insert_with(|| (*current).clone()))
                .insert(p.spec.name.clone(), Arc::new(record));
        }
        if let Some(next) = next {
            self.shared.set_mirror(Arc::new(next));
        }
    }

    /// Records what the runtime observed (instance pids, restarts): written and flushed like every
    /// write, but it changes no desired state, so the mirror stays and nobody is woken.
    pub async fn record(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        let changed = self.shared.store.apply(writes).await?;
        self.shared.metrics.observe_store_writes(changed as u64);
        Ok(changed)
    }
}

impl Shared {
    fn snapshot(&self) -> Programs {
        match self.mirror.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_mirror(&self, next: Programs) {
        match self.mirror.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    async fn apply(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        let _writer = self.writer.lock().await;
        // The specs the writes carry, by program: what the mirror's records keep.
        let carried: BTreeMap<String, Arc<ProgramSpec>> =
            writes.iter().filter_map(carried_spec).collect();
        // A refused write committed nothing (the store checks and stages before it commits);
        // one whose flush failed is not durable, and the store refuses everything after it, so
        // the mirror keeps what the next daemon will read.
        let committed = self.store.commit(writes).await?;
        self.metrics.observe_store_writes(committed.changed as u64);
        if committed.changed > 0 {
            let current = self.snapshot();
            let mut next = (*current).clone();
            for (name, record) in committed.programs {
                let Some(mut record) = record else {
                    next.remove(&name);
                    continue;
                };
                // A write that carries no spec leaves a copy the store decoded; the spec the
                // program had is the same one, shared.
                let known = carried
                    .get(&name)
                    .or_else(|| current.get(&name).map(|r| &r.spec));
                if let Some(spec) = known.filter(|s| **s == record.spec) {
                    record.spec = Arc::clone(spec);
                }
                next.insert(name, Arc::new(record));
            }
            self.set_mirror(Arc::new(next));
            self.wake.notify_one();
        }
        Ok(committed.changed)
    }
}

/// The spec a write sets its program's record to, if any.
fn carried_spec(w: &StoreWrite) -> Option<(String, Arc<ProgramSpec>)> {
    let spec = match w {
        StoreWrite::PutProgram { spec, .. } => spec,
        StoreWrite::Mirror { record } => &record.spec,
        _ => return None,
    };
    Some((spec.name.clone(), Arc::clone(spec)))
}

/// The writes that make the store agree with a scan of the config and programs directory.
///
/// Good files put their program (a no-op when unchanged, and clearing an earlier error); a
/// broken file keeps its program's last good spec and records the error (`docs/configuration.md`,
/// "Errors and reloads"); programs whose file is gone are deleted, and inline programs gone from
/// the config too. When the scan is incomplete — an error that belongs to no program file, such
/// as an unreadable programs directory — a file-sourced program missing from it is not deleted
/// but keeps its spec and shows that error: a directory that cannot be read says nothing about
/// what was removed. An API-registered program no file defines is left alone; a file that
/// defines a program of its name takes it over (its source becomes the file).
pub fn sync_writes(
    current: &Programs,
    programs: &[Program],
    files: &[FileOutcome],
    errors: &[ConfigError],
) -> Vec<StoreWrite> {
    let mut writes = Vec::new();
    let mut produced: BTreeSet<&str> = BTreeSet::new();
    for p in programs {
        produced.insert(p.spec.name.as_str());
        // A put of what is stored already changes nothing (the store would drop it): left out,
        // so that a rescan of an unchanged directory writes, compares and plans nothing.
        let stored = current.get(&p.spec.name);
        if stored.is_some_and(|r| r.spec == p.spec && r.source == p.source && r.error.is_none()) {
            continue;
        }
        writes.push(StoreWrite::PutProgram {
            spec: Arc::clone(&p.spec),
            source: p.source.clone(),
        });
    }
    // Files that failed: their programs keep the last good spec and show the error.
    let broken: BTreeMap<&PathBuf, Vec<String>> = files
        .iter()
        .filter_map(|f| {
            f.result
                .as_ref()
                .err()
                .map(|errs| (&f.path, errs.iter().map(ToString::to_string).collect()))
        })
        .collect();
    let unscanned: Vec<String> = if errors.is_empty() {
        Vec::new()
    } else {
        let scanned: BTreeSet<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        errors
            .iter()
            .filter(|e| !scanned.contains(e.file.as_path()))
            .map(ToString::to_string)
            .collect()
    };
    for (name, record) in current.iter() {
        if produced.contains(name.as_str()) {
            continue;
        }
        match &record.source {
            Source::Api => {}
            Source::File(path) => match broken.get(path) {
                Some(messages) => writes.push(StoreWrite::SetError {
                    name: name.clone(),
                    error: Some(messages.clone()),
                }),
                None if !unscanned.is_empty() => writes.push(StoreWrite::SetError {
                    name: name.clone(),
                    error: Some(unscanned.clone()),
                }),
                None => writes.push(StoreWrite::DeleteProgram { name: name.clone() }),
            },
            // A broken main config never reaches here (loading fails whole, inline programs
            // included), so an inline program missing from a loaded config was removed from it.
            Source::Config => writes.push(StoreWrite::DeleteProgram { name: name.clone() }),
        }
    }
    writes
}

/// A sync of one node's programs directory into a fleet: it adds and changes programs but
/// removes none, since other nodes' directories and `provisr apply` write the same store
/// (`docs/fleet.md`, "Programs directories").
pub fn additive(writes: Vec<StoreWrite>) -> Vec<StoreWrite> {
    writes
        .into_iter()
        .filter(|w| !matches!(w, StoreWrite::DeleteProgram { .. }))
        .collect()
}

/// The programs as they would be after `writes`, without writing: what dry runs plan against.
pub fn simulate(current: &Programs, writes: &[StoreWrite]) -> Programs {
    if writes.is_empty() {
        return Arc::clone(current);
    }
    let mut next = (**current).clone();
    for w in writes {
        let Some(name) = w.program() else { continue };
        let mut record = next.get(name).map(|r| (**r).clone());
        // The store's own rule; a write it would refuse previews as no change.
        if w.apply_to_program(&mut record).is_err() {
            continue;
        }
        match record {
            Some(r) => next.insert(name.to_string(), Arc::new(r)),
            None => next.remove(name),
        };
    }
    Arc::new(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, Exec, ProgramSpec};

    fn record(name: &str, command: &str, source: Source) -> (String, Arc<ProgramRecord>) {
        let spec = ProgramSpec::new(name, Exec::Command(command.into()));
        (name.to_string(), Arc::new(ProgramRecord::new(spec, source)))
    }

    fn program(name: &str, command: &str, source: Source) -> Program {
        Program {
            spec: Arc::new(ProgramSpec::new(name, Exec::Command(command.into()))),
            source,
        }
    }

    fn file(path: &str, result: Result<Arc<ProgramSpec>, Vec<ConfigError>>) -> FileOutcome {
        FileOutcome {
            path: PathBuf::from(path),
            name: None,
            result,
        }
    }

    fn describe(writes: &[StoreWrite]) -> Vec<String> {
        writes
            .iter()
            .map(|w| match w {
                StoreWrite::PutProgram { spec, .. } => format!("put {}", spec.name),
                StoreWrite::SetError { name, error } => {
                    format!(
                        "error {name}: {}",
                        error.clone().unwrap_or_default().join("|")
                    )
                }
                StoreWrite::DeleteProgram { name } => format!("delete {name}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn broken_files_keep_their_program_and_gone_files_delete_it() {
        let web = Source::File("/p/web.toml".into());
        let db = Source::File("/p/db.toml".into());
        let old = Source::File("/p/old.toml".into());
        let current: Programs = Arc::new(BTreeMap::from([
            record("web", "sleep 1", web.clone()),
            record("db", "sleep 1", db.clone()),
            record("old", "sleep 1", old),
            record("adhoc", "sleep 1", Source::Api),
            record("inline", "sleep 1", Source::Config),
        ]));
        let broken = ConfigError::new("/p/db.toml", "invalid TOML").at_line(Some(2));
        let programs = [program("web", "sleep 2", web.clone())];
        let files = [
            file("/p/db.toml", Err(vec![broken.clone()])),
            file("/p/web.toml", Ok(programs[0].spec.clone())),
        ];
        let writes = sync_writes(&current, &programs, &files, &[broken]);
        assert_eq!(
            describe(&writes),
            [
                "put web",
                "error db: /p/db.toml:2: invalid TOML",
                "delete inline",
                "delete old",
            ]
        );
        // The preview keeps db's spec with the error and bumps web's generation.
        let preview = simulate(&current, &writes);
        assert_eq!(preview["db"].spec, current["db"].spec);
        assert!(preview["db"].error.is_some());
        assert_eq!(preview["web"].generation, current["web"].generation + 1);
        assert!(!preview.contains_key("old"));
        assert!(preview.contains_key("adhoc"));
    }

    #[test]
    fn an_unreadable_programs_directory_deletes_nothing() {
        let web = Source::File("/p/web.toml".into());
        let current: Programs = Arc::new(BTreeMap::from([record("web", "sleep 1", web)]));
        let dir_error = ConfigError::new("/p", "cannot read the programs directory: EIO");
        let writes = sync_writes(&current, &[], &[], &[dir_error]);
        assert_eq!(
            describe(&writes),
            ["error web: /p: cannot read the programs directory: EIO"]
        );
        // Readable and empty: the program is gone.
        let writes = sync_writes(&current, &[], &[], &[]);
        assert_eq!(describe(&writes), ["delete web"]);
    }
}
