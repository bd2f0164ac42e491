//! Prometheus metrics (`docs/metrics.md`): the counters the daemon bumps as things happen, and the
//! exposition text built from them plus the current instance statuses at scrape time.
//!
//! Two kinds of numbers live here:
//! - **Counters that only this daemon process can know** — starts, restarts, exits and health
//!   changes per instance (from supervisor [`Event`]s), reconcile passes, config reloads, store
//!   writes. They start at zero with the daemon, as Prometheus counters do.
//! - **Gauges read at render time** — per-instance state, up, restarts (the status's count, which
//!   survives daemon restarts) and healthy, from the statuses the caller passes; and the daemon's own
//!   CPU time and resident memory, read from `/proc/self` right then. Nothing samples in the
//!   background, so an idle daemon pays nothing for metrics.
//!
//! The per-event path is a read lock, one hash lookup by `&str` and relaxed atomic adds: no
//! allocation except the first time an instance (or a new exit code of it) is seen. Encoding is
//! `prometheus-client`'s OpenMetrics text; serve it with [`CONTENT_TYPE`]. Every metric is listed
//! in `docs/metrics.md`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::supervisor::{Event, ExitInfo, InstanceState, InstanceStatus, RuntimeCounters};

/// The `Content-Type` of [`Metrics::render`]'s text (OpenMetrics 1.0, which Prometheus scrapes
/// natively; it ends with `# EOF`, and counter samples carry the `_total` suffix).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this, then `_`.
const PREFIX: &str = "provisr";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    name: String,
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    name: String,
    program: String,
    state: &'static str,
}

/// `code` for a normal exit, `signal` (e.g. `SIGKILL`) when killed; the other one is empty, and
/// both are empty when the status is unknown (an adopted process is not our child). Both labels
/// are always present so every series of the family has the same label names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    name: String,
    program: String,
    code: String,
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    name: String,
    program: String,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CronLabels {
    job: String,
    result: &'static str,
}

/// The event counters of one instance.
#[derive(Debug)]
struct InstanceCounters {
    program: String,
    starts: AtomicU64,
    restarts: AtomicU64,
    unhealthy: AtomicU64,
    healthy_again: AtomicU64,
    /// Per distinct exit: a handful at most per instance, so a short list beats a map.
    exits: Mutex<Vec<(ExitInfo, u64)>>,
}

