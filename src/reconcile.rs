//! The reconcile loop: the only place that acts on processes.
//!
//! One task owns the table of instance actors. It wakes on any desired-state write, any change an
//! actor publishes, an explicit request and a periodic resync; each pass recomputes the whole
//! [`plan`](crate::plan::plan) from the desired-state mirror and the actors' published states and
//! carries out the steps that are ready. Level-triggered: a lost or merged wakeup only delays
//! work until the next pass, it never leaves the system wrong.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::config::{InstanceId, ProgramSpec};
use crate::desired::DesiredState;
use crate::logs::InstanceLog;
use crate::metrics::Metrics;
use crate::plan::{self, Action, Desired, Observed, Plan, RunSeq};
use crate::store::{InstanceRecord, StoreWrite};
use crate::supervisor::{
    Event, Initial, InstanceHandle, InstanceState, InstanceStatus, RuntimeContext,
};

/// How often a pass runs with nothing else waking it: the backstop of level-triggering.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// An instance as the API sees it: its identity, spec, live status and output.
#[derive(Clone)]
pub struct LiveInstance {
    pub id: InstanceId,
    pub spec: Arc<ProgramSpec>,
    pub status: watch::Receiver<InstanceStatus>,
    pub log: InstanceLog,
}

/// Every instance the daemon runs, by instance name; replaced whenever the set changes.
pub type LiveTable = Arc<BTreeMap<String, LiveInstance>>;

/// What the API can ask of the loop.
enum Request {
    /// Run one pass now and return the plan it carried out.
    Pass(oneshot::Sender<Plan>),
    /// Stop every instance in reverse priority order, then end the loop.
    Shutdown(oneshot::Sender<()>),
    /// End the loop leaving every child running (used when the daemon must exit without stopping
    /// its children, e.g. in tests of crash recovery).
    Detach(oneshot::Sender<()>),
}

/// The API's handle on the loop.
#[derive(Clone)]
pub struct Reconciler {
    requests: mpsc::Sender<Request>,
    live: watch::Receiver<LiveTable>,
    passes: watch::Receiver<u64>,
}

impl Reconciler {
    /// The instances as of the last pass.
    pub fn live(&self) -> LiveTable {
        self.live.borrow().clone()
    }

