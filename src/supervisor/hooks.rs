//! Running an instance's hooks (`docs/configuration.md`, "Hooks"): one batch at a time, in the
//! order the lifecycle asks for them, so a restart's `post_stop` hooks run before its `pre_start`
//! ones and a stop's `pre_stop` after a `post_start` still running.
//!
//! Each hook is `/bin/sh -c COMMAND` in the program's environment, directory and identity,
//! leading a process group of its own, tagged as the instance's helper (`PROVISR_HOOK`) so a
//! later daemon never takes it for the instance's process. Its output lines go to the instance's
//! output, prefixed `[name]`; a hook that outlives its `timeout` has its group killed. A batch
//! runs in a task of its own: the actor keeps handling commands and exits meanwhile.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Dur, HookPhase, HookSpec, InstanceId, OnFailure, ProgramSpec};

use super::launch::Launch;
use super::output::{OutputSink, OutputStream};
use super::process::{child_fd_limit, kill_group, reap_owned, spawn_owned, ProcessWatch};
use super::spawn::environment;
use super::RuntimeCounters;

/// The variable that marks a hook's process as a helper of its instance, `pre_start:migrate`.
pub const HOOK_ENV: &str = "PROVISR_HOOK";

/// How long a hook with `on_failure = "retry"` waits before its second run.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a batch needs besides its hooks.
#[derive(Clone)]
pub(crate) struct HookContext {
    pub id: InstanceId,
    pub state_dir: Option<Arc<Path>>,
    pub sink: Arc<dyn OutputSink>,
    pub counters: Arc<RuntimeCounters>,
}

struct Batch {
    phase: HookPhase,
    spec: Arc<ProgramSpec>,
}

struct Running {
    phase: HookPhase,
    task: JoinHandle<Result<(), String>>,
    /// Dropping it abandons the batch: the hook running is killed and reaped.
    _cancel: watch::Sender<()>,
}

/// The hooks of one instance: batches waiting, and the one running.
#[derive(Default)]
pub(crate) struct HookRunner {
    queue: VecDeque<Batch>,
    current: Option<Running>,
}

impl HookRunner {
    /// Queues the `phase` hooks of `spec` (a batch with none completes at once, in its turn) and
    /// starts it if nothing runs.
    pub(crate) fn push(&mut self, phase: HookPhase, spec: &Arc<ProgramSpec>, ctx: &HookContext) {
        self.queue.push_back(Batch {
            phase,
            spec: Arc::clone(spec),
        });
        self.start_next(ctx);
    }

    /// Nothing runs and nothing waits.
    pub(crate) fn idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty()
    }

    /// Drops the queued and running batches of `phase`; a hook running is killed and reaped.
    pub(crate) fn abandon(&mut self, phase: HookPhase, ctx: &HookContext) {
        self.queue.retain(|b| b.phase != phase);
        if self.current.as_ref().is_some_and(|r| r.phase == phase) {
            self.current = None;
            self.start_next(ctx);
        }
    }

    /// Waits for the running batch (forever when none runs). Cancel-safe.
    pub(crate) async fn finished(&mut self) -> (HookPhase, Result<(), String>) {
        let Some(running) = self.current.as_mut() else {
            return std::future::pending().await;
        };
        let result = match (&mut running.task).await {
            Ok(r) => r,
            Err(e) => Err(format!("the hook task failed: {e}")),
        };
        let phase = running.phase;
        self.current = None;
        (phase, result)
    }

    /// Starts the next batch when nothing runs.
    pub(crate) fn start_next(&mut self, ctx: &HookContext) {
        if self.current.is_some() {
            return;
        }
        let Some(batch) = self.queue.pop_front() else {
            return;
        };
        let (cancel, cancelled) = watch::channel(());
        let ctx = ctx.clone();
        let phase = batch.phase;
        let task = tokio::spawn(async move { run_batch(batch, ctx, cancelled).await });
        self.current = Some(Running {
            phase,
            task,
            _cancel: cancel,
        });
    }
}

/// Runs a batch's hooks in order. `Err` says which hook failed and how, for the phases whose
/// failure matters; ignored failures are only reported.
async fn run_batch(
    batch: Batch,
    ctx: HookContext,
    mut cancelled: watch::Receiver<()>,
) -> Result<(), String> {
    let phase = batch.phase;
    let abandoned = || Err("abandoned".to_string());
    for hook in batch.spec.hooks.of(phase) {
        let mut result = run_hook(hook, phase, &batch.spec, &ctx, &mut cancelled).await;
        if cancelled.has_changed().is_err() {
            return abandoned();
        }
        if result.is_err() && hook.on_failure == OnFailure::Retry {
            count_failure(&ctx, phase);
            tracing::warn!(instance = %ctx.id.name, hook = %hook.name, %phase, "hook failed; running it once more in 1s");
            tokio::select! {
                () = tokio::time::sleep(RETRY_AFTER) => {}
                _ = cancelled.changed() => return abandoned(),
            }
            result = run_hook(hook, phase, &batch.spec, &ctx, &mut cancelled).await;
            if cancelled.has_changed().is_err() {
                return abandoned();
            }
        }
        let Err(why) = result else { continue };
        count_failure(&ctx, phase);
        let detail = format!("{phase} hook `{}` failed: {why}", hook.name);
        if hook.on_failure == OnFailure::Ignore {
            tracing::warn!(instance = %ctx.id.name, "{detail} (on_failure = \"ignore\")");
            continue;
        }
        return Err(detail);
    }
    Ok(())
}

