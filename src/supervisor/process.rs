//! Watching and reaping one process through a pidfd, and the `/proc` facts provisr relies on.
//!
//! Exit notification is event-driven: a pidfd becomes readable when its process exits, tokio's
//! reactor wakes exactly the task waiting on it, and that task reaps exactly that pid with
//! `waitpid(pid, WNOHANG)`. There is no `waitpid(-1)` (it would steal other components' exit
//! statuses) and no SIGCHLD-driven sweep over all children (tokio::process's orphan reaping costs
//! O(children) per signal, which adds up with a thousand instances).

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::process::PidfdFlags;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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

/// An exit watch on one process that leads its own process group.
pub(crate) struct ProcessWatch {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
}

impl ProcessWatch {
    /// Opens a pidfd for `pid` and registers it with the reactor (needs a tokio runtime).
    ///
    /// For our own child this cannot race with its exit: an unreaped child stays a zombie, and a
    /// zombie still has a pidfd. For any other process, the caller checks identity (start time)
    /// again after opening: from then on the pidfd pins the process, so the pid cannot be reused.
    pub(crate) fn open(pid: i32) -> io::Result<ProcessWatch> {
        let rpid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid must be positive"))?;
        let fd = rustix::process::pidfd_open(rpid, PidfdFlags::empty())?;
        Ok(ProcessWatch {
            pid,
            pidfd: register(fd)?,
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the process has exited, `SIGKILL`s whatever is left of its process group, and
    /// reaps it if it is our child. Cancel-safe until it returns; call it again only if it failed.
    ///
    /// The group is killed *before* the leader is reaped on purpose: while the leader is an
    /// unreaped zombie its pid — which is the group id — cannot be reused, so the signal can only
    /// reach members of our group (grandchildren that outlived their parent, e.g. `sleep 300 &`).
    pub(crate) async fn exited(&self) -> io::Result<ExitInfo> {
        loop {
            let guard = self.pidfd.readable().await?;
            kill_group(self.pid, Signal::SIGKILL);
            match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    return Ok(ExitInfo {
                        code: Some(code),
                        signal: None,
                    })
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Ok(ExitInfo {
                        code: None,
                        signal: Some(sig as i32),
                    })
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

/// Registers an owned descriptor with tokio's reactor for readability.
// tokio marks registration unsafe because a generic `AsRawFd` could hand out different or closed
// descriptors over time. An `OwnedFd` cannot: it is open from creation until the `AsyncFd` drops
// it, and `as_raw_fd` always returns that same number — exactly the contract tokio asks for.
#[allow(unsafe_code)]
pub(crate) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: see above; `fd` is owned, open, and moved into the AsyncFd for its whole life.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
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

/// The fields of `/proc/PID/stat` after the command name (which may itself contain spaces and
/// parentheses, hence the split at the last `)`); index 0 is field 3, `state`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
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
