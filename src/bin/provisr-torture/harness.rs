//! What every scenario shares: the daemon under test as a separate process, scratch projects,
//! the one reaper of this process, the cleanup on interrupt, and the result table.
//!
//! This process is a child subreaper: when a daemon is killed, its children are re-parented
//! here rather than to PID 1 (which, in a container or a microVM, may never reap them), and the
//! reaper thread below reaps them when they exit. That mirrors a sane host (systemd is a
//! subreaper for its services) and keeps a thousand kill -9 cycles from filling the pid table
//! with zombies. The reaper is the only `waitpid` here: nothing else may wait, so helpers
//! started with `Command` are waited for through [`wait_exit`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use provisr::client::ApiClient;

use crate::procs;

/// How long a daemon may take to say it listens.
const BOOT_PATIENCE: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The reaper

/// Exit statuses the reaper collected, by pid, each with the number of the reap that got it.
/// Orphans re-parented here are recorded too and never claimed, so a pid the kernel hands out
/// again can find a stale entry under its number: a waiter only accepts a status reaped after
/// its child was spawned ([`Reaped::mark`] before spawning).
struct Reaped {
    reaps: u64,
    statuses: BTreeMap<i32, (u64, ExitStatus)>,
}

struct Exits {
    reaped: Mutex<Reaped>,
    changed: Condvar,
}

static EXITS: Exits = Exits {
    reaped: Mutex::new(Reaped {
        reaps: 0,
        statuses: BTreeMap::new(),
    }),
    changed: Condvar::new(),
};

/// Makes this process a child subreaper and starts the thread that reaps every child.
pub fn start_reaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    thread::Builder::new()
        .name("reaper".into())
        .spawn(|| loop {
            match waitpid(None::<Pid>, None) {
                Ok(status) => {
                    let (pid, raw) = match status {
                        WaitStatus::Exited(pid, code) => (pid, code << 8),
                        WaitStatus::Signaled(pid, sig, _) => (pid, sig as i32),
                        _ => continue,
                    };
                    let mut reaped = lock(&EXITS.reaped);
                    reaped.reaps += 1;
                    let n = reaped.reaps;
                    reaped
                        .statuses
                        .insert(pid.as_raw(), (n, ExitStatus::from_raw(raw)));
                    drop(reaped);
                    EXITS.changed.notify_all();
                }
                Err(Errno::EINTR) => {}
                // No children right now: look again soon (a child started meanwhile is
                // waited for from the next call on).
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        })
        .context("starting the reaper thread")?;
    Ok(())
}

/// Taken before spawning a child: only statuses reaped after it can be that child's.
pub fn reap_mark() -> u64 {
    lock(&EXITS.reaped).reaps
}

