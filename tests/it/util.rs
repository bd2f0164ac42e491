//! Shared test helpers: waiting on conditions and guarding the processes a test starts.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Async variant of [`wait_for`] for tests running inside a tokio runtime.
pub async fn wait_for_async<T>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The bytes a process has written so far (`wchar` of `/proc/PID/io`): it grows while the
/// process writes, which proves it alive and writing without reading what it wrote.
pub fn written_bytes(pid: i32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// [`written_bytes`] summed over the live members of process group `pgid` (a shell's children
/// write for it).
pub fn group_written_bytes(pgid: i32) -> u64 {
    group_members(pgid)
        .into_iter()
        .filter_map(written_bytes)
        .sum()
}

/// True while a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Pids of live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    proc_stats()
        .filter(|s| s.pgrp == pgid && s.state != 'Z')
        .map(|s| s.pid)
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    proc_stats()
        .filter(|s| s.ppid == parent && s.state == 'Z')
        .map(|s| s.pid)
        .collect()
}

pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

pub fn proc_stats() -> impl Iterator<Item = ProcStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let mut f = rest.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid = f.next()?.parse().ok()?;
            let pgrp = f.next()?.parse().ok()?;
            Some(ProcStat {
                pid,
                state,
                ppid,
                pgrp,
            })
        })
}

/// Kills the process groups it holds when dropped, so a failing test leaves nothing behind.
/// Only groups this test started are ever signalled.
#[derive(Default)]
pub struct GroupGuard(pub Vec<i32>);

impl GroupGuard {
    pub fn add(&mut self, pgid: i32) {
        self.0.push(pgid);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        for &pgid in &self.0 {
            if pgid > 1 {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Kills, when dropped, every live process tagged with `state_dir` (`PROVISR_STATE_DIR` in its
/// environment, `docs/runtime.md`, the tag): what a test's daemon started, including processes
/// it started after the test last learned their pids. A test's state directory is its own
/// temporary directory, so nothing else carries its tag.
pub struct TagGuard(pub std::path::PathBuf);

impl Drop for TagGuard {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::canonicalize(&self.0) else {
            return;
        };
        let tag = format!("PROVISR_STATE_DIR={}", dir.display());
        for s in proc_stats().filter(|s| s.state != 'Z') {
            let env = std::fs::read(format!("/proc/{}/environ", s.pid)).unwrap_or_default();
            if env.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(s.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The line of `/proc/PID/FILE` that starts with `prefix` (`"Uid:"`, `"Max open files"`).
pub fn proc_line(pid: i32, file: &str, prefix: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /proc/{pid}/{file}"))
        .to_string()
}