    /// A receiver that changes after every pass, for waiting on convergence.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.clone()
    }

    /// Runs one pass now; the steps it carried out.
    pub async fn pass_now(&self) -> Option<Plan> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Pass(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops every instance in reverse priority order and ends the loop.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends the loop and leaves every child running.
    pub async fn detach(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Detach(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The spec and request counters a step brings its instance to.
type Target = (Arc<ProgramSpec>, RunSeq);

/// A process an earlier daemon started whose program (or instance) is gone from desired state:
/// the program file was deleted or `instances` lowered while no daemon ran. It is adopted like
/// any remembered instance, with the spec it last had, so the first pass stops and removes it
/// instead of leaving it running unmanaged.
#[derive(Clone, Debug)]
pub struct Orphan {
    pub id: InstanceId,
    pub spec: ProgramSpec,
    pub record: InstanceRecord,
}

/// The remembered processes (`remembered`, as the store listed them before `after` was
/// written) that no program of `after` claims any more. `before` supplies the spec each last
/// ran with, so it is stopped with its own stop signal and timeout.
pub fn orphans(
    before: &crate::desired::Programs,
    after: &crate::desired::Programs,
    remembered: Vec<(String, InstanceRecord)>,
) -> Vec<Orphan> {
    let claimed = |name: &str, program: &str| {
        after
            .get(program)
            .is_some_and(|r| r.spec.instances().iter().any(|i| i.name == name))
    };
    remembered
        .into_iter()
        .filter(|(name, r)| r.pid.is_some() && !claimed(name, &r.program))
        .filter_map(|(name, record)| {
            let spec = match before.get(&record.program) {
                Some(r) => r.spec.clone(),
                None => ProgramSpec::new(
                    record.program.clone(),
                    crate::config::Exec::Args(Vec::new()),
                ),
            };
            let index = if name == record.program {
                1
            } else {
                name.strip_prefix(&format!("{}-", record.program))?
                    .parse::<u32>()
                    .ok()?
            };
            // `of` only decides the naming: more than one means `program-N`.
            let of = if name == record.program {
                1
            } else {
                index.max(2)
            };
            let id = InstanceId::new(&record.program, index, of);
            (id.name == name).then_some(Orphan { id, spec, record })
        })
        .collect()
}

/// The state directory as children are tagged with it: absolute, symlinks resolved, so every
/// daemon on one directory writes the same tag however it was named on its command line.
fn canonical_state_dir(dir: &Path) -> Arc<Path> {
    match std::fs::canonicalize(dir) {
        Ok(p) => p.into(),
        Err(e) => {
            // The store has just opened it, so this is unexpected; an absolute path still tags.
            tracing::warn!(dir = %dir.display(), "cannot resolve the state directory: {e}");
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .into()
        }
    }
}

struct Entry {
    id: InstanceId,
    handle: InstanceHandle,
    /// The actor's published status, read without cloning it.
    status: watch::Receiver<InstanceStatus>,
    spec: Arc<ProgramSpec>,
    seq: RunSeq,
    log: InstanceLog,
    /// What the store holds for this instance, to write only changes.
    persisted: InstanceRecord,
    /// Set when a start or restart was sent and the actor has not published since: until it
    /// does, the instance counts as `starting`, so a pass that runs before the actor has taken
    /// the command in neither sends it again nor lets the next priority level go ahead.
    awaiting: Option<watch::Receiver<InstanceStatus>>,
}

struct Loop {
    desired: Arc<DesiredState>,
    events: broadcast::Sender<Event>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    entries: BTreeMap<String, Entry>,
    live_tx: watch::Sender<LiveTable>,
    passes_tx: watch::Sender<u64>,
    /// Set when the instance set changed since the live table was last published.
    table_dirty: bool,
    /// The canonical state directory every child is tagged with (`PROVISR_STATE_DIR`).
    state_dir: Arc<Path>,
}

/// Starts the loop: adopts the instances the store remembers (by pid and start time) and the
/// `orphans` (which the first pass stops and removes), then reconciles until shut down.
pub fn start(
    desired: Arc<DesiredState>,
    events: broadcast::Sender<Event>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    orphans: Vec<Orphan>,
) -> Reconciler {
    let (requests, rx) = mpsc::channel(16);
    let (live_tx, live) = watch::channel(LiveTable::default());
    let (passes_tx, passes) = watch::channel(0);
    let state_dir = canonical_state_dir(desired.store().state_dir());
    let mut lp = Loop {
        desired,
        events,
        changed: wake.clone(),
        metrics,
        entries: BTreeMap::new(),
        live_tx,
        passes_tx,
        table_dirty: true,
        state_dir,
    };
    lp.adopt_remembered();
    lp.adopt_orphans(orphans);
    tokio::spawn(lp.run(rx, wake));
    Reconciler {
        requests,
        live,
        passes,
    }
}

impl Loop {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>, wake: Arc<Notify>) {
        self.pass().await;
        loop {
            let reply = tokio::select! {
                () = wake.notified() => None,
                () = tokio::time::sleep(RESYNC_INTERVAL) => None,
                req = requests.recv() => match req {
                    Some(Request::Pass(reply)) => Some(reply),
                    Some(Request::Shutdown(reply)) => {
                        self.stop_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Request::Detach(reply)) => {
                        for (_, e) in std::mem::take(&mut self.entries) {
                            e.handle.detach();
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
            };
            let done = self.pass().await;
            if let Some(reply) = reply {
                let _ = reply.send(done);
            }
        }
    }

    /// Creates an actor for every instance record with a remembered process; the actor checks
    /// pid and start time and takes the process over only if both match.
    fn adopt_remembered(&mut self) {
        let programs = self.desired.snapshot();
        let records = match self.desired.store().list_instances() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read instance records, starting without adoption: {e}");
                return;
            }
        };
        for (name, record) in records {
            let Some(program) = programs.get(&record.program) else {
                continue;
            };
            let Some(id) = program
                .spec
                .instances()
                .into_iter()
                .find(|i| i.name == name)
            else {
                continue;
            };
            let initial = match (record.pid, record.start_time) {
                (Some(pid), Some(start_time)) => Initial::Adopt {
                    pid,
                    start_time,
                    restarts: record.restarts,
                },
                _ => Initial::Fresh {
                    restarts: record.restarts,
                },
            };
            let spec = Arc::new(program.spec.clone());
            let seq = program.instance_desired(&name).seq;
            self.insert_entry(id, spec, initial, seq, record);
        }
    }

    fn adopt_orphans(&mut self, orphans: Vec<Orphan>) {
        for o in orphans {
            if self.entries.contains_key(&o.id.name) {
                continue;
            }
            let initial = match (o.record.pid, o.record.start_time) {
                (Some(pid), Some(start_time)) => Initial::Adopt {
                    pid,
                    start_time,
                    restarts: o.record.restarts,
                },
                _ => continue,
            };
            tracing::info!(instance = %o.id.name, "its program or instance is gone from the configuration; stopping it");
            self.insert_entry(o.id, Arc::new(o.spec), initial, RunSeq::default(), o.record);
        }
    }

    fn insert_entry(
        &mut self,
        id: InstanceId,
        spec: Arc<ProgramSpec>,
        initial: Initial,
        seq: RunSeq,
        persisted: InstanceRecord,
    ) {
        let log = InstanceLog::new(&id.name, spec.log_paths(&id), &spec.log);
        let ctx = RuntimeContext {
            events: self.events.clone(),
            changed: self.changed.clone(),
            output: Arc::new(log.clone()),
            state_dir: Some(self.state_dir.clone()),
        };
        let handle = InstanceHandle::spawn(id.clone(), spec.clone(), ctx, initial);
        let status = handle.watch();
        self.entries.insert(
            id.name.clone(),
            Entry {
                id,
                handle,
                status,
                spec,
                seq,
                log,
                persisted,
                awaiting: None,
            },
        );
        self.table_dirty = true;
    }

    /// One pass, timed for the metrics.
    async fn pass(&mut self) -> Plan {
        let began = std::time::Instant::now();
        let done = self.pass_untimed().await;
        self.metrics.observe_pass(began.elapsed(), done.steps.len());
        done
    }

    /// One pass: plan, carry out what is ready, record what changed.
    async fn pass_untimed(&mut self) -> Plan {
        let programs = self.desired.snapshot();
        let desired: Vec<Desired<'_>> = programs.values().map(|r| Desired::from(&**r)).collect();
        let states: Vec<InstanceState> = self
            .entries
            .values_mut()
            .map(Entry::observed_state)
            .collect();
        let observed: Vec<Observed<'_>> = self
            .entries
            .values()
            .zip(&states)
            .map(|(e, &state)| Observed {
                id: &e.id,
                state,
                spec: &e.spec,
                seq: e.seq,
            })
            .collect();
        let full = plan::plan(&desired, &observed);
        let by_name: BTreeMap<&str, &Desired<'_>> =
            desired.iter().map(|d| (d.spec.name.as_str(), d)).collect();
        let ready: Vec<plan::Step> = full.ready().cloned().collect();
        let mut actions: Vec<(plan::Step, Option<Target>)> = Vec::new();
        for step in ready {
            let target = by_name
                .get(step.program.as_str())
                .map(|d| (Arc::new(d.spec.clone()), d.for_instance(&step.instance).seq));
            actions.push((step, target));
        }
        // Unchanged instances whose spec differs only in `instances` (a scale of their
        // program) take the new spec quietly, so what they report matches desired state.
        let quiet: Vec<(String, Arc<ProgramSpec>)> = full
            .steps
            .iter()
            .filter(|s| s.action == Action::Unchanged)
            .filter_map(|s| {
                let d = by_name.get(s.program.as_str())?;
                let e = self.entries.get(&s.instance)?;
                (*e.spec != *d.spec).then(|| (s.instance.clone(), Arc::new(d.spec.clone())))
            })
            .collect();
        drop(observed);
        for (name, spec) in quiet {
            if let Some(e) = self.entries.get_mut(&name) {
                self.table_dirty |= e.apply_spec(spec);
            }
        }
        let mut done = Vec::with_capacity(actions.len());
        for (step, target) in actions {
            self.execute(&step, target);
            done.push(step);
        }
        self.persist().await;
        if self.table_dirty {
            self.table_dirty = false;
            let table: BTreeMap<String, LiveInstance> = self
                .entries
                .iter()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        LiveInstance {
                            id: e.id.clone(),
                            spec: e.spec.clone(),
                            status: e.status.clone(),
                            log: e.log.clone(),
                        },
                    )
                })
                .collect();
            self.live_tx.send_replace(Arc::new(table));
        }
        self.passes_tx.send_modify(|n| *n += 1);
        Plan { steps: done }
    }

    fn execute(&mut self, step: &plan::Step, target: Option<Target>) {
        tracing::debug!(instance = %step.instance, action = ?step.action, reason = %step.reason, "reconcile step");
        match (step.action, target) {
            (Action::Start, Some((spec, seq))) => {
                if !self.entries.contains_key(&step.instance) {
                    let Some(id) = spec
                        .instances()
                        .into_iter()
                        .find(|i| i.name == step.instance)
                    else {
                        return;
                    };
                    let persisted = self
                        .desired
                        .store()
                        .get_instance(&id.name)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| InstanceRecord {
                            program: id.program.clone(),
                            ..InstanceRecord::default()
                        });
                    let initial = Initial::Fresh {
                        restarts: persisted.restarts,
                    };
                    self.insert_entry(id, spec.clone(), initial, seq, persisted);
                }
                if let Some(e) = self.entries.get_mut(&step.instance) {
                    self.table_dirty |= e.apply_spec(spec);
                    e.seq = seq;
                    e.send_awaited(InstanceHandle::start);
                }
            }
            (Action::Restart, Some((spec, seq))) => {
                if let Some(e) = self.entries.get_mut(&step.instance) {
                    self.table_dirty |= e.apply_spec(spec);
                    e.seq = seq;
                    e.send_awaited(InstanceHandle::restart);
                }
            }
            (Action::Update, Some((spec, _))) => {
                if let Some(e) = self.entries.get_mut(&step.instance) {
                    self.table_dirty |= e.apply_spec(spec);
                }
            }
            (Action::Stop, _) => {
                if let Some(e) = self.entries.get(&step.instance) {
                    e.handle.stop();
                }
            }
            (Action::Remove, _) => {
                if let Some(e) = self.entries.remove(&step.instance) {
                    self.table_dirty = true;
                    let desired = self.desired.clone();
                    tokio::spawn(async move {
                        e.handle.shutdown().await;
                        let write = StoreWrite::DeleteInstance { name: e.id.name };
                        if let Err(err) = desired.record(vec![write]).await {
                            tracing::warn!("cannot forget a removed instance: {err}");
                        }
                    });
                }
            }
            _ => {}
        }
    }

    /// Writes the pid, start time and restart count of every instance whose values changed, as
    /// one flushed batch, so the next daemon can find its children again.
    async fn persist(&mut self) {
        let mut writes = Vec::new();
        for (name, e) in &mut self.entries {
            let (pid, start_time, restarts) = {
                let s = e.status.borrow();
                (s.pid, s.pid_start_time, s.restarts)
            };
            let p = &e.persisted;
            if (p.pid, p.start_time, p.restarts) != (pid, start_time, restarts) {
                let record = InstanceRecord {
                    pid,
                    start_time,
                    restarts,
                    ..InstanceRecord::new(&e.id.program)
                };
                e.persisted = record.clone();
                writes.push(StoreWrite::PutInstance {
                    name: name.clone(),
                    record,
                });
            }
        }
        if !writes.is_empty() {
            if let Err(e) = self.desired.record(writes).await {
                tracing::error!("cannot record instance processes: {e}");
            }
        }
    }

    /// Daemon shutdown: every instance stopped, one priority level at a time from the highest,
    /// and what the store remembers of each updated.
    async fn stop_all(&mut self) {
        let mut levels: BTreeMap<i32, Vec<Entry>> = BTreeMap::new();
        for (_, e) in std::mem::take(&mut self.entries) {
            levels.entry(e.spec.priority).or_default().push(e);
        }
        let mut writes = Vec::new();
        for (priority, entries) in levels.into_iter().rev() {
            tracing::info!(priority, count = entries.len(), "stopping priority level");
            let mut set = tokio::task::JoinSet::new();
            for e in entries {
                let status = e.handle.watch();
                set.spawn(async move {
                    e.handle.shutdown().await;
                    let s = status.borrow().clone();
                    (e.id, s)
                });
            }
            while let Some(joined) = set.join_next().await {
                if let Ok((id, s)) = joined {
                    writes.push(StoreWrite::PutInstance {
                        name: id.name,
                        record: InstanceRecord {
                            restarts: s.restarts,
                            ..InstanceRecord::new(&id.program)
                        },
                    });
                }
            }
        }
        if let Err(e) = self.desired.record(writes).await {
            tracing::error!("cannot record the stopped instances: {e}");
        }
        self.table_dirty = true;
    }
}

