//! Restart after `kill -9`: from the kill to the program's `running` transition on `/events`,
//! against a wait-and-respawn loop (`provisr-bench --respawn-loop`), samples interleaved.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::cleanup::{registry, sleep_cmd};
use crate::daemon::{Api, DaemonProc};
use crate::opts::Ctx;
use crate::table::{Dist, Row};
use crate::PATIENCE;

/// The pause before each sample, provisr's and the loop's alike.
const SETTLE: Duration = Duration::from_millis(5);

pub struct Restart {
    pub provisr: Dist,
    pub baseline: Dist,
}

/// The restart baseline: `provisr-bench --respawn-loop`, which spawns `sleep`, prints its pid,
/// waits on it and respawns, forever.
struct RespawnLoop {
    child: Child,
    out: BufReader<ChildStdout>,
    current: i32,
}

impl RespawnLoop {
    fn start() -> Result<RespawnLoop> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--respawn-loop")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("spawning the respawn loop")?;
        registry().groups.insert(child.id() as i32);
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("respawn loop without stdout"))?;
        let mut l = RespawnLoop {
            child,
            out: BufReader::new(out),
            current: 0,
        };
        l.current = l.read_pid()?;
        Ok(l)
    }

    fn read_pid(&mut self) -> Result<i32> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let pid = line
            .trim()
            .parse()
            .with_context(|| format!("respawn loop said {line:?}"))?;
        registry().groups.insert(pid);
        Ok(pid)
    }

    /// SIGKILL to the current child; the time until the loop reports its replacement.
    fn sample(&mut self) -> Result<Duration> {
        let old = self.current;
        let t0 = Instant::now();
        kill(Pid::from_raw(old), Signal::SIGKILL)?;
        self.current = self.read_pid()?;
        let took = t0.elapsed();
        registry().groups.remove(&old);
        Ok(took)
    }
}

impl Drop for RespawnLoop {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = killpg(Pid::from_raw(self.current), Signal::SIGKILL);
        let mut r = registry();
        r.groups.remove(&(self.child.id() as i32));
        r.groups.remove(&self.current);
    }
}

/// `provisr-bench --respawn-loop`: the baseline's process. Each `sleep` leads a group of its own
/// so that the bench can kill it by group.
pub fn respawn_loop() -> ExitCode {
    // Die with the bench so no loop outlives it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut out = io::stdout().lock();
    loop {
        let mut child = match sleep_cmd().process_group(0).spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("respawn loop: {e}");
                return ExitCode::FAILURE;
            }
        };
        if writeln!(out, "{}", child.id())
            .and_then(|()| out.flush())
            .is_err()
        {
            let _ = child.kill();
            let _ = child.wait();
            return ExitCode::SUCCESS;
        }
        let _ = child.wait();
    }
}

fn pid_of(api: &Api, name: &str) -> Result<i32> {
    let s = api.get("/status", &[("name", name.to_string())])?;
    s["pid"]
        .as_i64()
        .map(|p| p as i32)
        .ok_or_else(|| anyhow!("{name} has no pid: {s}"))
}

/// `kill -9` to running, from `/events` receive time, interleaved with the loop.
pub fn measure(ctx: &Ctx, d: &DaemonProc, api: &Api, programs: &Path) -> Result<Restart> {
    let ev = d.events()?;
    fs::write(
        programs.join("restarter.toml"),
        "command = \"sleep 3600\"\nauto_restart = true\nrestart_interval = \"0s\"\n",
    )?;
    // A reload, not the watcher: this figure is about restarts.
    api.post("/reload", &[])?;
    ev.wait_for("restarter to run", PATIENCE, |t| {
        t.name == "restarter" && t.to == "running"
    })?;
    let mut lp = RespawnLoop::start()?;
    let (mut ours, mut base) = (vec![], vec![]);
    let mut pid = pid_of(api, "restarter")?;
    for _ in 0..ctx.sizes.restart_samples {
        ev.drain();
        let t0 = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill -9 of the child")?;
        let t = ev.wait_for("the restart", Duration::from_secs(10), |t| {
            t.name == "restarter" && t.to == "running"
        })?;
        ours.push(t.at - t0);
        let deadline = Instant::now() + Duration::from_secs(10);
        pid = loop {
            let p = pid_of(api, "restarter")?;
            if p != pid {
                break p;
            }
            ensure!(Instant::now() < deadline, "restarter kept pid {pid}");
            thread::sleep(Duration::from_millis(1));
        };
        // Each sample starts from a quiet machine: what the daemon does after a restart (its
        // record's flush, its log line) and the new child's own start must not land in the
        // loop's sample, nor the loop's new child in the daemon's next one.
        thread::sleep(SETTLE);
        base.push(lp.sample()?);
        thread::sleep(SETTLE);
    }
    Ok(Restart {
        provisr: Dist::of(ours)?,
        baseline: Dist::of(base)?,
    })
}

impl Restart {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        Row::percentiles(
            rows,
            "restart after kill -9 vs wait-and-respawn loop,",
            self.provisr,
            self.baseline,
            [Some(1.5), Some(2.0)],
        );
    }
}
