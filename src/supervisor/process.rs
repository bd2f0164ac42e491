//! Watching and reaping one process through a pidfd, the `/proc` facts provisr relies on, and the
//! daemon's open-file limit (raised for itself, restored for its children).
//!
//! Exit notification is event-driven: a pidfd becomes readable when its process exits, tokio's
//! reactor wakes exactly the task waiting on it, and that task reaps exactly that pid with
//! `waitpid(pid, WNOHANG)`. There is no `waitpid(-1)` (it would steal other components' exit
//! statuses) and no SIGCHLD-driven sweep over all children (tokio::process's orphan reaping costs
//! O(children) per signal, which adds up with a thousand instances).
//!
//! Every child this runtime starts goes through [`spawn_owned`] (through the spawner process when
//! one is installed, `spawner.rs`, else from this process, `launch.rs`), which records its pid as
//! *owned*: reaped by whoever watches it. The orphan reaper (`reaper.rs`) reaps only children
//! that are not owned — processes re-parented to the daemon — so it never takes an exit status
//! from an actor.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::process::PidfdFlags;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::launch::{Launch, LaunchError, Parent, Started};

/// How a process ended: `code` for a normal exit, `signal` when killed; both `None` when unknown
/// (an adopted process is not our child, so its status goes to whoever reaps it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&super::state::describe_exit(self.code, self.signal))
    }
}

/// Pids this process forked and reaps itself, through a [`ProcessWatch`] or right after a
/// failed spawn. A std lock: held for a set operation only, never across an `.await`.
static OWNED: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Spawns in flight, and whether the orphan reaper wants to run once there are none: a child
/// that dies before it is recorded as owned (a failed `exec`, which the spawn reaps itself) is
/// never mistaken for an orphan. A std lock: held for a count, or for one reaper pass.
struct Gate {
    in_flight: usize,
    reap_wanted: bool,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    in_flight: 0,
    reap_wanted: false,
});

fn gate() -> std::sync::MutexGuard<'static, Gate> {
    super::lock(&GATE)
}

/// Counts a spawn in flight, until its child is recorded as owned (or the spawn failed and
/// reaped it): call [`end_spawn`] then. Waits for a reaper pass that is running.
pub(crate) fn begin_spawn() {
    gate().in_flight += 1;
}

/// The end of a spawn counted by [`begin_spawn`]. The last one lets a deferred reaper pass run.
pub(crate) fn end_spawn() {
    let wanted = {
        let mut g = gate();
        g.in_flight = g.in_flight.saturating_sub(1);
        g.in_flight == 0 && std::mem::take(&mut g.reap_wanted)
    };
    if wanted {
        super::reaper::poke_reaper();
    }
}

/// Runs `pass` (the orphan reaper's) when no spawn is in flight, with none starting until it
/// returns; otherwise defers it to the end of the spawns in flight and returns `None`.
pub(crate) fn when_no_spawn_in_flight<R>(pass: impl FnOnce() -> R) -> Option<R> {
    let mut g = gate();
    if g.in_flight > 0 {
        g.reap_wanted = true;
        return None;
    }
    Some(pass())
}

/// Starts the child `launch` describes and records it as owned (see the module docs): through
/// the spawner when one is installed, else from this process. A child that was created but
/// failed before its `exec` is reaped before this returns.
pub(crate) async fn spawn_owned(launch: &Launch<'_>) -> Result<Started, LaunchError> {
    if let Some(spawner) = super::spawner::installed() {
        // The spawner's reader records the child (or reaps a failed one) and ends the spawn.
        if let Some(result) = spawner.launch(launch).await {
            return result;
        }
    }
    begin_spawn();
    let result = super::launch::start(launch, Parent::Caller);
    settle_spawn(&result);
    end_spawn();
    result
}

/// Records a started child as owned, or reaps one that failed after it was created.
pub(crate) fn settle_spawn(result: &Result<Started, LaunchError>) {
    match result {
        Ok(started) => own(started.pid),
        Err(e) => {
            if let Some(pid) = e.pid {
                // It has exited already (a vfork child resumes its caller only by exec or exit).
                let _ = waitpid(Pid::from_raw(pid), None);
            }
        }
    }
}

/// Records `pid`, a child of this process, as reaped by its own watcher.
pub(crate) fn own(pid: i32) {
    super::lock(&OWNED)
        .get_or_insert_with(HashSet::new)
        .insert(pid);
}

