//! The records the desired-state store keeps, one JSON value per sled key.
//!
//! These are the shapes of schema version [`super::CURRENT_SCHEMA`]. Changing a field here changes
//! the on-disk format: add a migration step (`migrations.rs`, `migrations/README.md`) and a fixture.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::config::{LogPaths, ProgramSpec, Source};

/// Whether a program should run (`docs/store.md`). Only an explicit start or stop changes it; file edits
/// and reloads keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredRun {
    Running,
    Stopped,
}

impl DesiredRun {
    /// The desired state of a program that first appears: `running` unless `autostart = false`.
    pub fn initial(spec: &ProgramSpec) -> DesiredRun {
        if spec.autostart {
            DesiredRun::Running
        } else {
            DesiredRun::Stopped
        }
    }
}

impl std::fmt::Display for DesiredRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DesiredRun::Running => "running",
            DesiredRun::Stopped => "stopped",
        })
    }
}

/// One program's desired state, stored under `p/<program name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRecord {
    /// The last good spec. A broken file keeps this and only sets `error` (`docs/configuration.md`, "Errors and reloads").
    /// Shared: the mirror holds the very spec the write carried (the scan cache's, for a file),
    /// so a program's spec is in memory once (`docs/architecture.md`).
    #[serde(with = "super::compact")]
    pub spec: Arc<ProgramSpec>,
    pub source: Source,
    pub desired: DesiredRun,
    /// 1 when the program first appears, +1 on every change of `spec`; source, desired state and
    /// error changes keep it. It restarts at 1 when a program is deleted and created again, so a
    /// reader that caches generations must also notice the deletion.
    pub generation: u64,
    /// Why the program's source no longer validates, one sentence each (file, line, what is
    /// wrong); `None` while the source is good. Cleared by the next good spec.
    pub error: Option<Vec<String>>,
    /// Counts of explicit start and restart requests for the whole program, so an `exited` or
    /// `failed` instance starts again once per request rather than on every reconcile pass.
    /// Added in place to schema 1 with a default, so older records read as "no requests yet".
    #[serde(default)]
    pub seq: RunSeq,
    /// Instances started or stopped on their own (`stop --name web-2`), overriding `desired` and
    /// `seq` for them; a request for the whole program clears these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, InstanceDesired>,
    /// A cron job's schedule position, suspension and run history; `None` for other programs
    /// and for a job that has not been scheduled yet. Added in place to schema 3 with a
    /// default, so older records read as "never scheduled".
    /// Boxed: most programs are not cron jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<Box<CronState>>,
}

/// What the daemon remembers of a cron job between runs (`docs/store.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronState {
    /// The last scheduled time acted on (run, or skipped): the next run is the first scheduled
    /// time after it, so no scheduled time is acted on twice.
    #[serde(default, with = "crate::supervisor::rfc3339_opt")]
    pub last_schedule_time: Option<SystemTime>,
    /// Set by `suspend`/`resume` through the API, over the file's `suspend`; cleared when the
    /// file's `suspend` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<bool>,
    /// Runs started so far: the last run's id.
    #[serde(default)]
    pub runs: u64,
    /// Runs under way and the latest finished ones (at most `history_limit`), oldest first.
    #[serde(default)]
    pub history: Vec<CronRun>,
}

impl CronState {
    /// The newest finished run's result.
    pub fn last_result(&self) -> Option<RunResult> {
        self.history
            .iter()
            .rev()
            .find(|r| r.result != RunResult::Running)
            .map(|r| r.result)
    }
}

/// One run of a cron job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRun {
    /// 1, 2, …: numbers the runs of the job.
    pub id: u64,
    /// The instance it runs in.
    pub instance: String,
    /// What asked for it.
    pub cause: RunCause,
    /// The scheduled time it carries out; `None` for a triggered run.
    #[serde(default, with = "crate::supervisor::rfc3339_opt")]
    pub scheduled_for: Option<SystemTime>,
    #[serde(default, with = "crate::supervisor::rfc3339_opt")]
    pub started_at: Option<SystemTime>,
    #[serde(default, with = "crate::supervisor::rfc3339_opt")]
    pub finished_at: Option<SystemTime>,
    pub result: RunResult,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub exit_signal: Option<i32>,
    /// Tries so far: 1, and one more per retry of a failed try.
    pub attempts: u32,
    /// The instance's start and restart requests, summed, once its current try is carried
    /// out: how the loop tells the try started.
    #[serde(default)]
    pub request: u64,
    /// The files its output went to.
    #[serde(default)]
    pub log: LogPaths,
}

