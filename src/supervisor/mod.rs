//! The process runtime: one tokio actor per instance that owns its child from spawn to reap.
//!
//! An [`InstanceHandle`] is the only way to reach an instance: commands go in through an inbox,
//! observed state comes out as a [`watch`] of [`InstanceStatus`], every state change is also an
//! [`Event`] on a broadcast channel, and [`RuntimeContext::changed`] is poked so the reconcile loop
//! looks again. Inside, the actor (`actor.rs`) feeds inputs to the pure state machine
//! ([`state::next`]) and carries out its decisions: spawn (`spawn.rs`), signal the process group,
//! wait for the exit through a pidfd and reap it (`process.rs`), probe detectors (`health.rs`).
//! Children are started by a small spawner process (`spawner.rs`) running the code of
//! `launch.rs`, or by that code in this process when no spawner is installed.
//! Output pipes are handed to an [`OutputSink`] (`output.rs`), implemented by the logs module.
//!
//! Every child carries a tag (`spawn.rs`) by which `tag.rs` finds the daemon's processes in
//! `/proc`; `reaper.rs` makes the daemon their subreaper and reaps the orphans no actor owns.
//!
//! See `docs/runtime.md` for the design: why children keep fd 3/4, the state table, stop
//! escalation and pidfd reaping.

mod actor;
pub mod argv;
pub mod health;
pub mod hooks;
mod identity;
mod inbox;
mod launch;
pub mod launches;
pub mod output;
mod probe;
mod process;
pub mod reaper;
pub mod spawn;
pub mod spawner;
pub mod state;
pub mod tag;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{InstanceId, ProgramSpec};

pub use argv::argv;
pub use health::probe_detectors;
pub use output::{LineStream, OutputSink, OutputStream};
pub use process::{
    boot_id, boot_nanos_now, parse_signal, presize_fd_table, proc_alive_since, proc_start_time,
    raise_fd_limit, signal_group_of, ExitInfo, FdLimit, FdLimitError, FD_TABLE_AT_START,
};
pub use spawn::{SpawnError, DAEMON_ONLY_ENV, INSTANCE_ENV, NAME_ENV, STATE_DIR_ENV};
pub use state::InstanceState;

/// Locks a mutex of the runtime's bookkeeping (queues, a group's pid, the spawner's waiters), each
/// changed in single steps that a panic cannot leave half-done: a poisoned lock is taken as it is.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What every instance actor shares with the rest of the daemon, plus its output sink.
#[derive(Clone)]
pub struct RuntimeContext {
    /// Every transition of every instance; send errors (no subscriber) are ignored.
    pub events: broadcast::Sender<Event>,
    /// Told of every status change: wakes the reconcile loop and whoever waits for instances
    /// to settle.
    pub changed: StatusChanges,
    /// Where this instance's output goes: give each instance its own sink.
    pub output: Arc<dyn OutputSink>,
    /// The daemon's canonical state directory, which every process this actor spawns carries as
    /// `PROVISR_STATE_DIR` so a later daemon can find it in `/proc` (`docs/runtime.md`). `None`
    /// spawns untagged processes: a runtime used without a daemon.
    pub state_dir: Option<Arc<Path>>,
    /// Where each spawn is noted as it succeeds (`launches.rs`); `None` notes nothing.
    pub launches: Option<Arc<launches::LaunchJournal>>,
    /// Counts of what no event carries: probe results, hook failures.
    pub counters: Arc<RuntimeCounters>,
}

/// Where the actors say that a status changed. The reconcile loop is its one waker; an API call
/// waiting for instances to reach a state watches the count, so it answers once they have,
/// not after the loop's next pass (which records them, a flushed write, `docs/store.md`).
#[derive(Clone, Default)]
pub struct StatusChanges {
    wake: Arc<Notify>,
    count: Arc<watch::Sender<u64>>,
}