impl InstanceCounters {
    fn new(program: &str) -> InstanceCounters {
        InstanceCounters {
            program: program.to_string(),
            starts: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            unhealthy: AtomicU64::new(0),
            healthy_again: AtomicU64::new(0),
            exits: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, c: &Counted) {
        if c.start {
            self.starts.fetch_add(1, Ordering::Relaxed);
        }
        if c.restart {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        match c.healthy {
            Some(true) => {
                self.healthy_again.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {
                self.unhealthy.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        if let Some(exit) = c.exit {
            // A panic elsewhere cannot leave a count list inconsistent: keep counting.
            let mut exits = self.exits.lock().unwrap_or_else(PoisonError::into_inner);
            match exits.iter_mut().find(|(e, _)| *e == exit) {
                Some((_, n)) => *n += 1,
                None => exits.push((exit, 1)),
            }
        }
    }
}

/// What one event adds to its instance's counters.
struct Counted {
    start: bool,
    restart: bool,
    exit: Option<ExitInfo>,
    healthy: Option<bool>,
}

impl Counted {
    fn of(e: &Event) -> Counted {
        Counted {
            // First starts, retries and restarts; not a start that first probes its detectors
            // (its spawn, if any, is an event of its own).
            start: e.spawn,
            // The actor sets the flag exactly when the status's `restarts` went up, so this
            // counter moves in step with that gauge (explicit restarts are not counted by either).
            restart: e.restart,
            // Exits the process chose (or suffered) on its own; an exit while `stopping` was asked for.
            exit: e
                .exit
                .filter(|_| matches!(e.from, InstanceState::Starting | InstanceState::Running)),
            healthy: e.healthy,
        }
    }

    fn is_empty(&self) -> bool {
        !self.start && !self.restart && self.exit.is_none() && self.healthy.is_none()
    }
}

/// The daemon's metrics: create one, share it (`Arc<Metrics>`), feed it, render it per scrape.
#[derive(Debug)]
pub struct Metrics {
    /// Daemon-wide metrics, registered once; encoded first on every render.
    registry: Registry,
    passes: Counter,
    steps: Counter,
    pass_duration: Histogram,
    reloads: Family<ResultLabels, Counter>,
    config_errors: Counter,
    store_writes: Counter,
    /// Cron job runs by job and how they ended (`skipped` and `missed` included).
    cron_runs: Family<CronLabels, Counter>,
    /// Event counters by instance name.
    instances: RwLock<HashMap<String, InstanceCounters>>,
    /// Automatic restarts of the last minute, per second (`GET /stats`).
    recent_restarts: Mutex<RecentRestarts>,
    /// When this daemon process started counting.
    started: SystemTime,
    /// Probe results and hook failures, counted by the instances' actors.
    runtime: Arc<RuntimeCounters>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let passes = Counter::default();
        let steps = Counter::default();
        // 0.5 ms … ~16 s: a pass over a quiet system takes well under a millisecond, one that
        // waits on a slow store flush can take seconds.
        let pass_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let reloads = Family::<ResultLabels, Counter>::default();
        let config_errors = Counter::default();
        let store_writes = Counter::default();
        let cron_runs = Family::<CronLabels, Counter>::default();
        registry.register("reconcile_passes", "Reconcile passes run", passes.clone());
        registry.register(
            "reconcile_steps",
            "Steps executed by reconcile passes (start, stop, restart, in-place update, remove)",
            steps.clone(),
        );
        // The unit is in the name but not declared with a `# UNIT` line: OpenMetrics allows one
        // on a histogram, yet some strict parsers reject it, and nothing reads it.
        registry.register(
            "reconcile_duration_seconds",
            "How long each reconcile pass took",
            pass_duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Scans of the programs directory, by result (ok or error)",
            reloads.clone(),
        );
        registry.register(
            "config_errors",
            "Errors found by config reloads (a file that does not parse or validate is one)",
            config_errors.clone(),
        );
        registry.register(
            "store_writes",
            "Writes to the desired-state store",
            store_writes.clone(),
        );
        registry.register(
            "cron_runs",
            "Cron job runs by job and result: succeeded, failed, timeout, stopped, replaced, unknown, and skipped (a run due while one lasts, concurrency = forbid) or missed (due too long ago, starting_deadline)",
            cron_runs.clone(),
        );
        // Both results are series from the start, so `rate()` sees the first error.
        for result in ["ok", "error"] {
            reloads.get_or_create_owned(&ResultLabels { result });
        }
        Metrics {
            registry,
            passes,
            steps,
            pass_duration,
            reloads,
            config_errors,
            store_writes,
            cron_runs,
            instances: RwLock::new(HashMap::new()),
            recent_restarts: Mutex::new(RecentRestarts::default()),
            started: SystemTime::now(),
            runtime: Arc::default(),
        }
    }

    /// The counters every instance actor adds to (probe results, hook failures).
    pub fn runtime_counters(&self) -> Arc<RuntimeCounters> {
        Arc::clone(&self.runtime)
    }

    /// A cron job's run ended (or was skipped or missed) with `result`.
    pub fn observe_cron_run(&self, job: &str, result: &'static str) {
        let labels = CronLabels {
            job: job.to_string(),
            result,
        };
        self.cron_runs.get_or_create(&labels).inc();
    }

    /// Counts what one supervisor event says: a start (any event into `starting`), an automatic
    /// restart (`Event::restart`), an exit on its own (an `exit` while `starting` or `running`), a
    /// change of health. Other events (stops, `running` after start_duration) count nothing.
    pub fn observe_event(&self, e: &Event) {
        let counted = Counted::of(e);
        if counted.is_empty() {
            return;
        }
        if counted.restart {
            self.recent_restarts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(e.time);
        }
        {
            let map = self
                .instances
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = map.get(e.name.as_str()) {
                if c.program == e.program {
                    c.record(&counted);
                    return;
                }
            }
        }
        // First event of this instance (or its name now belongs to another program): the only
        // path that allocates.
        let mut map = self
            .instances
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let c = map
            .entry(e.name.clone())
            .or_insert_with(|| InstanceCounters::new(&e.program));
        if c.program != e.program {
            *c = InstanceCounters::new(&e.program);
        }
        c.record(&counted);
    }

    /// One reconcile pass that took `took` and executed `steps` steps.
    pub fn observe_pass(&self, took: Duration, steps: usize) {
        self.passes.inc();
        self.steps.inc_by(steps as u64);
        self.pass_duration.observe(took.as_secs_f64());
    }

    /// One config reload: `ok` says whether it was applied, `errors` how many errors it found
    /// (counted independently: a reload may apply the good files and report the bad ones).
    pub fn observe_reload(&self, ok: bool, errors: usize) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.config_errors.inc_by(errors as u64);
    }

    /// `n` writes to the desired-state store.
    pub fn observe_store_writes(&self, n: u64) {
        self.store_writes.inc_by(n);
    }

    /// The daemon's own figures as plain JSON-ready numbers (`GET /stats`, the dashboard's
    /// header): the counters `render` encodes, the restarts of the last minute, and the daemon's
    /// CPU time and memory read now.
    pub fn summary(&self, now: SystemTime) -> Summary {
        let since_start = self
            .instances
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| c.restarts.load(Ordering::Relaxed))
            .sum();
        let per_second = self
            .recent_restarts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_minute(now);
        Summary {
            time: humantime::format_rfc3339_millis(now).to_string(),
            restarts: RestartSummary {
                last_minute: per_second.iter().sum(),
                per_second,
                since_start,
            },
            daemon: DaemonSummary {
                started_at: humantime::format_rfc3339_millis(self.started).to_string(),
                uptime_seconds: now
                    .duration_since(self.started)
                    .unwrap_or_default()
                    .as_secs_f64(),
                cpu_seconds: self_cpu_seconds(),
                resident_memory_bytes: self_rss_bytes(),
                reconcile_passes: self.passes.get(),
            },
        }
    }

    /// The exposition text (OpenMetrics, see [`CONTENT_TYPE`]).
    ///
    /// `instances` must be every current instance: they get the per-instance gauges and a zero
    /// for each event counter they have not moved yet, and the event counters of any instance not
    /// among them (removed since) are dropped.
    pub fn render(&self, instances: &[InstanceStatus]) -> String {
        let scrape = self.scrape_registry(instances);
        let mut out = String::new();
        // Writing into a String cannot fail, and nothing else in encoding can: log rather than
        // panic should that ever change.
        if let Err(e) = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scrape))
            .and_then(|()| encode_eof(&mut out))
        {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The metrics that are built afresh for each render.
    fn scrape_registry(&self, instances: &[InstanceStatus]) -> Registry {
        let mut reg = Registry::with_prefix(PREFIX);

        let probes = Family::<ProbeLabels, Counter>::default();
        for (i, probe) in ["readiness", "liveness"].into_iter().enumerate() {
            for (j, result) in ["success", "failure"].into_iter().enumerate() {
                let n = self.runtime.probes[i][j].load(Ordering::Relaxed);
                probes
                    .get_or_create(&ProbeLabels { probe, result })
                    .inc_by(n);
            }
        }
        reg.register(
            "probe_results",
            "Readiness and liveness probe results, by probe and result (success or failure)",
            probes,
        );
        let hooks = Family::<PhaseLabels, Counter>::default();
        for (i, phase) in crate::config::HookPhase::ALL.into_iter().enumerate() {
            let n = self.runtime.hook_failures[i].load(Ordering::Relaxed);
            hooks
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .inc_by(n);
        }
        reg.register(
            "hook_failures",
            "Hook runs that failed (a non-zero exit, a timeout, a command that could not run), by phase; a retried hook counts each failed run",
            hooks,
        );

        let state = Family::<StateLabels, Gauge>::default();
        let up = Family::<InstanceLabels, Gauge>::default();
        let restarts = Family::<InstanceLabels, Gauge>::default();
        let healthy = Family::<InstanceLabels, Gauge>::default();
        for st in instances {
            let labels = InstanceLabels {
                name: st.name.clone(),
                program: st.program.clone(),
            };
            for s in InstanceState::ALL {
                state
                    .get_or_create(&StateLabels {
                        name: st.name.clone(),
                        program: st.program.clone(),
                        state: s.as_str(),
                    })
                    .set(i64::from(st.state == s));
            }
            up.get_or_create(&labels)
                .set(i64::from(st.state == InstanceState::Running));
            restarts
                .get_or_create(&labels)
                .set(i64::try_from(st.restarts).unwrap_or(i64::MAX));
            healthy.get_or_create(&labels).set(i64::from(st.healthy));
        }
        reg.register(
            "instance_state",
            "Current state of each instance: 1 for the state it is in, 0 for the others",
            state,
        );
        reg.register(
            "instance_up",
            "1 when the instance is running (up for start_duration, or adopted), else 0",
            up,
        );
        reg.register(
            "instance_restarts",
            "Automatic restarts of the instance, as in its status (survives daemon restarts)",
            restarts,
        );
        reg.register(
            "instance_healthy",
            "1 when the process is alive, no detector has reached its failure threshold and the readiness probe (if any) passes",
            healthy,
        );

        let starts = Family::<InstanceLabels, Counter>::default();
        let restarted = Family::<InstanceLabels, Counter>::default();
        let exits = Family::<ExitLabels, Counter>::default();
        let health = Family::<HealthLabels, Counter>::default();
        let current: HashSet<&str> = instances.iter().map(|st| st.name.as_str()).collect();
        self.instances
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| current.contains(name.as_str()));
        // Only a read lock while building the families: events keep flowing during a scrape.
        let map = self
            .instances
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for st in instances {
            let labels = InstanceLabels {
                name: st.name.clone(),
                program: st.program.clone(),
            };
            let counters = map.get(&st.name).filter(|c| c.program == st.program);
            let load = |f: fn(&InstanceCounters) -> &AtomicU64| {
                counters.map_or(0, |c| f(c).load(Ordering::Relaxed))
            };
            starts.get_or_create(&labels).inc_by(load(|c| &c.starts));
            restarted
                .get_or_create(&labels)
                .inc_by(load(|c| &c.restarts));
            for (to, n) in [
                ("unhealthy", load(|c| &c.unhealthy)),
                ("healthy", load(|c| &c.healthy_again)),
            ] {
                health
                    .get_or_create(&HealthLabels {
                        name: st.name.clone(),
                        program: st.program.clone(),
                        to,
                    })
                    .inc_by(n);
            }
            let Some(c) = counters else { continue };
            let seen = c.exits.lock().unwrap_or_else(PoisonError::into_inner);
            for (exit, n) in seen.iter() {
                let (code, signal) = exit_labels(exit);
                exits
                    .get_or_create(&ExitLabels {
                        name: st.name.clone(),
                        program: st.program.clone(),
                        code,
                        signal,
                    })
                    .inc_by(*n);
            }
        }
        drop(map);
        reg.register(
            "starts",
            "Processes spawned for the instance since the daemon started (first starts, retries, restarts)",
            starts,
        );
        reg.register(
            "restarts",
            "Automatic restarts of the instance since the daemon started",
            restarted,
        );
        reg.register(
            "exits",
            "Exits of the instance's process on its own (not asked to stop), by exit code or signal",
            exits,
        );
        reg.register(
            "health_changes",
            "Times the instance became unhealthy or healthy again, by which way it went",
            health,
        );

        if let Some(cpu) = self_cpu_seconds() {
            reg.register_with_unit(
                "process_cpu",
                "CPU time (user and system) the daemon itself has used",
                Unit::Seconds,
                ConstCounter::new(cpu),
            );
        }
        if let Some(rss) = self_rss_bytes() {
            reg.register_with_unit(
                "process_resident_memory",
                "Resident memory of the daemon itself",
                Unit::Bytes,
                ConstGauge::new(i64::try_from(rss).unwrap_or(i64::MAX)),
            );
        }
        reg
    }
}

/// What [`Metrics::summary`] answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// When the figures were taken (RFC 3339); `per_second` ends with this second.
    pub time: String,
    pub restarts: RestartSummary,
    pub daemon: DaemonSummary,
}

