//! The actor of one instance: the only code that touches its process.
//!
//! It waits on a handful of things at once — a command, the child's exit (pidfd), its one
//! lifecycle timer, and only when the program has them: a detector's health probe or the probe
//! that precedes a first spawn, a readiness or liveness probe (`probe.rs`), a batch of hooks
//! (`hooks.rs`) — turns each into an [`Input`] for the pure [`state::next`], and carries out the
//! decision. Nothing here polls: an instance with no detectors, no probes and no pending timer
//! costs one parked task and one pidfd.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{HookPhase, InstanceId, ProgramSpec};

use super::health::{probe_detectors, Health, HealthChange, ProbeResult};
use super::hooks::{HookContext, HookRunner};
use super::inbox::Inbox;
use super::probe::{ProbeChange, Probes, Which};
use super::process::{
    is_alive, kill_group, parse_signal, proc_pgid, proc_start_time, start_time_to_wall, ExitInfo,
    Group, ProcessWatch,
};
use super::reaper::{kill_escapees, poke_reaper, set_ended};
use super::spawn::{
    spawn_instance, PipeReservation, SpawnError, STDERR_KEEPALIVE_FD, STDOUT_KEEPALIVE_FD,
};
use super::state::{self, Input, InstanceState, Lifecycle, Origin, Policy, ProcessOp};
use super::tag::signal_instance;
use super::{Command, Event, Initial, InstanceStatus, RuntimeContext};

/// What an event says besides its states and reason (see [`Event`]).
#[derive(Clone, Copy, Debug, Default)]
struct Facts {
    exit: Option<ExitInfo>,
    restart: bool,
    healthy: Option<bool>,
    spawn: bool,
}

/// The process an actor currently owns.
struct LiveChild {
    watch: ProcessWatch,
    /// When it started, for the uptime rules (start_duration, stable running).
    started: Instant,
    /// Its share of enlarged pipe buffers, given back when it is reaped.
    _pipes: PipeReservation,
}

pub(super) struct Actor {
    id: InstanceId,
    spec: Arc<ProgramSpec>,
    policy: Policy,
    stop_signal: Signal,
    ctx: RuntimeContext,
    life: Lifecycle,
    child: Option<LiveChild>,
    health: Health,
    /// The probe before a first spawn (`Origin::Probing`): the label of the detector that passed.
    /// Dropping the handle abandons the probe; it still runs to its end and reaps its shell.
    probe: Option<JoinHandle<Option<String>>>,
    /// Readiness and liveness probes, armed while `running`.
    probes: Probes,
    hooks: HookRunner,
    hook_ctx: HookContext,
    /// The working copy of the status; published through `tx` when it changes.
    status: InstanceStatus,
    tx: watch::Sender<InstanceStatus>,
    inbox: Inbox,
    shutting_down: bool,
    /// The group of our own child, shared with the handle that may send the stop signal.
    group: Arc<Group>,
    /// The stop signal of the stop being applied was sent already (by the handle).
    stop_sent: bool,
    /// The launch of the latest start or restart taken in, which the next spawn carries out.
    launch: Option<u64>,
    /// Our own last process exited and what it left outside its group may still run: killed
    /// before the next spawn (the orphan reaper, woken at the exit, usually has already).
    leftovers: bool,
}

impl Actor {
    pub(super) fn new(
        id: InstanceId,
        spec: Arc<ProgramSpec>,
        ctx: RuntimeContext,
        restarts: u64,
        tx: watch::Sender<InstanceStatus>,
        inbox: Inbox,
        group: Arc<Group>,
    ) -> Actor {
        let policy = Policy::of(&spec);
        let status = tx.borrow().clone();
        let stop_signal = stop_signal_of(&spec);
        group.set_stop_signal(direct_stop(&spec, stop_signal));
        let hook_ctx = HookContext {
            id: id.clone(),
            state_dir: ctx.state_dir.clone(),
            sink: Arc::clone(&ctx.output),
            counters: Arc::clone(&ctx.counters),
        };
        Actor {
            stop_signal,
            group,
            stop_sent: false,
            leftovers: false,
            launch: None,
            health: Health::new(&spec.detectors),
            probes: Probes::new(&spec),
            hooks: HookRunner::default(),
            hook_ctx,
            life: Lifecycle::new(restarts, &policy),
            policy,
            id,
            spec,
            ctx,
            child: None,
            probe: None,
            status,
            tx,
            inbox,
            shutting_down: false,
        }
    }