impl StatusChanges {
    /// Changes wake `wake` (one waiter: `notify_one`).
    pub fn new(wake: Arc<Notify>) -> StatusChanges {
        StatusChanges {
            wake,
            count: Arc::new(watch::channel(0).0),
        }
    }

    /// A status changed.
    pub fn note(&self) {
        self.wake.notify_one();
        self.count.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes after every status change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }
}

/// Counts every actor adds to and the metrics module reads (`docs/metrics.md`).
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    /// Probe results: `[readiness, liveness]` × `[success, failure]`.
    pub probes: [[AtomicU64; 2]; 2],
    /// Failed hook runs by phase, in [`crate::config::HookPhase::ALL`] order.
    pub hook_failures: [AtomicU64; 4],
}

/// How an actor begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Initial {
    /// `stopped`, with the restart count carried over from the store.
    Fresh { restarts: u64 },
    /// Take over a process an earlier daemon started, if `pid` still has `start_time` (field 22 of
    /// `/proc/PID/stat`); otherwise `stopped` with a message saying why.
    Adopt {
        pid: i32,
        start_time: u64,
        restarts: u64,
    },
    /// An instance whose process ended without a restart due, as an earlier daemon saw it:
    /// `exited` (or `failed`), so it is not started again until asked.
    Finished {
        restarts: u64,
        failed: bool,
        exit: Option<ExitInfo>,
        message: Option<String>,
    },
}

/// The observed state of one instance, as published after every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub program: String,
    pub instance: u32,
    pub state: InstanceState,
    pub pid: Option<i32>,
    /// Field 22 of `/proc/PID/stat`: with `pid`, what a later daemon needs to find the process again.
    pub pid_start_time: Option<u64>,
    /// The spec the process `pid` runs with: the actor's spec when it spawned (or adopted) it,
    /// followed by changes applied in place since. The reconcile loop records it, so a later
    /// daemon knows what the process runs. Not part of the wire form.
    #[serde(skip)]
    pub spawned_spec: Option<Arc<ProgramSpec>>,
    /// The launch (a caller's token, [`InstanceHandle::start_launch`]) whose start or restart
    /// the process `pid` carries out: the spawn that followed the actor taking it in, or a
    /// later one (a retry, an automatic restart). Not part of the wire form.
    #[serde(skip)]
    pub launch: Option<u64>,
    /// Automatic restarts (crash restarts and unhealthy restarts, not explicit ones).
    pub restarts: u64,
    #[serde(with = "rfc3339_opt")]
    pub started_at: Option<SystemTime>,
    #[serde(with = "rfc3339_opt")]
    pub stopped_at: Option<SystemTime>,
    pub last_exit: Option<ExitInfo>,
    /// The process is alive, no detector has reached its failure threshold, and the readiness
    /// probe (if any) passes.
    pub healthy: bool,
    /// `running` and the readiness probe (if any) passes.
    #[serde(default)]
    pub ready: bool,
    /// Which detector says the instance runs: `exec:pid` for a process this runtime watches.
    pub detected_by: Option<String>,
    #[serde(with = "rfc3339_opt")]
    pub next_retry_at: Option<SystemTime>,
    /// The last reason or error, e.g. "exited before start_duration 1s (exited with code 1), retry 2/3".
    pub message: Option<String>,
}

impl InstanceStatus {
    /// The status of a stopped instance that has been restarted `restarts` times.
    pub fn stopped(id: &InstanceId, restarts: u64) -> InstanceStatus {
        InstanceStatus {
            name: id.name.clone(),
            program: id.program.clone(),
            instance: id.index,
            state: InstanceState::Stopped,
            pid: None,
            pid_start_time: None,
            spawned_spec: None,
            launch: None,
            restarts,
            started_at: None,
            stopped_at: None,
            last_exit: None,
            healthy: false,
            ready: false,
            detected_by: None,
            next_retry_at: None,
            message: None,
        }
    }
}

