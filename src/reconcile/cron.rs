//! Cron jobs inside the reconcile loop (`docs/configuration.md`, "Cron jobs"): one timer for all
//! jobs, the loop sleeping until the earliest thing due — a scheduled time, a run's `timeout`,
//! a failed run's retry — and no second scheduler beside it.
//!
//! A run is a start request for one of the job's instances (`StoreWrite::Request`), written in
//! one flushed batch with the scheduled time it carries out (`last_schedule_time`) and its
//! history entry; the plan then starts it like any start, writing the start ahead. So a
//! scheduled time is acted on once across a `kill -9` (the next daemon schedules from
//! `last_schedule_time`), and a run requested just before a crash is carried out once by the
//! next daemon (its instance record says which requests it carried out). How each run ended is
//! written back into its history entry when the loop sees its instance settle
//! (`docs/reliability.md`, "Cron jobs").
//!
//! [`CronTable::tick`] is a pure decision over the desired state, the instances as the loop sees
//! them and the time; the loop applies its writes and stops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{Concurrency, CronSpec, InstanceId, LogPaths, ProgramSpec};
use crate::desired::Programs;
use crate::store::{
    CronChange, CronRun, DesiredRun, ProgramRecord, RunCause, RunRequest, RunResult, StoreWrite,
};
use crate::supervisor::{ExitInfo, InstanceState};

/// Most scheduled times counted one by one when a daemon catches up after being down; past
/// this, the count of missed times is only a lower bound (it feeds a metric, nothing else).
const MAX_CATCH_UP: usize = 10_000;

/// What the cron table needs of one instance.
#[derive(Clone, Debug)]
pub(super) struct InstanceView {
    /// As the plan sees it (`starting` while a start has not been taken in).
    pub state: InstanceState,
    /// The start and restart requests it carried out, summed.
    pub carried: u64,
    pub started_at: Option<SystemTime>,
    pub stopped_at: Option<SystemTime>,
    pub last_exit: Option<ExitInfo>,
    /// It has a process now (so `started_at` is that process's).
    pub has_process: bool,
}

impl InstanceView {
    fn active(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Backoff
                | InstanceState::Stopping
        )
    }
}

/// What a tick decided.
#[derive(Debug, Default)]
pub(super) struct Tick {
    /// Store writes, applied as one flushed batch before the pass plans.
    pub writes: Vec<StoreWrite>,
    /// Instances whose run outlived its `timeout`: stopped.
    pub stops: Vec<String>,
    /// Runs ended, skipped or missed, by job, for the metrics; counted once the writes are
    /// durable.
    pub results: Vec<(String, &'static str)>,
    /// Log files of runs the history no longer keeps: removed once the writes are durable.
    pub drop_logs: Vec<LogPaths>,
    /// Each job's new schedule position, kept once the writes are durable.
    cursors: Vec<(String, SystemTime)>,
    /// Runs stopped for their timeout.
    timed_out: Vec<u64>,
}

/// Why a `trigger` was refused.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("no cron job is named {0:?}; `provisr cron list` lists them")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Store(String),
}

/// The loop's view of every cron job: where each one's schedule stands.
pub(super) struct CronTable {
    /// The last scheduled time acted on, per job, as far as this daemon knows.
    cursors: BTreeMap<String, SystemTime>,
    /// Runs this daemon stopped for their timeout.
    timed_out: BTreeSet<u64>,
    /// When this daemon started: scheduled times before it were missed while no daemon ran.
    started: SystemTime,
    /// Where runs' output goes when their program sets no log file.
    state_dir: PathBuf,
}

