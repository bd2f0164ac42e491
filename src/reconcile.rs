//! The reconcile loop: the only place that acts on processes.
//!
//! One task owns the table of instance actors. It wakes on any desired-state write, any change an
//! actor publishes (paced in bursts, [`PACE_FACTOR`]), an explicit request and a periodic resync;
//! each pass recomputes the whole [`plan`](crate::plan::plan) from the desired-state mirror and the
//! actors' published states and carries out the steps that are ready. Level-triggered: a lost or
//! merged wakeup only delays work until the next pass, it never leaves the system wrong.
//!
//! The loop is also the only writer of instance records (`docs/store.md`): at start it takes over
//! what the records and `/proc` say runs (`adopt.rs`); before it orders starts it writes them
//! ahead, one flushed batch per pass; after each pass it records what changed (pids, the spec
//! each process runs, restarts, finished jobs), again as one batch, retried until it is durable;
//! and it forgets an instance only once its process has stopped (`docs/reliability.md`).
//!
//! Cron jobs are part of the same loop (`cron.rs`): one timer, the earliest thing any job has
//! due, and each pass first asks the cron table what is due (runs to request, results to
//! record, runs to stop) before it plans.

mod adopt;
pub mod cron;
pub use cron::TriggerError;
mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::config::{InstanceId, ProgramSpec};
use crate::desired::{DesiredState, Programs};
use crate::logs::InstanceLog;
use crate::metrics::Metrics;
use crate::plan::{self, Action, Desired, Observed, Plan, RunSeq};
use crate::store::{CronRun, RunResult, StoreWrite};
use crate::supervisor::launches::{self, LaunchJournal};
use crate::supervisor::tag::{self, signal_tagged};
use crate::supervisor::{
    Event, Initial, InstanceHandle, InstanceState, InstanceStatus, RuntimeContext, StatusChanges,
};

use cron::{CronTable, InstanceView};
use record::Facts;

/// How often a pass runs with nothing else waking it: the backstop of level-triggering.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// The first wait before instance records that could not be written are tried again; it
/// doubles on every failure up to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_secs(1);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(30);

/// Heap returned to the OS once the loop has been quiet this long after a burst of work.
const SETTLE: Duration = Duration::from_millis(200);

/// How many instance steps and records count as a burst worth a heap trim: a boot, a reload, a
/// group start, not one crashed program's restart (`docs/benchmarks.md`, memory).
const BURST: usize = 64;

/// After a pass, a pass for instance status changes alone waits this many times as long as the
/// pass took (`docs/architecture.md`, "Paced under bursts"): in a burst of changes (a boot of
/// thousands) the loop then takes a bounded share of the CPU the children need, while a small
/// setup, whose passes take microseconds, notices no wait. Desired-state writes and requests
/// never wait.
const PACE_FACTOR: u32 = 2;

/// The longest a status change waits for its pass.
const PACE_MAX: Duration = Duration::from_millis(50);

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

/// The unmet dependencies each waiting instance's start waits for, by instance name.
pub type Waiting = Arc<BTreeMap<String, Vec<String>>>;

/// Each cron job's next scheduled time (`None` while suspended or stopped), by job name.
pub type CronNext = Arc<BTreeMap<String, Option<SystemTime>>>;

/// What the API can ask of the loop.
enum Request {
    /// Run one pass now and return the plan it carried out.
    Pass(oneshot::Sender<Plan>),
    /// The plan a pass would make for these programs, by the same rules, carrying out nothing.
    Preview(Programs, oneshot::Sender<Plan>),
    /// Stop every instance in reverse priority order, then end the loop.
    Shutdown(oneshot::Sender<()>),
    /// End the loop leaving every child running (used when the daemon must exit without stopping
    /// its children, e.g. in tests of crash recovery).
    Detach(oneshot::Sender<()>),
    /// Run a cron job now, as its concurrency allows.
    Trigger(String, oneshot::Sender<Result<CronRun, TriggerError>>),
}

/// The API's handle on the loop.
#[derive(Clone)]
pub struct Reconciler {
    requests: mpsc::Sender<Request>,
    live: watch::Receiver<LiveTable>,
    passes: watch::Receiver<u64>,
    statuses: watch::Receiver<u64>,
    waiting: watch::Receiver<Waiting>,
    cron_next: watch::Receiver<CronNext>,
}

impl Reconciler {
    /// The instances as of the last pass (or the one under way, once it has written its starts
    /// ahead).
    pub fn live(&self) -> LiveTable {
        self.live.borrow().clone()
    }