    /// Takes the instance to its initial state, synchronously: an adopted process is `running`
    /// (or the instance `stopped`, saying why) before the handle is returned, so the first
    /// reconcile pass already sees what the instance runs.
    pub(super) fn begin(&mut self, initial: Initial) {
        match initial {
            Initial::Fresh { .. } => {}
            Initial::Adopt {
                pid, start_time, ..
            } => self.adopt(pid, start_time),
            Initial::Finished {
                failed,
                exit,
                message,
                ..
            } => {
                self.life.state = if failed {
                    InstanceState::Failed
                } else {
                    InstanceState::Exited
                };
                self.status.last_exit = exit;
                self.status.message = message;
                self.publish();
            }
        }
    }

    /// The actor's life, until shutdown or detach. An `async move` block rather than an `async
    /// fn`: an `async fn` keeps its by-value `self` twice in its future (the argument and the
    /// local it moves into), a thousand running instances' worth of it (`docs/benchmarks.md`).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            loop {
                // A shutdown ends the actor once the process is gone and its post_stop hooks ran.
                if self.shutting_down
                    && self.child.is_none()
                    && !self.life.state.has_process()
                    && self.hooks.idle()
                {
                    return;
                }
                // One timer for the three kinds of due work, the earliest first (the state
                // machine's on a tie): each timer is a hundred bytes of every actor's future.
                let (due, timer) = [
                    (self.life.deadline, Timer::Life),
                    (self.health.next_due(), Timer::Detectors),
                    (self.probes.next_due(), Timer::Probes),
                ]
                .into_iter()
                .filter_map(|(at, timer)| Some((at?, timer)))
                .min_by_key(|&(at, _)| at)
                .unzip();
                tokio::select! {
                    command = self.inbox.recv() => match command {
                        Some(command) => self.command(command).await,
                        // The handle is gone (detach): end without touching the child.
                        None => return,
                    },
                    exit = wait_exit(self.child.as_ref()) => self.on_exit(exit).await,
                    () = sleep_until(due) => match timer {
                        Some(Timer::Life) => match self.life.timer_input() {
                            Some(input) => self.apply(input).await,
                            None => self.life.deadline = None,
                        },
                        Some(Timer::Detectors) => {
                            self.health.start_due(&self.spec, &self.id, self.ctx.state_dir.as_ref())
                        }
                        Some(Timer::Probes) => {
                            let dir = self.ctx.state_dir.clone();
                            self.probes.start_due(Instant::now(), &self.spec, &self.id, dir.as_ref());
                        }
                        None => {}
                    },
                    (index, result) = self.health.probe_finished() => {
                        self.on_probe(index, result).await
                    }
                    found = wait_probe(self.probe.as_mut()) => {
                        self.probe = None;
                        let input = match found {
                            Ok(Some(label)) => Input::DetectedElsewhere { label },
                            Ok(None) => Input::NotDetected,
                            Err(e) => {
                                tracing::warn!(instance = %self.id.name, error = %e, "the detector probe failed; treating the program as not running elsewhere");
                                Input::NotDetected
                            }
                        };
                        self.apply(input).await;
                    }
                    (which, result) = self.probes.finished() => {
                        self.on_probe_result(which, result).await
                    }
                    (phase, result) = self.hooks.finished() => {
                        self.on_hooks(phase, result).await;
                        self.hooks.start_next(&self.hook_ctx);
                    }
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            // Once shutting down, nothing starts again.
            Command::Start(_) | Command::Restart(_) if self.shutting_down => {}
            Command::Start(launch) => {
                self.launch = launch;
                self.apply(Input::StartRequested).await
            }
            Command::Restart(launch) => {
                self.launch = launch;
                self.apply(Input::RestartRequested).await
            }
            Command::Stop => self.stop().await,
            Command::Shutdown => {
                self.shutting_down = true;
                self.stop().await;
            }
            Command::UpdateSpec(spec) => self.update_spec(spec).await,
        }
    }

    /// A stop: the stop signal goes to the group unless whoever asked sent it already.
    async fn stop(&mut self) {
        self.stop_sent = self.stop_was_sent();
        self.apply(Input::StopRequested).await;
        self.stop_sent = false;
    }

    /// Whether the handle sent the stop signal to our current child (forgetting it).
    fn stop_was_sent(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| self.group.take_stop_sent(c.watch.pid()))
    }

    /// Feeds `input` to the state machine and carries out the decisions, following up spawn
    /// results until the machine settles.
    async fn apply(&mut self, input: Input) {
        let mut next = Some(input);
        while let Some(input) = next.take() {
            if self.step(input) {
                // Boxed for the moment it runs: every await of the actor nests this future, so
                // kept inline it would grow every idle actor by its size (`docs/benchmarks.md`,
                // memory), for one allocation per spawn.
                next = Some(match Box::pin(self.spawn()).await {
                    Ok(()) => Input::Spawned,
                    Err(e) => Input::SpawnFailed {
                        error: e.to_string(),
                    },
                });
            }
        }
    }

    /// One input: the decision and its action, the event, the published status. A spawn is
    /// left to the caller, after the status says `starting` (it may wait for the spawner), and
    /// its result is the next input; returns whether the decision is to spawn.
    fn step(&mut self, input: Input) -> bool {
        let from = self.life.state;
        let restarts = self.life.restarts;
        let was_elsewhere = matches!(self.life.origin, Origin::Elsewhere(_));
        let was_hooks = self.life.origin == Origin::Hooks;
        let came_up = matches!(input, Input::Spawned | Input::StartDurationElapsed);
        let decision = state::next(&self.life, &input, &self.policy, Instant::now());
        let transition = decision.is_transition(from);
        let facts = Facts {
            exit: match input {
                Input::Exited { code, signal, .. } => Some(ExitInfo { code, signal }),
                _ => None,
            },
            restart: decision.next.restarts > restarts,
            // Only a running instance is probed, and only the first crossing of the threshold
            // is an input: every `Unhealthy` the machine accepts is a change of health.
            healthy: matches!(input, Input::Unhealthy { .. }).then_some(false),
            spawn: decision.action == ProcessOp::Spawn,
        };
        self.life = decision.next;
        match (was_elsewhere, &self.life.origin) {
            (false, Origin::Elsewhere(_)) => {
                // Not our process: when it started is unknown.
                self.status.started_at = None;
            }
            (true, Origin::Elsewhere(_)) | (false, _) => {}
            (true, _) => self.status.stopped_at = Some(SystemTime::now()),
        }
        if self.life.origin != Origin::Probing {
            self.probe = None;
        }
        if was_hooks && self.life.origin != Origin::Hooks && decision.action != ProcessOp::Spawn {
            // Stopped (or failed) while the hooks before a spawn ran: they are abandoned.
            self.hooks.abandon(HookPhase::PreStart, &self.hook_ctx);
        }
        match decision.action {
            ProcessOp::Nothing | ProcessOp::Spawn => {}
            ProcessOp::SignalGroup if std::mem::take(&mut self.stop_sent) => {}
            ProcessOp::SignalGroup => self.signal(self.stop_signal),
            ProcessOp::KillGroup => self.signal(Signal::SIGKILL),
            ProcessOp::Probe => self.start_probe(),
            ProcessOp::RunHooks => self
                .hooks
                .push(HookPhase::PreStart, &self.spec, &self.hook_ctx),
            ProcessOp::PreStop => self
                .hooks
                .push(HookPhase::PreStop, &self.spec, &self.hook_ctx),
        }
        let up = came_up && from != InstanceState::Running;
        if up && self.life.state == InstanceState::Running && !self.spec.hooks.post_start.is_empty()
        {
            self.hooks
                .push(HookPhase::PostStart, &self.spec, &self.hook_ctx);
        }
        if let Some(reason) = &decision.reason {
            self.status.message = Some(reason.clone());
        }
        self.sync_health();
        let spawn = decision.action == ProcessOp::Spawn;
        // A spawn's result is the next step, published at once: the loop wakes for that one.
        self.publish_status(!spawn);
        // After the status: whoever reads the event and then the status finds it as new.
        if let Some(reason) = decision.reason {
            let to = self.life.state;
            if transition || facts.healthy.is_some() {
                self.emit(from, to, &reason, facts);
            } else {
                tracing::info!(instance = %self.id.name, state = %to, %reason, "instance update");
            }
        }
        spawn
    }

    /// A batch of hooks has run: its phase's step of the lifecycle follows.
    async fn on_hooks(&mut self, phase: HookPhase, result: Result<(), String>) {
        match (phase, result) {
            (HookPhase::PreStart, Ok(())) => self.apply(Input::HooksDone).await,
            (HookPhase::PreStart, Err(detail)) => self.apply(Input::HookFailed { detail }).await,
            (HookPhase::PostStart, Err(detail)) => {
                self.apply(Input::PostStartFailed { detail }).await
            }
            (HookPhase::PreStop, result) => {
                if let Err(detail) = result {
                    tracing::warn!(instance = %self.id.name, "{detail}; stopping anyway");
                }
                self.apply(Input::PreStopDone).await;
            }
            (HookPhase::PostStop, Err(detail)) => {
                tracing::warn!(instance = %self.id.name, "{detail}");
                if !self.life.state.has_process() {
                    let before = self.status.message.take().unwrap_or_default();
                    self.status.message = Some(format!("{before}; {detail}"));
                    self.publish();
                }
            }
            (HookPhase::PostStart | HookPhase::PostStop, Ok(())) => {}
        }
    }

    /// A probe result: readiness changes `ready` (and `healthy`) with an event; a failing
    /// liveness probe is an input of the lifecycle.
    async fn on_probe_result(&mut self, which: Which, result: Result<(), String>) {
        if self.life.state != InstanceState::Running {
            return;
        }
        let counters = Arc::clone(&self.ctx.counters);
        let change = self.probes.record(which, result, Instant::now(), &counters);
        let state = self.life.state;
        match (which, change) {
            (_, ProbeChange::Unchanged) | (Which::Liveness, ProbeChange::Passing(_)) => {}
            (Which::Liveness, ProbeChange::Failing(detail)) => {
                self.apply(Input::LivenessFailed { detail }).await
            }
            (Which::Readiness, ProbeChange::Passing(reason)) => {
                let facts = Facts {
                    healthy: Some(true),
                    ..Facts::default()
                };
                let reason = format!("ready: {reason}");
                self.status.message = Some(reason.clone());
                self.publish();
                self.emit(state, state, &reason, facts);
            }
            (Which::Readiness, ProbeChange::Failing(detail)) => {
                let facts = Facts {
                    healthy: Some(false),
                    ..Facts::default()
                };
                let reason = format!("not ready: readiness probe {detail}");
                self.status.message = Some(reason.clone());
                self.publish();
                self.emit(state, state, &reason, facts);
            }
        }
    }

    /// Readiness and liveness probes run exactly while the instance is `running`.
    fn sync_probes(&mut self) {
        let running = self.life.state == InstanceState::Running;
        if running && !self.probes.armed() {
            self.probes.arm(Instant::now());
        } else if !running && self.probes.armed() {
            self.probes.disarm();
        }
    }

    /// Probes the detectors of the current spec, abandoning any probe still running.
    fn start_probe(&mut self) {
        let (spec, id) = (Arc::clone(&self.spec), self.id.clone());
        let dir = self.ctx.state_dir.clone();
        self.probe = Some(tokio::spawn(async move {
            probe_detectors(&spec, &id, dir.as_deref()).await
        }));
    }

    async fn spawn(&mut self) -> Result<(), SpawnError> {
        if std::mem::take(&mut self.leftovers) {
            // What the last process left outside its group, before anything starts again.
            self.kill_leftovers(true);
        }
        // Marked as having a process before it exists: what it forks and orphans at once (a
        // double fork) reaches the daemon, and the orphan reaper kills the orphans of ended
        // instances only.
        self.set_ended(false);
        let spawned = spawn_instance(&self.spec, &self.id, self.ctx.state_dir.as_deref()).await;
        let mut spawned = spawned.inspect_err(|_| self.set_ended(true))?;
        spawned.watch.share_group(self.group.clone());
        if let (Some(journal), Some(start_time)) = (&self.ctx.launches, spawned.start_time) {
            journal.launched(
                &self.id.name,
                spawned.pid,
                start_time,
                self.launch.unwrap_or(0),
            );
        }
        self.probes.process_started(&self.ctx.output);
        self.ctx.output.attach(spawned.stdout, spawned.stderr);
        self.status.pid = Some(spawned.pid);
        self.status.pid_start_time = spawned.start_time;
        self.status.spawned_spec = Some(Arc::clone(&self.spec));
        self.status.launch = self.launch;
        self.status.started_at = Some(SystemTime::now());
        if let Some(path) = &self.spec.pid_file {
            if let Err(e) = write_pid_file(path, spawned.pid) {
                tracing::warn!(instance = %self.id.name, path = %path.display(), "cannot write the pid_file: {e}");
            }
        }
        self.child = Some(LiveChild {
            watch: spawned.watch,
            started: Instant::now(),
            _pipes: spawned.pipes,
        });
        Ok(())
    }

    /// Signals the child's process group; falls back to the process alone if it no longer leads a
    /// group (an adopted program that moved itself to another group).
    ///
    /// Our own child cannot be mistaken: until this actor reaps it, its pid (the group id) stays
    /// reserved, zombie or not. An adopted process is reaped by someone else the moment it exits,
    /// after which its pid and group id may be reused, so it is signalled through its pidfd, and
    /// its group by number only while the pidfd says it has not exited; once it has, what is left
    /// of the instance is found by its tag and signalled process by process, also by pidfd.
    fn signal(&self, sig: Signal) {
        let Some(child) = &self.child else { return };
        let watch = &child.watch;
        let pid = watch.pid();
        if watch.own() {
            if !kill_group(pid, sig) && is_alive(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        } else if !watch.has_exited() {
            if proc_pgid(pid) != Some(pid) || !kill_group(pid, sig) {
                watch.send_signal(sig);
            }
        } else if let Some(dir) = &self.ctx.state_dir {
            signal_instance(dir, &self.id.name, sig);
        }
    }

    async fn on_exit(&mut self, exit: io::Result<ExitInfo>) {
        // A stop whose signal the handle sent is taken in first: the exit is its result, never
        // a crash to restart from.
        if self.stop_was_sent() {
            self.stop_sent = true;
            let spawn = self.step(Input::StopRequested);
            debug_assert!(!spawn, "a stop never spawns");
            self.stop_sent = false;
        }
        let Some(child) = self.child.take() else {
            return;
        };
        let exit = exit.unwrap_or_else(|e| {
            tracing::warn!(instance = %self.id.name, error = %e, "cannot wait for the process; treating it as exited");
            ExitInfo::default()
        });
        self.set_ended(true);
        if child.watch.own() {
            // Its escapees were re-parented to the daemon: the next spawn kills them first, and
            // when none follows at once, the orphan reaper, asked below, kills those of an
            // ended instance in one pass for many exits.
            self.leftovers = true;
        } else {
            self.kill_leftovers(false);
        }
        if let Some(path) = &self.spec.pid_file {
            remove_pid_file(path, child.watch.pid());
        }
        if !self.spec.hooks.post_stop.is_empty() {
            // Queued before anything the exit leads to, so a restart's pre_start runs after it.
            self.hooks
                .push(HookPhase::PostStop, &self.spec, &self.hook_ctx);
        }
        self.status.pid = None;
        self.status.pid_start_time = None;
        self.status.spawned_spec = None;
        self.status.launch = None;
        self.status.last_exit = Some(exit);
        self.status.stopped_at = Some(SystemTime::now());
        self.apply(Input::Exited {
            code: exit.code,
            signal: exit.signal,
            uptime: child.started.elapsed(),
        })
        .await;
        if self.leftovers {
            poke_reaper();
        }
    }

    /// Tells the orphan reaper whether this instance has a process (see `reaper.rs`).
    fn set_ended(&self, ended: bool) {
        if let Some(dir) = &self.ctx.state_dir {
            set_ended(dir, &self.id.name, ended);
        }
    }

    /// After the instance's process exited: kills what it left outside its process group (its
    /// group was killed already, if it was ours), before anything is spawned again, so nothing
    /// tagged with this instance's name is left but what the next spawn starts. Our own child's
    /// escapees were re-parented to the daemon (a subreaper); an adopted process's leftovers are
    /// wherever they are, and found by a scan of `/proc` at its exit.
    fn kill_leftovers(&self, own: bool) {
        let Some(dir) = &self.ctx.state_dir else {
            return;
        };
        let killed = if own {
            kill_escapees(dir, &self.id.name)
        } else {
            signal_instance(dir, &self.id.name, Signal::SIGKILL)
        };
        if killed > 0 {
            tracing::info!(instance = %self.id.name, killed, "killed what the exited process left running outside its process group");
        }
    }

    async fn on_probe(&mut self, index: usize, result: ProbeResult) {
        if self.life.state != InstanceState::Running {
            return;
        }
        let change = self.health.record(index, result, Instant::now());
        // Running elsewhere rests on the detector that found it; once that one fails
        // `failure_threshold` times in a row the process is treated as gone.
        if let Origin::Elsewhere(label) = &self.life.origin {
            if self.health.index_of(label) == Some(index) {
                if let Some(detail) = self.health.just_reached_threshold(index) {
                    self.apply(Input::ElsewhereGone { detail }).await;
                    return;
                }
            }
        }
        match change {
            HealthChange::Unchanged => {}
            HealthChange::BecameUnhealthy(detail) => {
                self.apply(Input::Unhealthy { detail }).await;
            }
            HealthChange::BecameHealthy => {
                let reason = "healthy again";
                let state = self.life.state;
                let facts = Facts {
                    healthy: Some(true),
                    ..Facts::default()
                };
                self.status.message = Some(reason.to_string());
                self.publish();
                self.emit(state, state, reason, facts);
            }
        }
    }

    /// Probing runs exactly while the instance is `running`.
    fn sync_health(&mut self) {
        let running = self.life.state == InstanceState::Running;
        if running && !self.health.armed() {
            self.health.arm(Instant::now());
        } else if !running && self.health.armed() {
            self.health.disarm();
        }
        self.sync_probes();
    }

    async fn update_spec(&mut self, spec: Arc<ProgramSpec>) {
        let old = std::mem::replace(&mut self.spec, spec);
        // A change that needs no restart applies to the running process at once; one that does
        // (command, environment, directory) only to the next spawn.
        if self.status.spawned_spec.is_some() && same_launch(&old, &self.spec) {
            self.status.spawned_spec = Some(Arc::clone(&self.spec));
            self.publish();
        }
        self.policy = Policy::of(&self.spec);
        self.stop_signal = stop_signal_of(&self.spec);
        self.group
            .set_stop_signal(direct_stop(&self.spec, self.stop_signal));
        if old.restart_interval != self.spec.restart_interval {
            self.life.restart_delay = self.policy.restart_interval;
        }
        if old.readiness != self.spec.readiness || old.liveness != self.spec.liveness {
            self.probes.disarm();
            self.probes = Probes::new(&self.spec);
            if self.child.is_some() {
                self.probes.process_started(&self.ctx.output);
            }
            self.sync_probes();
            self.publish();
        }
        if old.detectors != self.spec.detectors {
            self.health = Health::new(&self.spec.detectors);
            // A probe of detectors that are gone would answer a question no longer asked.
            if self.life.origin == Origin::Probing {
                self.start_probe();
            }
            if let Origin::Elsewhere(label) = &self.life.origin {
                if self.health.index_of(label).is_none() {
                    let detail = format!("{label} is no longer one of the program's detectors");
                    self.apply(Input::ElsewhereGone { detail }).await;
                    return;
                }
            }
            self.sync_health();
            self.publish();
        }
    }

    /// Sends the event (and its log line). Called after the status is published, so whoever
    /// reads the event and then the status finds the status as new (`docs/api.md`).
    fn emit(&self, from: InstanceState, to: InstanceState, reason: &str, facts: Facts) {
        match facts.healthy {
            None => tracing::info!(instance = %self.id.name, %from, %to, %reason, "transition"),
            Some(true) => {
                tracing::info!(instance = %self.id.name, %reason, "instance healthy again")
            }
            Some(false) => {
                tracing::warn!(instance = %self.id.name, %from, %to, %reason, "instance unhealthy")
            }
        }
        let _ = self.ctx.events.send(Event {
            time: SystemTime::now(),
            name: self.id.name.clone(),
            program: self.id.program.clone(),
            from,
            to,
            reason: reason.to_string(),
            exit: facts.exit,
            restart: facts.restart,
            healthy: facts.healthy,
            spawn: facts.spawn,
        });
    }

    /// Publishes the status if it changed, and says so (`StatusChanges`).
    fn publish(&mut self) {
        self.publish_status(true);
    }

    /// Publishes the status if it changed; tells the loop when `note`.
    fn publish_status(&mut self, note: bool) {
        let st = &mut self.status;
        st.state = self.life.state;
        st.restarts = self.life.restarts;
        let elsewhere = match &self.life.origin {
            Origin::Elsewhere(label) => Some(label),
            Origin::Own | Origin::Probing | Origin::Hooks => None,
        };
        st.ready = self.life.state == InstanceState::Running && self.probes.ready();
        st.healthy = (self.child.is_some() || elsewhere.is_some())
            && self.health.healthy()
            && self.probes.ready();
        st.detected_by = match (&self.child, elsewhere) {
            (Some(_), _) => Some("exec:pid".to_string()),
            (None, label) => label.cloned(),
        };
        st.next_retry_at = match (self.life.state, self.life.deadline) {
            (InstanceState::Backoff, Some(at)) => {
                Some(SystemTime::now() + at.saturating_duration_since(Instant::now()))
            }
            _ => None,
        };
        let new = st.clone();
        let changed = self.tx.send_if_modified(|current| {
            if *current == new {
                false
            } else {
                *current = new;
                true
            }
        });
        if changed && note {
            self.ctx.changed.note();
        }
    }

    /// Takes over `pid` if it is still the process that started at `start_time`.
    fn adopt(&mut self, pid: i32, start_time: u64) {
        match self.try_adopt(pid, start_time) {
            Ok(()) => {
                let spawn = self.step(Input::Adopted { pid });
                debug_assert!(!spawn, "adopting never spawns");
            }
            Err(why) => {
                tracing::info!(instance = %self.id.name, pid, %why, "not adopted");
                self.status.message = Some(why);
                self.publish();
            }
        }
    }

    fn try_adopt(&mut self, pid: i32, start_time: u64) -> Result<(), String> {
        let verify = |now: Option<u64>| match now {
            Some(t) if t == start_time => Ok(()),
            Some(_) => Err(format!(
                "pid {pid} now belongs to another process (its start time differs); not adopted"
            )),
            None => Err(format!("pid {pid} is gone; not adopted")),
        };
        verify(proc_start_time(pid))?;
        let watch = ProcessWatch::adopt(pid)
            .map_err(|e| format!("cannot watch pid {pid} (pidfd_open): {e}; not adopted"))?;
        // Checked again now that the pidfd pins the process: the pid cannot be recycled any more.
        verify(proc_start_time(pid))?;
        if proc_pgid(pid) != Some(pid) {
            tracing::warn!(instance = %self.id.name, pid, "adopted process no longer leads its process group; stop signals go to it alone");
        }
        self.probes.process_started(&self.ctx.output);
        match reopen_output(pid) {
            Ok((stdout, stderr)) => self.ctx.output.attach(stdout, stderr),
            Err(why) => {
                tracing::warn!(instance = %self.id.name, pid, %why, "adopted without output capture")
            }
        }
        let started_wall = start_time_to_wall(start_time);
        let age = started_wall
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        self.status.pid = Some(pid);
        self.status.pid_start_time = Some(start_time);
        self.status.spawned_spec = Some(Arc::clone(&self.spec));
        self.status.started_at = started_wall;
        self.set_ended(false);
        self.child = Some(LiveChild {
            watch,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            _pipes: PipeReservation::default(),
        });
        Ok(())
    }
}