fn count_failure(ctx: &HookContext, phase: HookPhase) {
    let i = HookPhase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
    ctx.counters.hook_failures[i].fetch_add(1, Ordering::Relaxed);
}

/// Runs one hook to its end, its timeout, or the batch's cancellation; its output lines go to
/// the instance's output, prefixed with its name. `Err`: the exit and the last output line.
async fn run_hook(
    hook: &HookSpec,
    phase: HookPhase,
    spec: &ProgramSpec,
    ctx: &HookContext,
    cancelled: &mut watch::Receiver<()>,
) -> Result<(), String> {
    let pipe = || -> Result<(OwnedFd, OwnedFd), String> {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot make a pipe for it: {e}"))
    };
    let ((out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?);
    let tag = format!("{phase}:{}", hook.name);
    let launch = Launch {
        argv: ["/bin/sh".into(), "-c".into(), hook.command.clone().into()].into(),
        env: environment(
            spec,
            &ctx.id,
            ctx.state_dir.as_deref(),
            Some((HOOK_ENV, &tag)),
        ),
        cwd: spec.work_dir.clone(),
        fds: vec![None, Some(out_w.as_fd()), Some(err_w.as_fd())],
        nofile: child_fd_limit(),
        identity: super::identity::resolve(spec)?,
    };
    let started = spawn_owned(&launch).await;
    // The write ends go now, or the readers would never see end-of-file.
    drop(launch);
    drop((out_w, err_w));
    let started = started.map_err(|e| {
        format!(
            "cannot run it: cannot {} /bin/sh: {}",
            e.stage.doing(),
            e.source
        )
    })?;
    let pid = started.pid;
    let pipes = (Some(out_r), Some(err_r));
    let watch = match ProcessWatch::open(pid) {
        Ok(w) => w,
        Err(e) => {
            kill_group(pid, Signal::SIGKILL);
            reap_owned(pid);
            return Err(format!("cannot watch it: {e}"));
        }
    };
    let reader = |fd: Option<OwnedFd>| {
        fd.and_then(|f| tokio::net::unix::pipe::Receiver::from_owned_fd(f).ok())
            .map(|rx| BufReader::new(rx).lines())
    };
    let mut out = reader(pipes.0);
    let mut err = reader(pipes.1);
    // The last line of each stream: a failure quotes stderr's, else stdout's (two pipes read
    // at once have no order between them).
    let mut last: [Option<String>; 2] = [None, None];
    let mut note = |stream: OutputStream, line: String| {
        ctx.sink.note(stream, &format!("[{}] {line}", hook.name));
        if !line.trim().is_empty() {
            last[usize::from(stream == OutputStream::Stderr)] = Some(line);
        }
    };
    let deadline = tokio::time::sleep(hook.timeout.get());
    tokio::pin!(deadline);
    let mut ended: Option<Result<(), String>> = None;
    let exit = loop {
        tokio::select! {
            line = next_line(&mut out) => match line {
                Some(l) => note(OutputStream::Stdout, l),
                None => out = None,
            },
            line = next_line(&mut err) => match line {
                Some(l) => note(OutputStream::Stderr, l),
                None => err = None,
            },
            exit = watch.exited() => break exit,
            () = &mut deadline, if ended.is_none() => {
                kill_group(pid, Signal::SIGKILL);
                ended = Some(Err(format!("timed out after {}", Dur(hook.timeout.get()))));
            }
            _ = cancelled.changed(), if ended.is_none() => {
                kill_group(pid, Signal::SIGKILL);
                ended = Some(Err("abandoned".to_string()));
            }
        }
    };
    // What the hook left in its group goes with it; its last words are read before judging.
    kill_group(pid, Signal::SIGKILL);
    let drain = async {
        for (stream, lines) in [
            (OutputStream::Stdout, &mut out),
            (OutputStream::Stderr, &mut err),
        ] {
            while lines.is_some() {
                match next_line(lines).await {
                    Some(l) => note(stream, l),
                    None => *lines = None,
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    if let Some(result) = ended {
        return result;
    }
    let exit = exit.map_err(|e| format!("cannot wait for it: {e}"))?;
    if exit.code == Some(0) {
        return Ok(());
    }
    let [out_line, err_line] = last;
    Err(match err_line.or(out_line) {
        Some(line) => format!("{exit}; last output: {line}"),
        None => exit.to_string(),
    })
}

type Lines = tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>;

/// The next line of a pipe; `None` at its end (or on a read error), and never once it is gone.
async fn next_line(lines: &mut Option<Lines>) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}