/// Whether `pid` is a child this process reaps itself.
pub(crate) fn is_owned(pid: i32) -> bool {
    super::lock(&OWNED)
        .as_ref()
        .is_some_and(|set| set.contains(&pid))
}

/// Forgets an owned child once it has been reaped.
pub(crate) fn disown(pid: i32) {
    if let Some(set) = super::lock(&OWNED).as_mut() {
        set.remove(&pid);
    }
}

/// Reaps an owned child synchronously (after a failed spawn) and forgets it.
pub(crate) fn reap_owned(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), None);
    disown(pid);
}

/// The process group an instance's own child leads, shared by the instance's actor and its
/// handle, so that whoever asks for a stop sends the stop signal at once — a stop of many
/// instances signals every group in one sweep — while the actor still observes the exit.
///
/// The group id is known here from the spawn until the moment the leader is reaped, which
/// happens under this lock ([`ProcessWatch::exited`]): while it is known, the leader is an
/// unreaped child of ours, so the number cannot name anyone else's group.
#[derive(Debug, Default)]
pub(crate) struct Group(Mutex<GroupState>);

#[derive(Debug, Default)]
struct GroupState {
    /// Our own child, unreaped.
    leader: Option<i32>,
    /// The instance's stop signal, kept current by its actor.
    stop_signal: Option<Signal>,
    /// The leader the stop signal was sent to, until the actor takes note.
    stop_sent: Option<i32>,
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        super::lock(&self.0)
    }

    /// The stop signal a handle sends from now on; `None`: only the actor signals.
    pub(crate) fn set_stop_signal(&self, sig: Option<Signal>) {
        self.lock().stop_signal = sig;
    }

    /// Sends the stop signal to the group, unless it was sent to this leader already; the
    /// leader it went to. `None` without a live child of ours.
    pub(crate) fn send_stop(&self) -> Option<i32> {
        let mut g = self.lock();
        let (Some(leader), Some(sig), None) = (g.leader, g.stop_signal, g.stop_sent) else {
            return None;
        };
        if !kill_group(leader, sig) {
            return None;
        }
        g.stop_sent = Some(leader);
        Some(leader)
    }

    /// Whether the stop signal was sent to the group of `leader` by [`Group::send_stop`];
    /// forgets it.
    pub(crate) fn take_stop_sent(&self, leader: i32) -> bool {
        let mut g = self.lock();
        if g.stop_sent == Some(leader) {
            g.stop_sent = None;
            return true;
        }
        false
    }
}

/// An exit watch on one process that leads its own process group.
pub(crate) struct ProcessWatch {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    /// Our own child, which this watch reaps; else a process adopted from an earlier daemon,
    /// whose parent reaps it and whose group id may be reused once it is reaped.
    own: bool,
    /// Where the group of our own child is known until it is reaped.
    group: Option<Arc<Group>>,
}

impl ProcessWatch {
    /// Opens a pidfd for `pid` and registers it with the reactor (needs a tokio runtime).
    ///
    /// For our own child this cannot race with its exit: an unreaped child stays a zombie, and a
    /// zombie still has a pidfd. For any other process, the caller checks identity (start time)
    /// again after opening: from then on the pidfd pins the process, so the pid cannot be reused.
    pub(crate) fn open(pid: i32) -> io::Result<ProcessWatch> {
        Ok(ProcessWatch {
            pid,
            pidfd: register(pidfd(pid)?)?,
            own: true,
            group: None,
        })
    }

    /// Makes this child the leader `group` knows, until it is reaped (our own child only).
    pub(crate) fn share_group(&mut self, group: Arc<Group>) {
        if self.own {
            let mut g = group.lock();
            g.leader = Some(self.pid);
            g.stop_sent = None;
            drop(g);
            self.group = Some(group);
        }
    }