/// Reopens an adopted child's output pipes through the read ends it keeps at fd 3 and 4.
fn reopen_output(pid: i32) -> Result<(OwnedFd, OwnedFd), String> {
    Ok((
        reopen_pipe(pid, STDOUT_KEEPALIVE_FD, 1)?,
        reopen_pipe(pid, STDERR_KEEPALIVE_FD, 2)?,
    ))
}

/// Opens `/proc/PID/fd/KEEP` for reading if it is a pipe, and — when the child's `stream` (1 or 2)
/// is a pipe too — the same pipe: a program that reused fd 3/4 for a pipe of its own must not have
/// that pipe drained by us.
fn reopen_pipe(pid: i32, keep: i32, stream: i32) -> Result<OwnedFd, String> {
    let link = |fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}"));
    let kept = link(keep).map_err(|e| format!("fd {keep} of pid {pid}: {e}"))?;
    let kept = kept.to_string_lossy();
    if !kept.starts_with("pipe:") {
        return Err(format!("fd {keep} of pid {pid} is {kept}, not a pipe"));
    }
    if let Ok(target) = link(stream) {
        let target = target.to_string_lossy();
        if target.starts_with("pipe:") && target != kept {
            return Err(format!(
                "fd {keep} of pid {pid} is not its fd {stream} pipe ({kept} vs {target})"
            ));
        }
    }
    let file = std::fs::File::open(format!("/proc/{pid}/fd/{keep}"))
        .map_err(|e| format!("cannot reopen fd {keep} of pid {pid}: {e}"))?;
    Ok(OwnedFd::from(file))
}