    /// A receiver that changes after every pass, for waiting on convergence.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.clone()
    }

    /// A receiver that changes whenever an instance's status does, for waiting on instances
    /// without waiting for the pass that records them.
    pub fn statuses(&self) -> watch::Receiver<u64> {
        self.statuses.clone()
    }

    /// The unmet dependencies of the starts waiting for them, as of the last pass.
    pub fn waiting(&self) -> Waiting {
        self.waiting.borrow().clone()
    }

    /// Each cron job's next scheduled time, as of the last pass.
    pub fn cron_next(&self) -> CronNext {
        self.cron_next.borrow().clone()
    }

    /// Runs cron job `job` now, as its concurrency allows; the run as its history records it.
    pub async fn trigger(&self, job: &str) -> Result<CronRun, TriggerError> {
        let (tx, rx) = oneshot::channel();
        let gone = || TriggerError::Store("the reconcile loop has stopped".to_string());
        self.requests
            .send(Request::Trigger(job.to_string(), tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs one pass now; the steps it carried out.
    pub async fn pass_now(&self) -> Option<Plan> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Pass(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The whole plan a pass would make if desired state were `programs`, computed by the loop
    /// from its own view of every instance (the actors' states, the requests each has carried
    /// out, commands not yet taken in): what dry runs show is what a pass then does.
    pub async fn preview(&self, programs: Programs) -> Option<Plan> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Preview(programs, tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Stops every instance in reverse priority order and ends the loop.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// SIGKILL to every instance's process group now, without waiting for the loop: the
    /// "stop now" of a second SIGTERM during shutdown. A group is signalled only while its
    /// leader is still the process the instance started (pid and start time).
    pub fn kill_all(&self) {
        tracing::warn!("second signal: killing every child now");
        for live in self.live().values() {
            let (pid, start_time) = {
                let s = live.status.borrow();
                (s.pid, s.pid_start_time)
            };
            if let (Some(pid), Some(start_time)) = (pid, start_time) {
                crate::supervisor::signal_group_of(
                    pid,
                    start_time,
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
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

/// The spec, request counters and generation a step brings its instance to.
type Target = (Arc<ProgramSpec>, RunSeq, u64);

struct Managed {
    id: InstanceId,
    handle: InstanceHandle,
    /// The actor's published status, read without cloning it.
    status: watch::Receiver<InstanceStatus>,
    spec: Arc<ProgramSpec>,
    /// The program's generation when `spec` was its spec, when known.
    generation: Option<u64>,
    seq: RunSeq,
    log: InstanceLog,
    /// Set when a start or restart was sent and the actor has not published since: until it
    /// does, the instance counts as `starting`, so a pass that runs before the actor has taken
    /// the command in neither sends it again nor lets the next priority level go ahead.
    awaiting: Option<watch::Receiver<InstanceStatus>>,
    /// A start or restart this loop ordered whose process has not been seen yet: the spec (the
    /// very `Arc` the actor spawns with) and its generation. Recorded as the record's `starting`.
    launch: Option<(Arc<ProgramSpec>, Option<u64>)>,
    /// When `launch` was written ahead, in nanoseconds after boot.
    launch_at: Option<u64>,
    /// A removal of its process was ordered (and written ahead), and no start since. A stop
    /// sets nothing: desired state says it.
    stop_ordered: bool,
    /// What the store holds for this instance, as facts; `None` when unknown (the first write
    /// then goes through and the store drops it if nothing changed).
    recorded: Option<Facts>,
    /// Its program or instance is gone from desired state and it has been told to stop; it stays
    /// in the table, and its record in the store, until its process has stopped.
    removing: bool,
}

struct ReconcileLoop {
    desired: Arc<DesiredState>,
    events: broadcast::Sender<Event>,
    changed: StatusChanges,
    metrics: Arc<Metrics>,
    /// Boxed: a B-tree keeps its nodes' slots half empty after splits, which for an entry
    /// of this size cost more than the box (`docs/benchmarks.md`, memory).
    entries: BTreeMap<String, Box<Managed>>,
    live_tx: watch::Sender<LiveTable>,
    passes_tx: watch::Sender<u64>,
    /// Set when the instance set changed since the live table was last published.
    table_dirty: bool,
    /// The canonical state directory every child is tagged with (`PROVISR_STATE_DIR`).
    state_dir: Arc<Path>,
    /// This boot's id, written into every record.
    boot: Option<Arc<str>>,
    /// Records of instances that are gone (process stopped, or never there): deleted with the
    /// next batch of instance records.
    forget: BTreeSet<String>,
    /// When instance records that could not be written are tried again, and the wait after that.
    retry: Option<(Instant, Duration)>,
    /// Where every spawn is noted as it succeeds (`supervisor::launches`).
    launches: Option<Arc<LaunchJournal>>,
    /// Where every cron job's schedule stands.
    cron: CronTable,
    /// When the earliest thing a cron job has due is: the loop's one cron timer.
    cron_at: Option<Instant>,
    /// Steps carried out and records written since the heap was last trimmed.
    churn: usize,
    /// When the heap is trimmed, armed by a burst and pushed back by every busy pass after it.
    trim_at: Option<Instant>,
    /// Before this, a status change waits for its pass (see [`PACE_FACTOR`]).
    paced_until: Instant,
    /// A status change is waiting for `paced_until`.
    changes_waiting: bool,
    waiting_tx: watch::Sender<Waiting>,
    cron_next_tx: watch::Sender<CronNext>,
}

/// Starts the loop: takes over what the store's instance records and `/proc` say an earlier
/// daemon left running (by pid and start time, or by the tag every child carries), then
/// reconciles until shut down. Processes no program claims any more are adopted too, and the
/// first pass stops them and forgets them.
pub fn start(
    desired: Arc<DesiredState>,
    events: broadcast::Sender<Event>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
) -> Reconciler {
    let (requests, rx) = mpsc::channel(16);
    let (live_tx, live) = watch::channel(LiveTable::default());
    let (passes_tx, passes) = watch::channel(0);
    let (waiting_tx, waiting) = watch::channel(Waiting::default());
    let (cron_next_tx, cron_next) = watch::channel(CronNext::default());
    let state_dir = canonical_state_dir(desired.store().state_dir());
    let cron = CronTable::new(&state_dir, SystemTime::now());
    // Status changes have a waker of their own, so the loop can pace them (`PACE_FACTOR`).
    let changes = Arc::new(Notify::new());
    let changed = StatusChanges::new(changes.clone());
    let statuses = changed.subscribe();
    let mut lp = ReconcileLoop {
        desired,
        events,
        changed,
        metrics,
        entries: BTreeMap::new(),
        live_tx,
        passes_tx,
        table_dirty: true,
        state_dir,
        boot: crate::supervisor::boot_id().map(Arc::from),
        forget: BTreeSet::new(),
        retry: None,
        launches: None,
        cron,
        cron_at: None,
        churn: 0,
        trim_at: None,
        paced_until: Instant::now(),
        changes_waiting: false,
        waiting_tx,
        cron_next_tx,
    };
    lp.take_over();
    tokio::spawn(lp.run(rx, wake, changes));
    Reconciler {
        requests,
        live,
        passes,
        statuses,
        waiting,
        cron_next,
    }
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

/// Sleeps until `at`, or forever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl ReconcileLoop {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        wake: Arc<Notify>,
        changes: Arc<Notify>,
    ) {
        self.pass().await;
        // Loading the configuration and the store before this pass was a burst too.
        self.trim_at = Some(Instant::now() + SETTLE);
        loop {
            let retry_at = self.retry.map(|(at, _)| at);
            let paced = self.changes_waiting.then_some(self.paced_until);
            let reply = tokio::select! {
                () = wake.notified() => {
                    // Let what else is ready run first: a desired-state write often comes with
                    // status changes, and one pass then sees them all.
                    tokio::task::yield_now().await;
                    None
                }
                // Its pass comes at `paced_until`, at once when that has passed.
                () = changes.notified(), if !self.changes_waiting => {
                    self.changes_waiting = true;
                    continue;
                }
                () = sleep_until(paced) => {
                    // Let what else is ready run first: during a boot a thousand actors each
                    // poke the loop as they start, and one pass then sees many of them.
                    tokio::task::yield_now().await;
                    None
                }
                () = tokio::time::sleep(RESYNC_INTERVAL) => None,
                () = sleep_until(retry_at) => None,
                () = sleep_until(self.cron_at) => None,
                () = sleep_until(self.trim_at) => {
                    // A boot or reload of thousands allocates and frees far more than it keeps.
                    crate::memory::release_freed();
                    self.trim_at = None;
                    self.churn = 0;
                    continue;
                }
                req = requests.recv() => match req {
                    Some(Request::Pass(reply)) => Some(reply),
                    Some(Request::Preview(programs, reply)) => {
                        let _ = reply.send(self.plan_for(&programs));
                        continue;
                    }
                    Some(Request::Shutdown(reply)) => {
                        self.stop_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Request::Trigger(job, reply)) => {
                        let _ = reply.send(self.trigger(&job).await);
                        None
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

    /// Creates an actor for every instance the records and `/proc` know of, and kills the
    /// leftovers nothing will adopt (see [`adopt::takeover`]).
    fn take_over(&mut self) {
        let programs = self.desired.snapshot();
        let records = match self.desired.store().list_instances() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read the instance records, adopting by tag only: {e}");
                Vec::new()
            }
        };
        let tagged = tag::scan(&self.state_dir);
        // What the daemon that died had launched, whether or not it recorded it; then the
        // journal starts afresh for this daemon.
        let journal = self.desired.store().state_dir().join(launches::FILE_NAME);
        let launched = launches::read_latest(&journal);
        self.launches = match LaunchJournal::create(&journal) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                tracing::warn!("cannot keep the launch journal {}: {e}; a start cut short by a crash may be taken for one carried out", journal.display());
                None
            }
        };
        // A zombie has ended: whoever reaps it knows how, we never will.
        let alive = crate::supervisor::proc_alive_since;
        let takeover = adopt::takeover(
            &programs,
            records,
            &tagged,
            &launched,
            self.boot.as_deref(),
            alive,
        );
        for t in &takeover.leftovers {
            if signal_tagged(t, nix::sys::signal::Signal::SIGKILL) {
                tracing::info!(instance = %t.name, pid = t.pid, detector = t.detector, "killed a process an earlier daemon left behind");
            }
        }
        self.forget.extend(takeover.forget);
        for a in takeover.adopted {
            match (&a.initial, a.found_by) {
                (Initial::Adopt { pid, .. }, Some(by)) => {
                    tracing::info!(instance = %a.id.name, pid, found_by = by, orphan = a.orphan, "taking over a process an earlier daemon started");
                }
                (Initial::Finished { message, .. }, _) => {
                    tracing::info!(instance = %a.id.name, "finished while no daemon ran: {}", message.as_deref().unwrap_or("ended"));
                }
                _ => {}
            }
            let recorded = a.record.as_ref().map(Facts::from_record);
            self.insert_entry(a.id, a.spec, a.generation, a.initial, a.seq, recorded);
        }
    }

    fn insert_entry(
        &mut self,
        id: InstanceId,
        spec: Arc<ProgramSpec>,
        generation: Option<u64>,
        initial: Initial,
        seq: RunSeq,
        recorded: Option<Facts>,
    ) {
        let log = InstanceLog::new(&id.name, spec.log_paths(&id), &spec.log);
        let ctx = RuntimeContext {
            events: self.events.clone(),
            changed: self.changed.clone(),
            output: Arc::new(log.clone()),
            state_dir: Some(self.state_dir.clone()),
            launches: self.launches.clone(),
            counters: self.metrics.runtime_counters(),
        };
        let handle = InstanceHandle::spawn(id.clone(), spec.clone(), ctx, initial);
        let status = handle.watch();
        self.forget.remove(&id.name);
        self.entries.insert(
            id.name.clone(),
            Box::new(Managed {
                id,
                handle,
                status,
                spec,
                generation,
                seq,
                log,
                awaiting: None,
                launch: None,
                launch_at: None,
                stop_ordered: false,
                recorded,
                removing: false,
            }),
        );
        self.table_dirty = true;
    }

    /// One pass, timed for the metrics; a busy one after a burst puts the heap trim off.
    async fn pass(&mut self) -> Plan {
        let began = std::time::Instant::now();
        let churn_before = self.churn;
        // Changes noted from here on are for the next pass; those before are this one's.
        self.changes_waiting = false;
        let done = self.pass_untimed().await;
        if self.churn >= BURST && self.churn > churn_before {
            self.trim_at = Some(Instant::now() + SETTLE);
        }
        let took = began.elapsed();
        self.paced_until = Instant::now() + (took * PACE_FACTOR).min(PACE_MAX);
        self.metrics.observe_pass(took, done.steps.len());
        done
    }

    /// The plan for `programs` against every instance as this loop sees it: the one builder of
    /// observed state, for passes and previews alike.
    fn plan_for(&mut self, programs: &Programs) -> Plan {
        let desired: Vec<Desired<'_>> = programs.values().map(|r| Desired::from(&**r)).collect();
        let states: Vec<InstanceState> = self
            .entries
            .values_mut()
            .map(|e| e.observed_state())
            .collect();
        let observed: Vec<Observed<'_>> = self
            .entries
            .values()
            .zip(&states)
            .map(|(e, &state)| {
                let s = e.status.borrow();
                Observed {
                    id: &e.id,
                    state,
                    spec: &e.spec,
                    seq: e.seq,
                    has_process: s.pid.is_some() || s.detected_by.is_some(),
                    healthy: s.healthy,
                    exit_code: s.last_exit.and_then(|x| x.code),
                }
            })
            .collect();
        plan::plan(&desired, &observed)
    }

    /// One pass: what cron jobs have due, plan, write the starts ahead, carry out what is
    /// ready, record what changed.
    async fn pass_untimed(&mut self) -> Plan {
        self.cron_tick().await;
        let programs = self.desired.snapshot();
        let full = self.plan_for(&programs);
        self.publish_waiting(&full);
        let desired: Vec<Desired<'_>> = programs.values().map(|r| Desired::from(&**r)).collect();
        let by_name: BTreeMap<&str, &Desired<'_>> =
            desired.iter().map(|d| (d.spec.name.as_str(), d)).collect();
        let ready: Vec<plan::Step> = full.ready().cloned().collect();
        let mut actions: Vec<(plan::Step, Option<Target>)> = Vec::new();
        for step in ready {
            // The record's own spec, shared: an instance holds no copy of it.
            let target = by_name.get(step.program.as_str()).and_then(|d| {
                let r = programs.get(&step.program)?;
                Some((
                    Arc::clone(&r.spec),
                    d.for_instance(&step.instance).seq,
                    r.generation,
                ))
            });
            actions.push((step, target));
        }
        // Unchanged instances whose spec differs only in `instances` (a scale of their
        // program) take the new spec quietly, so what they report matches desired state.
        let quiet: Vec<(String, Arc<ProgramSpec>, u64)> = full
            .steps
            .iter()
            .filter(|s| s.action == Action::Unchanged)
            .filter_map(|s| {
                let r = programs.get(&s.program)?;
                let e = self.entries.get(&s.instance)?;
                (e.spec != r.spec).then(|| (s.instance.clone(), Arc::clone(&r.spec), r.generation))
            })
            .collect();
        // An instance the plan no longer removes (its program came back) is no longer removing.
        let removed: BTreeSet<String> = full
            .steps
            .iter()
            .filter(|s| s.action == Action::Remove)
            .map(|s| s.instance.clone())
            .collect();
        for (name, e) in self.entries.iter_mut() {
            if e.removing && !removed.contains(name) {
                e.removing = false;
            }
        }
        for (name, spec, generation) in quiet {
            if let Some(e) = self.entries.get_mut(&name) {
                self.table_dirty |= e.apply_spec(spec, Some(generation));
            }
        }
        self.write_ahead(&actions).await;
        // New instances show in `GET /status` from now on, `starting`, not only once the pass
        // that starts them (a thousand at boot) has ended.
        self.publish_table();
        let mut done = Vec::with_capacity(actions.len());
        for (step, target) in actions {
            self.run_logs(&programs, &step);
            self.execute(&step, target);
            done.push(step);
        }
        self.churn += done.len();
        self.persist(None).await;
        self.arm_cron(&programs);
        self.publish_table();
        self.passes_tx.send_modify(|n| *n += 1);
        Plan { steps: done }
    }

    /// Publishes the live table if the instance set (or a spec) changed since it last was.
    fn publish_table(&mut self) {
        if !self.table_dirty {
            return;
        }
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

    /// Publishes which starts wait for dependencies, when that changed.
    fn publish_waiting(&mut self, plan: &Plan) {
        let waiting: BTreeMap<String, Vec<String>> = plan
            .steps
            .iter()
            .filter(|s| s.deferred && matches!(s.action, Action::Start | Action::Restart))
            .filter(|s| !s.waiting_for.is_empty())
            .map(|s| (s.instance.clone(), s.waiting_for.clone()))
            .collect();
        self.waiting_tx.send_if_modified(|w| {
            let changed = **w != waiting;
            if changed {
                *w = Arc::new(waiting);
            }
            changed
        });
    }

    /// The cron jobs' instances as the cron table needs them.
    fn cron_views(
        &mut self,
        programs: &crate::desired::Programs,
    ) -> BTreeMap<String, InstanceView> {
        let mut views = BTreeMap::new();
        for r in programs.values().filter(|r| r.spec.is_cron()) {
            for id in r.spec.instances() {
                let Some(e) = self.entries.get_mut(&id.name) else {
                    continue;
                };
                let state = e.observed_state();
                let s = e.status.borrow();
                views.insert(
                    id.name.clone(),
                    InstanceView {
                        state,
                        carried: e.seq.start + e.seq.restart,
                        started_at: s.started_at,
                        stopped_at: s.stopped_at,
                        last_exit: s.last_exit,
                        has_process: s.pid.is_some(),
                    },
                );
            }
        }
        views
    }

    /// What cron jobs have due now: requests and results written as one flushed batch, runs
    /// over their timeout stopped.
    async fn cron_tick(&mut self) {
        let programs = self.desired.snapshot();
        if !programs.values().any(|r| r.spec.is_cron()) {
            return;
        }
        let views = self.cron_views(&programs);
        let tick = self.cron.tick(&programs, &views, SystemTime::now());
        for name in &tick.stops {
            if let Some(e) = self.entries.get(name) {
                e.handle.stop();
            }
        }
        if tick.writes.is_empty() {
            self.cron.commit(&tick);
            return;
        }
        match self.desired.apply(tick.writes.clone()).await {
            Ok(_) => {
                self.cron.commit(&tick);
                for (job, result) in &tick.results {
                    self.metrics.observe_cron_run(job, result);
                }
                for paths in &tick.drop_logs {
                    cron::remove_run_logs(paths);
                }
            }
            Err(e) => tracing::error!(
                "cannot record what cron jobs have due: {e}; trying again at the next pass"
            ),
        }
    }

    /// `trigger`: a run of `job` now.
    async fn trigger(&mut self, job: &str) -> Result<CronRun, TriggerError> {
        let programs = self.desired.snapshot();
        let views = self.cron_views(&programs);
        let (writes, run) = self
            .cron
            .trigger(job, &programs, &views, SystemTime::now())?;
        self.desired
            .apply(writes)
            .await
            .map_err(|e| TriggerError::Store(format!("cannot record the run: {e}")))?;
        tracing::info!(job, run = run.id, instance = %run.instance, "cron job triggered");
        Ok(run)
    }

    /// A cron job's run starting: its instance's output goes to the run's own log files.
    fn run_logs(&mut self, programs: &crate::desired::Programs, step: &plan::Step) {
        if !matches!(step.action, Action::Start | Action::Restart) {
            return;
        }
        let Some(record) = programs.get(&step.program).filter(|r| r.spec.is_cron()) else {
            return;
        };
        let run = record
            .cron
            .iter()
            .flat_map(|c| c.history.iter())
            .rfind(|r| r.instance == step.instance && r.result == RunResult::Running);
        if let (Some(run), Some(e)) = (run, self.entries.get(&step.instance)) {
            e.log.update(run.log.clone(), &record.spec.log);
        }
    }

    /// Arms the cron timer at the earliest thing due, and publishes the next scheduled times.
    fn arm_cron(&mut self, programs: &crate::desired::Programs) {
        if !programs.values().any(|r| r.spec.is_cron()) {
            self.cron_at = None;
            self.cron_next_tx.send_if_modified(|n| {
                let changed = !n.is_empty();
                *n = CronNext::default();
                changed
            });
            return;
        }
        let now = SystemTime::now();
        let views = self.cron_views(programs);
        self.cron_at = self
            .cron
            .next_wakeup(programs, &views, now)
            .map(|at| Instant::now() + at.duration_since(now).unwrap_or_default());
        let next = self.cron.next_times(programs, now);
        self.cron_next_tx.send_if_modified(|n| {
            let changed = **n != next;
            if changed {
                *n = Arc::new(next);
            }
            changed
        });
    }

    /// Makes the starts and restarts of this pass durable before any of them is sent: each
    /// instance's record gets the spec its next process runs (`starting`) and the request it
    /// carries out, all in one flushed batch. A crash after the spawn and before the pid is
    /// recorded then leaves a record that says what the process found by its tag runs, and a
    /// request carried out once is not carried out again by the next daemon.
    async fn write_ahead(&mut self, actions: &[(plan::Step, Option<Target>)]) {
        let mut names = Vec::new();
        for (step, _) in actions {
            // A removal is written ahead too: a process gone when the next daemon looks was
            // stopped by this one, it did not end on its own. A stop needs no record at all: it
            // is ordered only by desired state that says stopped, already flushed, which tells
            // the next daemon the same (`docs/reliability.md`).
            if step.action != Action::Remove {
                continue;
            }
            if let Some(e) = self.entries.get_mut(&step.instance) {
                if !e.stop_ordered {
                    e.stop_ordered = true;
                    names.push(step.instance.clone());
                }
            }
        }
        for (step, target) in actions {
            let (Action::Start | Action::Restart, Some((spec, seq, generation))) =
                (step.action, target)
            else {
                continue;
            };
            if !self.entries.contains_key(&step.instance) {
                let Some(id) = spec
                    .instances()
                    .into_iter()
                    .find(|i| i.name == step.instance)
                else {
                    continue;
                };
                // A record left by an earlier run of this instance carries its restarts over.
                let record = self.desired.store().get_instance(&id.name).ok().flatten();
                let restarts = record.as_ref().map_or(0, |r| r.restarts);
                let recorded = record.as_ref().map(Facts::from_record);
                self.insert_entry(
                    id,
                    spec.clone(),
                    Some(*generation),
                    Initial::Fresh { restarts },
                    *seq,
                    recorded,
                );
            }
            if let Some(e) = self.entries.get_mut(&step.instance) {
                e.launch = Some((spec.clone(), Some(*generation)));
                e.launch_at = Some(crate::supervisor::boot_nanos_now());
                e.stop_ordered = false;
                e.seq = *seq;
                names.push(step.instance.clone());
            }
        }
        if !names.is_empty() {
            self.persist(Some(&names)).await;
        }
    }

    fn execute(&mut self, step: &plan::Step, target: Option<Target>) {
        tracing::debug!(instance = %step.instance, action = ?step.action, reason = %step.reason, "reconcile step");
        match (step.action, target) {
            (Action::Start | Action::Restart, Some((spec, seq, generation))) => {
                if let Some(e) = self.entries.get_mut(&step.instance) {
                    self.table_dirty |= e.apply_spec(spec, Some(generation));
                    e.seq = seq;
                    // The spec the actor will spawn with, as the very `Arc` it holds, so the
                    // spawn is recognised (see `Managed::settle_launch`).
                    e.launch = Some((e.spec.clone(), e.generation));
                    let token = e.launch_at.unwrap_or_default();
                    let restart = step.action == Action::Restart;
                    e.send_awaited(|h| match restart {
                        false => h.start_launch(token),
                        true => h.restart_launch(token),
                    });
                }
            }
            (Action::Update, Some((spec, _, generation))) => {
                if let Some(e) = self.entries.get_mut(&step.instance) {
                    self.table_dirty |= e.apply_spec(spec, Some(generation));
                }
            }
            (Action::Stop, _) => {
                if let Some(e) = self.entries.get(&step.instance) {
                    e.handle.stop();
                }
            }
            (Action::Remove, _) => self.remove(&step.instance),
            _ => {}
        }
    }

    /// Removes an instance whose program or instance is gone from desired state: it is stopped
    /// and stays in the table (and its record in the store, a tombstone) until its process has
    /// stopped; the pass that sees it stopped forgets it. Removal goes through the table, so a
    /// program that comes back meanwhile gets the same actor back, never a second process beside
    /// one still stopping, and no removal finishing late can delete a newer record.
    fn remove(&mut self, name: &str) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        let gone = {
            let s = e.status.borrow();
            s.pid.is_none()
                && e.awaiting.is_none()
                && matches!(
                    s.state,
                    InstanceState::Stopped
                        | InstanceState::Exited
                        | InstanceState::Failed
                        | InstanceState::Backoff
                )
        };
        if gone {
            if let Some(e) = self.entries.remove(name) {
                // Nothing of ours runs: ending the actor leaves nothing behind.
                e.handle.detach();
                self.forget.insert(name.to_string());
                self.table_dirty = true;
            }
        } else if !e.removing {
            e.removing = true;
            e.handle.stop();
        }
    }

    /// Records, as one flushed batch, every instance whose facts changed (of `only` these, when
    /// given) and forgets the instances that are gone. A batch that fails is tried again after a
    /// delay (doubling up to [`RECORD_RETRY_MAX`]): nothing counts as recorded until it is.
    async fn persist(&mut self, only: Option<&[String]>) {
        let boot = self.boot.clone();
        let mut writes = Vec::new();
        let forget: Vec<String> = if only.is_none() {
            self.forget.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for name in &forget {
            writes.push(StoreWrite::DeleteInstance { name: name.clone() });
        }
        let mut changed = Vec::new();
        let names: Vec<String> = match only {
            Some(names) => names.to_vec(),
            None => self.entries.keys().cloned().collect(),
        };
        for name in names {
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            // Ahead of a start, its command is not sent yet: nothing can have settled it.
            if only.is_none() {
                e.settle_launch();
            }
            let facts = e.facts();
            if e.recorded.as_ref() != Some(&facts) {
                writes.push(StoreWrite::PutInstance {
                    name: name.clone(),
                    record: Box::new(facts.record(&e.id.program, boot.as_deref())),
                });
                changed.push((name, facts));
            }
        }
        if writes.is_empty() {
            if only.is_none() {
                // Nothing is left unrecorded: no retry is due (one left armed would fire on and
                // on, its time long past).
                self.retry = None;
            }
            return;
        }
        self.churn += writes.len();
        match self.desired.record(writes).await {
            Ok(_) => {
                for (name, facts) in changed {
                    if let Some(e) = self.entries.get_mut(&name) {
                        e.recorded = Some(facts);
                    }
                }
                for name in forget {
                    self.forget.remove(&name);
                }
                if self.retry.take().is_some() {
                    tracing::info!("instance records written again after a failure");
                }
            }
            Err(e) => {
                let wait = self
                    .retry
                    .map_or(RECORD_RETRY_FIRST, |(_, w)| (w * 2).min(RECORD_RETRY_MAX));
                tracing::error!(
                    "cannot record instance processes: {e}; trying again in {}",
                    crate::config::Dur(wait)
                );
                self.retry = Some((Instant::now() + wait, wait));
            }
        }
    }

    /// Daemon shutdown: every instance stopped, one priority level at a time from the highest
    /// (instances being removed included, so none outlives the daemon), and what the store
    /// remembers of each updated: removed instances forgotten, finished jobs kept finished.
    async fn stop_all(&mut self) {
        // Within a priority level, a program stops before those it depends on.
        let ranks = plan::stop_ranks(self.entries.values().map(|e| &*e.spec));
        let mut levels: BTreeMap<(i32, std::cmp::Reverse<u32>), Vec<Managed>> = BTreeMap::new();
        for (_, e) in std::mem::take(&mut self.entries) {
            let rank = ranks.get(&e.id.program).copied().unwrap_or(0);
            let key = (e.spec.priority, std::cmp::Reverse(rank));
            levels.entry(key).or_default().push(*e);
        }
        let boot = self.boot.clone();
        let mut writes: Vec<StoreWrite> = std::mem::take(&mut self.forget)
            .into_iter()
            .map(|name| StoreWrite::DeleteInstance { name })
            .collect();
        for ((priority, _), entries) in levels.into_iter().rev() {
            tracing::info!(priority, count = entries.len(), "stopping priority level");
            let mut set = tokio::task::JoinSet::new();
            for e in entries {
                // A finished job stays finished: the stop below turns `exited` into `stopped`.
                let finished = e.facts().finished;
                let (id, seq, removing, status) = (e.id, e.seq, e.removing, e.status);
                let handle = e.handle;
                let boot = boot.clone();
                set.spawn(async move {
                    handle.shutdown().await;
                    if removing {
                        return StoreWrite::DeleteInstance { name: id.name };
                    }
                    let restarts = status.borrow().restarts;
                    let facts = Facts::stopped(restarts, seq, finished);
                    StoreWrite::PutInstance {
                        record: Box::new(facts.record(&id.program, boot.as_deref())),
                        name: id.name,
                    }
                });
            }
            while let Some(joined) = set.join_next().await {
                if let Ok(write) = joined {
                    writes.push(write);
                }
            }
        }
        if let Err(e) = self.desired.record(writes).await {
            tracing::error!("cannot record the stopped instances: {e}");
        }
        self.table_dirty = true;
    }
}

impl Managed {
    /// Hands a changed spec to the actor and the log sink; unchanged specs cost nothing.
    /// Returns whether the spec changed (the live table, which carries specs, is then stale).
    fn apply_spec(&mut self, spec: Arc<ProgramSpec>, generation: Option<u64>) -> bool {
        if *spec == *self.spec {
            if generation.is_some() {
                self.generation = generation;
            }
            return false;
        }
        if spec.log != self.spec.log || spec.instances != self.spec.instances {
            self.log.update(spec.log_paths(&self.id), &spec.log);
        }
        self.handle.update_spec(spec.clone());
        self.spec = spec;
        self.generation = generation;
        true
    }

    /// Sends a start or restart and remembers to treat the instance as starting until the
    /// actor publishes. Every start or restart the plan sends changes the published status
    /// (a start from `stopped`/`exited`/`failed`, a restart of an active instance).
    fn send_awaited(&mut self, send: impl FnOnce(&InstanceHandle)) {
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

    /// Drops the written-ahead start once it is over: its process runs (the actor spawned with
    /// exactly that spec), or the instance settled without one (stopped, exited, failed, found
    /// running elsewhere).
    fn settle_launch(&mut self) {
        if self.launch.is_none() {
            return;
        }
        // Until the actor has taken the command in, its status says nothing about it.
        self.observed_state();
        let (Some(_), None) = (&self.launch, &self.awaiting) else {
            return;
        };
        let s = self.status.borrow();
        // The process the actor spawned for this very start (the command carried the time it
        // was written ahead as its token): not one spawned for an earlier start, nor the old
        // process of a restart, which may run the same spec.
        let spawned = s.pid.is_some() && s.launch.is_some() && s.launch == self.launch_at;
        let settled = s.pid.is_none()
            && matches!(
                s.state,
                InstanceState::Stopped
                    | InstanceState::Exited
                    | InstanceState::Failed
                    | InstanceState::Running
            );
        drop(s);
        if spawned || settled {
            self.launch = None;
            self.launch_at = None;
        }
    }

    /// What the record of this instance should say now.
    fn facts(&self) -> Facts {
        let s = self.status.borrow();
        let generation_of = |spec: &Arc<ProgramSpec>| {
            if Arc::ptr_eq(spec, &self.spec) {
                return self.generation;
            }
            if let Some((launch, generation)) = &self.launch {
                if Arc::ptr_eq(spec, launch) {
                    return *generation;
                }
            }
            self.recorded.as_ref().and_then(|r| r.generation_of(spec))
        };
        Facts {
            pid: s.pid,
            start_time: s.pid_start_time,
            restarts: s.restarts,
            spec: s
                .spawned_spec
                .as_ref()
                .map(|spec| (spec.clone(), generation_of(spec))),
            starting: self.launch.clone(),
            starting_at: self.launch.as_ref().and(self.launch_at),
            seq: self.seq,
            finished: record::finished_of(&s),
            stopping: self.stop_ordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_the_state_dir_absolute_and_resolved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let tagged = canonical_state_dir(&dir.path().join("link"));
        assert_eq!(
            &*tagged,
            std::fs::canonicalize(dir.path().join("real")).unwrap()
        );
    }
}
