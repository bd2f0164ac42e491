//! The invariant checker's eyes: live processes found by their tag in `/proc`.
//!
//! Every child the daemon spawns starts with `PROVISR_STATE_DIR=<canonical state dir>`,
//! `PROVISR_NAME=<instance>` and `PROVISR_INSTANCE=<index>` in its environment, and its own
//! children inherit them. `/proc/PID/environ` is the environment a process started with, so a
//! scan finds every process of a state directory — whether the daemon remembers it or not, in
//! the daemon's process group or escaped from it — without asking the daemon anything. A zombie
//! has no environment left: zombies are counted by parent instead ([`zombie_children`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// One live (non-zombie) tagged process.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: i32,
    /// Its session: a process that called `setsid` leads its own (`sid == pid`).
    pub sid: i32,
    /// Field 22 of `/proc/PID/stat`: with the pid, names one process for good.
    pub start_time: u64,
    /// `PROVISR_NAME`: the instance it belongs to.
    pub name: String,
    pub cmdline: Vec<String>,
    /// The `PROVISR_*` and `TORTURE_*` variables it started with.
    pub env: BTreeMap<String, String>,
}

/// The fields of `/proc/PID/stat` this module reads.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub sid: i32,
    pub start_time: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field n is f[n - 3].
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        sid: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
}

/// Every live process tagged with `state_dir`.
pub fn tagged(state_dir: &str) -> Vec<Proc> {
    let tag = format!("PROVISR_STATE_DIR={state_dir}");
    pids()
        .filter_map(|pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
            let mut env = BTreeMap::new();
            let mut ours = false;
            for entry in environ.split(|&b| b == 0) {
                if entry == tag.as_bytes() {
                    ours = true;
                }
                if entry.starts_with(b"PROVISR_") || entry.starts_with(b"TORTURE_") {
                    let entry = String::from_utf8_lossy(entry);
                    if let Some((k, v)) = entry.split_once('=') {
                        env.insert(k.to_string(), v.to_string());
                    }
                }
            }
            if !ours {
                return None;
            }
            let st = stat(pid)?;
            if st.state == 'Z' || st.state == 'X' {
                return None;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .ok()?
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Proc {
                pid,
                sid: st.sid,
                start_time: st.start_time,
                name: env.get("PROVISR_NAME").cloned().unwrap_or_default(),
                cmdline,
                env,
            })
        })
        .collect()
}

/// Zombie children of `parent`: exited, never reaped.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    pids()
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent && s.state == 'Z'))
        .collect()
}

/// A handle on exactly one process: a pidfd opened after checking the start time, and checked
/// again once open, so a recycled pid is never signalled.
pub fn open(pid: i32, start_time: u64) -> Option<OwnedFd> {
    let same = || stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z');
    if !same() {
        return None;
    }
    let fd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
    same().then_some(fd)
}

/// SIGKILL to exactly this process (pid and start time); false when it is already gone.
pub fn kill(pid: i32, start_time: u64) -> bool {
    open(pid, start_time).is_some_and(|fd| pidfd_send_signal(&fd, Signal::KILL).is_ok())
}

/// SIGKILL to every live process tagged with `state_dir`; how many there were.
pub fn kill_tagged(state_dir: &str) -> usize {
    let found = tagged(state_dir);
    for p in &found {
        kill(p.pid, p.start_time);
    }
    found.len()
}