/// One state transition of one instance (`docs/api.md`), or a change of its health (then `from` and
/// `to` are both `running` and `healthy` says which way it went).
///
/// Besides `{time, name, from, to, reason}` (`docs/api.md`) an event carries what consumers such as the
/// metrics module would otherwise have to parse out of `reason`: the program, the exit behind it,
/// whether it spawns a process, whether that is an automatic restart, the new health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub name: String,
    #[serde(default)]
    pub program: String,
    pub from: InstanceState,
    pub to: InstanceState,
    pub reason: String,
    /// The process exit that caused this event (also an exit during `stopping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// This event is an automatic restart: it added one to the status's `restarts`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
    /// `Some(false)` when the detectors just declared the instance unhealthy, `Some(true)` when
    /// it recovered, `None` when its health did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// A new process is spawned with this event: a start, a retry of a failed start, a restart.
    /// False when an instance enters `starting` only to probe its detectors first (`docs/configuration.md`, "Detectors"); the
    /// spawn that may follow is an event of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spawn: bool,
}

/// Commands an actor accepts.
#[derive(Debug)]
pub(crate) enum Command {
    /// With the launch it carries out, if any (see [`InstanceStatus::launch`]).
    Start(Option<u64>),
    Stop,
    Restart(Option<u64>),
    UpdateSpec(Arc<ProgramSpec>),
    Shutdown,
}

/// The handle of one instance actor. Dropping it is [`InstanceHandle::detach`].
pub struct InstanceHandle {
    commands: inbox::Sender,
    status: watch::Receiver<InstanceStatus>,
    task: JoinHandle<()>,
    /// The group of the instance's own child, for sending the stop signal at once.
    group: Arc<process::Group>,
}

impl InstanceHandle {
    /// Starts the actor of instance `id` on the current tokio runtime.
    ///
    /// A `Fresh` instance waits, `stopped`, for [`start`](Self::start); an adopted one is `running`
    /// when this returns (or `stopped` when the pid is no longer the process it was); a
    /// `Finished` one is `exited` or `failed`.
    ///
    /// Panics when called outside a tokio runtime (like `tokio::spawn`).
    pub fn spawn(
        id: InstanceId,
        spec: Arc<ProgramSpec>,
        ctx: RuntimeContext,
        initial: Initial,
    ) -> InstanceHandle {
        let restarts = match initial {
            Initial::Fresh { restarts }
            | Initial::Adopt { restarts, .. }
            | Initial::Finished { restarts, .. } => restarts,
        };
        let (tx, rx) = watch::channel(InstanceStatus::stopped(&id, restarts));
        let (commands, inbox) = inbox::inbox();
        let group = Arc::new(process::Group::default());
        let mut actor = actor::Actor::new(id, spec, ctx, restarts, tx, inbox, group.clone());
        actor.begin(initial);
        let task = tokio::spawn(actor.run());
        InstanceHandle {
            commands,
            status: rx,
            task,
            group,
        }
    }

    fn send(&self, command: Command) {
        // The actor only ends through shutdown/detach, which consume the handle; a command to an
        // actor that panicked is never taken, and there is nobody left to tell.
        self.commands.send(command);
    }

    /// Start the process (a no-op while starting or running; after stopping when stopping).
    ///
    /// Until this actor has spawned or adopted a process, a program with detectors besides
    /// `exec:pid` has them probed first: if one passes, the program already runs elsewhere and is
    /// `running` without a process of ours (`pid: None`, `detected_by` naming the detector).
    pub fn start(&self) {
        self.send(Command::Start(None));
    }

    /// [`start`](Self::start), carrying out launch `token`: the process it spawns says so in
    /// its status ([`InstanceStatus::launch`]).
    pub fn start_launch(&self, token: u64) {
        self.send(Command::Start(Some(token)));
    }

    /// Stop the process group: stop signal, `stop_timeout`, then `SIGKILL`. Cancels any backoff.
    /// An instance running elsewhere is only forgotten (`stopped`): its process is not ours.
    ///
    /// The stop signal goes to a running process of ours from here, before the actor takes the
    /// command in: a caller stopping many instances signals every group in one sweep, and each
    /// actor only observes its process exit.
    pub fn stop(&self) {
        self.send_stop_now();
        self.send(Command::Stop);
    }