/// What asked for a cron job's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunCause {
    /// Its schedule (a missed time caught up within `starting_deadline` included).
    Schedule,
    /// `trigger`.
    Trigger,
}

/// How a cron job's run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Under way (retries included).
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Exited otherwise, or could not start, its retries used up.
    Failed,
    /// Stopped after the job's `timeout`.
    Timeout,
    /// Stopped by a request (`stop`, the job removed, …).
    Stopped,
    /// Stopped for a newer run (`concurrency = "replace"`).
    Replaced,
    /// It ended while no daemon could see how (a daemon restart in between).
    Unknown,
}

impl RunResult {
    pub const ALL: [RunResult; 7] = [
        RunResult::Running,
        RunResult::Succeeded,
        RunResult::Failed,
        RunResult::Timeout,
        RunResult::Stopped,
        RunResult::Replaced,
        RunResult::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Running => "running",
            RunResult::Succeeded => "succeeded",
            RunResult::Failed => "failed",
            RunResult::Timeout => "timeout",
            RunResult::Stopped => "stopped",
            RunResult::Replaced => "replaced",
            RunResult::Unknown => "unknown",
        }
    }
}

/// A change of a cron job's [`CronState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CronChange {
    /// A scheduled time was acted on (its run is a [`CronChange::Run`] in the same batch), or
    /// skipped.
    Scheduled(SystemTime),
    /// A run started (a new id) or changed (its id): the history keeps the runs under way and
    /// the newest `history_limit` finished ones.
    Run(CronRun),
    /// `suspend` (`Some(true)`), `resume` (`Some(false)`).
    Suspend(bool),
}

impl ProgramRecord {
    /// A program as it first appears: generation 1, desired state from `autostart`.
    pub fn new(spec: impl Into<Arc<ProgramSpec>>, source: Source) -> ProgramRecord {
        let spec = spec.into();
        ProgramRecord {
            desired: DesiredRun::initial(&spec),
            spec,
            source,
            generation: 1,
            error: None,
            seq: RunSeq::default(),
            instances: BTreeMap::new(),
            cron: None,
        }
    }

    /// Whether a cron job's scheduled runs are held: `suspend`/`resume` through the API, else
    /// the file's `suspend`.
    pub fn cron_suspended(&self) -> bool {
        let file = self.spec.cron.as_ref().is_some_and(|c| c.suspend);
        self.cron.as_ref().and_then(|c| c.suspended).unwrap_or(file)
    }

    /// Applies a change of its cron state; returns whether anything changed.
    pub fn apply_cron(&mut self, change: &CronChange) -> bool {
        let limit = self.spec.cron.as_ref().map_or(0, |c| c.history_limit) as usize;
        let before = self.cron.clone();
        let state = self.cron.get_or_insert_with(Box::default);
        match change {
            CronChange::Scheduled(t) => {
                state.last_schedule_time = Some(state.last_schedule_time.map_or(*t, |l| l.max(*t)));
            }
            CronChange::Suspend(on) => state.suspended = Some(*on),
            CronChange::Run(run) => {
                match state.history.iter_mut().find(|r| r.id == run.id) {
                    Some(r) => *r = run.clone(),
                    None => {
                        state.runs = state.runs.max(run.id);
                        state.history.push(run.clone());
                    }
                }
                state.history.sort_by_key(|r| r.id);
                let finished = state
                    .history
                    .iter()
                    .filter(|r| r.result != RunResult::Running)
                    .count();
                let mut drop = finished.saturating_sub(limit);
                state.history.retain(|r| {
                    let gone = drop > 0 && r.result != RunResult::Running;
                    drop -= usize::from(gone);
                    !gone
                });
            }
        }
        before != self.cron
    }