/// Automatic restarts, counted from the same events as `provisr_restarts_total`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RestartSummary {
    /// Restarts during the 60 seconds that end with `time`.
    pub last_minute: u64,
    /// Those restarts per second, oldest first: 60 numbers, the last one for the second of `time`.
    pub per_second: Vec<u64>,
    /// Restarts since this daemon started (the sum of `provisr_restarts_total` over the instances
    /// that still exist).
    pub since_start: u64,
}

/// The daemon process itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DaemonSummary {
    pub started_at: String,
    pub uptime_seconds: f64,
    /// `provisr_process_cpu_seconds_total`; `None` where `/proc/self` cannot be read.
    pub cpu_seconds: Option<f64>,
    /// `provisr_process_resident_memory_bytes`.
    pub resident_memory_bytes: Option<u64>,
    /// `provisr_reconcile_passes_total`.
    pub reconcile_passes: u64,
}

/// Restarts per second over the last minute: one slot per second of the minute, each tagged
/// with the second it counts, so a slot left from an earlier minute reads as zero. Fixed size,
/// no timer: old seconds are overwritten as new ones arrive.
#[derive(Debug)]
struct RecentRestarts {
    slots: [(u64, u64); 60],
}

impl Default for RecentRestarts {
    fn default() -> Self {
        RecentRestarts {
            slots: [(0, 0); 60],
        }
    }
}

