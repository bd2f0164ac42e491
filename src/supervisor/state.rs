//! The lifecycle of one instance as data: states, the allowed transitions, and a pure [`next`].
//!
//! Nothing here touches a process or a clock: [`next`] maps (lifecycle, input, policy, now) to a
//! [`Decision`] — the new lifecycle, what the actor must do, and why — so every rule of `docs/configuration.md` and `docs/runtime.md`
//! is a table row tested below. The actor (`actor.rs`) only feeds inputs and performs actions.
//!
//! The one timer an instance may have lives in [`Lifecycle::deadline`]; which input it produces
//! follows from the state (`starting` → start_duration elapsed, `backoff` → retry/restart due,
//! `stopping` → stop_timeout), so "arm a timer", "cancel the timer" and "keep it" are all just the
//! deadline of the next lifecycle.
//!
//! [`Lifecycle::origin`] says whose process a `starting`/`running` instance has: ours, none yet
//! (probing the detectors before a first spawn, or running the hooks before a spawn), or one
//! running elsewhere that a detector found (`docs/configuration.md`, "Detectors"). The rules for
//! those are [`probing`], [`hooks`] and [`elsewhere`].
//!
//! Hooks (`docs/configuration.md`, "Hooks") are steps of the lifecycle too: a spawn of a program
//! with `pre_start` (or `post_stop`) hooks first runs them ([`ProcessOp::RunHooks`], then
//! [`Input::HooksDone`] or [`Input::HookFailed`]); a stop of one with `pre_stop` hooks runs them
//! before the stop signal ([`ProcessOp::PreStop`], then [`Input::PreStopDone`]), its
//! `stop_timeout` counted from the signal.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Dur, ProgramSpec};