impl Entry {
    /// Hands a changed spec to the actor and the log sink; unchanged specs cost nothing.
    /// Returns whether the spec changed (the live table, which carries specs, is then stale).
    fn apply_spec(&mut self, spec: Arc<ProgramSpec>) -> bool {
        if *spec == *self.spec {
            return false;
        }
        if spec.log != self.spec.log || spec.instances != self.spec.instances {
            self.log.update(spec.log_paths(&self.id), &spec.log);
        }
        self.handle.update_spec(spec.clone());
        self.spec = spec;
        true
    }

    /// Sends a start or restart and remembers to treat the instance as starting until the
    /// actor publishes. Every start or restart the plan sends changes the published status
    /// (a start from `stopped`/`exited`/`failed`, a restart of an active instance).
    fn send_awaited(&mut self, send: fn(&InstanceHandle)) {
        let mut ack = self.status.clone();
        ack.borrow_and_update();
        send(&self.handle);
        self.awaiting = Some(ack);
    }

    /// The state the plan sees: the published one, or `starting` while a start or restart
    /// has not been taken in yet.
    fn observed_state(&mut self) -> InstanceState {
        if let Some(ack) = &self.awaiting {
            if matches!(ack.has_changed(), Ok(false)) {
                return InstanceState::Starting;
            }
            self.awaiting = None;
        }
        self.status.borrow().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Exec, Source};
    use crate::desired::Programs;
    use crate::store::ProgramRecord;