    /// What is wanted of one instance: its own override, else the program's.
    pub fn instance_desired(&self, instance: &str) -> InstanceDesired {
        resolve_instance(self.desired, self.seq, Some(&self.instances), instance)
    }

    /// Applies an explicit start, stop or restart of the whole program (`instance = None`) or of
    /// one instance; returns whether anything changed.
    pub fn request(&mut self, instance: Option<&str>, request: RunRequest) -> bool {
        let before = (self.desired, self.seq, self.instances.clone());
        match instance {
            None => {
                // Program-wide requests replace per-instance ones; counters never go back, so
                // an instance that carried out a request of its own still sees the new one.
                for o in self.instances.values() {
                    self.seq.start = self.seq.start.max(o.seq.start);
                    self.seq.restart = self.seq.restart.max(o.seq.restart);
                }
                self.instances.clear();
                (self.desired, self.seq) = request.applied(self.seq);
            }
            Some(name) => {
                let now = self.instance_desired(name);
                let (run, seq) = request.applied(now.seq);
                self.instances
                    .insert(name.to_string(), InstanceDesired { run, seq });
            }
        }
        before != (self.desired, self.seq, self.instances.clone())
    }
}

/// The desired run state and requests of `instance`, given a program's and its overrides.
pub fn resolve_instance(
    run: DesiredRun,
    seq: RunSeq,
    overrides: Option<&BTreeMap<String, InstanceDesired>>,
    instance: &str,
) -> InstanceDesired {
    overrides
        .and_then(|o| o.get(instance).copied())
        .unwrap_or(InstanceDesired { run, seq })
}

/// How many start and restart requests a program or instance has had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunSeq {
    pub start: u64,
    pub restart: u64,
}

/// An instance's own desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceDesired {
    pub run: DesiredRun,
    pub seq: RunSeq,
}

/// An explicit request from the CLI or API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRequest {
    Start,
    Stop,
    Restart,
}

impl RunRequest {
    fn applied(self, seq: RunSeq) -> (DesiredRun, RunSeq) {
        match self {
            RunRequest::Start => (
                DesiredRun::Running,
                RunSeq {
                    start: seq.start + 1,
                    ..seq
                },
            ),
            RunRequest::Stop => (DesiredRun::Stopped, seq),
            RunRequest::Restart => (
                DesiredRun::Running,
                RunSeq {
                    restart: seq.restart + 1,
                    ..seq
                },
            ),
        }
    }
}

/// What the daemon needs to find an instance's process again after it restarts (`docs/reliability.md`),
/// stored under `i/<instance name>` (`i/web`, `i/web-2`). `docs/store.md` describes how the
/// reconcile loop keeps it: written ahead of a start, confirmed once the process runs, kept as a
/// tombstone while the process of a removed program stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The program the instance belongs to.
    pub program: String,
    /// The process it runs, if any.
    pub pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot) when `pid` was recorded, so a
    /// reused pid is never mistaken for the instance's process.
    pub start_time: Option<u64>,
    /// Automatic restarts so far; survives daemon restarts (`docs/api.md`).
    pub restarts: u64,
    /// The boot this record was written in (`/proc/sys/kernel/random/boot_id`): a pid and start
    /// time from another boot name no process of ours, and a job that finished in another boot
    /// runs again. `None` in records written before schema 3.
    pub boot_id: Option<String>,
    /// The program's generation when `spec` was its spec.
    pub generation: Option<u64>,
    /// The spec the process `pid` runs with: as it was started, or as changed in place since.
    /// A daemon that adopts the process compares it with the desired spec, so an edit made while
    /// no daemon ran is applied. `None` without a process, and in records from before schema 3.
    #[serde(with = "super::compact")]
    pub spec: Option<ProgramSpec>,
    /// Written ahead of a start that the reconcile loop orders, before the process is spawned:
    /// a process of this instance found in `/proc` by its tag that this record does not name yet
    /// runs this spec.
    pub starting: Option<Launch>,
    /// The start and restart requests this instance has carried out, so a request is carried out
    /// once across daemon restarts. `None` in records from before schema 3.
    pub seq: Option<RunSeq>,
    /// How its last process ended when no restart followed (`exited` or `failed`): a finished job
    /// is not run again by the next daemon of the same boot.
    pub finished: Option<Finished>,
    /// Its program was deleted while its process may still run: a tombstone, kept to stop that
    /// process. Should a program of the same name come back, nothing this record says about
    /// requests carried out or a run that ended belongs to it (`docs/reliability.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// The daemon ordered its process removed (its program deleted or scaled down), written
    /// ahead of the order: a process that is gone did not end on its own. A stop needs no flag:
    /// desired state that says stopped tells the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

