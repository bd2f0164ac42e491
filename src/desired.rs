//! The single writer path for desired state, and the in-memory mirror the reconcile loop reads.
//!
//! Files (at start, on reload and from the watcher) and API calls change desired state only
//! through [`DesiredState::apply`]: the writes go to the sled store (flushed before it returns),
//! then the touched programs are re-read into the mirror and the reconcile loop is woken.
//! Reading the mirror costs an `Arc` clone, so a reconcile pass never parses the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::config::{ConfigError, FileOutcome, Program, Source};
use crate::metrics::Metrics;
use crate::store::{DesiredStore, ProgramRecord, StoreError, StoreWrite};

/// Every program's record by name, shared without copying.
pub type Programs = Arc<BTreeMap<String, Arc<ProgramRecord>>>;

/// Desired state: the store plus its mirror and the reconcile wakeup.
pub struct DesiredState {
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
            store,
            mirror: RwLock::new(Arc::new(programs)),
            writer: tokio::sync::Mutex::new(()),
            wake,
            metrics,
        })
    }

    pub fn store(&self) -> &DesiredStore {
        &self.store
    }

    /// The programs as of the last committed write.
    pub fn snapshot(&self) -> Programs {
        match self.mirror.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<ProgramRecord>> {
        self.snapshot().get(name).cloned()
    }

    /// Commits `writes` as one flushed batch, refreshes the mirror and wakes the reconcile loop.
    /// Returns how many writes changed something.
    pub async fn apply(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        if writes.is_empty() {
            return Ok(0);
        }
        let _writer = self.writer.lock().await;
        let touched: BTreeSet<String> = writes.iter().filter_map(program_touched).collect();
        let changed = self.store.apply(writes).await?;
        self.metrics.observe_store_writes(changed as u64);
        if changed > 0 {
            let mut next = (*self.snapshot()).clone();
            for name in touched {
                match self.store.get_program(&name)? {
                    Some(r) => next.insert(name, Arc::new(r)),
                    None => next.remove(&name),
                };
            }
            let next = Arc::new(next);
            match self.mirror.write() {
                Ok(mut g) => *g = next,
                Err(poisoned) => *poisoned.into_inner() = next,
            }
            self.wake.notify_one();
        }
        Ok(changed)
    }
}

impl DesiredState {
    /// Records what the runtime observed (instance pids, restarts): written and flushed like every
    /// write, but it changes no desired state, so the mirror stays and nobody is woken.
    pub async fn record(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        let changed = self.store.apply(writes).await?;
        self.metrics.observe_store_writes(changed as u64);
        Ok(changed)
    }
}

/// The program whose record a write changes, if any.
fn program_touched(w: &StoreWrite) -> Option<String> {
    match w {
        StoreWrite::PutProgram { spec, .. } => Some(spec.name.clone()),
        StoreWrite::SetError { name, .. }
        | StoreWrite::SetDesired { name, .. }
        | StoreWrite::Request { name, .. }
        | StoreWrite::DeleteProgram { name } => Some(name.clone()),
        _ => None,
    }
}

/// The writes that make the store agree with a scan of the config and programs directory.
///
/// Good files put their program (a no-op when unchanged); a broken file keeps its program's last
/// good spec and records the error; programs whose file is gone are deleted. API-registered
/// programs are never touched by files.
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
        writes.push(StoreWrite::PutProgram {
            spec: p.spec.clone(),
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
                None => writes.push(StoreWrite::DeleteProgram { name: name.clone() }),
            },
            Source::Config => {
                // A broken main config never reaches here (load fails whole); an inline
                // program that is gone from a good config is removed.
                if errors.is_empty() {
                    writes.push(StoreWrite::DeleteProgram { name: name.clone() });
                }
            }
        }
    }
    writes
}

/// The programs as they would be after `writes`, without writing: what dry runs plan against.
pub fn simulate(current: &Programs, writes: &[StoreWrite]) -> Programs {
    let mut next = (**current).clone();
    for w in writes {
        match w {
            StoreWrite::PutProgram { spec, source } => {
                let record = match next.get(&spec.name) {
                    Some(old) => ProgramRecord {
                        spec: spec.clone(),
                        source: source.clone(),
                        error: None,
                        ..(**old).clone()
                    },
                    None => ProgramRecord::new(spec.clone(), source.clone()),
                };
                next.insert(spec.name.clone(), Arc::new(record));
            }
            StoreWrite::DeleteProgram { name } => {
                next.remove(name);
            }
            StoreWrite::SetDesired { name, desired } => {
                if let Some(old) = next.get(name) {
                    let record = ProgramRecord {
                        desired: *desired,
                        ..(**old).clone()
                    };
                    next.insert(name.clone(), Arc::new(record));
                }
            }
            StoreWrite::Request {
                name,
                instance,
                request,
            } => {
                if let Some(old) = next.get(name) {
                    let mut record = (**old).clone();
                    record.request(instance.as_deref(), *request);
                    next.insert(name.clone(), Arc::new(record));
                }
            }
            _ => {}
        }
    }
    Arc::new(next)
}