    fn programs(specs: &[(&str, u32)]) -> Programs {
        Arc::new(
            specs
                .iter()
                .map(|(name, instances)| {
                    let mut spec = ProgramSpec::new(*name, Exec::Command("sleep 1".into()));
                    spec.instances = *instances;
                    spec.stop_signal = "INT".into();
                    let source = Source::File(format!("/p/{name}.toml").into());
                    (name.to_string(), Arc::new(ProgramRecord::new(spec, source)))
                })
                .collect(),
        )
    }

    fn remembered(name: &str, program: &str, pid: Option<i32>) -> (String, InstanceRecord) {
        let record = InstanceRecord {
            pid,
            start_time: pid.map(|_| 7),
            restarts: 2,
            ..InstanceRecord::new(program)
        };
        (name.into(), record)
    }

    #[test]
    fn orphans_are_remembered_processes_no_program_claims() {
        let before = programs(&[("web", 3), ("gone", 1)]);
        let after = programs(&[("web", 2)]);
        let found = orphans(
            &before,
            &after,
            vec![
                remembered("web-1", "web", Some(10)),
                remembered("web-3", "web", Some(11)),
                remembered("gone", "gone", Some(12)),
                remembered("idle", "idle", None),
                remembered("x-2", "x", Some(13)),
                remembered("bogus", "x", Some(14)),
            ],
        );
        let got: Vec<(&str, u32, &str, Option<i32>)> = found
            .iter()
            .map(|o| {
                (
                    o.id.name.as_str(),
                    o.id.index,
                    o.spec.stop_signal.as_str(),
                    o.record.pid,
                )
            })
            .collect();
        // Stop settings come from the spec the program last had; a program unknown even before
        // (a leftover record) gets the defaults. A name that cannot be an instance of its
        // program is skipped.
        assert_eq!(
            got,
            [
                ("web-3", 3, "INT", Some(11)),
                ("gone", 1, "INT", Some(12)),
                ("x-2", 2, "TERM", Some(13)),
            ]
        );
    }
}