impl InstanceRecord {
    /// The record of a new instance of `program`, with nothing to find yet.
    pub fn new(program: &str) -> InstanceRecord {
        InstanceRecord {
            program: program.to_string(),
            ..InstanceRecord::default()
        }
    }

    /// Whether the instance may have a process: one is recorded, or a start was under way.
    pub fn may_run(&self) -> bool {
        self.pid.is_some() || self.starting.is_some()
    }
}

/// A start written ahead: the spec and generation the next process of an instance runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub generation: u64,
    #[serde(with = "super::compact")]
    pub spec: ProgramSpec,
    /// When it was written ahead, in nanoseconds after boot: a spawn begun after it carried it
    /// out (`docs/reliability.md`, the launch journal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ns: Option<u64>,
}

/// How an instance that will not be restarted ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// `true` for `failed` (retries used up), `false` for `exited`.
    pub failed: bool,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The status message it ended with.
    pub message: Option<String>,
}

/// Who a writer expects to own a program before it writes: the store checks it in the same
/// batch as the write, so two writers can never both pass a check and then overwrite each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// No program of that name exists (registering a new one).
    Nobody,
    /// It exists and was registered through the API (update, unregister).
    Api,
    /// Either of the two (`start` with a spec: register or replace one's own).
    NobodyOrApi,
}

/// One write of a batch applied by [`super::DesiredStore::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreWrite {
    /// Create or update a program from a good spec: see [`super::DesiredStore::put_program`].
    PutProgram {
        /// The record takes this very spec, shared with whoever else holds it.
        spec: Arc<ProgramSpec>,
        source: Source,
    },
    /// Set or clear a program's source error, keeping its last good spec.
    SetError {
        name: String,
        error: Option<Vec<String>>,
    },
    /// Set the program-wide desired state (e.g. `start --dry-run` previews).
    SetDesired {
        name: String,
        desired: DesiredRun,
    },
    /// An explicit start, stop or restart of a program, or of one of its instances.
    Request {
        name: String,
        instance: Option<String>,
        request: RunRequest,
    },
    /// Remove a program and the instance records that have no process; those that may still
    /// have one stay, as tombstones carrying the spec to stop it with, until it has stopped.
    DeleteProgram {
        name: String,
    },
    PutInstance {
        name: String,
        /// Boxed: a record carries up to two specs, and inline it would make every write of a
        /// batch (10 000 program puts at a load) a kilobyte.
        record: Box<InstanceRecord>,
    },
    DeleteInstance {
        name: String,
    },
    /// Fails the whole batch unless program `name` is owned as `owner` says; writes nothing.
    Expect {
        name: String,
        owner: Owner,
    },
    /// A change of cron job `name`'s schedule position, suspension or history.
    Cron {
        name: String,
        change: CronChange,
    },
    /// Replaces a program's record with the fleet's copy of it, as it is (`docs/fleet.md`): a
    /// node keeps the programs it runs in its own store, written by the fleet's rules elsewhere.
    Mirror {
        record: Box<ProgramRecord>,
    },
}

impl StoreWrite {
    /// The program a write changes or checks; `None` for an instance write.
    pub fn program(&self) -> Option<&str> {
        match self {
            StoreWrite::PutProgram { spec, .. } => Some(&spec.name),
            StoreWrite::Mirror { record } => Some(&record.spec.name),
            StoreWrite::SetError { name, .. }
            | StoreWrite::SetDesired { name, .. }
            | StoreWrite::Request { name, .. }
            | StoreWrite::DeleteProgram { name }
            | StoreWrite::Expect { name, .. }
            | StoreWrite::Cron { name, .. } => Some(name),
            StoreWrite::PutInstance { .. } | StoreWrite::DeleteInstance { .. } => None,
        }
    }

