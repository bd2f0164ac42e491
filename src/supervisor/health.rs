//! Health detectors (`docs/configuration.md`, "Detectors"): is an instance's program alive beyond "its pid exists"?
//!
//! `exec:pid` needs no code here: it is the pidfd the actor already waits on, so it costs nothing
//! and notices an exit at once. `pidfile` and `command` detectors are probed every `interval`, and
//! only for instances that have them: an instance without such detectors has no health timer at
//! all, which keeps a thousand idle instances idle. Probes of one instance run one at a time in a
//! task of their own, so a slow `command` never delays the instance's stop or exit handling, and a
//! probe abandoned mid-way still reaps its shell.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::task::JoinHandle;

use crate::config::{DetectorKind, DetectorSpec, Dur, InstanceId, ProgramSpec};

use super::launch::Launch;
use super::process::{child_fd_limit, is_alive, kill_group, reap_owned, spawn_owned, ProcessWatch};
use super::spawn::environment;

/// The shortest probe interval honoured, so a `0s` interval cannot turn into a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The variable that hands a `command` detector's text to its shell.
///
/// The text goes through the environment, not the shell's argv (`sh -c 'eval "$VAR"'`): a
/// detector that searches command lines, such as `pgrep -f 'sleep 300'`, would otherwise find the
/// probing shell itself, whose command line holds the very pattern — and pass every time, which
/// before a first spawn means "already running elsewhere" for a program that runs nowhere.
pub const DETECTOR_COMMAND_ENV: &str = "PROVISR_DETECTOR_COMMAND";

/// The outcome of one probe: `Err` says why the detector failed.
pub(crate) type ProbeResult = Result<(), String>;

/// Runs one detector once against `spec`'s instance `id`.
/// `state_dir` is the tag a `command` detector's shell carries, like the program's own process.
pub(crate) async fn probe(
    kind: &DetectorKind,
    spec: &ProgramSpec,
    id: &InstanceId,
    state_dir: Option<&Path>,
) -> ProbeResult {
    match kind {
        // The pidfd is this detector; asking it separately would mean polling.
        DetectorKind::ExecPid => Ok(()),
        DetectorKind::Pidfile { path } => check_pidfile(path).await,
        DetectorKind::Command { command, timeout } => {
            run_command(command, timeout.get(), spec, id, state_dir).await
        }
    }
}

/// Probes every detector other than `exec:pid` once and returns the label of the first that passes.
///
/// A daemon that knows no live pid for an instance uses this to decide the instance is "already
/// running elsewhere" (`docs/configuration.md`, "Detectors") and must not be started twice. `state_dir` tags the probing
/// shells as the daemon's children (`PROVISR_STATE_DIR`, see `docs/runtime.md`).
pub async fn probe_detectors(
    spec: &ProgramSpec,
    id: &InstanceId,
    state_dir: Option<&Path>,
) -> Option<String> {
    for detector in &spec.detectors {
        if detector.kind == DetectorKind::ExecPid {
            continue;
        }
        if probe(&detector.kind, spec, id, state_dir).await.is_ok() {
            return Some(detector.label());
        }
    }
    None
}

/// A plain PID file names a process; it passes while that process exists (and is not a zombie).
async fn check_pidfile(path: &Path) -> ProbeResult {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{} does not hold a pid", path.display()))?;
    if is_alive(pid) {
        Ok(())
    } else {
        Err(format!("pid {pid} from {} is not running", path.display()))
    }
}