/// Waits up to `timeout` for the reaper to collect the exit status of `pid`, spawned after
/// `mark`.
pub fn wait_exit(pid: i32, mark: u64, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut reaped = lock(&EXITS.reaped);
    loop {
        if let Some(&(n, s)) = reaped.statuses.get(&pid) {
            if n > mark {
                reaped.statuses.remove(&pid);
                return Some(s);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        reaped = EXITS
            .changed
            .wait_timeout(reaped, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Runs a helper command (e.g. `sed -i`) to completion through the reaper, for at most `limit`.
pub fn run_helper(cmd: &mut Command, limit: Duration) -> Result<ExitStatus> {
    let mark = reap_mark();
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    wait_exit(child.id() as i32, mark, limit)
        .ok_or_else(|| anyhow!("{cmd:?} did not finish within {limit:?}"))
}

// ---------------------------------------------------------------------------------------------
// Cleanup on interrupt

/// What an interrupt must end: daemons, and every process tagged with a state directory of ours.
struct Registry {
    daemons: BTreeSet<i32>,
    state_dirs: BTreeSet<String>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    daemons: BTreeSet::new(),
    state_dirs: BTreeSet::new(),
    dirs: BTreeSet::new(),
});

/// SIGINT, SIGTERM and SIGHUP end every daemon and tagged process this run started, remove its
/// directories and exit 130. Handlers, not a blocked mask: a blocked mask would be inherited by
/// the daemons, which then never saw their own SIGTERM.
pub fn install_interrupt_cleanup() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the signal runtime")?;
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
            eprintln!("provisr-torture: {sig}: ending every process of this run");
            let reg = lock(&REGISTRY);
            for &pid in &reg.daemons {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            for dir in &reg.state_dirs {
                procs::kill_tagged(dir);
            }
            for dir in &reg.dirs {
                let _ = fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        })
        .context("starting the interrupt thread")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Projects and daemons

/// A scratch project: `config.toml`, a programs directory and a state directory in a temporary
/// directory. Dropping it ends every process tagged with its state directory and removes it.
pub struct Project {
    pub root: PathBuf,
    pub config: PathBuf,
    pub programs: PathBuf,
    /// Canonical and absolute, as the daemon tags its children with it.
    pub state_dir: String,
}

impl Project {
    pub fn new(label: &str) -> Result<Project> {
        let root =
            std::env::temp_dir().join(format!("provisr-torture-{}-{label}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
        }
        let programs = root.join("programs");
        fs::create_dir_all(&programs)
            .with_context(|| format!("creating {}", programs.display()))?;
        fs::create_dir_all(root.join("state"))?;
        let root = fs::canonicalize(&root)?;
        let programs = root.join("programs");
        let state_dir = root.join("state").to_string_lossy().into_owned();
        let config = root.join("config.toml");
        fs::write(&config, "programs_directory = \"programs\"\n")?;
        let mut reg = lock(&REGISTRY);
        reg.dirs.insert(root.clone());
        reg.state_dirs.insert(state_dir.clone());
        Ok(Project {
            root,
            config,
            programs,
            state_dir,
        })
    }

    /// Live processes carrying this project's tag.
    pub fn tagged(&self) -> Vec<procs::Proc> {
        procs::tagged(&self.state_dir)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        procs::kill_tagged(&self.state_dir);
        let _ = fs::remove_dir_all(&self.root);
        let mut reg = lock(&REGISTRY);
        reg.dirs.remove(&self.root);
        reg.state_dirs.remove(&self.state_dir);
    }
}

/// Why a daemon did not come up.
#[derive(Debug, thiserror::Error)]
#[error("the daemon did not start ({status}); the end of its log:\n{log}")]
pub struct BootError {
    pub status: String,
    pub log: String,
}

/// `provisr serve` on 127.0.0.1 port 0 for a project, in its own process group. Dropping it
/// kills it (SIGKILL); its children stay for the project to end.
pub struct Daemon {
    pub pid: i32,
    pub api: ApiClient,
    /// The reaper's mark when it was spawned (see [`wait_exit`]).
    mark: u64,
    log: Arc<Mutex<VecDeque<String>>>,
    panics: Arc<AtomicUsize>,
    done: bool,
}

impl Daemon {
    /// Spawns the daemon without waiting for it: for a kill during start-up.
    pub fn spawn(bin: &Path, project: &Project) -> Result<(i32, mpsc::Receiver<String>, Daemon)> {
        let mark = reap_mark();
        let mut child = Command::new(bin)
            .current_dir(&project.root)
            .arg("serve")
            .args(["--api-listen", "127.0.0.1:0", "--config"])
            .arg(&project.config)
            .arg("--state-dir")
            .arg(&project.state_dir)
            .env("PROVISR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {} serve", bin.display()))?;
        let pid = child.id() as i32;
        lock(&REGISTRY).daemons.insert(pid);
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let panics = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let (log, panics) = (log.clone(), panics.clone());
            thread::Builder::new()
                .name("daemon-log".into())
                .spawn(move || {
                    // PROVISR_TORTURE_DAEMON_LOG=FILE keeps every daemon's whole log, for the
                    // story behind a violation (docs/reliability.md).
                    let mut keep = std::env::var_os("PROVISR_TORTURE_DAEMON_LOG").and_then(|p| {
                        std::fs::OpenOptions::new()
                            .append(true)
                            .create(true)
                            .open(p)
                            .ok()
                    });
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        if let Some(f) = keep.as_mut() {
                            use std::io::Write as _;
                            let _ = writeln!(f, "[{pid}] {line}");
                        }
                        if let Some(at) = line.find("listening on http://") {
                            let url = line[at + "listening on ".len()..].trim().to_string();
                            let _ = tx.send(url);
                        }
                        if line.contains("panicked") {
                            panics.fetch_add(1, Ordering::Relaxed);
                        }
                        let mut l = lock(&log);
                        if l.len() >= 300 {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                })?;
        }
        let daemon = Daemon {
            pid,
            api: ApiClient::new("http://127.0.0.1:1/api", None),
            mark,
            log,
            panics,
            done: false,
        };
        Ok((pid, rx, daemon))
    }

    /// Starts the daemon and waits until it listens.
    pub fn start(bin: &Path, project: &Project) -> Result<Daemon, BootError> {
        let (_, rx, mut d) = Daemon::spawn(bin, project).map_err(|e| BootError {
            status: e.to_string(),
            log: String::new(),
        })?;
        match rx.recv_timeout(BOOT_PATIENCE) {
            Ok(url) => {
                d.api = ApiClient::new(&url, None);
                Ok(d)
            }
            Err(_) => {
                // The log thread ends when the daemon exits: let it catch the last lines.
                let status = match wait_exit(d.pid, d.mark, Duration::from_millis(500)) {
                    Some(s) => {
                        d.forget();
                        format!("it exited with {s}")
                    }
                    None => format!("no listening line within {BOOT_PATIENCE:?}"),
                };
                thread::sleep(Duration::from_millis(50));
                Err(BootError {
                    status,
                    log: d.log_tail(30),
                })
            }
        }
    }

    fn forget(&mut self) {
        self.done = true;
        lock(&REGISTRY).daemons.remove(&self.pid);
    }

    /// `kill -9`, and wait until it is reaped (its children are left running).
    pub fn kill9(mut self) {
        self.kill9_in_place();
    }

    fn kill9_in_place(&mut self) {
        if self.done {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        wait_exit(self.pid, self.mark, Duration::from_secs(30));
        self.forget();
    }

    /// SIGTERM and wait up to `timeout` for it to exit; its exit status.
    pub fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        kill(Pid::from_raw(self.pid), Signal::SIGTERM).context("SIGTERM to the daemon")?;
        match wait_exit(self.pid, self.mark, timeout) {
            Some(s) => {
                self.forget();
                Ok(s)
            }
            None => {
                let log = self.log_tail(20);
                self.kill9_in_place();
                bail!("the daemon did not exit within {timeout:?} of SIGTERM; its log:\n{log}")
            }
        }
    }

    /// Lines of the daemon's log that reported a panic so far.
    pub fn panics(&self) -> usize {
        self.panics.load(Ordering::Relaxed)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let l = lock(&self.log);
        let skip = l.len().saturating_sub(n);
        l.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9_in_place();
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `cond` every 2 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Reports

/// One scenario's outcome: a table of figures and invariants, and every violation found.
pub struct Report {
    pub scenario: &'static str,
    pub rows: Vec<Row>,
    /// One line per violation, with what was expected and what was found.
    pub violations: Vec<String>,
    pub took: Duration,
}

/// A line of the table: a figure, or an invariant with the count of its violations.
pub struct Row {
    pub what: String,
    pub value: String,
    /// `Some(n)`: an invariant, broken `n` times; `None`: a figure.
    pub broken: Option<usize>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            rows: Vec::new(),
            violations: Vec::new(),
            took: Duration::ZERO,
        }
    }

    pub fn figure(&mut self, what: &str, value: impl ToString) {
        self.rows.push(Row {
            what: what.to_string(),
            value: value.to_string(),
            broken: None,
        });
    }

    /// An invariant and how many times it was broken.
    pub fn invariant(&mut self, what: &str, broken: usize) {
        self.rows.push(Row {
            what: what.to_string(),
            value: broken.to_string(),
            broken: Some(broken),
        });
    }

    pub fn violation(&mut self, detail: String) {
        self.violations.push(detail);
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.rows.iter().all(|r| r.broken.is_none_or(|n| n == 0))
    }

    /// The table and the first `shown` violations.
    pub fn render(&self, shown: usize) -> String {
        let width = self.rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
        let vwidth = self.rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {} — {} ({:.1} s)",
            self.scenario,
            if self.passed() { "PASS" } else { "FAIL" },
            self.took.as_secs_f64()
        );
        for r in &self.rows {
            let verdict = match r.broken {
                None => "",
                Some(0) => "ok",
                Some(_) => "VIOLATED",
            };
            let _ = writeln!(out, "  {:<width$}  {:>vwidth$}  {verdict}", r.what, r.value);
        }
        for v in self.violations.iter().take(shown) {
            let _ = writeln!(out, "  ! {v}");
        }
        if self.violations.len() > shown {
            let _ = writeln!(
                out,
                "  ! … and {} more violations (--show-violations N)",
                self.violations.len() - shown
            );
        }
        out
    }
}