impl RecentRestarts {
    fn add(&mut self, at: SystemTime) {
        let sec = epoch_second(at);
        let slot = &mut self.slots[(sec % 60) as usize];
        if slot.0 > sec {
            // A minute or more old, and its slot already counts a later second.
            return;
        }
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += 1;
    }

    /// The counts of the 60 seconds that end with `now`'s, oldest first.
    fn last_minute(&self, now: SystemTime) -> Vec<u64> {
        let end = epoch_second(now);
        (end.saturating_sub(59)..=end)
            .map(|sec| {
                let (tag, n) = self.slots[(sec % 60) as usize];
                if tag == sec {
                    n
                } else {
                    0
                }
            })
            .collect()
    }
}

fn epoch_second(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The `code` and `signal` label values of an exit.
fn exit_labels(exit: &ExitInfo) -> (String, String) {
    match (exit.code, exit.signal) {
        (_, Some(sig)) => {
            let name = match nix::sys::signal::Signal::try_from(sig) {
                Ok(s) => s.as_str().to_string(),
                Err(_) => sig.to_string(),
            };
            (String::new(), name)
        }
        (Some(code), None) => (code.to_string(), String::new()),
        (None, None) => (String::new(), String::new()),
    }
}

/// User plus system CPU ticks (fields 14 and 15) of a `/proc/PID/stat` line. The command name
/// (field 2) may contain spaces and parentheses, hence the split at the last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident pages (field 2) of a `/proc/PID/statm` line.
fn statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn self_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(ticks as f64 / hz as f64)
}