    /// The one rule of a program write: what it makes of the program's record (`None`: there
    /// is none), and whether that changed anything. The store commits by it and a dry run
    /// previews by it (`docs/store.md`). Instance writes change no program: `Ok(false)`.
    pub fn apply_to_program(&self, record: &mut Option<ProgramRecord>) -> Result<bool, StoreError> {
        let missing = |name: &str| StoreError::ProgramNotFound {
            name: name.to_string(),
        };
        match self {
            StoreWrite::PutProgram { spec, source } => {
                let next = match record.clone() {
                    None => ProgramRecord::new(spec.clone(), source.clone()),
                    // The generation counts spec changes; a good spec clears the error; the
                    // desired state and requests stay (an explicit stop survives an edit).
                    Some(old) => {
                        // `suspend`/`resume` hold until the file's own `suspend` changes.
                        let suspend_of = |s: &ProgramSpec| s.cron.as_ref().map(|c| c.suspend);
                        let mut cron = old.cron.clone().filter(|_| spec.is_cron());
                        if suspend_of(&old.spec) != suspend_of(spec) {
                            if let Some(c) = cron.as_mut() {
                                c.suspended = None;
                            }
                        }
                        ProgramRecord {
                            generation: if old.spec == *spec {
                                old.generation
                            } else {
                                old.generation.saturating_add(1)
                            },
                            spec: spec.clone(),
                            source: source.clone(),
                            error: None,
                            cron,
                            ..old
                        }
                    }
                };
                let changed = record.as_ref() != Some(&next);
                *record = Some(next);
                Ok(changed)
            }
            StoreWrite::SetError { name, error } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                let changed = r.error != *error;
                r.error = error.clone();
                Ok(changed)
            }
            StoreWrite::SetDesired { name, desired } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                let changed = r.desired != *desired;
                r.desired = *desired;
                Ok(changed)
            }
            StoreWrite::Request {
                name,
                instance,
                request,
            } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                Ok(r.request(instance.as_deref(), *request))
            }
            StoreWrite::DeleteProgram { .. } => Ok(record.take().is_some()),
            StoreWrite::Mirror { record: copy } => {
                let changed = record.as_ref() != Some(&**copy);
                *record = Some((**copy).clone());
                Ok(changed)
            }
            StoreWrite::Cron { name, change } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                Ok(r.apply_cron(change))
            }
            StoreWrite::Expect { name, owner } => {
                let source = record.as_ref().map(|r| &r.source);
                match (owner, source) {
                    (Owner::Nobody | Owner::NobodyOrApi, None) => Ok(false),
                    (Owner::Api | Owner::NobodyOrApi, Some(Source::Api)) => Ok(false),
                    (Owner::Api, None) => Err(missing(name)),
                    (Owner::Nobody, Some(source)) => Err(StoreError::ProgramExists {
                        name: name.clone(),
                        owner: source.to_string(),
                    }),
                    (Owner::Api | Owner::NobodyOrApi, Some(source)) => {
                        Err(StoreError::NotApiOwned {
                            name: name.clone(),
                            owner: source.to_string(),
                        })
                    }
                }
            }
            StoreWrite::PutInstance { .. } | StoreWrite::DeleteInstance { .. } => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Exec;

    fn put(command: &str) -> StoreWrite {
        StoreWrite::PutProgram {
            spec: ProgramSpec::new("web", Exec::Command(command.into())).into(),
            source: Source::Api,
        }
    }

    #[test]
    fn the_write_rule_counts_spec_changes_and_keeps_an_explicit_stop() {
        let mut r = None;
        assert!(put("sleep 1").apply_to_program(&mut r).unwrap());
        assert_eq!(r.as_ref().unwrap().generation, 1);
        assert!(
            !put("sleep 1").apply_to_program(&mut r).unwrap(),
            "the same spec"
        );
        let stop = StoreWrite::SetDesired {
            name: "web".into(),
            desired: DesiredRun::Stopped,
        };
        assert!(stop.apply_to_program(&mut r).unwrap());
        let error = StoreWrite::SetError {
            name: "web".into(),
            error: Some(vec!["broken".into()]),
        };
        assert!(error.apply_to_program(&mut r).unwrap());
        assert!(put("sleep 2").apply_to_program(&mut r).unwrap());
        let now = r.as_ref().unwrap();
        assert_eq!(now.generation, 2);
        assert_eq!(
            now.desired,
            DesiredRun::Stopped,
            "an edit keeps an explicit stop"
        );
        assert_eq!(now.error, None, "a good spec clears the error");
        let expect_new = StoreWrite::Expect {
            name: "web".into(),
            owner: Owner::Nobody,
        };
        assert!(expect_new.apply_to_program(&mut r).is_err());
        let delete = StoreWrite::DeleteProgram { name: "web".into() };
        assert!(delete.apply_to_program(&mut r).unwrap());
        assert!(r.is_none());
        assert!(stop.apply_to_program(&mut r).is_err(), "no program to stop");
    }

    fn cron_spec(suspend: bool, history_limit: u32) -> ProgramSpec {
        let mut spec = ProgramSpec::new("job", Exec::Command("true".into()));
        spec.cron = Some(Box::new(crate::config::CronSpec {
            schedule: "@hourly".parse().unwrap(),
            time_zone: None,
            concurrency: crate::config::Concurrency::Forbid,
            suspend,
            starting_deadline: None,
            history_limit,
            timeout: None,
            retries: 0,
        }));
        spec
    }

    fn run(id: u64, result: RunResult) -> CronRun {
        CronRun {
            id,
            instance: "job".into(),
            cause: RunCause::Schedule,
            scheduled_for: None,
            started_at: None,
            finished_at: None,
            result,
            exit_code: None,
            exit_signal: None,
            attempts: 1,
            request: 1,
            log: LogPaths::default(),
        }
    }

    #[test]
    fn cron_history_keeps_runs_under_way_and_the_newest_finished_ones() {
        let mut r = ProgramRecord::new(cron_spec(false, 2), Source::Api);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(3600);
        assert!(r.apply_cron(&CronChange::Scheduled(t)));
        assert!(
            !r.apply_cron(&CronChange::Scheduled(
                t - std::time::Duration::from_secs(1)
            )),
            "never goes back"
        );
        for id in 1..=4 {
            r.apply_cron(&CronChange::Run(run(id, RunResult::Running)));
        }
        for id in 1..=3 {
            r.apply_cron(&CronChange::Run(run(id, RunResult::Succeeded)));
        }
        let state = r.cron.clone().unwrap();
        let kept: Vec<(u64, RunResult)> = state.history.iter().map(|r| (r.id, r.result)).collect();
        assert_eq!(
            kept,
            [
                (2, RunResult::Succeeded),
                (3, RunResult::Succeeded),
                (4, RunResult::Running)
            ]
        );
        assert_eq!((state.runs, state.last_schedule_time), (4, Some(t)));
        assert_eq!(state.last_result(), Some(RunResult::Succeeded));
        // The record goes through JSON and back.
        let back: ProgramRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn suspend_through_the_api_holds_until_the_files_suspend_changes() {
        let mut r = Some(ProgramRecord::new(cron_spec(false, 10), Source::Api));
        let suspend = StoreWrite::Cron {
            name: "job".into(),
            change: CronChange::Suspend(true),
        };
        assert!(suspend.apply_to_program(&mut r).unwrap());
        assert!(r.as_ref().unwrap().cron_suspended());
        let put = |suspend| StoreWrite::PutProgram {
            spec: cron_spec(suspend, 10).into(),
            source: Source::Api,
        };
        put(false).apply_to_program(&mut r).unwrap();
        assert!(
            r.as_ref().unwrap().cron_suspended(),
            "an unrelated reload keeps it"
        );
        put(true).apply_to_program(&mut r).unwrap();
        put(false).apply_to_program(&mut r).unwrap();
        assert!(
            !r.as_ref().unwrap().cron_suspended(),
            "the file's own change wins"
        );
    }
}
