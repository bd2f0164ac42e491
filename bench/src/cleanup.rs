//! Cleanup: everything the bench starts is registered, so that an interrupt ends it too.
//!
//! Every process the bench starts leads a process group of its own and is killed by group,
//! never by name. [`Scratch`] directories and [`Kids`] clean up when dropped; the daemon under
//! test registers itself here too (`daemon.rs`).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::usage::{alive, children_of};

/// Processes and directories to clean up if the run is interrupted; the guards below remove
/// their entries when they clean up themselves.
pub struct Registry {
    /// Daemons, stopped with [`stop_daemon_tree`].
    pub daemons: BTreeSet<i32>,
    /// Process groups, SIGKILLed.
    pub groups: BTreeSet<i32>,
    pub dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    daemons: BTreeSet::new(),
    groups: BTreeSet::new(),
    dirs: BTreeSet::new(),
});

pub fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives SIGINT, SIGTERM and SIGHUP to one thread that ends what is registered and exits.
/// Handlers, not a blocked mask plus `sigwait`: a blocked mask is inherited by every child (the
/// daemon would then never see its SIGTERM), handlers are reset by `exec`.
pub fn install_interrupt_cleanup() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the signal runtime")?;
    // Registered here, before any process starts, so no signal arrives unhandled.
    let (mut int, mut term, mut hup) = rt
        .block_on(async {
            Ok::<_, io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        })
        .context("installing the signal handlers")?;
    thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let sig = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                }
            });
            eprintln!("provisr-bench: {sig}, ending every process it started");
            let reg = {
                let mut r = registry();
                Registry {
                    daemons: std::mem::take(&mut r.daemons),
                    groups: std::mem::take(&mut r.groups),
                    dirs: std::mem::take(&mut r.dirs),
                }
            };
            for pid in reg.daemons {
                stop_daemon_tree(pid, Duration::from_secs(10));
            }
            for pg in reg.groups {
                let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
            }
            for dir in reg.dirs {
                let _ = fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        })
        .context("starting the interrupt thread")?;
    Ok(())
}

/// Waits until `pid` is gone or a zombie.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// SIGTERM to a daemon (which stops its children), SIGKILL if it does not exit within `grace`,
/// then SIGKILL to the process group of every child it had that is still alive. Returns how
/// many children outlived the daemon.
pub fn stop_daemon_tree(pid: i32, grace: Duration) -> usize {
    let mut kids: BTreeSet<(i32, i32)> = children_of(pid).into_iter().collect();
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if !wait_gone(pid, grace) {
        kids.extend(children_of(pid));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
    let mut left = 0;
    for (kid, pgrp) in kids {
        if alive(kid) {
            left += 1;
            // Each child leads its own group; a reused pid would not share it.
            let target = if pgrp == kid { pgrp } else { kid };
            let _ = killpg(Pid::from_raw(target), Signal::SIGKILL);
        }
    }
    left
}

/// A temporary directory, removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Result<Scratch> {
        let path =
            std::env::temp_dir().join(format!("provisr-bench-{}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        registry().dirs.insert(path.clone());
        Ok(Scratch { path })
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        registry().dirs.remove(&self.path);
    }
}

/// Children this process started directly, each in its own process group; killed by group
/// (SIGKILL) and reaped when dropped.
#[derive(Default)]
pub struct Kids {
    pub children: Vec<Child>,
}

impl Kids {
    pub fn adopt(&mut self, child: Child) -> i32 {
        let pid = child.id() as i32;
        registry().groups.insert(pid);
        self.children.push(child);
        pid
    }

    /// `cmd` in a process group of its own.
    pub fn spawn(&mut self, cmd: &mut Command) -> Result<i32> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(self.adopt(child))
    }

    /// `sig` to every group, then reap every child.
    pub fn signal_and_reap(&mut self, sig: Signal) {
        for c in &self.children {
            let _ = killpg(Pid::from_raw(c.id() as i32), sig);
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
            registry().groups.remove(&(c.id() as i32));
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.signal_and_reap(Signal::SIGKILL);
    }
}

/// `sleep 3600` with no input or output: the program of every fleet and baseline.
/// Writes back what earlier figures left dirty (1.5 GiB of captured logs, 10 000 program files)
/// before a timed boot. The daemon makes its store durable while it boots; on a file system
/// with gigabytes still to write back, each of its fsyncs waits for the journal behind them,
/// and the figure would measure the previous figure's writeback (`docs/benchmarks.md`, "How
/// each figure is measured"). Untimed; the baseline's runs start from the same state.
pub fn settle_writeback() {
    nix::unistd::sync();
}

pub fn sleep_cmd() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}