    /// A watch on a process that is not our child (adopted): see [`ProcessWatch::own`].
    pub(crate) fn adopt(pid: i32) -> io::Result<ProcessWatch> {
        Ok(ProcessWatch {
            own: false,
            ..ProcessWatch::open(pid)?
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn own(&self) -> bool {
        self.own
    }

    /// Whether the process has exited (its pidfd is readable), without waiting.
    pub(crate) fn has_exited(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            self.pidfd.get_ref(),
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// Sends `sig` to this very process through its pidfd: never to a process that reused its
    /// pid. `false` if it has exited.
    pub(crate) fn send_signal(&self, sig: Signal) -> bool {
        match rustix::process::Signal::from_named_raw(sig as i32) {
            Some(s) => rustix::process::pidfd_send_signal(self.pidfd.get_ref(), s).is_ok(),
            None => false,
        }
    }

    /// Waits until the process has exited, `SIGKILL`s whatever is left of its process group (our
    /// own child only), and reaps it if it is our child. Cancel-safe until it returns; call it
    /// again only if it failed.
    ///
    /// The group is killed *before* the leader is reaped on purpose: while the leader is an
    /// unreaped zombie its pid — which is the group id — cannot be reused, so the signal can only
    /// reach members of our group (grandchildren that outlived their parent, e.g. `sleep 300 &`).
    /// An adopted leader is reaped by its own parent the moment it exits, so its group id may
    /// already name someone else's group: its leftovers are found by their tag instead (actor).
    pub(crate) async fn exited(&self) -> io::Result<ExitInfo> {
        loop {
            let guard = self.pidfd.readable().await?;
            let reaped = {
                // Nobody signals the group by its number from here until it is reaped.
                let mut group = self.group.as_ref().map(|g| g.lock());
                if self.own {
                    kill_group(self.pid, Signal::SIGKILL);
                }
                let reaped = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
                if let (Some(g), Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
                    (group.as_mut(), &reaped)
                {
                    g.leader = None;
                }
                reaped
            };
            match reaped {
                Ok(WaitStatus::Exited(_, code)) => {
                    disown(self.pid);
                    return Ok(ExitInfo {
                        code: Some(code),
                        signal: None,
                    });
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    disown(self.pid);
                    return Ok(ExitInfo {
                        code: None,
                        signal: Some(sig as i32),
                    });
                }
                // Not our child (adopted after a daemon restart): its parent reaps it, the exit
                // status is not ours to know.
                Err(Errno::ECHILD) => return Ok(ExitInfo::default()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {
                    // The pidfd said "exited" but the exit is not waitable yet. The kernel makes
                    // both true at the same moment for a thread-group leader, so this is a
                    // defensive path only; readiness stays set, so back off briefly rather than
                    // spin, instead of clearing it and waiting for an edge that never comes.
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

/// A pidfd for `pid`.
pub(crate) fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    let rpid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid must be positive"))?;
    Ok(rustix::process::pidfd_open(rpid, PidfdFlags::empty())?)
}

/// Registers an owned descriptor with tokio's reactor for readability.
// tokio marks registration unsafe because a generic `AsRawFd` could hand out different or closed
// descriptors over time. An `OwnedFd` cannot: it is open from creation until the `AsyncFd` drops
// it, and `as_raw_fd` always returns that same number — exactly the contract tokio asks for.
#[allow(unsafe_code)]
pub(crate) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: see above; `fd` is owned, open, and moved into the AsyncFd for its whole life.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// Sends `sig` to the process group led by `pid`, but only while `pid` is still the process that
/// started at `start_time`: its pidfd pins it first, so neither a reused pid nor a group whose
/// leader has gone (whose number may be someone else's) is ever signalled. A leader that moved
/// to another group gets the signal alone. `false` if it is gone.
pub fn signal_group_of(pid: i32, start_time: u64, sig: Signal) -> bool {
    let Ok(fd) = pidfd(pid) else {
        return false;
    };
    if proc_start_time(pid) != Some(start_time) {
        return false;
    }
    if proc_pgid(pid) == Some(pid) && kill_group(pid, sig) {
        return true;
    }
    match rustix::process::Signal::from_named_raw(sig as i32) {
        Some(s) => rustix::process::pidfd_send_signal(&fd, s).is_ok(),
        None => false,
    }
}

/// Sends `sig` to the process group `pgid`. A group that no longer exists is not an error.
pub(crate) fn kill_group(pgid: i32, sig: Signal) -> bool {
    if pgid <= 1 {
        // Never signal "every process" (-1) or the caller's own group (0).
        return false;
    }
    match nix::sys::signal::killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pgid, signal = %sig, error = %e, "cannot signal process group");
            false
        }
    }
}

/// Parses a stop signal name as the spec holds it (`TERM`, or `SIGTERM`).
pub fn parse_signal(name: &str) -> Option<Signal> {
    let name = name.trim().to_ascii_uppercase();
    let full = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    full.parse().ok()
}

/// What [`raise_fd_limit`] found and did (`RLIMIT_NOFILE`, in descriptors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before this call.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (unchanged).
    pub hard: u64,
    /// The soft limit children are spawned with: the one the daemon started with.
    pub children: u64,
}

/// Reading or setting `RLIMIT_NOFILE` failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} the open-file limit (RLIMIT_NOFILE): {source}")]
pub struct FdLimitError {
    /// `read` or `raise`.
    pub op: &'static str,
    #[source]
    pub source: Errno,
}

/// How many descriptors [`presize_fd_table`] makes room for at start: a thousand running
/// instances hold about four each.
pub const FD_TABLE_AT_START: u64 = 8192;

/// Grows this process's descriptor table to hold `n` descriptors (fewer when the open-file limit
/// is lower), and must be called while the process has one thread.
///
/// The kernel grows a descriptor table by doubling it when a descriptor above its size is
/// opened; in a process with more than one thread, each growth waits for an RCU grace period,
/// and every thread that opens a descriptor meanwhile waits with it. In a boot of 200 that was
/// three stalls of 12–25 ms in `pipe2` on both runtime workers (`docs/benchmarks.md`). Grown
/// before there are threads, the table is resized without that wait, and it never shrinks.
pub fn presize_fd_table(n: u64) -> io::Result<()> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    let top = n.min(soft).saturating_sub(1);
    let Ok(top) = i32::try_from(top) else {
        return Ok(());
    };
    let null = rustix::fs::open(
        c"/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // The lowest free descriptor at or above `top`: the table grows to hold it; closed at once.
    drop(rustix::io::fcntl_dupfd_cloexec(&null, top)?);
    Ok(())
}

/// `(soft, hard)` to restore in every child, once [`raise_fd_limit`] has raised the daemon's own
/// soft limit; unset while it has not.
static CHILD_FD_LIMIT: OnceLock<(u64, u64)> = OnceLock::new();

/// Linux's ceiling for `RLIMIT_NOFILE` when `/proc/sys/fs/nr_open` cannot be read.
const DEFAULT_NR_OPEN: u64 = 1 << 20;

/// The soft limit [`raise_fd_limit`] aims for: the hard limit, or `nr_open` (the kernel's
/// ceiling; an "unlimited" soft limit is refused) when the hard limit is unlimited; never lower
/// than `soft`.
fn raised_soft_limit(soft: u64, hard: u64, nr_open: u64) -> u64 {
    let target = if hard == RLIM_INFINITY { nr_open } else { hard };
    target.max(soft)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, so a thousand instances (each
/// with a pidfd, two pipe read ends, log files) never hit the common default of 1024. The daemon
/// calls it once at start.
///
/// Children do not inherit the raised limit: every spawn (program or detector command) resets the
/// soft limit to the one the daemon started with, as systemd does. A program written for the
/// usual 1024 (`select()`, or a loop closing every possible descriptor at start) keeps working; a
/// program that wants more raises its own soft limit up to the hard one, as it could anyway.
pub fn raise_fd_limit() -> Result<FdLimit, FdLimitError> {
    let (before, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| FdLimitError { op: "read", source })?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_NR_OPEN);
    let soft = raised_soft_limit(before, hard, nr_open);
    if soft != before {
        // Record what children get before they could see the raised limit.
        CHILD_FD_LIMIT.get_or_init(|| (before, hard));
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(|source| FdLimitError {
            op: "raise",
            source,
        })?;
    }
    Ok(FdLimit {
        before,
        soft,
        hard,
        children: CHILD_FD_LIMIT.get().map_or(soft, |&(s, _)| s),
    })
}

/// The `(soft, hard)` `RLIMIT_NOFILE` a child must be given, when it differs from the daemon's.
pub(crate) fn child_fd_limit() -> Option<(u64, u64)> {
    CHILD_FD_LIMIT.get().copied()
}

/// The fields of `/proc/PID/stat` after the command name (which may itself contain spaces and
/// parentheses, hence the split at the last `)`); index 0 is field 3, `state`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = read_proc(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A `/proc` file, whole, as text.
pub(crate) fn read_proc(path: impl AsRef<std::path::Path>) -> Option<String> {
    String::from_utf8(read_proc_bytes(path)?).ok()
}

/// A `/proc` file, whole. `fs::read` first asks the file's size (a `statx`), which procfs
/// reports as 0: the orphan reaper and the escapee scan read several of these files per exit,
/// so they skip that call.
pub(crate) fn read_proc_bytes(path: impl AsRef<std::path::Path>) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).ok()?;
    // Through `Take`, the generic read loop, which asks no size.
    file.take(u64::MAX).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
///
/// Together with the pid it names one process for the lifetime of the host: a recycled pid has a
/// later start time. `None` when the process does not exist.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    stat_fields(pid)?.get(22 - 3)?.parse().ok()
}

/// Now, in nanoseconds after boot (`CLOCK_BOOTTIME`): fine enough that a start written ahead
/// and a spawn that carries it out, one after the other, never read the same value.
pub fn boot_nanos_now() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// True when `pid` is alive (not a zombie) and started at `start_time`: still that process.
pub fn proc_alive_since(pid: i32, start_time: u64) -> bool {
    pid > 0 && proc_stat(pid).is_some_and(|s| !s.zombie && s.start_time == start_time)
}

/// True when `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match stat_fields(pid) {
        Some(f) => f.first().map(|s| s != "Z" && s != "X").unwrap_or(false),
        None => false,
    }
}

/// The process group of `pid`, from `/proc` (works for processes that are not our children).
pub(crate) fn proc_pgid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(5 - 3)?.parse().ok()
}

/// What `/proc/PID/stat` says about a process: parent, group, state, start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub ppid: i32,
    pub pgid: i32,
    pub zombie: bool,
    pub start_time: u64,
}

pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let f = stat_fields(pid)?;
    Some(ProcStat {
        zombie: f.first().is_some_and(|s| s == "Z" || s == "X"),
        ppid: f.get(4 - 3)?.parse().ok()?,
        pgid: f.get(5 - 3)?.parse().ok()?,
        start_time: f.get(22 - 3)?.parse().ok()?,
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once: a pid and start time name
/// one process only within one boot. `None` without that file.
pub fn boot_id() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// Converts a start time in clock ticks since boot to wall-clock time (`btime` of `/proc/stat`).
pub(crate) fn start_time_to_wall(ticks: u64) -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let since_boot =
        Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(btime) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_with_or_without_sig() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGKILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("hup"), Some(Signal::SIGHUP));
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn the_raised_soft_limit_is_the_hard_one_capped_by_nr_open_and_never_lower() {
        assert_eq!(raised_soft_limit(1024, 524_288, DEFAULT_NR_OPEN), 524_288);
        assert_eq!(raised_soft_limit(20_000, 20_000, DEFAULT_NR_OPEN), 20_000);
        assert_eq!(raised_soft_limit(1024, RLIM_INFINITY, 2_000_000), 2_000_000);
        assert_eq!(raised_soft_limit(4096, RLIM_INFINITY, 1024), 4096);
    }

    #[test]
    fn raise_fd_limit_lifts_the_soft_limit_and_remembers_the_original_for_children() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Make sure there is something to raise (this test process may start at soft = hard);
        // one below is enough and cannot starve tests running alongside.
        let lowered = soft.min(hard - 1);
        setrlimit(Resource::RLIMIT_NOFILE, lowered, hard).unwrap();
        let r = raise_fd_limit().unwrap();
        let (now, hard_now) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((r.before, r.hard, hard_now), (lowered, hard, hard));
        assert_eq!(now, r.soft);
        if hard != RLIM_INFINITY {
            assert_eq!(r.soft, hard);
        }
        assert!(r.soft > lowered);
        // Nothing else in this test binary raises the limit, so this call recorded `lowered`.
        assert_eq!(child_fd_limit(), Some((lowered, hard)));
        assert_eq!(r.children, lowered);

        // Idempotent: a second call changes nothing and keeps the children's limit.
        let again = raise_fd_limit().unwrap();
        assert_eq!(
            (again.before, again.soft, again.children),
            (r.soft, r.soft, lowered)
        );
    }

    #[test]
    fn own_start_time_is_stable_and_in_the_past() {
        let me = std::process::id() as i32;
        let t = proc_start_time(me).expect("own stat");
        assert_eq!(proc_start_time(me), Some(t));
        let wall = start_time_to_wall(t).expect("btime");
        assert!(wall <= SystemTime::now() + Duration::from_secs(1));
        assert!(is_alive(me));
        assert_eq!(proc_start_time(0), None);
        assert!(!is_alive(-1));
    }
}