/// Runs `command` through `/bin/sh` in the program's environment and directory; exit 0 passes.
///
/// The shell leads its own process group, so a timeout kills the whole probe (a pipeline, a
/// backgrounded helper) and the shell is always reaped, timeout or not.
pub(crate) async fn run_command(
    command: &str,
    timeout: Duration,
    spec: &ProgramSpec,
    id: &InstanceId,
    state_dir: Option<&Path>,
) -> ProbeResult {
    let launch = Launch {
        argv: [
            "/bin/sh".into(),
            "-c".into(),
            OsString::from(format!("eval \"${DETECTOR_COMMAND_ENV}\"")),
        ]
        .into(),
        env: environment(spec, id, state_dir, Some((DETECTOR_COMMAND_ENV, command))),
        cwd: spec.work_dir.clone(),
        fds: vec![None, None, None],
        nofile: child_fd_limit(),
        identity: super::identity::resolve(spec)?,
    };
    let started = spawn_owned(&launch).await.map_err(|e| {
        format!(
            "cannot run the detector command: cannot {} /bin/sh: {}",
            e.stage.doing(),
            e.source
        )
    })?;
    let pid = started.pid;
    let watch = match ProcessWatch::open(pid) {
        Ok(w) => w,
        Err(e) => {
            kill_group(pid, Signal::SIGKILL);
            reap_owned(pid);
            return Err(format!("cannot watch the detector command: {e}"));
        }
    };
    match tokio::time::timeout(timeout, watch.exited()).await {
        Ok(Ok(exit)) if exit.code == Some(0) => Ok(()),
        Ok(Ok(exit)) => Err(exit.to_string()),
        Ok(Err(e)) => Err(format!("cannot wait for the detector command: {e}")),
        Err(_) => {
            kill_group(pid, Signal::SIGKILL);
            let _ = watch.exited().await;
            Err(format!("timed out after {}", Dur(timeout)))
        }
    }
}

/// How a probe result changed the instance's health.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HealthChange {
    Unchanged,
    /// A detector reached its failure threshold; the text says which and why.
    BecameUnhealthy(String),
    BecameHealthy,
}

struct Check {
    spec: DetectorSpec,
    failures: u32,
    /// Why the last probe failed, while `failures > 0`.
    last_error: Option<String>,
    due: Option<Instant>,
}

impl Check {
    fn interval(&self) -> Duration {
        self.spec.interval.get().max(MIN_INTERVAL)
    }

    fn threshold(&self) -> u32 {
        self.spec.failure_threshold.max(1)
    }

    fn failing(&self) -> bool {
        self.failures >= self.threshold()
    }
}

struct InFlight {
    index: usize,
    task: JoinHandle<ProbeResult>,
}

/// The probing schedule of one instance: armed while it is `running`, idle otherwise.
pub(crate) struct Health {
    checks: Vec<Check>,
    in_flight: Option<InFlight>,
    armed: bool,
}

impl Health {
    pub(crate) fn new(detectors: &[DetectorSpec]) -> Health {
        Health {
            checks: detectors
                .iter()
                .filter(|d| d.kind != DetectorKind::ExecPid)
                .map(|d| Check {
                    spec: d.clone(),
                    failures: 0,
                    last_error: None,
                    due: None,
                })
                .collect(),
            in_flight: None,
            armed: false,
        }
    }

    pub(crate) fn armed(&self) -> bool {
        self.armed
    }

    /// Starts probing: every detector is first due one interval from now, with a clean slate.
    pub(crate) fn arm(&mut self, now: Instant) {
        self.armed = true;
        for c in &mut self.checks {
            c.failures = 0;
            c.last_error = None;
            c.due = Some(now + c.interval());
        }
    }

