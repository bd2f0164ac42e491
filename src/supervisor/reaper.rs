//! The daemon as child subreaper: orphans of its children are re-parented to it rather than to
//! init, it reaps them, and what an instance left behind stays within reach of its stop.
//!
//! With `PR_SET_CHILD_SUBREAPER`, a process that double-forks, or whose parent dies, becomes a
//! child of the daemon. That keeps escapees findable (the daemon's children are one file away,
//! `/proc/self/task/*/children`) and makes the daemon fit to run as PID 1 in a container, where
//! nobody else would reap them. Reaping must not take an exit status from an actor, which reaps
//! its own child by pid (`process.rs`): on every SIGCHLD the reaper looks at the daemon's
//! children, skips every pid the runtime owns, and reaps only the zombies among the rest, each by
//! its own pid. There is still no `waitpid(-1)`. A pass waits until no spawn is in flight (it is
//! deferred to the end of the spawns in flight, `process.rs`), so a child that dies before it is
//! recorded as owned is never taken for an orphan.
//!
//! What an exited instance left outside its process group reaches the daemon in two ways: already
//! re-parented when its process exits (its parent was that process), killed then by the actor
//! ([`kill_escapees`]); or later, when an intermediate parent (a shell of its group, killed with
//! the group) dies. For the second, actors mark an instance whose process has exited as *ended*
//! until they spawn or adopt again, and the reaper, woken by that intermediate's SIGCHLD, kills
//! whatever re-parented child carries an ended instance's tag.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::process::{is_owned, proc_stat, read_proc, when_no_spawn_in_flight};
use super::tag::{signal_tagged, tagged, Tagged};

/// Instances (name, state directory) whose process has exited and that run none now: after a
/// stop of everything, every instance. A std lock: held to change or look up one entry, never
/// across an `.await`.
static ENDED: Mutex<Option<HashSet<Ended>>> = Mutex::new(None);

/// An instance's name and its daemon's state directory.
type Ended = (String, Arc<Path>);

/// Marks instance `name` of `state_dir` as having no process (`ended`) or one again.
pub(crate) fn set_ended(state_dir: &Arc<Path>, name: &str, ended: bool) {
    let mut set = super::lock(&ENDED);
    let set = set.get_or_insert_with(HashSet::new);
    let key = (name.to_string(), state_dir.clone());
    if ended {
        set.insert(key);
    } else {
        set.remove(&key);
    }
}

/// Whether instance `name` of `state_dir` is marked as having no process.
fn is_ended(state_dir: &Arc<Path>, name: &str) -> bool {
    let set = super::lock(&ENDED);
    let key = (name.to_string(), state_dir.clone());
    set.as_ref().is_some_and(|set| set.contains(&key))
}

/// Asks for a pass of the orphan reaper, as a `SIGCHLD` does: after an instance's process
/// exited and the instance was marked ended, so that what it left and what reached the daemon
/// before the mark is killed too, and after the last spawn in flight when a pass was deferred.
/// Many asks while a pass is due make one pass. An in-process wake rather than a signal to
/// ourselves: a stop of hundreds asks once per exit, and a signal costs two system calls, a
/// handler and the signal driver's wakeup each time.
pub(crate) fn poke_reaper() {
    WAKE.notify_one();
}

/// Wakes a reaper pass (see [`poke_reaper`]). A pass covers every ended instance of the
/// process, whichever daemon's reaper task takes it, so waking one is enough.
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

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
        .filter_map(|t| read_proc(t.path().join("children")))
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

/// Reaps every zombie child of this process that the runtime does not own, and kills the live
/// ones that carry an ended instance's tag (see the module docs); returns how many it reaped.
/// With spawns in flight it does nothing yet: the last of them asks for it again ([`poke_reaper`]).
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    let pass = when_no_spawn_in_flight(|| {
        let orphans: Vec<i32> = children_of(me)
            .into_iter()
            .filter(|&pid| !is_owned(pid))
            .collect();
        let reaped = orphans
            .iter()
            .filter(|&&pid| proc_stat(pid).is_some_and(|s| s.zombie))
            .filter(|&&pid| waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok())
            .count();
        (reaped, orphans)
    });
    let Some((reaped, orphans)) = pass else {
        return 0;
    };
    let dirs: Vec<Arc<Path>> = {
        let set = super::lock(&ENDED);
        let mut dirs: Vec<Arc<Path>> = set.iter().flatten().map(|(_, d)| d.clone()).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    };
    for pid in orphans {
        for dir in &dirs {
            if let Some(t) = tagged(pid, dir).filter(|t| !t.detector && is_ended(dir, &t.name)) {
                kill_tree(&t, dir);
                break;
            }
        }
    }
    reaped
}

/// Kills `t` and every process below it that carries `state_dir`'s tag, through pidfds; all of
/// them are collected first, while they are still linked. Returns how many were killed.
fn kill_tree(t: &Tagged, state_dir: &Path) -> usize {
    let mut below = vec![t.pid];
    let mut i = 0;
    while i < below.len() {
        below.extend(children_of(below[i]));
        i += 1;
    }
    let doomed: Vec<Tagged> = below
        .into_iter()
        .filter_map(|p| tagged(p, state_dir))
        .collect();
    doomed
        .iter()
        .filter(|t| signal_tagged(t, Signal::SIGKILL))
        .count()
}

/// Reaps orphans on every SIGCHLD and every [`poke_reaper`], until the runtime ends. Several
/// of either may arrive as one; each pass reaps every zombie there is, so none is left behind.
pub async fn reap_orphans_forever(mut sigchld: tokio::signal::unix::Signal) {
    loop {
        reap_orphans();
        tokio::select! {
            got = sigchld.recv() => if got.is_none() { return },
            () = WAKE.notified() => {}
        }
        // The other tasks ready now (exits of a stop of many, each asking for a pass) run
        // first, so that their asks make this one pass instead of one pass each.
        tokio::task::yield_now().await;
    }
}

/// Kills (`SIGKILL`, through pidfds) what instance `name` left behind among this process's
/// children once its own process has exited: processes tagged with `state_dir` and `name` that
/// moved out of its process group (`setsid`) and lost their parent, so were re-parented here,
/// with everything below them. Detectors and owned children are left alone. Cheap when there is
/// nothing: one small file per daemon thread.
pub(crate) fn kill_escapees(state_dir: &Path, name: &str) -> usize {
    let me = std::process::id() as i32;
    children_of(me)
        .into_iter()
        .filter(|&pid| !is_owned(pid))
        .filter_map(|pid| tagged(pid, state_dir))
        .filter(|t| t.name == name && !t.detector)
        .map(|t| kill_tree(&t, state_dir))
        .sum()
}
