//! The daemon as child subreaper: orphans of its children are re-parented to it rather than to
//! init, it reaps them, and what an instance left behind stays within reach of its stop.
//!
//! With `PR_SET_CHILD_SUBREAPER`, a process that double-forks, or whose parent dies, becomes a
//! child of the daemon. That keeps escapees findable (the daemon's children are one file away,
//! `/proc/self/task/*/children`) and makes the daemon fit to run as PID 1 in a container, where
//! nobody else would reap them. Reaping must not take an exit status from an actor, which reaps
//! its own child by pid (`process.rs`): on every SIGCHLD the reaper looks at the daemon's
//! children, skips every pid the runtime owns, and reaps only the zombies among the rest, each by
//! its own pid. There is still no `waitpid(-1)`. Spawns hold [`SPAWN_GATE`] until their child is
//! recorded as owned, so a child that dies at once is never taken for an orphan.

use std::io;
use std::path::Path;
use std::sync::PoisonError;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::process::{is_owned, proc_stat, SPAWN_GATE};
use super::tag::{signal_tagged, tagged};

/// Makes this process the subreaper of its descendants. Call it before spawning anything.
pub fn become_subreaper() -> io::Result<()> {
    let me = rustix::process::getpid();
    Ok(rustix::process::set_child_subreaper(Some(me))?)
}

/// The pids of this process's children, from `/proc/self/task/*/children` (each thread's own
/// children; an orphan is re-parented to one of them).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Reaps every zombie child of this process that the runtime does not own (see the module
/// docs); returns how many.
pub fn reap_orphans() -> usize {
    let _gate = SPAWN_GATE.write().unwrap_or_else(PoisonError::into_inner);
    let me = std::process::id() as i32;
    children_of(me)
        .into_iter()
        .filter(|&pid| !is_owned(pid))
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.zombie))
        .filter(|&pid| waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok())
        .count()
}

/// Reaps orphans on every SIGCHLD, until the runtime ends. Several signals may arrive as one;
/// each pass reaps every zombie there is, so none is left behind.
pub async fn reap_orphans_forever(mut sigchld: tokio::signal::unix::Signal) {
    loop {
        reap_orphans();
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// Kills (`SIGKILL`, through pidfds) what instance `name` left behind among this process's
/// children once its own process has exited: processes tagged with `state_dir` and `name` that
/// moved out of its process group (`setsid`) and lost their parent, so were re-parented here,
/// with everything below them. Detectors and owned children are left alone. Cheap when there is
/// nothing: one small file per daemon thread.
pub(crate) fn kill_escapees(state_dir: &Path, name: &str) -> usize {
    let me = std::process::id() as i32;
    let mut doomed = Vec::new();
    for pid in children_of(me).into_iter().filter(|&pid| !is_owned(pid)) {
        let Some(t) = tagged(pid, state_dir) else {
            continue;
        };
        if t.name != name || t.detector {
            continue;
        }
        // It and everything below it, collected while they are still linked, then killed.
        let mut below = vec![t.pid];
        let mut i = 0;
        while i < below.len() {
            below.extend(children_of(below[i]));
            i += 1;
        }
        doomed.extend(below.into_iter().filter_map(|p| tagged(p, state_dir)));
    }
    doomed
        .iter()
        .filter(|t| signal_tagged(t, Signal::SIGKILL))
        .count()
}