/// Writes `pid` into `path` (mode 0644), whole: a reader never sees half a pid.
fn write_pid_file(path: &std::path::Path, pid: i32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("pid.provisr-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(format!("{pid}\n").as_bytes())?;
    // The mode asked for above went through the daemon's umask.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Removes `path` if it still names `pid`: a file someone rewrote since is not ours to remove.
fn remove_pid_file(path: &std::path::Path, pid: i32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|t| t.trim() == pid.to_string());
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove the pid_file: {e}");
        }
    }
}

/// Whether two specs start the same process: what a change that restarts (command or args,
/// work_dir, env, use_os_env, the account and limits; `docs/hot-reload.md`) would differ in.
fn same_launch(a: &ProgramSpec, b: &ProgramSpec) -> bool {
    a.digest() == b.digest()
}

fn stop_signal_of(spec: &ProgramSpec) -> Signal {
    parse_signal(&spec.stop_signal).unwrap_or_else(|| {
        tracing::warn!(program = %spec.name, signal = %spec.stop_signal, "unknown stop_signal; using TERM");
        Signal::SIGTERM
    })
}

/// The stop signal a handle may send at once, for a stop batched with others: none when
/// `pre_stop` hooks must run before it (the actor signals once they have).
fn direct_stop(spec: &ProgramSpec, signal: Signal) -> Option<Signal> {
    spec.hooks.pre_stop.is_empty().then_some(signal)
}