    /// Stops probing. A probe in flight runs to its end on its own (so its shell is reaped) and
    /// its result is dropped.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
        self.in_flight = None;
        for c in &mut self.checks {
            c.failures = 0;
            c.last_error = None;
            c.due = None;
        }
    }

    /// False once a detector has failed `failure_threshold` times in a row.
    pub(crate) fn healthy(&self) -> bool {
        !self.checks.iter().any(Check::failing)
    }

    /// The index [`record`](Self::record) uses for the first detector labelled `label`.
    pub(crate) fn index_of(&self, label: &str) -> Option<usize> {
        self.checks.iter().position(|c| c.spec.label() == label)
    }

    /// Why detector `index` failed, if its last recorded probe made exactly `failure_threshold`
    /// failures in a row: true once per run of failures, at the probe that crossed the threshold.
    pub(crate) fn just_reached_threshold(&self, index: usize) -> Option<String> {
        let check = self.checks.get(index)?;
        if check.failures != check.threshold() {
            return None;
        }
        Some(failure_detail(check))
    }

    /// When the next probe should start; `None` while one runs or when nothing is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if self.in_flight.is_some() || !self.armed {
            return None;
        }
        self.checks.iter().filter_map(|c| c.due).min()
    }

    /// Starts the probe of the detector due first.
    pub(crate) fn start_due(
        &mut self,
        spec: &Arc<ProgramSpec>,
        id: &InstanceId,
        state_dir: Option<&Arc<Path>>,
    ) {
        if self.in_flight.is_some() {
            return;
        }
        let Some((index, check)) = self
            .checks
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| c.due.is_some())
            .min_by_key(|(_, c)| c.due)
        else {
            return;
        };
        check.due = None;
        let kind = check.spec.kind.clone();
        let (spec, id, dir) = (Arc::clone(spec), id.clone(), state_dir.cloned());
        let task = tokio::spawn(async move { probe(&kind, &spec, &id, dir.as_deref()).await });
        self.in_flight = Some(InFlight { index, task });
    }

    /// Waits for the probe in flight (forever when there is none). Cancel-safe.
    pub(crate) async fn probe_finished(&mut self) -> (usize, ProbeResult) {
        let Some(flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let result = match (&mut flight.task).await {
            Ok(r) => r,
            Err(e) => Err(format!("the probe task failed: {e}")),
        };
        let index = flight.index;
        self.in_flight = None;
        (index, result)
    }

    /// Records a finished probe and schedules that detector's next one.
    pub(crate) fn record(
        &mut self,
        index: usize,
        result: ProbeResult,
        now: Instant,
    ) -> HealthChange {
        let was_healthy = self.healthy();
        let armed = self.armed;
        let Some(check) = self.checks.get_mut(index) else {
            return HealthChange::Unchanged;
        };
        match result {
            Ok(()) => {
                check.failures = 0;
                check.last_error = None;
            }
            Err(e) => {
                check.failures = check.failures.saturating_add(1);
                check.last_error = Some(e);
            }
        }
        if armed {
            check.due = Some(now + check.interval());
        }
        let detail = check.last_error.is_some().then(|| failure_detail(check));
        match (was_healthy, self.healthy()) {
            (true, false) => HealthChange::BecameUnhealthy(detail.unwrap_or_default()),
            (false, true) => HealthChange::BecameHealthy,
            _ => HealthChange::Unchanged,
        }
    }
}