    /// Sends the stop signal to the group of the instance's running (or starting) process of
    /// ours, once; the actor learns it was sent (`process::Group`).
    fn send_stop_now(&self) {
        let state = self.status.borrow().state;
        if matches!(state, InstanceState::Running | InstanceState::Starting) {
            self.group.send_stop();
        }
    }

    /// Stop, then start again. Not counted in `restarts` (it was asked for). An instance running
    /// elsewhere is forgotten and its detectors probed again, so it is never started twice.
    pub fn restart(&self) {
        self.send(Command::Restart(None));
    }

    /// [`restart`](Self::restart), carrying out launch `token` (see [`start_launch`](Self::start_launch)).
    pub fn restart_launch(&self, token: u64) {
        self.send(Command::Restart(Some(token)));
    }

    /// Use `spec` from now on. Restart policy, stop settings and detectors apply at once; `exec`,
    /// `work_dir` and `env` apply at the next spawn (the reconcile loop restarts for those).
    pub fn update_spec(&self, spec: Arc<ProgramSpec>) {
        self.send(Command::UpdateSpec(spec));
    }

    /// The latest published status.
    pub fn status(&self) -> InstanceStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status the actor publishes.
    pub fn watch(&self) -> watch::Receiver<InstanceStatus> {
        self.status.clone()
    }

    /// Stops the child per its stop settings, then ends the actor; returns once both are done.
    pub async fn shutdown(self) {
        self.send_stop_now();
        self.send(Command::Shutdown);
        let _ = self.task.await;
    }

    /// Ends the actor WITHOUT stopping the child, after the commands already sent: the daemon
    /// exits and leaves its children running for the next daemon to adopt.
    pub fn detach(self) {
        drop(self);
    }
}

/// Serde for `SystemTime` as RFC 3339 with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

/// [`rfc3339`] for optional times (`null` when absent); the store's records use it too.
pub(crate) mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn status_and_events_serialize_times_as_rfc3339() {
        let id = InstanceId::new("web", 2, 3);
        let mut st = InstanceStatus::stopped(&id, 4);
        st.started_at = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        st.last_exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
        });
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["name"], "web-2");
        assert_eq!(v["program"], "web");
        assert_eq!(v["instance"], 2);
        assert_eq!(v["state"], "stopped");
        assert_eq!(v["restarts"], 4);
        assert_eq!(v["started_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["stopped_at"], serde_json::Value::Null);
        assert_eq!(v["last_exit"]["signal"], 9);
        let back: InstanceStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);

        let mut ev = Event {
            time: SystemTime::UNIX_EPOCH,
            name: "web-2".into(),
            program: "web".into(),
            from: InstanceState::Running,
            to: InstanceState::Backoff,
            reason: "killed by SIGKILL; restarting in 1s".into(),
            exit: Some(ExitInfo {
                code: None,
                signal: Some(9),
            }),
            restart: false,
            healthy: None,
            spawn: false,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["program"], "web");
        assert_eq!(v["from"], "running");
        assert_eq!(v["to"], "backoff");
        assert_eq!(v["exit"]["signal"], 9);
        // Flags that say nothing are left out of the wire form.
        assert!(["restart", "healthy", "spawn"]
            .iter()
            .all(|k| v.get(*k).is_none()));
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), ev);

        ev.exit = None;
        ev.restart = true;
        ev.healthy = Some(false);
        ev.spawn = true;
        let v = serde_json::to_value(&ev).unwrap();
        assert!(v.get("exit").is_none());
        assert_eq!(
            (
                v["restart"].clone(),
                v["healthy"].clone(),
                v["spawn"].clone()
            ),
            (true.into(), false.into(), true.into())
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), ev);
    }
}