/// The child's exit, or never when there is no child.
async fn wait_exit(child: Option<&LiveChild>) -> io::Result<ExitInfo> {
    match child {
        Some(c) => c.watch.exited().await,
        None => std::future::pending().await,
    }
}

/// The result of the probe before a first spawn, or never when none runs.
async fn wait_probe(
    probe: Option<&mut JoinHandle<Option<String>>>,
) -> Result<Option<String>, tokio::task::JoinError> {
    match probe {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The work a due time is for.
enum Timer {
    /// The state machine's deadline (start timeout, backoff, stop escalation).
    Life,
    /// The next detector probe.
    Detectors,
    /// The next readiness or liveness probe.
    Probes,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;
    impl super::super::OutputSink for NoSink {
        fn attach(&self, _: OwnedFd, _: OwnedFd) {}
    }

    /// What each running instance's task holds: the actor once, not twice (see [`Actor::run`]).
    #[tokio::test]
    async fn the_actor_future_holds_the_actor_once() {
        let id = InstanceId::new("p", 1, 1);
        let spec = Arc::new(ProgramSpec::new(
            "p",
            crate::config::Exec::Command("true".into()),
        ));
        let ctx = RuntimeContext {
            events: tokio::sync::broadcast::channel(1).0,
            changed: Default::default(),
            output: Arc::new(NoSink),
            state_dir: None,
            launches: None,
            counters: Default::default(),
        };
        let (tx, _rx) = watch::channel(InstanceStatus::stopped(&id, 0));
        let (_commands, inbox) = crate::supervisor::inbox::inbox();
        let actor = Actor::new(id, spec, ctx, 0, tx, inbox, Arc::default());
        let actor_size = std::mem::size_of::<Actor>();
        let future = actor.run();
        let future_size = std::mem::size_of_val(&future);
        assert!(
            future_size < 2 * actor_size,
            "the actor's future is {future_size} bytes for an actor of {actor_size}"
        );
    }
}