impl CronTable {
    pub(super) fn new(state_dir: &Path, now: SystemTime) -> CronTable {
        CronTable {
            cursors: BTreeMap::new(),
            timed_out: BTreeSet::new(),
            started: now,
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Keeps what a tick decided, once its writes are durable.
    pub(super) fn commit(&mut self, tick: &Tick) {
        for (job, t) in &tick.cursors {
            self.cursors.insert(job.clone(), *t);
        }
        self.timed_out.extend(&tick.timed_out);
    }

    /// Where job `record`'s schedule stands: its durable `last_schedule_time`, what this daemon
    /// acted on since, or, for a job never scheduled, `now` (a new job runs at its next time,
    /// not at the ones before it appeared).
    fn cursor(&self, record: &ProgramRecord, now: SystemTime) -> SystemTime {
        let durable = record.cron.as_ref().and_then(|c| c.last_schedule_time);
        match (durable, self.cursors.get(&record.spec.name)) {
            (Some(d), Some(&c)) => d.max(c),
            (Some(d), None) => d,
            (None, Some(&c)) => c,
            (None, None) => now,
        }
    }

    /// The next scheduled time of each job (`None` while suspended, stopped or without one).
    pub(super) fn next_times(
        &self,
        programs: &Programs,
        now: SystemTime,
    ) -> BTreeMap<String, Option<SystemTime>> {
        programs
            .values()
            .filter_map(|r| {
                let cron = r.spec.cron.as_ref()?;
                let next = (!held(r))
                    .then(|| cron.next_after(self.cursor(r, now)))
                    .flatten();
                Some((r.spec.name.clone(), next))
            })
            .collect()
    }

    /// When the loop must look again: the earliest next scheduled time, run timeout or retry.
    pub(super) fn next_wakeup(
        &self,
        programs: &Programs,
        instances: &BTreeMap<String, InstanceView>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let mut earliest: Option<SystemTime> = None;
        let mut consider = |t: SystemTime| earliest = Some(earliest.map_or(t, |e| e.min(t)));
        for (_, next) in self.next_times(programs, now) {
            next.into_iter().for_each(&mut consider);
        }
        for r in programs.values() {
            let (Some(cron), Some(state)) = (r.spec.cron.as_ref(), r.cron.as_ref()) else {
                continue;
            };
            for run in state
                .history
                .iter()
                .filter(|x| x.result == RunResult::Running)
            {
                let Some(v) = instances.get(&run.instance) else {
                    continue;
                };
                if v.carried < run.request {
                    continue;
                }
                match (
                    cron.timeout,
                    v.active(),
                    v.started_at.filter(|_| v.has_process),
                ) {
                    (Some(t), true, Some(started)) if !self.timed_out.contains(&run.id) => {
                        consider(started + t.get());
                    }
                    (_, false, _) if retry_left(cron, run) && failed(v) => {
                        consider(v.stopped_at.unwrap_or(now) + r.spec.retry_interval.get());
                    }
                    _ => {}
                }
            }
        }
        earliest
    }

    /// Everything due at `now`: scheduled runs, finished runs' results, retries, timeouts.
    pub(super) fn tick(
        &self,
        programs: &Programs,
        instances: &BTreeMap<String, InstanceView>,
        now: SystemTime,
    ) -> Tick {
        let mut tick = Tick::default();
        for r in programs.values() {
            let Some(cron) = r.spec.cron.as_ref() else {
                continue;
            };
            let mut record = (**r).clone();
            self.settle_runs(&mut record, cron, instances, now, &mut tick);
            self.schedule(&mut record, cron, instances, now, &mut tick);
        }
        tick
    }

    /// A run asked for by `trigger`: started at once, as the job's concurrency allows.
    pub(super) fn trigger(
        &self,
        job: &str,
        programs: &Programs,
        instances: &BTreeMap<String, InstanceView>,
        now: SystemTime,
    ) -> Result<(Vec<StoreWrite>, CronRun), TriggerError> {
        let record = programs
            .get(job)
            .filter(|r| r.spec.is_cron())
            .ok_or_else(|| TriggerError::NotFound(job.to_string()))?;
        let mut record = (**record).clone();
        let mut tick = Tick::default();
        match self.start_run(&mut record, instances, now, None, &mut tick) {
            Some(run) => Ok((tick.writes, run)),
            None => Err(TriggerError::Busy(busy(&record))),
        }
    }

    /// The job's scheduled times up to `now` since its cursor: the latest one runs (or is
    /// skipped, by its concurrency, or missed, by its starting deadline), the ones before it
    /// were missed.
    fn schedule(
        &self,
        record: &mut ProgramRecord,
        cron: &CronSpec,
        instances: &BTreeMap<String, InstanceView>,
        now: SystemTime,
        tick: &mut Tick,
    ) {
        let job = record.spec.name.clone();
        let known = record
            .cron
            .as_ref()
            .and_then(|c| c.last_schedule_time)
            .is_some()
            || self.cursors.contains_key(&job);
        if held(record) || !known {
            // Times pass while held, and a new job begins now: neither runs what came before.
            tick.cursors.push((job, now));
            return;
        }
        let cursor = self.cursor(record, now);
        let (mut latest, mut count) = (None, 0usize);
        let mut t = cursor;
        while let Some(next) = cron.next_after(t).filter(|n| *n <= now) {
            latest = Some(next);
            count += 1;
            t = next;
            if count == MAX_CATCH_UP {
                // Down for very long: skip ahead to just before `now`, where the last due
                // time is, rather than count every one.
                let skip = now.checked_sub(period_hint(cron) * 2).unwrap_or(t);
                t = t.max(skip);
            }
        }
        let Some(due) = latest else { return };
        for _ in 1..count {
            tick.results.push((job.clone(), "missed"));
        }
        tick.cursors.push((job.clone(), due));
        let late = now.duration_since(due).unwrap_or_default();
        let in_time = match cron.starting_deadline {
            Some(deadline) => late <= deadline.get(),
            None => due >= self.started,
        };
        tick.writes.push(StoreWrite::Cron {
            name: job.clone(),
            change: CronChange::Scheduled(due),
        });
        if !in_time {
            tracing::warn!(job, scheduled = %crate::config::cron::describe_time(due, cron.time_zone.as_ref()), "missed a scheduled run: due too long ago (starting_deadline)");
            tick.results.push((job, "missed"));
            return;
        }
        if self
            .start_run(record, instances, now, Some(due), tick)
            .is_none()
        {
            tracing::info!(job, reason = %busy(record), "skipped a scheduled run");
            tick.results.push((job, "skipped"));
        }
    }

    /// Starts a run in an instance the concurrency policy allows; `None` when it allows none.
    fn start_run(
        &self,
        record: &mut ProgramRecord,
        instances: &BTreeMap<String, InstanceView>,
        now: SystemTime,
        scheduled: Option<SystemTime>,
        tick: &mut Tick,
    ) -> Option<CronRun> {
        let spec = record.spec.clone();
        let cron = spec.cron.as_ref()?;
        let ids = spec.instances();
        let busy_ids: BTreeSet<&str> = ids
            .iter()
            .map(|id| id.name.as_str())
            .filter(|name| {
                let running = record.cron.as_ref().is_some_and(|c| {
                    c.history
                        .iter()
                        .any(|r| r.instance == *name && r.result == RunResult::Running)
                });
                running || instances.get(*name).is_some_and(InstanceView::active)
            })
            .collect();
        let (id, request) = match cron.concurrency {
            Concurrency::Replace if !busy_ids.is_empty() => {
                let id = ids.first()?;
                // The run it replaces ends here; its instance restarts for the new one.
                let replaced: Vec<CronRun> = record
                    .cron
                    .iter()
                    .flat_map(|c| c.history.iter())
                    .filter(|r| r.instance == id.name && r.result == RunResult::Running)
                    .cloned()
                    .collect();
                for mut old in replaced {
                    old.result = RunResult::Replaced;
                    old.finished_at = Some(now);
                    if let Some(v) = instances.get(&old.instance) {
                        old.started_at = v.started_at.filter(|_| v.carried >= old.request);
                    }
                    tick.results
                        .push((spec.name.clone(), RunResult::Replaced.as_str()));
                    self.write_run(record, old, tick);
                }
                (id, RunRequest::Restart)
            }
            _ => (
                ids.iter().find(|id| !busy_ids.contains(id.name.as_str()))?,
                RunRequest::Start,
            ),
        };
        let want = record.instance_desired(&id.name).seq;
        let runs = record.cron.as_ref().map_or(0, |c| c.runs);
        let run = CronRun {
            id: runs + 1,
            instance: id.name.clone(),
            cause: if scheduled.is_some() {
                RunCause::Schedule
            } else {
                RunCause::Trigger
            },
            scheduled_for: scheduled,
            started_at: None,
            finished_at: None,
            result: RunResult::Running,
            exit_code: None,
            exit_signal: None,
            attempts: 1,
            request: want.start + want.restart + 1,
            log: run_log_paths(&spec, id, runs + 1, &self.state_dir),
        };
        record.request(Some(&id.name), request);
        let request = StoreWrite::Request {
            name: spec.name.clone(),
            instance: Some(id.name.clone()),
            request,
        };
        tick.writes.push(request);
        self.write_run(record, run.clone(), tick);
        Some(run)
    }

    /// How the runs under way are doing: each settled one gets its result (or a retry), each
    /// that outlived its `timeout` is stopped.
    fn settle_runs(
        &self,
        record: &mut ProgramRecord,
        cron: &CronSpec,
        instances: &BTreeMap<String, InstanceView>,
        now: SystemTime,
        tick: &mut Tick,
    ) {
        let running: Vec<CronRun> = record
            .cron
            .iter()
            .flat_map(|c| c.history.iter())
            .filter(|r| r.result == RunResult::Running)
            .cloned()
            .collect();
        for mut run in running {
            let Some(v) = instances.get(&run.instance) else {
                continue;
            };
            if v.carried < run.request {
                // Not started yet (waiting for a dependency, or the next pass).
                continue;
            }
            if v.active() {
                if run.started_at.is_none() && v.has_process && v.started_at.is_some() {
                    // Its start time goes into the history as soon as it is known.
                    let mut started = run.clone();
                    started.started_at = v.started_at;
                    self.write_run(record, started, tick);
                }
                let started = v.started_at.filter(|_| v.has_process);
                if let (Some(t), Some(started)) = (cron.timeout, started) {
                    let over = started + t.get() <= now;
                    if over
                        && !self.timed_out.contains(&run.id)
                        && v.state != InstanceState::Stopping
                    {
                        tracing::warn!(job = %record.spec.name, run = run.id, "run outlived its timeout {}; stopping it", t);
                        tick.stops.push(run.instance.clone());
                        tick.timed_out.push(run.id);
                    }
                }
                continue;
            }
            if failed(v) && retry_left(cron, &run) {
                let due = v.stopped_at.unwrap_or(now) + record.spec.retry_interval.get();
                if due > now {
                    continue;
                }
                let want = record.instance_desired(&run.instance).seq;
                run.attempts += 1;
                run.request = want.start + want.restart + 1;
                let request = StoreWrite::Request {
                    name: record.spec.name.clone(),
                    instance: Some(run.instance.clone()),
                    request: RunRequest::Start,
                };
                record.request(Some(&run.instance), RunRequest::Start);
                tick.writes.push(request);
                tracing::info!(job = %record.spec.name, run = run.id, attempt = run.attempts, "retrying a failed run");
                self.write_run(record, run, tick);
                continue;
            }
            // A run too short for a pass to see it running: its process's start, if it had one.
            let ran = matches!(v.state, InstanceState::Exited | InstanceState::Stopped);
            run.started_at = run.started_at.or(v.started_at.filter(|_| ran));
            let timed_out = self.timed_out.contains(&run.id)
                || tick.timed_out.contains(&run.id)
                || matches!((cron.timeout, v.started_at, v.stopped_at), (Some(t), Some(s), Some(e)) if e >= s + t.get());
            run.result = match v.state {
                InstanceState::Stopped if timed_out => RunResult::Timeout,
                InstanceState::Stopped => RunResult::Stopped,
                InstanceState::Failed => RunResult::Failed,
                _ => match v.last_exit {
                    Some(ExitInfo { code: Some(0), .. }) => RunResult::Succeeded,
                    Some(ExitInfo {
                        code: None,
                        signal: None,
                    })
                    | None => RunResult::Unknown,
                    Some(_) => RunResult::Failed,
                },
            };
            run.finished_at = v.stopped_at.or(Some(now));
            run.exit_code = v.last_exit.and_then(|e| e.code);
            run.exit_signal = v.last_exit.and_then(|e| e.signal);
            tick.results
                .push((record.spec.name.clone(), run.result.as_str()));
            self.write_run(record, run, tick);
        }
    }

    /// Writes a run's entry, noting the log files of runs the history then drops.
    fn write_run(&self, record: &mut ProgramRecord, run: CronRun, tick: &mut Tick) {
        let before: Vec<CronRun> = record.cron.iter().flat_map(|c| c.history.clone()).collect();
        let change = CronChange::Run(run);
        record.apply_cron(&change);
        let after: BTreeSet<u64> = record
            .cron
            .iter()
            .flat_map(|c| c.history.iter().map(|r| r.id))
            .collect();
        tick.drop_logs.extend(
            before
                .into_iter()
                .filter(|r| !after.contains(&r.id))
                .map(|r| r.log),
        );
        tick.writes.push(StoreWrite::Cron {
            name: record.spec.name.clone(),
            change,
        });
    }
}

/// Scheduled runs are held: suspended, or the job desired stopped.
fn held(record: &ProgramRecord) -> bool {
    record.desired == DesiredRun::Stopped || record.cron_suspended()
}

fn failed(v: &InstanceView) -> bool {
    match v.state {
        InstanceState::Failed => true,
        InstanceState::Exited => v
            .last_exit
            .is_some_and(|e| e.code.is_some_and(|c| c != 0) || e.signal.is_some()),
        _ => false,
    }
}

fn retry_left(cron: &CronSpec, run: &CronRun) -> bool {
    run.attempts <= cron.retries
}

/// The longest gap between a few consecutive scheduled times: the last time due before `now`
/// lies within twice this of it.
fn period_hint(cron: &CronSpec) -> std::time::Duration {
    let mut t = SystemTime::now();
    let mut longest = std::time::Duration::from_secs(60);
    for _ in 0..8 {
        let Some(next) = cron.next_after(t) else {
            break;
        };
        longest = longest.max(next.duration_since(t).unwrap_or_default());
        t = next;
    }
    longest
}

/// Why a run cannot start now.
fn busy(record: &ProgramRecord) -> String {
    let running: Vec<String> = record
        .cron
        .iter()
        .flat_map(|c| c.history.iter())
        .filter(|r| r.result == RunResult::Running)
        .map(|r| format!("run {} ({})", r.id, r.instance))
        .collect();
    let concurrency = record
        .spec
        .cron
        .as_ref()
        .map_or("forbid", |c| c.concurrency.as_str());
    if running.is_empty() {
        format!(
            "every instance of {:?} is busy (concurrency = \"{concurrency}\")",
            record.spec.name
        )
    } else {
        format!(
            "{} still under way (concurrency = \"{concurrency}\")",
            running.join(", ")
        )
    }
}

/// The files a run's output goes to: the program's log files with the run's number before
/// their extension (`backup.log` → `backup.7.log`, `<dir>/backup.7.stdout.log`), or, without
/// any, `<state_dir>/cron/<instance>/<run>.stdout.log` and `.stderr.log`, so every run in the
/// history has its output.
pub(super) fn run_log_paths(
    spec: &ProgramSpec,
    id: &InstanceId,
    run: u64,
    state_dir: &Path,
) -> LogPaths {
    let numbered = |p: PathBuf| {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match p.extension() {
            Some(ext) => format!("{stem}.{run}.{}", ext.to_string_lossy()),
            None => format!("{stem}.{run}"),
        };
        p.with_file_name(name)
    };
    let own = spec.log_paths(id);
    let fallback = |stream: &str| {
        state_dir
            .join("cron")
            .join(&id.name)
            .join(format!("{run}.{stream}.log"))
    };
    LogPaths {
        stdout: Some(own.stdout.map_or_else(|| fallback("stdout"), numbered)),
        stderr: Some(own.stderr.map_or_else(|| fallback("stderr"), numbered)),
    }
}

/// Removes a dropped run's log files and their rotated copies (`file.1`, `file.2.gz`).
pub(super) fn remove_run_logs(paths: &LogPaths) {
    for path in [&paths.stdout, &paths.stderr].into_iter().flatten() {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file == name || file.starts_with(&format!("{name}.")) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), "cannot remove an old run's log: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::{Exec, Source};
    use crate::store::RunSeq;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn job(concurrency: Concurrency, instances: u32) -> ProgramRecord {
        let mut spec = ProgramSpec::new("job", Exec::Command("true".into()));
        spec.instances = instances;
        spec.cron = Some(Box::new(CronSpec {
            schedule: "@every 10s".parse().unwrap(),
            time_zone: None,
            concurrency,
            suspend: false,
            starting_deadline: None,
            history_limit: 5,
            timeout: None,
            retries: 0,
        }));
        let mut r = ProgramRecord::new(spec, Source::Api);
        r.apply_cron(&CronChange::Scheduled(at(0)));
        r
    }

    fn programs(r: &ProgramRecord) -> Programs {
        Arc::new(BTreeMap::from([(r.spec.name.clone(), Arc::new(r.clone()))]))
    }

    fn view(state: InstanceState, carried: u64) -> InstanceView {
        InstanceView {
            state,
            carried,
            started_at: Some(at(10)),
            stopped_at: None,
            last_exit: None,
            has_process: state.has_process(),
        }
    }

    /// Applies a tick's writes to `r`, as the store would.
    fn apply(r: &mut ProgramRecord, tick: &Tick) {
        let mut slot = Some(r.clone());
        for w in &tick.writes {
            w.apply_to_program(&mut slot).unwrap();
        }
        *r = slot.unwrap();
    }

    fn table() -> CronTable {
        CronTable::new(Path::new("/state"), at(0))
    }

    #[test]
    fn a_due_time_requests_a_run_and_moves_the_schedule_on() {
        let mut r = job(Concurrency::Forbid, 1);
        let t = table();
        let none = BTreeMap::new();
        assert!(
            t.tick(&programs(&r), &none, at(9)).writes.is_empty(),
            "not due yet"
        );
        assert_eq!(t.next_wakeup(&programs(&r), &none, at(9)), Some(at(10)));
        let tick = t.tick(&programs(&r), &none, at(10));
        apply(&mut r, &tick);
        let state = r.cron.clone().unwrap();
        assert_eq!(state.last_schedule_time, Some(at(10)));
        assert_eq!(state.history.len(), 1);
        let run = &state.history[0];
        assert_eq!(
            (run.id, run.result, run.scheduled_for),
            (1, RunResult::Running, Some(at(10)))
        );
        assert_eq!(
            run.log.stdout.as_deref(),
            Some(Path::new("/state/cron/job/1.stdout.log"))
        );
        assert_eq!(
            r.instance_desired("job").seq,
            RunSeq {
                start: 1,
                restart: 0
            }
        );
        assert_eq!(run.request, 1);
    }

    #[test]
    fn forbid_skips_replace_restarts_allow_uses_another_instance() {
        let busy = |r: &ProgramRecord| {
            let mut r = r.clone();
            let tick = table().tick(&programs(&r), &BTreeMap::new(), at(10));
            apply(&mut r, &tick);
            r
        };
        // forbid: run 1 lasts, the next time is skipped.
        let r = busy(&job(Concurrency::Forbid, 1));
        let running = BTreeMap::from([("job".to_string(), view(InstanceState::Running, 1))]);
        let mut t = table();
        t.cursors.insert("job".into(), at(10));
        let tick = t.tick(&programs(&r), &running, at(20));
        assert_eq!(tick.results, [("job".to_string(), "skipped")]);
        let mut after = r.clone();
        apply(&mut after, &tick);
        assert_eq!(after.cron.as_ref().unwrap().history.len(), 1);
        assert_eq!(
            after.cron.as_ref().unwrap().last_schedule_time,
            Some(at(20))
        );
        // replace: run 1 ends `replaced`, the instance restarts for run 2.
        let r = busy(&job(Concurrency::Replace, 1));
        let tick = t.tick(&programs(&r), &running, at(20));
        let mut after = r.clone();
        apply(&mut after, &tick);
        let h = &after.cron.as_ref().unwrap().history;
        assert_eq!(
            h.iter().map(|x| (x.id, x.result)).collect::<Vec<_>>(),
            [(1, RunResult::Replaced), (2, RunResult::Running)]
        );
        assert_eq!(
            after.instance_desired("job").seq,
            RunSeq {
                start: 1,
                restart: 1
            }
        );
        // allow: run 2 in the second instance.
        let r = busy(&job(Concurrency::Allow, 2));
        let running = BTreeMap::from([("job-1".to_string(), view(InstanceState::Running, 1))]);
        let tick = t.tick(&programs(&r), &running, at(20));
        let mut after = r.clone();
        apply(&mut after, &tick);
        let h = &after.cron.as_ref().unwrap().history;
        assert_eq!(h[1].instance, "job-2");
        assert_eq!(
            after.instance_desired("job-2").seq,
            RunSeq {
                start: 1,
                restart: 0
            }
        );
    }

    #[test]
    fn a_settled_run_gets_its_result_and_a_failed_one_its_retries() {
        let mut r = job(Concurrency::Forbid, 1);
        if let Some(c) = Arc::make_mut(&mut r.spec).cron.as_mut() {
            c.retries = 1;
        }
        let t = table();
        let tick = t.tick(&programs(&r), &BTreeMap::new(), at(10));
        apply(&mut r, &tick);
        let mut exited = view(InstanceState::Exited, 1);
        exited.last_exit = Some(ExitInfo {
            code: Some(2),
            signal: None,
        });
        exited.stopped_at = Some(at(11));
        let views = BTreeMap::from([("job".to_string(), exited.clone())]);
        // Failed with a retry left: tried again after retry_interval (1 s).
        assert_eq!(t.next_wakeup(&programs(&r), &views, at(11)), Some(at(12)));
        let tick = t.tick(&programs(&r), &views, at(12));
        apply(&mut r, &tick);
        let run = r.cron.as_ref().unwrap().history[0].clone();
        assert_eq!(
            (run.attempts, run.result, run.request),
            (2, RunResult::Running, 2)
        );
        // Failed again, no retry left: failed, with its exit.
        let mut again = exited;
        again.carried = 2;
        let views = BTreeMap::from([("job".to_string(), again)]);
        let tick = t.tick(&programs(&r), &views, at(13));
        assert_eq!(tick.results, [("job".to_string(), "failed")]);
        apply(&mut r, &tick);
        let run = &r.cron.as_ref().unwrap().history[0];
        assert_eq!((run.result, run.exit_code), (RunResult::Failed, Some(2)));
        assert_eq!(
            r.cron.as_ref().unwrap().last_result(),
            Some(RunResult::Failed)
        );
    }

    #[test]
    fn a_time_missed_while_no_daemon_ran_runs_only_within_the_starting_deadline() {
        for (deadline, runs) in [(None, false), (Some(60), true), (Some(5), false)] {
            let mut r = job(Concurrency::Forbid, 1);
            if let Some(c) = Arc::make_mut(&mut r.spec).cron.as_mut() {
                c.starting_deadline = deadline.map(crate::config::Dur::from_secs);
            }
            // The daemon started at 35 s; 10, 20 and 30 s passed while it was down.
            let t = CronTable::new(Path::new("/state"), at(35));
            let tick = t.tick(&programs(&r), &BTreeMap::new(), at(36));
            let missed = tick.results.iter().filter(|(_, x)| *x == "missed").count();
            apply(&mut r, &tick);
            let history = r.cron.as_ref().unwrap().history.clone();
            assert_eq!(!history.is_empty(), runs, "deadline {deadline:?}");
            if runs {
                assert_eq!(history.len(), 1, "at most once");
                assert_eq!(history[0].scheduled_for, Some(at(30)), "the latest");
                assert_eq!(missed, 2);
            } else {
                assert_eq!(missed, 3);
            }
            assert_eq!(r.cron.as_ref().unwrap().last_schedule_time, Some(at(30)));
        }
    }

    #[test]
    fn a_suspended_or_stopped_job_is_not_scheduled_and_a_new_one_begins_now() {
        let t = table();
        let mut r = job(Concurrency::Forbid, 1);
        r.apply_cron(&CronChange::Suspend(true));
        let tick = t.tick(&programs(&r), &BTreeMap::new(), at(50));
        assert!(tick.writes.is_empty());
        assert_eq!(t.next_times(&programs(&r), at(50))["job"], None);
        let mut r = job(Concurrency::Forbid, 1);
        r.desired = DesiredRun::Stopped;
        assert!(t
            .tick(&programs(&r), &BTreeMap::new(), at(50))
            .writes
            .is_empty());
        let mut fresh = job(Concurrency::Forbid, 1);
        fresh.cron = None;
        let mut t = table();
        let tick = t.tick(&programs(&fresh), &BTreeMap::new(), at(50));
        assert!(tick.writes.is_empty(), "nothing before it appeared runs");
        t.commit(&tick);
        assert_eq!(t.next_times(&programs(&fresh), at(51))["job"], Some(at(60)));
    }

    #[test]
    fn a_trigger_runs_as_concurrency_allows() {
        let r = job(Concurrency::Forbid, 1);
        let t = table();
        let (writes, run) = t
            .trigger("job", &programs(&r), &BTreeMap::new(), at(5))
            .unwrap();
        assert_eq!((run.cause, run.scheduled_for), (RunCause::Trigger, None));
        assert_eq!(writes.len(), 2, "the request and the run, in one batch");
        let running = BTreeMap::from([("job".to_string(), view(InstanceState::Running, 1))]);
        let busy = t
            .trigger("job", &programs(&r), &running, at(5))
            .unwrap_err();
        assert!(matches!(busy, TriggerError::Busy(_)), "{busy}");
        assert!(matches!(
            t.trigger("nope", &programs(&r), &running, at(5)),
            Err(TriggerError::NotFound(_))
        ));
    }
}
