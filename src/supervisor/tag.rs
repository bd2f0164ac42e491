//! Finding the daemon's own processes in `/proc` by their tag, and signalling them safely.
//!
//! Every child carries `PROVISR_STATE_DIR`, `PROVISR_NAME` and `PROVISR_INSTANCE` in its
//! environment (`spawn.rs`), and detector commands `PROVISR_DETECTOR_COMMAND` besides (hooks
//! `PROVISR_HOOK`), so
//! `/proc/PID/environ` tells which daemon a process belongs to and which instance it is part of,
//! whether or not the store recorded it (`docs/runtime.md`, "The tag every child carries").
//! A scan reads every process's environment, so it runs when a daemon starts and when an adopted
//! process exits, never on a hot path.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::health::DETECTOR_COMMAND_ENV;
use super::hooks::HOOK_ENV;
use super::process::{pidfd, proc_start_time, proc_stat};
use super::spawn::{INSTANCE_ENV, NAME_ENV, SPEC_ENV, STATE_DIR_ENV};

/// A live process carrying a daemon's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// Field 22 of `/proc/PID/stat`.
    pub start_time: u64,
    /// `PROVISR_NAME`: the instance name.
    pub name: String,
    /// `PROVISR_INSTANCE`, when it parses.
    pub index: Option<u32>,
    /// A detector command or a hook (or one of their descendants), not the instance's process.
    pub detector: bool,
    /// `PROVISR_SPEC`: the digest of the spec it was spawned with, when it carries one.
    pub spec: Option<u64>,
}

impl Tagged {
    /// Leads its own process group, as every instance's process is spawned to.
    pub fn leads_group(&self) -> bool {
        self.pgid == self.pid
    }
}

/// What a process's tag says.
struct Tag {
    name: String,
    index: Option<u32>,
    detector: bool,
    spec: Option<u64>,
}

/// The environment of `pid`, whose parent is `ppid`.
///
/// A child that has just exec'd lets its parent go on (`CLONE_VFORK`, or the close-on-exec pipe of
/// a fork) before the kernel has written its new program's environment: for those microseconds
/// its `environ` reads empty. Every child of this process carries a tag, so an empty environment
/// of its own child means "not written yet", never "untagged": it is read again until it is.
fn environ_of(pid: i32, ppid: i32) -> Option<Vec<u8>> {
    let path = format!("/proc/{pid}/environ");
    let mut environ = super::process::read_proc_bytes(&path)?;
    if environ.is_empty() && ppid == std::process::id() as i32 {
        let deadline = Instant::now() + EXEC_SETTLES;
        while environ.is_empty() && Instant::now() < deadline {
            std::thread::yield_now();
            environ = super::process::read_proc_bytes(&path)?;
        }
    }
    Some(environ)
}

/// How long a child's environment may read empty after its exec at most; microseconds in
/// practice, and a child that never had one (started with an empty environment by someone else
/// than the supervisor) costs a scan this once.
const EXEC_SETTLES: Duration = Duration::from_millis(50);

/// The tag of `pid` (whose parent is `ppid`) if it carries `state_dir`'s.
fn tag_of(pid: i32, ppid: i32, state_dir: &Path) -> Option<Tag> {
    let environ = environ_of(pid, ppid)?;
    let dir = state_dir.as_os_str().as_encoded_bytes();
    let (mut ours, mut name, mut index, mut detector) = (false, None, None, false);
    let mut spec = None;
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        if key == STATE_DIR_ENV.as_bytes() {
            ours = value == dir;
        } else if key == NAME_ENV.as_bytes() {
            name = Some(String::from_utf8_lossy(value).into_owned());
        } else if key == INSTANCE_ENV.as_bytes() {
            index = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if key == SPEC_ENV.as_bytes() {
            spec = std::str::from_utf8(value)
                .ok()
                .and_then(|v| u64::from_str_radix(v, 16).ok());
        } else if key == DETECTOR_COMMAND_ENV.as_bytes() || key == HOOK_ENV.as_bytes() {
            detector = true;
        }
    }
    if !ours {
        return None;
    }
    Some(Tag {
        name: name?,
        index,
        detector,
        spec,
    })
}

/// The tagged process `pid`, if it is alive (not a zombie) and carries `state_dir`'s tag.
pub fn tagged(pid: i32, state_dir: &Path) -> Option<Tagged> {
    let stat = proc_stat(pid).filter(|s| !s.zombie)?;
    let tag = tag_of(pid, stat.ppid, state_dir)?;
    Some(Tagged {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgid,
        start_time: stat.start_time,
        name: tag.name,
        index: tag.index,
        detector: tag.detector,
        spec: tag.spec,
    })
}

/// Every live process tagged with `state_dir` (canonical, as children are tagged), by pid.
pub fn scan(state_dir: &Path) -> Vec<Tagged> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut found: Vec<Tagged> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| tagged(pid, state_dir))
        .collect();
    found.sort_by_key(|t| t.pid);
    found
}

/// Sends `sig` to the process `t` names, through a pidfd, only if it is still that process: the
/// pidfd pins whatever has the pid, and the start time, read again after opening it, says
/// whether that is `t` or a process that reused its pid since the scan.
pub fn signal_tagged(t: &Tagged, sig: Signal) -> bool {
    let Ok(fd) = pidfd(t.pid) else {
        return false;
    };
    if proc_start_time(t.pid) != Some(t.start_time) {
        return false;
    }
    match rustix::process::Signal::from_named_raw(sig as i32) {
        Some(s) => rustix::process::pidfd_send_signal(&fd, s).is_ok(),
        None => false,
    }
}

/// Sends `sig` to every process tagged as instance `name` of `state_dir` (detectors aside), one
/// by one through pidfds: what an instance whose process has exited left behind, when its group
/// can no longer be signalled by number. Returns how many were signalled.
pub fn signal_instance(state_dir: &Path, name: &str, sig: Signal) -> usize {
    scan(state_dir)
        .iter()
        .filter(|t| t.name == name && !t.detector)
        .filter(|t| signal_tagged(t, sig))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_scan_finds_exactly_the_processes_tagged_with_its_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours");
        let spawn = |state: &Path, name: &str, helper: Option<&str>| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("300")
                .env(STATE_DIR_ENV, state)
                .env(NAME_ENV, name)
                .env(INSTANCE_ENV, "2")
                .process_group(0);
            if let Some(var) = helper {
                cmd.env(var, "true");
            }
            cmd.spawn().unwrap()
        };
        let mut children = [
            spawn(&ours, "web-2", None),
            spawn(&ours, "web-2", Some(DETECTOR_COMMAND_ENV)),
            spawn(&dir.path().join("other"), "web-2", None),
            spawn(&ours, "web-2", Some(HOOK_ENV)),
        ];
        let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
        let found = scan(&ours);
        let mine: Vec<&Tagged> = found.iter().filter(|t| pids.contains(&t.pid)).collect();
        assert_eq!(mine.len(), 3, "{found:?}");
        assert_eq!(
            (mine[0].pid, &*mine[0].name, mine[0].index, mine[0].detector),
            (pids[0], "web-2", Some(2), false)
        );
        assert!(mine[0].leads_group());
        assert!(mine[1].detector);
        assert!(
            mine[2].detector,
            "a hook is a helper too, never the instance"
        );
        assert_eq!(signal_instance(&ours, "web-2", Signal::SIGKILL), 1);
        assert!(children[0].wait().is_ok());
        for c in &mut children[1..] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