fn self_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    Some(statm_resident_pages(&statm)? * rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceId;
    use openmetrics_parser::{
        openmetrics::parse_openmetrics, MetricNumber, MetricsExposition, OpenMetricsType,
        OpenMetricsValue,
    };
    use std::time::SystemTime;
    use InstanceState::*;

    type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

    /// Parses the text strictly as OpenMetrics; any malformed line fails the test.
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
        parse_openmetrics(text).unwrap_or_else(|e| panic!("not OpenMetrics: {e}\n{text}"))
    }

    fn number(n: &MetricNumber) -> f64 {
        n.as_f64()
    }

    /// The value of the sample of `family` whose labels are exactly `labels` (in any order).
    fn value(exp: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let fam = exp
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        fam.iter_samples()
            .find(|s| {
                let set = s.get_labelset().expect("labels");
                set.iter().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|s| match &s.value {
                OpenMetricsValue::Counter(c) => number(&c.value),
                OpenMetricsValue::Gauge(g) => number(g),
                other => panic!("{family}: unexpected value {other:?}"),
            })
    }

    fn kind(exp: &Exposition, family: &str) -> OpenMetricsType {
        exp.families[family].family_type
    }

    fn ev(name: &str, program: &str, from: InstanceState, to: InstanceState) -> Event {
        Event {
            time: SystemTime::now(),
            name: name.into(),
            program: program.into(),
            from,
            to,
            reason: "test".into(),
            exit: None,
            restart: false,
            healthy: None,
            // As the runtime does: every event into `starting` spawns, unless it only probes.
            spawn: to == Starting,
        }
    }

    fn exited(mut e: Event, code: Option<i32>, signal: Option<i32>) -> Event {
        e.exit = Some(ExitInfo { code, signal });
        e
    }

    fn status(program: &str, index: u32, of: u32, state: InstanceState) -> InstanceStatus {
        let mut st = InstanceStatus::stopped(&InstanceId::new(program, index, of), 0);
        st.state = state;
        st.healthy = state == Running;
        st
    }

    fn inst<'a>(name: &'a str, program: &'a str) -> [(&'a str, &'a str); 2] {
        [("name", name), ("program", program)]
    }

    #[test]
    fn an_empty_daemon_renders_valid_openmetrics_with_the_daemon_families() {
        let m = Metrics::new();
        let exp = parse(&m.render(&[]));
        for (family, ty) in [
            ("provisr_reconcile_passes", OpenMetricsType::Counter),
            ("provisr_reconcile_steps", OpenMetricsType::Counter),
            (
                "provisr_reconcile_duration_seconds",
                OpenMetricsType::Histogram,
            ),
            ("provisr_config_reloads", OpenMetricsType::Counter),
            ("provisr_config_errors", OpenMetricsType::Counter),
            ("provisr_store_writes", OpenMetricsType::Counter),
            ("provisr_process_cpu_seconds", OpenMetricsType::Counter),
            (
                "provisr_process_resident_memory_bytes",
                OpenMetricsType::Gauge,
            ),
        ] {
            assert_eq!(kind(&exp, family), ty, "{family}");
        }
        assert_eq!(value(&exp, "provisr_reconcile_passes", &[]), Some(0.0));
        assert_eq!(
            value(&exp, "provisr_config_reloads", &[("result", "error")]),
            Some(0.0)
        );
        assert!(exp.families.keys().all(|k| k.starts_with("provisr_")));
    }

    #[test]
    fn passes_reloads_and_store_writes_count_up() {
        let m = Metrics::new();
        m.observe_pass(Duration::from_millis(3), 2);
        m.observe_pass(Duration::from_millis(40), 0);
        m.observe_reload(true, 0);
        m.observe_reload(true, 2);
        m.observe_reload(false, 1);
        m.observe_store_writes(5);
        m.observe_store_writes(1);
        let exp = parse(&m.render(&[]));
        assert_eq!(value(&exp, "provisr_reconcile_passes", &[]), Some(2.0));
        assert_eq!(value(&exp, "provisr_reconcile_steps", &[]), Some(2.0));
        assert_eq!(
            value(&exp, "provisr_config_reloads", &[("result", "ok")]),
            Some(2.0)
        );
        assert_eq!(
            value(&exp, "provisr_config_reloads", &[("result", "error")]),
            Some(1.0)
        );
        assert_eq!(value(&exp, "provisr_config_errors", &[]), Some(3.0));
        assert_eq!(value(&exp, "provisr_store_writes", &[]), Some(6.0));

        let hist = exp.families["provisr_reconcile_duration_seconds"]
            .iter_samples()
            .next()
            .map(|s| match &s.value {
                OpenMetricsValue::Histogram(h) => h.clone(),
                other => panic!("{other:?}"),
            })
            .expect("one histogram");
        assert_eq!(hist.count, Some(2));
        let sum = number(&hist.sum.expect("sum"));
        assert!((sum - 0.043).abs() < 1e-9, "{sum}");
        let le = |bound: f64| {
            hist.buckets
                .iter()
                .find(|b| b.upper_bound == bound)
                .map(|b| number(&b.count))
        };
        // 3 ms falls in (2 ms, 4 ms], 40 ms in (32 ms, 64 ms]; buckets are cumulative.
        assert_eq!(le(0.002), Some(0.0));
        assert_eq!(le(0.004), Some(1.0));
        assert_eq!(le(0.032), Some(1.0));
        assert_eq!(le(0.064), Some(2.0));
        assert_eq!(le(f64::INFINITY), Some(2.0));
    }

    #[test]
    fn instance_gauges_follow_the_statuses_given() {
        let m = Metrics::new();
        let mut web1 = status("web", 1, 2, Running);
        web1.restarts = 7;
        let mut web2 = status("web", 2, 2, Backoff);
        web2.restarts = 2;
        let mut db = status("db", 1, 1, Running);
        db.healthy = false;
        let exp = parse(&m.render(&[web1, web2, db]));

        for family in ["provisr_instance_state", "provisr_instance_up"] {
            assert_eq!(kind(&exp, family), OpenMetricsType::Gauge);
        }
        // One series per state, 1 for the current one only.
        for s in InstanceState::ALL {
            let want = if s == Backoff { 1.0 } else { 0.0 };
            let labels = [("name", "web-2"), ("program", "web"), ("state", s.as_str())];
            assert_eq!(
                value(&exp, "provisr_instance_state", &labels),
                Some(want),
                "{s}"
            );
        }
        assert_eq!(
            exp.families["provisr_instance_state"]
                .iter_samples()
                .count(),
            21
        );
        assert_eq!(
            value(&exp, "provisr_instance_up", &inst("web-1", "web")),
            Some(1.0)
        );
        assert_eq!(
            value(&exp, "provisr_instance_up", &inst("web-2", "web")),
            Some(0.0)
        );
        assert_eq!(
            value(&exp, "provisr_instance_up", &inst("db", "db")),
            Some(1.0)
        );
        assert_eq!(
            value(&exp, "provisr_instance_restarts", &inst("web-1", "web")),
            Some(7.0)
        );
        assert_eq!(
            value(&exp, "provisr_instance_restarts", &inst("web-2", "web")),
            Some(2.0)
        );
        assert_eq!(
            value(&exp, "provisr_instance_healthy", &inst("web-1", "web")),
            Some(1.0)
        );
        assert_eq!(
            value(&exp, "provisr_instance_healthy", &inst("db", "db")),
            Some(0.0)
        );
        // Counters exist at zero for instances that have had no events yet.
        assert_eq!(value(&exp, "provisr_starts", &inst("db", "db")), Some(0.0));
        assert_eq!(
            value(&exp, "provisr_restarts", &inst("db", "db")),
            Some(0.0)
        );
    }

    #[test]
    fn events_move_the_instance_counters() {
        let m = Metrics::new();
        let statuses = [status("api", 1, 1, Running), status("web", 1, 1, Running)];
        let before = parse(&m.render(&statuses));
        assert_eq!(
            value(&before, "provisr_starts", &inst("api", "api")),
            Some(0.0)
        );

        let mut restart = ev("api", "api", Backoff, Starting);
        restart.restart = true;
        let mut unhealthy = ev("api", "api", Running, Running);
        unhealthy.healthy = Some(false);
        let mut recovered = ev("api", "api", Running, Running);
        recovered.healthy = Some(true);
        let mut unhealthy_restart = ev("api", "api", Running, Stopping);
        unhealthy_restart.healthy = Some(false);
        let mut after_unhealthy = exited(ev("api", "api", Stopping, Starting), None, Some(15));
        after_unhealthy.restart = true;
        let mut probe_only = ev("web", "web", Stopped, Starting);
        probe_only.spawn = false;
        for e in [
            ev("api", "api", Stopped, Starting),
            ev("api", "api", Starting, Running),
            exited(ev("api", "api", Running, Backoff), None, Some(9)),
            restart,
            ev("api", "api", Starting, Running),
            exited(ev("api", "api", Running, Backoff), Some(1), None),
            ev("api", "api", Backoff, Starting),
            // An exit before start_duration with retry_interval 0: a start and an exit.
            exited(ev("api", "api", Starting, Starting), Some(1), None),
            ev("api", "api", Starting, Running),
            unhealthy,
            recovered,
            unhealthy_restart,
            // The exit of a stop is not counted as an exit.
            after_unhealthy,
            ev("api", "api", Starting, Running),
            ev("api", "api", Running, Stopping),
            exited(ev("api", "api", Stopping, Stopped), None, Some(15)),
            // An adopted process ends: status unknown.
            exited(ev("web", "web", Running, Exited), None, None),
            // A start that probes its detectors first spawns nothing (found running elsewhere)…
            probe_only.clone(),
            ev("web", "web", Starting, Running),
            // …or spawns in an event of its own.
            probe_only,
            ev("web", "web", Starting, Starting),
        ] {
            m.observe_event(&e);
        }
        let exp = parse(&m.render(&statuses));
        let api = inst("api", "api");
        assert_eq!(value(&exp, "provisr_starts", &api), Some(5.0));
        assert_eq!(value(&exp, "provisr_restarts", &api), Some(2.0));
        assert_eq!(
            value(&exp, "provisr_starts", &inst("web", "web")),
            Some(1.0),
            "probing is not a start"
        );
        assert_eq!(kind(&exp, "provisr_exits"), OpenMetricsType::Counter);
        let exit = |name, program, code, signal| {
            value(
                &exp,
                "provisr_exits",
                &[
                    ("name", name),
                    ("program", program),
                    ("code", code),
                    ("signal", signal),
                ],
            )
        };
        assert_eq!(exit("api", "api", "", "SIGKILL"), Some(1.0));
        assert_eq!(exit("api", "api", "1", ""), Some(2.0));
        assert_eq!(
            exit("api", "api", "", "SIGTERM"),
            None,
            "stops are not exits"
        );
        assert_eq!(exit("web", "web", "", ""), Some(1.0));
        assert_eq!(exp.families["provisr_exits"].iter_samples().count(), 3);
        let health = |to| {
            value(
                &exp,
                "provisr_health_changes",
                &[("name", "api"), ("program", "api"), ("to", to)],
            )
        };
        assert_eq!(
            (health("unhealthy"), health("healthy")),
            (Some(2.0), Some(1.0))
        );

        // Counters only go up between renders.
        m.observe_event(&ev("api", "api", Stopped, Starting));
        let again = parse(&m.render(&statuses));
        assert_eq!(value(&again, "provisr_starts", &api), Some(6.0));
    }

    #[test]
    fn counters_of_instances_no_longer_listed_are_dropped() {
        let m = Metrics::new();
        m.observe_event(&ev("old", "old", Stopped, Starting));
        m.observe_event(&exited(ev("old", "old", Running, Exited), Some(2), None));
        m.observe_event(&ev("kept", "kept", Stopped, Starting));
        let listed = [status("kept", 1, 1, Running)];
        let exp = parse(&m.render(&listed));
        assert_eq!(
            value(&exp, "provisr_starts", &inst("kept", "kept")),
            Some(1.0)
        );
        assert_eq!(value(&exp, "provisr_starts", &inst("old", "old")), None);
        let exits = exp.families.get("provisr_exits");
        assert_eq!(exits.map_or(0, |f| f.iter_samples().count()), 0);
        // It is gone for good: listing it again starts from zero.
        let exp = parse(&m.render(&[status("old", 1, 1, Exited)]));
        assert_eq!(
            value(&exp, "provisr_starts", &inst("old", "old")),
            Some(0.0)
        );
    }

    #[test]
    fn a_name_taken_over_by_another_program_starts_its_counters_afresh() {
        let m = Metrics::new();
        m.observe_event(&ev("x", "first", Stopped, Starting));
        m.observe_event(&ev("x", "second", Stopped, Starting));
        let mut st = status("x", 1, 1, Running);
        st.program = "second".into();
        let exp = parse(&m.render(&[st]));
        assert_eq!(
            value(&exp, "provisr_starts", &inst("x", "second")),
            Some(1.0)
        );
    }

    #[test]
    fn label_values_that_need_escaping_still_parse() {
        // Names are validated elsewhere, but the exposition must not depend on that.
        let m = Metrics::new();
        let odd = "we\"ird\\name";
        m.observe_event(&ev(odd, "p", Stopped, Starting));
        let mut st = status("p", 1, 1, Starting);
        st.name = odd.into();
        let exp = parse(&m.render(&[st]));
        assert_eq!(value(&exp, "provisr_starts", &inst(odd, "p")), Some(1.0));
    }

    #[test]
    fn the_daemons_own_cpu_and_memory_are_read_at_render_time() {
        let m = Metrics::new();
        let exp = parse(&m.render(&[]));
        let rss = value(&exp, "provisr_process_resident_memory_bytes", &[]).expect("rss");
        assert!(rss > 0.0, "{rss}");
        let cpu = value(&exp, "provisr_process_cpu_seconds", &[]).expect("cpu");
        assert!(cpu >= 0.0, "{cpu}");
        // Burn CPU until a render reports more: the value is read per render, not cached.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        loop {
            for i in 0..5_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            let later = parse(&m.render(&[]));
            let now = value(&later, "provisr_process_cpu_seconds", &[]).expect("cpu");
            if now > cpu {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "cpu stuck at {cpu}");
        }
    }

    #[test]
    fn proc_lines_parse_even_with_a_parenthesised_command_name() {
        let stat = "4242 (we (ird) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    170 30 0 0 20 0 3 0 12345 1000000 250 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(200));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(statm_resident_pages("1000 250 100 10 0 300 0\n"), Some(250));
        assert_eq!(statm_resident_pages(""), None);
    }

    #[test]
    fn the_summary_counts_restarts_of_the_last_minute_per_second() {
        let m = Metrics::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let restart = |name: &str, time| {
            let mut e = ev(name, "p", Backoff, Starting);
            e.restart = true;
            e.time = time;
            e
        };
        for (name, secs) in [("a", 0), ("a", 0), ("b", 30), ("a", 59)] {
            m.observe_event(&restart(name, at(secs)));
        }
        // Not restarts: a first start and a stop.
        m.observe_event(&ev("c", "p", Stopped, Starting));
        m.observe_event(&ev("c", "p", Running, Stopping));

        let s = m.summary(at(59));
        assert_eq!(s.restarts.per_second.len(), 60);
        assert_eq!(s.restarts.per_second[0], 2, "second 0 is the oldest");
        assert_eq!(s.restarts.per_second[30], 1);
        assert_eq!(s.restarts.per_second[59], 1);
        assert_eq!(s.restarts.last_minute, 4);
        assert_eq!(s.restarts.since_start, 4);
        // Second 90 reuses second 30's slot.
        m.observe_event(&restart("b", at(90)));
        assert_eq!(m.summary(at(90)).restarts.since_start, 5);
        let later = m.summary(at(90));
        assert_eq!(later.restarts.last_minute, 2, "{:?}", later.restarts);
        assert_eq!(later.restarts.per_second[59], 1);
        assert_eq!(m.summary(at(500)).restarts.last_minute, 0);
        // An event from a minute before its slot's second is dropped, not counted as new.
        m.observe_event(&restart("a", at(30)));
        assert_eq!(m.summary(at(90)).restarts.last_minute, 2);
        assert_eq!(s.time, "1970-01-12T13:47:39.000Z");
    }

    #[test]
    fn the_summary_reads_the_daemon_process() {
        let m = Metrics::new();
        m.observe_pass(Duration::from_millis(1), 0);
        let s = m.summary(SystemTime::now());
        assert_eq!(s.daemon.reconcile_passes, 1);
        assert!(s.daemon.resident_memory_bytes.is_some_and(|b| b > 0));
        assert!(s.daemon.cpu_seconds.is_some());
        assert!(s.daemon.uptime_seconds >= 0.0);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["daemon"]["started_at"].is_string(), "{json}");
    }

    #[test]
    fn exit_label_values() {
        let e = |code, signal| exit_labels(&ExitInfo { code, signal });
        assert_eq!(e(Some(0), None), ("0".into(), "".into()));
        assert_eq!(e(None, Some(9)), ("".into(), "SIGKILL".into()));
        assert_eq!(e(None, Some(200)), ("".into(), "200".into()));
        assert_eq!(e(None, None), ("".into(), "".into()));
    }

    #[test]
    fn metrics_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Metrics>();
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        let name = format!("p-{}", (t * 250 + i) % 100 + 1);
                        let mut e = ev(&name, "p", Backoff, Starting);
                        e.restart = true;
                        m.observe_event(&e);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let statuses: Vec<_> = (1..=100).map(|i| status("p", i, 100, Running)).collect();
        let exp = parse(&m.render(&statuses));
        let total: f64 = exp.families["provisr_restarts"]
            .iter_samples()
            .map(|s| match &s.value {
                OpenMetricsValue::Counter(c) => number(&c.value),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(total, 1000.0);
        assert_eq!(
            value(&exp, "provisr_restarts", &inst("p-7", "p")),
            Some(10.0)
        );
    }
}