/// How long a process must have run, beyond `start_duration`, for a crash to count as "after
/// stable running", resetting the restart delay (`restart_interval`, `docs/configuration.md`).
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Where an instance is in its lifecycle (`docs/runtime.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// No process, none wanted.
    Stopped,
    /// A process was spawned and has not yet lived `start_duration`.
    Starting,
    /// A process has lived `start_duration` (or was adopted).
    Running,
    /// Waiting to retry a failed start or to restart after an exit.
    Backoff,
    /// The stop signal was sent; waiting for the process to exit.
    Stopping,
    /// The process ended on its own and no restart is due.
    Exited,
    /// Failed starts used up `retry_count`.
    Failed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 7] = [
        InstanceState::Stopped,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Backoff,
        InstanceState::Stopping,
        InstanceState::Exited,
        InstanceState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Stopped => "stopped",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Backoff => "backoff",
            InstanceState::Stopping => "stopping",
            InstanceState::Exited => "exited",
            InstanceState::Failed => "failed",
        }
    }

    /// True in the states where the instance has a live process.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            InstanceState::Starting | InstanceState::Running | InstanceState::Stopping
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every state change [`next`] may make (a state may also stay where it is).
pub const TRANSITIONS: &[(InstanceState, InstanceState)] = {
    use InstanceState::*;
    &[
        (Stopped, Starting),
        // Adoption of a process a previous daemon started.
        (Stopped, Running),
        // Stop while probing the detectors before a first spawn: there is nothing to signal.
        (Starting, Stopped),
        (Starting, Running),
        // A failed start with a retry due later, or a started process's restart delay.
        (Starting, Backoff),
        (Starting, Failed),
        (Starting, Stopping),
        // Exit in `starting` after start_duration passed but before its timer was handled.
        (Starting, Exited),
        (Running, Stopping),
        (Running, Backoff),
        // An immediate restart (`restart_interval = 0s`).
        (Running, Starting),
        (Running, Exited),
        // Stop of an instance running elsewhere: forgotten, never signalled.
        (Running, Stopped),
        // Stopped for a failing liveness probe without auto_restart, or a failing post_start
        // hook.
        (Stopping, Exited),
        (Stopping, Failed),
        (Backoff, Starting),
        (Backoff, Stopped),
        (Stopping, Stopped),
        // Explicit restart, or restart after unhealthy.
        (Stopping, Starting),
        (Exited, Starting),
        (Exited, Stopped),
        (Failed, Starting),
        (Failed, Stopped),
    ]
};

/// True when `from → to` is in [`TRANSITIONS`] (staying in a state is always allowed).
pub fn allowed(from: InstanceState, to: InstanceState) -> bool {
    from == to || TRANSITIONS.contains(&(from, to))
}

/// The restart and stop settings of a program, the part of its spec [`next`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub start_duration: Duration,
    pub retry_count: u32,
    pub retry_interval: Duration,
    pub auto_restart: bool,
    pub restart_interval: Duration,
    pub restart_max_interval: Duration,
    pub stop_timeout: Duration,
    /// The program has detectors besides `exec:pid`, so a start that knows no process of the
    /// instance probes them first ("already running elsewhere", `docs/runtime.md`).
    pub probes: bool,
    /// The program has `pre_start` or `post_stop` hooks: every spawn waits for them.
    pub hooks_before_spawn: bool,
    /// The program has `pre_stop` hooks: every stop signal waits for them.
    pub pre_stop: bool,
}

impl Policy {
    pub fn of(spec: &ProgramSpec) -> Policy {
        Policy {
            start_duration: spec.start_duration.get(),
            retry_count: spec.retry_count,
            retry_interval: spec.retry_interval.get(),
            auto_restart: spec.auto_restart,
            restart_interval: spec.restart_interval.get(),
            restart_max_interval: spec.restart_max_interval.get(),
            stop_timeout: spec.stop_timeout.get(),
            probes: spec
                .detectors
                .iter()
                .any(|d| d.kind != crate::config::DetectorKind::ExecPid),
            hooks_before_spawn: !(spec.hooks.pre_start.is_empty()
                && spec.hooks.post_stop.is_empty()),
            pre_stop: !spec.hooks.pre_stop.is_empty(),
        }
    }
}

/// What happened to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    StartRequested,
    /// Stop (if running) then start; not counted as an automatic restart.
    RestartRequested,
    StopRequested,
    /// The spawn action succeeded.
    Spawned,
    /// The spawn action failed (missing binary, bad work_dir, …).
    SpawnFailed {
        error: String,
    },
    /// A process a previous daemon started was verified and taken over.
    Adopted {
        pid: i32,
    },
    StartDurationElapsed,
    BackoffElapsed,
    StopTimeout,
    /// The process exited; `code`/`signal` are `None` when unknown (an adopted process).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        uptime: Duration,
    },
    /// A detector failed `failure_threshold` times in a row.
    Unhealthy {
        detail: String,
    },
    /// The probe before a first spawn: the detector labelled `label` passed, so the program
    /// already runs elsewhere.
    DetectedElsewhere {
        label: String,
    },
    /// The probe before a first spawn: no detector passed.
    NotDetected,
    /// The detector that found an instance running elsewhere failed `failure_threshold` times in
    /// a row (or is no longer configured): the process is treated as having exited.
    ElsewhereGone {
        detail: String,
    },
    /// The hooks before a spawn (`post_stop` of the last process, `pre_start`) have run.
    HooksDone,
    /// A `pre_start` hook failed and may not be ignored: the instance does not start.
    HookFailed {
        detail: String,
    },
    /// The `pre_stop` hooks have run: time for the stop signal.
    PreStopDone,
    /// A `post_start` hook failed and may not be ignored: the instance is stopped, `failed`.
    PostStartFailed {
        detail: String,
    },
    /// The liveness probe failed `failure_threshold` times in a row.
    LivenessFailed {
        detail: String,
    },
}

/// What the actor must do to carry out a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessOp {
    Nothing,
    /// Spawn a new process; the result comes back as `Spawned` or `SpawnFailed`.
    Spawn,
    /// Send the program's stop signal to the process group.
    SignalGroup,
    /// Send `SIGKILL` to the process group.
    KillGroup,
    /// Probe the detectors other than `exec:pid` once; the result comes back as
    /// `DetectedElsewhere` or `NotDetected`.
    Probe,
    /// Run the hooks before a spawn; the result comes back as `HooksDone` or `HookFailed`.
    RunHooks,
    /// Run the `pre_stop` hooks; `PreStopDone` follows, and the stop signal with it.
    PreStop,
}

/// Whose process a `starting` or `running` instance has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A process provisr spawned or adopted by pid, or none at all: watched through `exec:pid`,
    /// signalled on stop.
    Own,
    /// `starting` with no process yet: the detectors are being probed before the first spawn.
    Probing,
    /// `starting` with no process yet: the hooks before a spawn run.
    Hooks,
    /// `running` with no process of ours: the detector with this label says the program runs
    /// elsewhere. Nothing is ever signalled; a stop only forgets it.
    Elsewhere(String),
}

/// What follows the exit of a process being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay stopped.
    Stay,
    /// Start again, as a fresh start (explicit restart, or start requested while stopping).
    Start,
    /// Start again as an automatic restart (unhealthy with `auto_restart`): counts in `restarts`.
    Restart,
    /// End `exited` (a failing liveness probe without `auto_restart`).
    Exit,
    /// End `failed` (a failing `post_start` hook).
    Fail,
}

/// What a `backoff` is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffFor {
    /// Retry of a failed start.
    Retry,
    /// Automatic restart of a started process; counts in `restarts` when it happens.
    Restart,
}

/// The state of one instance's lifecycle with the counters its rules need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub state: InstanceState,
    /// Automatic restarts so far (`restarts`, `docs/api.md`).
    pub restarts: u64,
    /// Retries of failed starts used since the last explicit start or successful start.
    pub retries: u32,
    /// The delay the next automatic restart waits (doubles on quick crashes).
    pub restart_delay: Duration,
    pub after_stop: AfterStop,
    pub backoff_for: BackoffFor,
    /// The instance's one timer; see the module docs.
    pub deadline: Option<Instant>,
    pub origin: Origin,
    /// provisr has not spawned (or adopted by pid) this instance's process since the actor began
    /// or since it forgot a process running elsewhere: an explicit start probes the detectors
    /// first, when the program has any. Cleared by every spawn, so restarts never probe.
    pub probe_on_start: bool,
    /// `stopping` while the `pre_stop` hooks run: the stop signal is still to be sent.
    pub pre_stop: bool,
    /// Why the instance is being restarted automatically, for the message once it runs again.
    pub cause: Option<String>,
}

impl Lifecycle {
    /// A stopped instance that has already been restarted `restarts` times.
    pub fn new(restarts: u64, policy: &Policy) -> Lifecycle {
        Lifecycle {
            state: InstanceState::Stopped,
            restarts,
            retries: 0,
            restart_delay: policy.restart_interval,
            after_stop: AfterStop::Stay,
            backoff_for: BackoffFor::Retry,
            deadline: None,
            origin: Origin::Own,
            probe_on_start: true,
            pre_stop: false,
            cause: None,
        }
    }

    /// The input the timer produces when the deadline passes in the current state.
    pub fn timer_input(&self) -> Option<Input> {
        self.deadline?;
        match self.state {
            InstanceState::Starting => Some(Input::StartDurationElapsed),
            InstanceState::Backoff => Some(Input::BackoffElapsed),
            InstanceState::Stopping => Some(Input::StopTimeout),
            _ => None,
        }
    }
}

/// The outcome of one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub next: Lifecycle,
    pub action: ProcessOp,
    /// Why, for the event and the status message; `None` when the input changed nothing.
    pub reason: Option<String>,
}

impl Decision {
    /// True when this decision is a transition worth an event: the state changed, or a new process
    /// is spawned in the same state (an immediate retry).
    pub fn is_transition(&self, from: InstanceState) -> bool {
        self.next.state != from || matches!(self.action, ProcessOp::Spawn | ProcessOp::RunHooks)
    }
}

/// Describes an exit for messages: `exited with code 1`, `killed by SIGKILL`.
pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("killed by {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        (Some(code), None) => format!("exited with code {code}"),
        (None, None) => "exited (status unknown: not our child)".to_string(),
    }
}

fn dur(d: Duration) -> Dur {
    Dur(d)
}

/// The next lifecycle for `input`. Pure: same arguments, same decision.
pub fn next(life: &Lifecycle, input: &Input, policy: &Policy, now: Instant) -> Decision {
    let mut d = match &life.origin {
        Origin::Own => own(life, input, policy, now),
        Origin::Probing => probing(life, input),
        Origin::Hooks => hooks(life, input),
        Origin::Elsewhere(label) => elsewhere(life, label, input, policy, now),
    };
    if d.action == ProcessOp::Spawn {
        // Whatever ran elsewhere is forgotten once we spawn our own; later starts never probe.
        d.next.origin = Origin::Own;
        d.next.probe_on_start = false;
        // Every spawn waits for the hooks before it, except the one they just made way for.
        if policy.hooks_before_spawn && *input != Input::HooksDone {
            d.next.origin = Origin::Hooks;
            d.next.deadline = None;
            d.action = ProcessOp::RunHooks;
        }
    }
    d
}

/// `starting` with no process: the hooks before a spawn run.
fn hooks(life: &Lifecycle, input: &Input) -> Decision {
    use InstanceState::*;
    let mut n = life.clone();
    match input {
        Input::HooksDone => go(
            n,
            Starting,
            ProcessOp::Spawn,
            "hooks done; spawning".to_string(),
        ),
        Input::HookFailed { detail } => {
            n.origin = Origin::Own;
            n.deadline = None;
            n.cause = None;
            go(
                n,
                Failed,
                ProcessOp::Nothing,
                format!("{detail}; not started"),
            )
        }
        Input::StopRequested => {
            n.origin = Origin::Own;
            n.deadline = None;
            n.cause = None;
            go(n, Stopped, ProcessOp::Nothing, "stop requested".to_string())
        }
        // Already starting; nothing runs that a timer, an exit or a probe could be about.
        _ => ignore(life),
    }
}

fn ignore(life: &Lifecycle) -> Decision {
    Decision {
        next: life.clone(),
        action: ProcessOp::Nothing,
        reason: None,
    }
}

fn go(mut n: Lifecycle, state: InstanceState, action: ProcessOp, reason: String) -> Decision {
    n.state = state;
    Decision {
        next: n,
        action,
        reason: Some(reason),
    }
}

/// `starting` with no process: waiting for the probe before the first spawn.
fn probing(life: &Lifecycle, input: &Input) -> Decision {
    use InstanceState::*;
    let mut n = life.clone();
    match input {
        Input::DetectedElsewhere { label } => {
            n.origin = Origin::Elsewhere(label.clone());
            n.retries = 0;
            n.deadline = None;
            go(
                n,
                Running,
                ProcessOp::Nothing,
                format!("already running elsewhere (detected by {label}); not started again"),
            )
        }
        Input::NotDetected => go(
            n,
            Starting,
            ProcessOp::Spawn,
            "not running elsewhere (no detector passed); spawning".to_string(),
        ),
        Input::StopRequested => {
            n.origin = Origin::Own;
            n.deadline = None;
            go(n, Stopped, ProcessOp::Nothing, "stop requested".to_string())
        }
        // A start or restart is already under way and there is nothing to stop; the spawn that
        // may follow uses the spec of that moment. Timers, exits and health cannot happen here.
        _ => ignore(life),
    }
}

/// `running` on the word of the detector `label`, with no process of ours.
fn elsewhere(
    life: &Lifecycle,
    label: &str,
    input: &Input,
    policy: &Policy,
    now: Instant,
) -> Decision {
    use InstanceState::*;
    let mut n = life.clone();
    match input {
        Input::StopRequested => {
            n.origin = Origin::Own;
            n.deadline = None;
            go(
                n,
                Stopped,
                ProcessOp::Nothing,
                format!(
                    "stop requested; the process running elsewhere (detected by {label}) was not \
                     started by provisr and is left alone"
                ),
            )
        }
        // There is nothing of ours to restart: forget it and probe again, so it is never
        // started twice (it is found again while it runs; spawned if it is gone).
        Input::RestartRequested => {
            n.origin = Origin::Probing;
            n.deadline = None;
            go(
                n,
                Starting,
                ProcessOp::Probe,
                format!(
                    "restart requested; the process running elsewhere (detected by {label}) is \
                     not provisr's to restart: probing the detectors again"
                ),
            )
        }
        Input::Unhealthy { detail } | Input::LivenessFailed { detail } => Decision {
            next: n,
            action: ProcessOp::Nothing,
            reason: Some(format!(
                "unhealthy: {detail} (running elsewhere: not restarted)"
            )),
        },
        Input::ElsewhereGone { detail } => {
            n.origin = Origin::Own;
            // Not a crash of ours: the restart waits the base restart_interval.
            started_exit(
                n,
                format!("no longer running elsewhere: {detail}"),
                Duration::MAX,
                policy,
                now,
            )
        }
        _ => ignore(life),
    }
}

/// The rules for an instance whose process, if any, is ours.
fn own(life: &Lifecycle, input: &Input, policy: &Policy, now: Instant) -> Decision {
    use InstanceState::*;
    let mut n = life.clone();
    let stop = |mut n: Lifecycle, after: AfterStop, reason: &str| {
        n.after_stop = after;
        if policy.pre_stop {
            // The stop signal, and stop_timeout with it, waits for the pre_stop hooks.
            n.pre_stop = true;
            n.deadline = None;
            return go(n, Stopping, ProcessOp::PreStop, reason.to_string());
        }
        n.deadline = Some(now + policy.stop_timeout);
        go(n, Stopping, ProcessOp::SignalGroup, reason.to_string())
    };

    match (life.state, input) {
        // Explicit start: a fresh sequence of retries and restart delays.
        (Stopped | Exited | Failed | Backoff, Input::StartRequested | Input::RestartRequested) => {
            n.retries = 0;
            n.restart_delay = policy.restart_interval;
            n.deadline = None;
            n.after_stop = AfterStop::Stay;
            n.cause = None;
            let why = match input {
                Input::RestartRequested => "restart requested",
                _ => "start requested",
            };
            if n.probe_on_start && policy.probes {
                n.origin = Origin::Probing;
                return go(
                    n,
                    Starting,
                    ProcessOp::Probe,
                    format!("{why}; probing the detectors first: is it already running elsewhere?"),
                );
            }
            go(n, Starting, ProcessOp::Spawn, why.to_string())
        }
        (Starting | Running, Input::StartRequested) => ignore(life),
        (Starting | Running, Input::RestartRequested) => {
            stop(n, AfterStop::Start, "restart requested")
        }
        (Stopping, Input::StartRequested | Input::RestartRequested) => {
            n.after_stop = AfterStop::Start;
            Decision {
                next: n,
                action: ProcessOp::Nothing,
                reason: Some("start requested; starting again once stopped".to_string()),
            }
        }

        // Explicit stop wins over everything, backoff included (its timer is dropped).
        (Starting | Running, Input::StopRequested) => stop(n, AfterStop::Stay, "stop requested"),
        (Stopping, Input::StopRequested) => {
            if n.after_stop == AfterStop::Stay {
                return ignore(life);
            }
            n.after_stop = AfterStop::Stay;
            Decision {
                next: n,
                action: ProcessOp::Nothing,
                reason: Some("stop requested".to_string()),
            }
        }
        (Backoff | Exited | Failed, Input::StopRequested) => {
            n.deadline = None;
            go(n, Stopped, ProcessOp::Nothing, "stop requested".to_string())
        }

        (Starting, Input::Spawned) => {
            if policy.start_duration.is_zero() {
                n.retries = 0;
                n.deadline = None;
                let reason = started(&mut n, "started".to_string());
                go(n, Running, ProcessOp::Nothing, reason)
            } else {
                n.deadline = Some(now + policy.start_duration);
                Decision {
                    next: n,
                    action: ProcessOp::Nothing,
                    reason: Some(format!(
                        "spawned; running once up for start_duration {}",
                        dur(policy.start_duration)
                    )),
                }
            }
        }
        (Starting, Input::SpawnFailed { error }) => {
            failed_start(n, format!("failed to start: {error}"), policy, now)
        }
        (Starting, Input::StartDurationElapsed) => {
            n.retries = 0;
            n.deadline = None;
            let reason = format!("up for start_duration {}", dur(policy.start_duration));
            let reason = started(&mut n, reason);
            go(n, Running, ProcessOp::Nothing, reason)
        }
        (
            Starting,
            Input::Exited {
                code,
                signal,
                uptime,
            },
        ) => {
            n.deadline = None;
            if *uptime < policy.start_duration {
                let what = format!(
                    "exited before start_duration {} ({})",
                    dur(policy.start_duration),
                    describe_exit(*code, *signal)
                );
                failed_start(n, what, policy, now)
            } else {
                started_exit(n, describe_exit(*code, *signal), *uptime, policy, now)
            }
        }

        (
            Running,
            Input::Exited {
                code,
                signal,
                uptime,
            },
        ) => started_exit(n, describe_exit(*code, *signal), *uptime, policy, now),
        (Running, Input::LivenessFailed { detail }) => {
            if policy.auto_restart {
                n.cause = Some(format!("liveness probe failed: {detail}"));
                stop(
                    n,
                    AfterStop::Restart,
                    &format!("liveness probe failed: {detail}; restarting"),
                )
            } else {
                stop(
                    n,
                    AfterStop::Exit,
                    &format!("liveness probe failed: {detail}; stopping (auto_restart is off)"),
                )
            }
        }
        (Running, Input::PostStartFailed { detail }) => {
            n.cause = None;
            stop(n, AfterStop::Fail, &format!("{detail}; stopping"))
        }
        (Stopping, Input::PreStopDone) if n.pre_stop => {
            n.pre_stop = false;
            n.deadline = Some(now + policy.stop_timeout);
            Decision {
                next: n,
                action: ProcessOp::SignalGroup,
                reason: Some("pre_stop hooks done; stop signal sent".to_string()),
            }
        }
        (Running, Input::Unhealthy { detail }) => {
            if policy.auto_restart {
                n.cause = Some(format!("unhealthy: {detail}"));
                stop(
                    n,
                    AfterStop::Restart,
                    &format!("unhealthy: {detail}; restarting"),
                )
            } else {
                Decision {
                    next: n,
                    action: ProcessOp::Nothing,
                    reason: Some(format!("unhealthy: {detail}")),
                }
            }
        }

        (Backoff, Input::BackoffElapsed) => {
            n.deadline = None;
            let why = match n.backoff_for {
                BackoffFor::Restart => {
                    n.restarts += 1;
                    "restarting"
                }
                BackoffFor::Retry => "retrying",
            };
            go(n, Starting, ProcessOp::Spawn, why.to_string())
        }

        (Stopping, Input::StopTimeout) => {
            n.deadline = None;
            Decision {
                next: n,
                action: ProcessOp::KillGroup,
                reason: Some(format!(
                    "still running stop_timeout {} after the stop signal; sent SIGKILL to the group",
                    dur(policy.stop_timeout)
                )),
            }
        }
        (Stopping, Input::Exited { code, signal, .. }) => {
            n.deadline = None;
            n.pre_stop = false;
            let after = std::mem::replace(&mut n.after_stop, AfterStop::Stay);
            let exit = describe_exit(*code, *signal);
            match after {
                AfterStop::Stay => go(n, Stopped, ProcessOp::Nothing, format!("stopped ({exit})")),
                AfterStop::Exit => go(n, Exited, ProcessOp::Nothing, format!("stopped ({exit})")),
                AfterStop::Fail => go(n, Failed, ProcessOp::Nothing, format!("stopped ({exit})")),
                AfterStop::Start => {
                    n.retries = 0;
                    n.restart_delay = policy.restart_interval;
                    go(
                        n,
                        Starting,
                        ProcessOp::Spawn,
                        format!("stopped ({exit}); starting again"),
                    )
                }
                AfterStop::Restart => {
                    n.restarts += 1;
                    go(
                        n,
                        Starting,
                        ProcessOp::Spawn,
                        format!("stopped ({exit}); restarting"),
                    )
                }
            }
        }

        (Stopped, Input::Adopted { pid }) => {
            n.probe_on_start = false;
            go(
                n,
                Running,
                ProcessOp::Nothing,
                format!("adopted pid {pid}, started by an earlier daemon"),
            )
        }

        // Everything else cannot happen or no longer matters (a stale timer, an exit with no
        // process, unhealthy outside `running`, a start while already starting).
        _ => ignore(life),
    }
}

/// The reason for reaching `running`, with the cause of the automatic restart that led here.
fn started(n: &mut Lifecycle, reason: String) -> String {
    match n.cause.take() {
        Some(cause) => format!("{reason} again after {cause}"),
        None => reason,
    }
}

/// A start failed (spawn error or exit before start_duration): retry or give up.
fn failed_start(mut n: Lifecycle, what: String, policy: &Policy, now: Instant) -> Decision {
    if n.retries < policy.retry_count {
        n.retries += 1;
        let reason = format!("{what}, retry {}/{}", n.retries, policy.retry_count);
        if policy.retry_interval.is_zero() {
            n.deadline = None;
            n.state = InstanceState::Starting;
            return Decision {
                next: n,
                action: ProcessOp::Spawn,
                reason: Some(reason),
            };
        }
        n.backoff_for = BackoffFor::Retry;
        n.deadline = Some(now + policy.retry_interval);
        n.state = InstanceState::Backoff;
        Decision {
            next: n,
            action: ProcessOp::Nothing,
            reason: Some(reason),
        }
    } else {
        n.deadline = None;
        n.state = InstanceState::Failed;
        let reason = if policy.retry_count == 0 {
            format!("{what}; not retried (retry_count 0)")
        } else {
            format!("{what}; gave up after {} retries", policy.retry_count)
        };
        Decision {
            next: n,
            action: ProcessOp::Nothing,
            reason: Some(reason),
        }
    }
}

/// A started process exited (`exit` says how): restart (after the current delay) or stay
/// `exited`.
fn started_exit(
    mut n: Lifecycle,
    exit: String,
    uptime: Duration,
    policy: &Policy,
    now: Instant,
) -> Decision {
    n.deadline = None;
    if !policy.auto_restart {
        n.state = InstanceState::Exited;
        return Decision {
            next: n,
            action: ProcessOp::Nothing,
            reason: Some(exit),
        };
    }
    if uptime >= policy.start_duration.saturating_add(STABLE_AFTER) {
        n.restart_delay = policy.restart_interval;
    }
    let delay = n.restart_delay.min(policy.restart_max_interval);
    n.restart_delay = n
        .restart_delay
        .checked_mul(2)
        .unwrap_or(Duration::MAX)
        .min(policy.restart_max_interval);
    if delay.is_zero() {
        // The fast path: no timer, the replacement is spawned by this very decision.
        n.restarts += 1;
        n.state = InstanceState::Starting;
        return Decision {
            next: n,
            action: ProcessOp::Spawn,
            reason: Some(format!("{exit}; restarting")),
        };
    }
    n.backoff_for = BackoffFor::Restart;
    n.deadline = Some(now + delay);
    n.state = InstanceState::Backoff;
    Decision {
        next: n,
        action: ProcessOp::Nothing,
        reason: Some(format!("{exit}; restarting in {}", dur(delay))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState::*;

    fn policy() -> Policy {
        Policy {
            start_duration: Duration::from_secs(1),
            retry_count: 3,
            retry_interval: Duration::from_secs(2),
            auto_restart: true,
            restart_interval: Duration::from_secs(1),
            restart_max_interval: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(10),
            probes: false,
            hooks_before_spawn: false,
            pre_stop: false,
        }
    }

    /// [`policy`] for a program with a `pidfile` or `command` detector.
    fn probing_policy() -> Policy {
        Policy {
            probes: true,
            ..policy()
        }
    }

    fn with_origin(state: InstanceState, origin: Origin) -> Lifecycle {
        let mut l = at(state);
        l.origin = origin;
        l
    }

    const LABEL: &str = "command:pgrep -f 'sleep 300'";

    fn elsewhere_running() -> Lifecycle {
        let mut l = with_origin(Running, Origin::Elsewhere(LABEL.into()));
        l.deadline = None;
        l
    }

    fn gone() -> Input {
        Input::ElsewhereGone {
            detail: format!("{LABEL} failed 3 times in a row: exited with code 1"),
        }
    }

    fn at(state: InstanceState) -> Lifecycle {
        let mut l = Lifecycle::new(0, &policy());
        l.state = state;
        if matches!(state, Starting | Backoff | Stopping) {
            l.deadline = Some(Instant::now());
        }
        l
    }

    fn exited(code: i32, uptime_ms: u64) -> Input {
        Input::Exited {
            code: Some(code),
            signal: None,
            uptime: Duration::from_millis(uptime_ms),
        }
    }

    fn all_inputs() -> Vec<Input> {
        vec![
            Input::StartRequested,
            Input::RestartRequested,
            Input::StopRequested,
            Input::Spawned,
            Input::SpawnFailed {
                error: "no such file".into(),
            },
            Input::Adopted { pid: 42 },
            Input::StartDurationElapsed,
            Input::BackoffElapsed,
            Input::StopTimeout,
            exited(1, 100),
            exited(0, 60_000),
            Input::Unhealthy {
                detail: "command:x failed 3 times".into(),
            },
            Input::DetectedElsewhere {
                label: LABEL.into(),
            },
            Input::NotDetected,
            gone(),
            Input::HooksDone,
            Input::HookFailed {
                detail: "pre_start hook `migrate` failed: exited with code 1".into(),
            },
            Input::PreStopDone,
            Input::PostStartFailed {
                detail: "post_start hook `warm` failed: exited with code 2".into(),
            },
            Input::LivenessFailed {
                detail: "http:http://x failed 3 times in a row: 500".into(),
            },
        ]
    }

    fn short(i: &Input) -> &'static str {
        match i {
            Input::StartRequested => "start",
            Input::RestartRequested => "restart",
            Input::StopRequested => "stop",
            Input::Spawned => "spawned",
            Input::SpawnFailed { .. } => "spawn_failed",
            Input::Adopted { .. } => "adopted",
            Input::StartDurationElapsed => "start_elapsed",
            Input::BackoffElapsed => "backoff_elapsed",
            Input::StopTimeout => "stop_timeout",
            Input::Exited { uptime, .. } if uptime.as_secs() > 10 => "exit_late",
            Input::Exited { .. } => "exit_early",
            Input::Unhealthy { .. } => "unhealthy",
            Input::DetectedElsewhere { .. } => "detected",
            Input::NotDetected => "not_detected",
            Input::ElsewhereGone { .. } => "gone",
            Input::HooksDone => "hooks_done",
            Input::HookFailed { .. } => "hook_failed",
            Input::PreStopDone => "pre_stop_done",
            Input::PostStartFailed { .. } => "post_start_failed",
            Input::LivenessFailed { .. } => "liveness",
        }
    }

    /// The whole table: (from, input) → (to, action), with retries left and `auto_restart` on.
    /// `None` means "ignored": same lifecycle, nothing to do, no reason.
    fn expected(from: InstanceState, input: &str) -> Option<(InstanceState, ProcessOp)> {
        use ProcessOp::*;
        Some(match (from, input) {
            (Stopped | Exited | Failed | Backoff, "start" | "restart") => (Starting, Spawn),
            (Starting | Running, "restart") => (Stopping, SignalGroup),
            (Stopping, "start" | "restart") => (Stopping, Nothing),
            (Starting | Running, "stop") => (Stopping, SignalGroup),
            (Backoff | Exited | Failed, "stop") => (Stopped, Nothing),
            (Starting, "spawned") => (Starting, Nothing),
            (Starting, "spawn_failed") => (Backoff, Nothing),
            (Starting, "start_elapsed") => (Running, Nothing),
            (Starting, "exit_early") => (Backoff, Nothing),
            (Starting, "exit_late") => (Backoff, Nothing),
            (Running, "exit_early" | "exit_late") => (Backoff, Nothing),
            (Running, "unhealthy" | "liveness" | "post_start_failed") => (Stopping, SignalGroup),
            (Backoff, "backoff_elapsed") => (Starting, Spawn),
            (Stopping, "stop_timeout") => (Stopping, KillGroup),
            (Stopping, "exit_early" | "exit_late") => (Stopped, Nothing),
            (Stopped, "adopted") => (Running, Nothing),
            _ => return None,
        })
    }

    /// The rows for instances without a process of ours: `starting` while probing the detectors
    /// before a first spawn, and `running` elsewhere (`auto_restart` on, restart_interval 1s).
    fn expected_without_process(
        origin: &Origin,
        input: &str,
    ) -> Option<(InstanceState, ProcessOp, Origin)> {
        use ProcessOp::*;
        let own = Origin::Own;
        Some(match (origin, input) {
            (Origin::Probing, "detected") => (Running, Nothing, Origin::Elsewhere(LABEL.into())),
            (Origin::Probing, "not_detected") => (Starting, Spawn, own),
            (Origin::Probing, "stop") => (Stopped, Nothing, own),
            (Origin::Elsewhere(_), "stop") => (Stopped, Nothing, own),
            (Origin::Elsewhere(_), "restart") => (Starting, Probe, Origin::Probing),
            (Origin::Elsewhere(_), "unhealthy" | "liveness") => (Running, Nothing, origin.clone()),
            (Origin::Hooks, "hooks_done") => (Starting, Spawn, own),
            (Origin::Hooks, "hook_failed") => (Failed, Nothing, own),
            (Origin::Hooks, "stop") => (Stopped, Nothing, own),
            (Origin::Elsewhere(_), "gone") => (Backoff, Nothing, own),
            _ => return None,
        })
    }

    #[test]
    fn instances_without_a_process_of_ours_follow_their_table() {
        let now = Instant::now();
        let lives = [
            with_origin(Starting, Origin::Probing),
            with_origin(Starting, Origin::Hooks),
            elsewhere_running(),
        ];
        for life in lives {
            for input in all_inputs() {
                let d = next(&life, &input, &probing_policy(), now);
                let what = format!("{} {:?} + {}", life.state, life.origin, short(&input));
                match expected_without_process(&life.origin, short(&input)) {
                    Some((to, action, origin)) => {
                        assert_eq!((d.next.state, d.action), (to, action), "{what}");
                        assert_eq!(d.next.origin, origin, "{what}");
                        assert!(d.reason.is_some(), "{what} has a reason");
                    }
                    None => {
                        assert_eq!(d.next, life, "{what} is ignored");
                        assert_eq!((d.action, d.reason), (ProcessOp::Nothing, None), "{what}");
                    }
                }
                assert!(
                    allowed(life.state, d.next.state),
                    "{what} → {} is not in TRANSITIONS",
                    d.next.state
                );
            }
        }
    }

    #[test]
    fn a_first_start_probes_when_the_program_has_detectors_and_spawns_if_none_passes() {
        let now = Instant::now();
        let p = probing_policy();
        let d = next(&at(Stopped), &Input::StartRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Probe));
        assert_eq!(d.next.origin, Origin::Probing);
        assert_eq!(d.next.deadline, None, "no timer while probing");
        assert!(d.is_transition(Stopped));
        let d = next(&d.next, &Input::NotDetected, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert!(
            d.is_transition(Starting),
            "the spawn is an event of its own"
        );
        assert_eq!(
            (d.next.origin.clone(), d.next.probe_on_start),
            (Origin::Own, false)
        );
        let d = next(&d.next, &Input::Spawned, &p, now);
        let life = next(&d.next, &Input::StartDurationElapsed, &p, now).next;
        assert_eq!(life.state, Running);

        // Once spawned, neither an explicit restart nor a stop and start probes again.
        let d = next(&life, &Input::RestartRequested, &p, now);
        let d = next(&d.next, &exited(143, 100), &p, now);
        assert_eq!(d.action, ProcessOp::Spawn);
        let d = next(&at_after(d.next, Running), &Input::StopRequested, &p, now);
        let d = next(&d.next, &exited(143, 100), &p, now);
        assert_eq!(d.next.state, Stopped);
        let d = next(&d.next, &Input::StartRequested, &p, now);
        assert_eq!(d.action, ProcessOp::Spawn);

        // A spawn that failed still counts as one: its retries do not probe.
        let d = next(&at(Stopped), &Input::StartRequested, &p, now);
        let d = next(&d.next, &Input::NotDetected, &p, now);
        let d = next(
            &d.next,
            &Input::SpawnFailed {
                error: "no such file".into(),
            },
            &p,
            now,
        );
        assert_eq!(d.next.state, Backoff);
        let d = next(&d.next, &Input::StartRequested, &p, now);
        assert_eq!(d.action, ProcessOp::Spawn);

        // Nothing to probe, or a process adopted by pid: spawn at once.
        let d = next(&at(Stopped), &Input::StartRequested, &policy(), now);
        assert_eq!(d.action, ProcessOp::Spawn);
        let d = next(&at(Stopped), &Input::Adopted { pid: 42 }, &p, now);
        assert!(!d.next.probe_on_start);
    }

    /// `life` moved to `state` (a shortcut past inputs the test is not about).
    fn at_after(mut life: Lifecycle, state: InstanceState) -> Lifecycle {
        life.state = state;
        life.deadline = None;
        life
    }

    #[test]
    fn a_passing_probe_is_running_elsewhere_until_its_detector_gives_up() {
        let now = Instant::now();
        let p = probing_policy();
        let d = next(&at(Stopped), &Input::StartRequested, &p, now);
        assert_eq!(
            d.reason.as_deref(),
            Some("start requested; probing the detectors first: is it already running elsewhere?")
        );
        let d = next(
            &d.next,
            &Input::DetectedElsewhere {
                label: LABEL.into(),
            },
            &p,
            now,
        );
        assert_eq!((d.next.state, d.action), (Running, ProcessOp::Nothing));
        assert_eq!(
            d.reason.as_deref(),
            Some("already running elsewhere (detected by command:pgrep -f 'sleep 300'); not started again")
        );
        assert!(d.next.probe_on_start, "still nothing of ours");
        let running = d.next;
        assert_eq!(
            next(&running, &Input::StartRequested, &p, now).next,
            running
        );

        // Gone, with auto_restart: the usual restart, after the base restart_interval.
        let d = next(&running, &gone(), &p, now);
        assert_eq!(d.next.state, Backoff);
        assert_eq!(d.next.deadline, Some(now + p.restart_interval));
        assert_eq!(
            d.reason.as_deref(),
            Some(
                "no longer running elsewhere: command:pgrep -f 'sleep 300' failed 3 times in a \
                 row: exited with code 1; restarting in 1s"
            )
        );
        let d = next(&d.next, &Input::BackoffElapsed, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert_eq!(d.next.restarts, 1, "counted as an automatic restart");
        assert!(!d.next.probe_on_start);

        // restart_interval 0: spawned by the same decision.
        let mut zero = probing_policy();
        zero.restart_interval = Duration::ZERO;
        let d = next(&running, &gone(), &zero, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert_eq!((d.next.restarts, d.next.origin.clone()), (1, Origin::Own));

        // Without auto_restart: exited, and a later start probes again (nothing of ours ran).
        let mut manual = probing_policy();
        manual.auto_restart = false;
        let d = next(&running, &gone(), &manual, now);
        assert_eq!((d.next.state, d.action), (Exited, ProcessOp::Nothing));
        let d = next(&d.next, &Input::StartRequested, &manual, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Probe));
    }

    #[test]
    fn stop_forgets_and_restart_probes_again_an_instance_running_elsewhere() {
        let now = Instant::now();
        let p = probing_policy();
        let d = next(&elsewhere_running(), &Input::StopRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Stopped, ProcessOp::Nothing));
        assert_eq!(d.next.deadline, None);
        assert!(d.reason.unwrap().ends_with("is left alone"));
        let d = next(&d.next, &Input::StartRequested, &p, now);
        assert_eq!(
            d.action,
            ProcessOp::Probe,
            "a start after the stop probes again"
        );

        let d = next(&elsewhere_running(), &Input::RestartRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Probe));
        assert_eq!(d.next.restarts, 0, "an explicit restart is not counted");
        let d = next(&d.next, &Input::RestartRequested, &p, now);
        assert_eq!(d.action, ProcessOp::Nothing, "already probing");

        // Another detector failing makes it unhealthy but cannot restart what is not ours.
        let d = next(
            &elsewhere_running(),
            &Input::Unhealthy {
                detail: "pidfile:/x failed 3 times in a row".into(),
            },
            &p,
            now,
        );
        assert_eq!((d.next.state, d.action), (Running, ProcessOp::Nothing));
        assert_eq!(
            d.reason.as_deref(),
            Some(
                "unhealthy: pidfile:/x failed 3 times in a row (running elsewhere: not restarted)"
            )
        );
    }

    #[test]
    fn every_state_and_input_follows_the_table() {
        let now = Instant::now();
        for from in InstanceState::ALL {
            for input in all_inputs() {
                let life = at(from);
                let d = next(&life, &input, &policy(), now);
                let what = format!("{from} + {}", short(&input));
                match expected(from, short(&input)) {
                    Some((to, action)) => {
                        assert_eq!((d.next.state, d.action), (to, action), "{what}");
                        assert!(d.reason.is_some(), "{what} has a reason");
                    }
                    None => {
                        assert_eq!(d.next, life, "{what} is ignored");
                        assert_eq!(d.action, ProcessOp::Nothing, "{what}");
                        assert_eq!(d.reason, None, "{what}");
                    }
                }
                assert!(
                    allowed(from, d.next.state),
                    "{what} → {} is not in TRANSITIONS",
                    d.next.state
                );
            }
        }
    }

    #[test]
    fn every_listed_transition_is_reachable() {
        // The table lists nothing `next` never does: each pair is produced by some input and policy.
        let now = Instant::now();
        let mut policies = vec![policy()];
        let mut p = policy();
        p.auto_restart = false;
        p.retry_count = 0;
        policies.push(p);
        let mut p = policy();
        p.restart_interval = Duration::ZERO;
        p.start_duration = Duration::ZERO;
        policies.push(p);
        let origins = [
            Origin::Own,
            Origin::Probing,
            Origin::Hooks,
            Origin::Elsewhere(LABEL.into()),
        ];
        for &(from, to) in TRANSITIONS {
            let mut found = false;
            for p in &policies {
                for after in [
                    AfterStop::Stay,
                    AfterStop::Start,
                    AfterStop::Exit,
                    AfterStop::Fail,
                ] {
                    for origin in &origins {
                        for input in all_inputs() {
                            let mut life = Lifecycle::new(0, p);
                            life.state = from;
                            life.after_stop = after;
                            life.origin = origin.clone();
                            if next(&life, &input, p, now).next.state == to {
                                found = true;
                            }
                        }
                    }
                }
            }
            assert!(found, "{from} → {to} is never produced");
        }
    }

    #[test]
    fn running_only_after_start_duration() {
        let now = Instant::now();
        let p = policy();
        let d = next(&at(Stopped), &Input::StartRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        let d = next(&d.next, &Input::Spawned, &p, now);
        assert_eq!(d.next.state, Starting);
        assert_eq!(d.next.deadline, Some(now + Duration::from_secs(1)));
        assert_eq!(d.next.timer_input(), Some(Input::StartDurationElapsed));
        let d = next(&d.next, &Input::StartDurationElapsed, &p, now);
        assert_eq!(d.next.state, Running);
        assert_eq!(d.next.deadline, None);

        let mut zero = policy();
        zero.start_duration = Duration::ZERO;
        let d = next(&at(Starting), &Input::Spawned, &zero, now);
        assert_eq!(d.next.state, Running);
    }

    #[test]
    fn failed_starts_are_retried_retry_count_times_then_fail() {
        let now = Instant::now();
        let p = policy();
        let mut life = at(Starting);
        for attempt in 1..=3 {
            let d = next(&life, &exited(1, 200), &p, now);
            assert_eq!(d.next.state, Backoff);
            assert_eq!(d.next.deadline, Some(now + p.retry_interval));
            assert_eq!(d.next.backoff_for, BackoffFor::Retry);
            assert_eq!(
                d.reason.as_deref(),
                Some(
                    format!(
                        "exited before start_duration 1s (exited with code 1), retry {attempt}/3"
                    )
                    .as_str()
                )
            );
            let d = next(&d.next, &Input::BackoffElapsed, &p, now);
            assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
            assert_eq!(d.next.restarts, 0, "retries are not restarts");
            life = d.next;
        }
        let d = next(&life, &exited(1, 200), &p, now);
        assert_eq!(d.next.state, Failed);
        assert!(d.reason.unwrap().contains("gave up after 3 retries"));

        // A spawn error is a failed start too; an explicit start resets the retries.
        let d = next(&d.next, &Input::StartRequested, &p, now);
        assert_eq!(d.next.retries, 0);
        let d = next(
            &d.next,
            &Input::SpawnFailed {
                error: "no such file".into(),
            },
            &p,
            now,
        );
        assert_eq!(d.next.state, Backoff);
        assert!(d
            .reason
            .unwrap()
            .starts_with("failed to start: no such file"));
    }

    #[test]
    fn zero_retry_interval_retries_at_once_and_zero_retry_count_fails_at_once() {
        let now = Instant::now();
        let mut p = policy();
        p.retry_interval = Duration::ZERO;
        let d = next(&at(Starting), &exited(1, 1), &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert!(d.is_transition(Starting));
        p.retry_count = 0;
        let d = next(&at(Starting), &exited(1, 1), &p, now);
        assert_eq!(d.next.state, Failed);
    }

    #[test]
    fn reaching_running_resets_retries() {
        let now = Instant::now();
        let mut life = at(Starting);
        life.retries = 2;
        let d = next(&life, &Input::StartDurationElapsed, &policy(), now);
        assert_eq!(d.next.retries, 0);
    }

    #[test]
    fn started_exit_without_auto_restart_is_exited() {
        let now = Instant::now();
        let mut p = policy();
        p.auto_restart = false;
        let d = next(&at(Running), &exited(0, 5000), &p, now);
        assert_eq!(d.next.state, Exited);
        assert_eq!(d.reason.as_deref(), Some("exited with code 0"));
        let d = next(
            &at(Running),
            &Input::Exited {
                code: None,
                signal: Some(9),
                uptime: Duration::from_secs(5),
            },
            &p,
            now,
        );
        assert_eq!(d.reason.as_deref(), Some("killed by SIGKILL"));
    }

    #[test]
    fn restart_delay_doubles_on_quick_crashes_caps_and_resets_after_stable_running() {
        let now = Instant::now();
        let p = policy(); // 1s, cap 5s, start_duration 1s: quick = under 11s
        let mut life = at(Running);
        let mut delays = vec![];
        for _ in 0..5 {
            let d = next(&life, &exited(1, 2000), &p, now);
            assert_eq!(d.next.state, Backoff);
            delays.push(d.next.deadline.unwrap() - now);
            let d = next(&d.next, &Input::BackoffElapsed, &p, now);
            let d = next(&d.next, &Input::Spawned, &p, now);
            life = next(&d.next, &Input::StartDurationElapsed, &p, now).next;
        }
        let secs: Vec<u64> = delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
        assert_eq!(life.restarts, 5);
        // A crash after start_duration + 10s of running is back to the base delay.
        let d = next(&life, &exited(1, 11_000), &p, now);
        assert_eq!(d.next.deadline, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn zero_restart_interval_restarts_immediately_without_a_timer() {
        let now = Instant::now();
        let mut p = policy();
        p.restart_interval = Duration::ZERO;
        p.start_duration = Duration::ZERO;
        let mut life = Lifecycle::new(0, &p);
        life.state = Running;
        for i in 1..=3u64 {
            let d = next(&life, &exited(137, 1), &p, now);
            assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
            assert_eq!(d.next.deadline, None);
            assert_eq!(d.next.restarts, i);
            life = next(&d.next, &Input::Spawned, &p, now).next;
            assert_eq!(life.state, Running);
        }
    }

    #[test]
    fn stop_wins_over_backoff_and_pending_restarts() {
        let now = Instant::now();
        let p = policy();
        let d = next(&at(Running), &exited(1, 100), &p, now);
        assert_eq!(d.next.state, Backoff);
        let d = next(&d.next, &Input::StopRequested, &p, now);
        assert_eq!(d.next.state, Stopped);
        assert_eq!(d.next.deadline, None, "the backoff timer is cancelled");
        assert_eq!(d.next.timer_input(), None);
        // A late timer firing is ignored.
        let d2 = next(&d.next, &Input::BackoffElapsed, &p, now);
        assert_eq!(d2.next, d.next);

        // Unhealthy restart, then stop while stopping: the restart is cancelled.
        let d = next(
            &at(Running),
            &Input::Unhealthy { detail: "x".into() },
            &p,
            now,
        );
        assert_eq!(d.next.after_stop, AfterStop::Restart);
        let d = next(&d.next, &Input::StopRequested, &p, now);
        let d = next(&d.next, &exited(143, 100), &p, now);
        assert_eq!(d.next.state, Stopped);
        assert_eq!(d.next.restarts, 0);
    }

    #[test]
    fn stop_escalates_to_sigkill_after_stop_timeout() {
        let now = Instant::now();
        let p = policy();
        let d = next(&at(Running), &Input::StopRequested, &p, now);
        assert_eq!(d.action, ProcessOp::SignalGroup);
        assert_eq!(d.next.deadline, Some(now + p.stop_timeout));
        assert_eq!(d.next.timer_input(), Some(Input::StopTimeout));
        let d = next(&d.next, &Input::StopTimeout, &p, now);
        assert_eq!((d.next.state, d.action), (Stopping, ProcessOp::KillGroup));
        assert_eq!(d.next.deadline, None);
        assert!(!d.is_transition(Stopping));
        let d = next(
            &d.next,
            &Input::Exited {
                code: None,
                signal: Some(9),
                uptime: Duration::from_secs(20),
            },
            &p,
            now,
        );
        assert_eq!(d.next.state, Stopped);
        assert_eq!(d.reason.as_deref(), Some("stopped (killed by SIGKILL)"));
    }

    #[test]
    fn restart_requests_stop_then_start_without_counting() {
        let now = Instant::now();
        let p = policy();
        let d = next(&at(Running), &Input::RestartRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Stopping, ProcessOp::SignalGroup));
        let d = next(&d.next, &exited(143, 100), &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert_eq!(d.next.restarts, 0);
        assert_eq!(d.next.after_stop, AfterStop::Stay);

        // Unhealthy with auto_restart counts.
        let d = next(
            &at(Running),
            &Input::Unhealthy { detail: "x".into() },
            &p,
            now,
        );
        let d = next(&d.next, &exited(143, 100), &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert_eq!(d.next.restarts, 1);
    }

    #[test]
    fn unhealthy_without_auto_restart_keeps_running() {
        let now = Instant::now();
        let mut p = policy();
        p.auto_restart = false;
        let d = next(
            &at(Running),
            &Input::Unhealthy {
                detail: "pidfile:/x failed 3 times in a row".into(),
            },
            &p,
            now,
        );
        assert_eq!((d.next.state, d.action), (Running, ProcessOp::Nothing));
        assert_eq!(
            d.reason.as_deref(),
            Some("unhealthy: pidfile:/x failed 3 times in a row")
        );
    }

    #[test]
    fn exit_in_starting_after_start_duration_counts_as_started() {
        // The exit raced the start_duration timer: the process did live long enough.
        let now = Instant::now();
        let mut p = policy();
        p.auto_restart = false;
        let d = next(&at(Starting), &exited(0, 1500), &p, now);
        assert_eq!(d.next.state, Exited);
    }

    /// [`policy`] for a program with hooks around its starts and stops.
    fn hooks_policy() -> Policy {
        Policy {
            hooks_before_spawn: true,
            pre_stop: true,
            ..policy()
        }
    }

    #[test]
    fn every_spawn_waits_for_the_hooks_before_it_and_a_failing_one_keeps_it_from_starting() {
        let now = Instant::now();
        let p = hooks_policy();
        let d = next(&at(Stopped), &Input::StartRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::RunHooks));
        assert_eq!(
            (d.next.origin.clone(), d.next.deadline),
            (Origin::Hooks, None)
        );
        assert!(d.is_transition(Stopped));
        let d = next(&d.next, &Input::HooksDone, &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert_eq!(d.next.origin, Origin::Own);
        // A crash restart with no delay waits for the hooks too (post_stop, then pre_start).
        let mut zero = hooks_policy();
        zero.restart_interval = Duration::ZERO;
        let d = next(&at(Running), &exited(1, 20_000), &zero, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::RunHooks));
        assert_eq!(d.next.restarts, 1);
        // A failing pre_start hook: failed at once, no retries, with the hook's words.
        let d = next(
            &d.next,
            &Input::HookFailed {
                detail: "pre_start hook `migrate` failed: exited with code 1: no table".into(),
            },
            &p,
            now,
        );
        assert_eq!((d.next.state, d.action), (Failed, ProcessOp::Nothing));
        assert_eq!(
            d.reason.as_deref(),
            Some("pre_start hook `migrate` failed: exited with code 1: no table; not started")
        );
        // A stop while the hooks run: stopped, nothing to signal.
        let d = next(&at(Stopped), &Input::StartRequested, &p, now);
        let d = next(&d.next, &Input::StopRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Stopped, ProcessOp::Nothing));
        assert_eq!(d.next.origin, Origin::Own);
    }

    #[test]
    fn the_stop_signal_waits_for_the_pre_stop_hooks_and_stop_timeout_counts_from_it() {
        let now = Instant::now();
        let p = hooks_policy();
        let d = next(&at(Running), &Input::StopRequested, &p, now);
        assert_eq!((d.next.state, d.action), (Stopping, ProcessOp::PreStop));
        assert_eq!(d.next.deadline, None, "no stop_timeout while the hooks run");
        let later = now + Duration::from_secs(3);
        let d = next(&d.next, &Input::PreStopDone, &p, later);
        assert_eq!((d.next.state, d.action), (Stopping, ProcessOp::SignalGroup));
        assert_eq!(d.next.deadline, Some(later + p.stop_timeout));
        // A late or second PreStopDone signals nothing more.
        let again = next(&d.next, &Input::PreStopDone, &p, later);
        assert_eq!(again.action, ProcessOp::Nothing);
        // The process may exit while the hooks still run.
        let d = next(&at(Running), &Input::StopRequested, &p, now);
        let d = next(&d.next, &exited(0, 5000), &p, now);
        assert_eq!(d.next.state, Stopped);
        assert!(!d.next.pre_stop);
    }

    #[test]
    fn a_failing_liveness_probe_restarts_under_the_restart_policy() {
        let now = Instant::now();
        let p = policy();
        let failed = Input::LivenessFailed {
            detail: "tcp:127.0.0.1:9 failed 3 times in a row: connection refused".into(),
        };
        let d = next(&at(Running), &failed, &p, now);
        assert_eq!((d.next.state, d.action), (Stopping, ProcessOp::SignalGroup));
        assert!(d
            .reason
            .as_deref()
            .unwrap()
            .starts_with("liveness probe failed: tcp:"));
        let d = next(&d.next, &exited(143, 20_000), &p, now);
        assert_eq!((d.next.state, d.action), (Starting, ProcessOp::Spawn));
        assert_eq!(d.next.restarts, 1, "an automatic restart");
        let d = next(&d.next, &Input::Spawned, &p, now);
        let d = next(&d.next, &Input::StartDurationElapsed, &p, now);
        assert_eq!(
            d.reason.as_deref(),
            Some("up for start_duration 1s again after liveness probe failed: tcp:127.0.0.1:9 failed 3 times in a row: connection refused")
        );
        // Without auto_restart: stopped, and it stays exited.
        let mut manual = policy();
        manual.auto_restart = false;
        let d = next(&at(Running), &failed, &manual, now);
        assert_eq!(d.next.after_stop, AfterStop::Exit);
        let d = next(&d.next, &exited(143, 20_000), &manual, now);
        assert_eq!((d.next.state, d.action), (Exited, ProcessOp::Nothing));
        // A failing post_start hook: stopped and failed.
        let d = next(
            &at(Running),
            &Input::PostStartFailed {
                detail: "post_start hook `warm` failed: timed out after 30s".into(),
            },
            &p,
            now,
        );
        let d = next(&d.next, &exited(143, 100), &p, now);
        assert_eq!(d.next.state, Failed);
    }

    #[test]
    fn states_serialize_snake_case() {
        let json = serde_json::to_string(&InstanceState::ALL).unwrap();
        assert_eq!(
            json,
            r#"["stopped","starting","running","backoff","stopping","exited","failed"]"#
        );
    }
}