/// `command:x failed 3 times in a row: exited with code 1`.
fn failure_detail(check: &Check) -> String {
    format!(
        "{} failed {} times in a row: {}",
        check.spec.label(),
        check.failures,
        check.last_error.as_deref().unwrap_or("unknown error")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(kind: DetectorKind, threshold: u32) -> DetectorSpec {
        DetectorSpec {
            kind,
            interval: Dur::from_secs(10),
            failure_threshold: threshold,
        }
    }

    #[test]
    fn exec_pid_needs_no_schedule() {
        let mut h = Health::new(&[detector(DetectorKind::ExecPid, 3)]);
        h.arm(Instant::now());
        assert_eq!(h.next_due(), None, "no timer for exec:pid alone");
        assert!(h.healthy());
    }

    #[test]
    fn threshold_consecutive_failures_make_unhealthy_and_a_pass_recovers() {
        let now = Instant::now();
        let pidfile = DetectorKind::Pidfile {
            path: "/run/x.pid".into(),
        };
        let mut h = Health::new(&[detector(pidfile, 3)]);
        assert_eq!(h.next_due(), None, "idle until armed");
        h.arm(now);
        assert_eq!(h.next_due(), Some(now + Duration::from_secs(10)));
        let fail = || Err("pid 7 is not running".to_string());
        assert_eq!(h.record(0, fail(), now), HealthChange::Unchanged);
        assert_eq!(h.record(0, Ok(()), now), HealthChange::Unchanged);
        assert_eq!(h.record(0, fail(), now), HealthChange::Unchanged);
        assert_eq!(h.record(0, fail(), now), HealthChange::Unchanged);
        assert!(h.healthy());
        assert_eq!(
            h.record(0, fail(), now),
            HealthChange::BecameUnhealthy(
                "pidfile:/run/x.pid failed 3 times in a row: pid 7 is not running".into()
            )
        );
        assert!(!h.healthy());
        assert_eq!(h.record(0, fail(), now), HealthChange::Unchanged);
        assert_eq!(h.record(0, Ok(()), now), HealthChange::BecameHealthy);
        assert_eq!(h.index_of("pidfile:/run/x.pid"), Some(0));
        assert_eq!(h.index_of("pidfile:/run/y.pid"), None);
        h.disarm();
        assert_eq!(h.next_due(), None);
        assert!(h.healthy());
    }

    #[test]
    fn the_crossing_of_each_detectors_threshold_is_reported_once() {
        let now = Instant::now();
        let a = DetectorKind::Pidfile {
            path: "/run/a.pid".into(),
        };
        let b = DetectorKind::Command {
            command: "b".into(),
            timeout: Dur::from_secs(5),
        };
        let mut h = Health::new(&[
            detector(DetectorKind::ExecPid, 3),
            detector(a, 1),
            detector(b, 2),
        ]);
        h.arm(now);
        assert_eq!(h.index_of("command:b"), Some(1), "exec:pid has no index");
        let fail = |why: &str| Err(why.to_string());
        // `a` makes the instance unhealthy first; `b` crossing later is still reported.
        assert!(matches!(
            h.record(0, fail("gone"), now),
            HealthChange::BecameUnhealthy(_)
        ));
        assert_eq!(
            h.just_reached_threshold(0).as_deref(),
            Some("pidfile:/run/a.pid failed 1 times in a row: gone")
        );
        assert_eq!(h.record(1, fail("code 1"), now), HealthChange::Unchanged);
        assert_eq!(h.just_reached_threshold(1), None, "1 of 2");
        assert_eq!(h.record(1, fail("code 2"), now), HealthChange::Unchanged);
        assert_eq!(
            h.just_reached_threshold(1).as_deref(),
            Some("command:b failed 2 times in a row: code 2")
        );
        assert_eq!(h.record(1, fail("code 3"), now), HealthChange::Unchanged);
        assert_eq!(h.just_reached_threshold(1), None, "only at the crossing");
        assert_eq!(h.just_reached_threshold(7), None);
    }

    #[tokio::test]
    async fn pidfile_probe_reads_a_pid_and_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        assert!(check_pidfile(&path)
            .await
            .unwrap_err()
            .contains("cannot read"));
        std::fs::write(&path, "garbage").unwrap();
        assert!(check_pidfile(&path)
            .await
            .unwrap_err()
            .contains("does not hold a pid"));
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(check_pidfile(&path).await, Ok(()));
    }

    #[tokio::test]
    async fn command_probe_passes_on_exit_zero_and_fails_otherwise() {
        let spec = ProgramSpec::new("p", crate::config::Exec::Command("true".into()));
        let id = InstanceId::new("p", 1, 1);
        let t = Duration::from_secs(20);
        assert_eq!(run_command("exit 0", t, &spec, &id, None).await, Ok(()));
        assert_eq!(
            run_command("exit 3", t, &spec, &id, None).await,
            Err("exited with code 3".to_string())
        );
        assert_eq!(
            run_command("test \"$PROVISR_NAME\" = p", t, &spec, &id, None).await,
            Ok(())
        );
        // The probing shell's command line does not hold the command, so `pgrep -f PATTERN`
        // cannot find the probe itself: `/proc/$$/cmdline` is the shell's.
        assert_eq!(
            run_command(
                "! grep -q probe-marker /proc/$$/cmdline",
                t,
                &spec,
                &id,
                None
            )
            .await,
            Ok(())
        );
        assert_eq!(
            run_command("x=1; test \"$x\" = 1 && exit 4", t, &spec, &id, None).await,
            Err("exited with code 4".to_string()),
            "compound commands and exit codes as with sh -c"
        );
        let e = run_command("sleep 30", Duration::from_millis(100), &spec, &id, None)
            .await
            .unwrap_err();
        assert_eq!(e, "timed out after 100ms");
    }
}
