//! Spawning one instance's process: argv, working directory, environment, process group, pipes,
//! described as a [`Launch`] and started through [`spawn_owned`] (the spawner process, or this
//! process without one).
//!
//! Every descriptor the daemon opens is `O_CLOEXEC`, and the child additionally marks everything
//! above fd 4 close-on-exec before `exec`, so nothing of the daemon leaks into a child — except,
//! deliberately, the read ends of the child's own stdout and stderr pipes, placed at fd 3 and fd 4.
//! The child holding a read end of its own pipes means its writes can never fail with `EPIPE` or
//! raise `SIGPIPE`: if the daemon is killed, the pipe simply fills and the child blocks until the
//! next daemon reopens `/proc/PID/fd/3` and `/proc/PID/fd/4` and drains them (see `docs/runtime.md`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::config::{InstanceId, ProgramSpec};

use super::argv::argv;
use super::launch::{Launch, LaunchError};
use super::process::{
    child_fd_limit, kill_group, proc_start_time, reap_owned, spawn_owned, ProcessWatch,
};

/// `PATH` of a child when `use_os_env = false` (`docs/configuration.md`).
pub const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The capacity asked for each output pipe: a child writing bursts keeps running while the log
/// writer catches up, and a dead daemon leaves room for more buffered output.
pub const PIPE_SIZE: usize = 1 << 20;

/// The variable naming the daemon's state directory (canonical, absolute) in the environment of
/// every child it spawns, beside `PROVISR_NAME` and `PROVISR_INSTANCE`: the tag by which a daemon
/// finds its own processes in `/proc`, with or without a record of them (`docs/runtime.md`).
pub const STATE_DIR_ENV: &str = "PROVISR_STATE_DIR";
/// The instance name (`web`, `web-2`) in every child's environment.
pub const NAME_ENV: &str = "PROVISR_NAME";
/// The 1-based instance index in every child's environment.
pub const INSTANCE_ENV: &str = "PROVISR_INSTANCE";
/// The digest of the spec a child was spawned with ([`ProgramSpec::digest`], hex), in its tag.
pub const SPEC_ENV: &str = "PROVISR_SPEC";

/// The child's fd holding the read end of its own stdout pipe.
pub const STDOUT_KEEPALIVE_FD: RawFd = 3;
/// The child's fd holding the read end of its own stderr pipe.
pub const STDERR_KEEPALIVE_FD: RawFd = 4;

/// Why a process could not be spawned. Each becomes a failed start, retried per `retry_count`.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("program {program}: the command is empty")]
    EmptyCommand { program: String },
    #[error("program {program}: work_dir {}: {source}", path.display())]
    WorkDir {
        program: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("program {program}: work_dir {} is not a directory", path.display())]
    WorkDirNotADirectory { program: String, path: PathBuf },
    #[error("program {program}: cannot create the output pipes: {source}")]
    Pipes { program: String, source: io::Error },
    #[error("program {program}: cannot {doing} {argv0:?}: {source}")]
    Exec {
        program: String,
        argv0: String,
        /// The step that failed, as words that end before the program's name: `execute`,
        /// `switch to the user of`, …
        doing: &'static str,
        source: io::Error,
    },
    #[error("program {program}: {why}")]
    Identity { program: String, why: String },
    #[error("program {program}: cannot watch pid {pid} for its exit (pidfd_open): {source}")]
    Watch {
        program: String,
        pid: i32,
        source: io::Error,
    },
}

/// A freshly spawned process: the runtime watches `watch`, the sink gets `stdout`/`stderr`.
pub(crate) struct Spawned {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`; `None` only without a readable `/proc`.
    pub start_time: Option<u64>,
    pub watch: ProcessWatch,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub pipes: PipeReservation,
}

/// Spawns the process of instance `id` of `spec`: its own process group, stdin from `/dev/null`,
/// stdout and stderr into fresh pipes whose read ends are returned (and also kept by the child at
/// fd 3 and 4), tagged with `state_dir` (see [`environment`]).
pub(crate) async fn spawn_instance(
    spec: &ProgramSpec,
    id: &InstanceId,
    state_dir: Option<&Path>,
) -> Result<Spawned, SpawnError> {
    let program = || spec.name.clone();
    let argv = argv(&spec.exec);
    let Some(argv0) = argv.first() else {
        return Err(SpawnError::EmptyCommand { program: program() });
    };
    check_work_dir(spec)?;
    let identity = super::identity::resolve(spec).map_err(|why| SpawnError::Identity {
        program: program(),
        why,
    })?;

    let pipes_err = |source| SpawnError::Pipes {
        program: program(),
        source,
    };
    let mut pipes = PipeReservation::default();
    let (out_r, out_w) = output_pipe(&mut pipes).map_err(pipes_err)?;
    let (err_r, err_w) = output_pipe(&mut pipes).map_err(pipes_err)?;

    let launch = Launch {
        argv: argv.iter().map(OsString::from).collect(),
        env: environment(spec, id, state_dir, None),
        cwd: spec.work_dir.clone(),
        fds: vec![
            None,
            Some(out_w.as_fd()),
            Some(err_w.as_fd()),
            Some(out_r.as_fd()),
            Some(err_r.as_fd()),
        ],
        nofile: child_fd_limit(),
        identity,
    };
    let mut started = spawn_owned(&launch).await;
    if let (Err(e), Some(dir)) = (&started, state_dir) {
        if e.maybe_started {
            // The spawner died holding this request: what it may have started carries this
            // instance's tag and is nobody's; end it before starting the instance again.
            super::reaper::kill_escapees(dir, &id.name);
            started = spawn_owned(&launch).await;
        }
    }
    // The parent's copies of the write ends go now, or the sink would never see end-of-file
    // after the child exits.
    drop(launch);
    drop((out_w, err_w));
    let started = started.map_err(|e| exec_error(program(), argv0, e))?;
    let pid = started.pid;
    let watch = match ProcessWatch::open(pid) {
        Ok(w) => w,
        Err(source) => {
            // Without an exit watch the child cannot be supervised: end it and reap it here.
            kill_group(pid, nix::sys::signal::Signal::SIGKILL);
            reap_owned(pid);
            return Err(SpawnError::Watch {
                program: program(),
                pid,
                source,
            });
        }
    };
    Ok(Spawned {
        pid,
        start_time: started.start_time.or_else(|| proc_start_time(pid)),
        watch,
        stdout: out_r,
        stderr: err_r,
        pipes,
    })
}

/// A failed start as a [`SpawnError`].
pub(crate) fn exec_error(program: String, argv0: &str, e: LaunchError) -> SpawnError {
    SpawnError::Exec {
        program,
        argv0: argv0.to_string(),
        doing: e.stage.doing(),
        source: e.source,
    }
}

/// Variables of the daemon's own environment its children never inherit: the service manager's
/// protocols are the daemon's (a child holding `NOTIFY_SOCKET` could speak for it; docs/systemd.md).
pub const DAEMON_ONLY_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// The environment of a process of instance `id` of `spec` (`docs/configuration.md`), for
/// instances and detector commands alike, so a detector sees what the program sees; `extra`
/// is one more variable (a detector's command).
///
/// The environment ends with the tag: `PROVISR_NAME`, `PROVISR_INSTANCE` and, when the daemon
/// gives one, `PROVISR_STATE_DIR` (its canonical state directory). Set last, a program's own
/// `env` cannot change them. Variables are sorted by name.
pub(crate) fn environment(
    spec: &ProgramSpec,
    id: &InstanceId,
    state_dir: Option<&Path>,
    extra: Option<(&str, &str)>,
) -> Vec<OsString> {
    let mut env: BTreeMap<OsString, OsString> = if spec.use_os_env {
        std::env::vars_os().collect()
    } else {
        let mut minimal = BTreeMap::new();
        minimal.insert("PATH".into(), MINIMAL_PATH.into());
        if let Some(home) = std::env::var_os("HOME") {
            minimal.insert("HOME".into(), home);
        }
        minimal
    };
    for var in DAEMON_ONLY_ENV {
        env.remove(OsStr::new(var));
    }
    for (k, v) in &spec.env {
        env.insert(k.into(), v.into());
    }
    env.insert(NAME_ENV.into(), id.name.clone().into());
    env.insert(INSTANCE_ENV.into(), id.index.to_string().into());
    env.insert(SPEC_ENV.into(), format!("{:016x}", spec.digest()).into());
    if let Some(dir) = state_dir {
        env.insert(STATE_DIR_ENV.into(), dir.as_os_str().to_owned());
    }
    if let Some((k, v)) = extra {
        env.insert(k.into(), v.into());
    }
    env.into_iter()
        .map(|(mut k, v)| {
            k.reserve_exact(v.len() + 1);
            k.push("=");
            k.push(v);
            k
        })
        .collect()
}

/// Reports a missing or non-directory `work_dir` as itself, rather than as the `ENOENT` the child's
/// `chdir` would give (indistinguishable from a missing binary).
fn check_work_dir(spec: &ProgramSpec) -> Result<(), SpawnError> {
    let Some(path) = &spec.work_dir else {
        return Ok(());
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SpawnError::WorkDirNotADirectory {
            program: spec.name.clone(),
            path: path.clone(),
        }),
        Err(source) => Err(SpawnError::WorkDir {
            program: spec.name.clone(),
            path: path.clone(),
            source,
        }),
    }
}

/// A close-on-exec pipe with both ends above fd 4, enlarged to [`PIPE_SIZE`] when the budget allows.
fn output_pipe(pipes: &mut PipeReservation) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (r, w) = (above_keepalive_fds(r)?, above_keepalive_fds(w)?);
    pipes.enlarge(&r);
    Ok((r, w))
}

/// Moves a descriptor numbered 0..=4 above 4, so that the daemon's own copies (the read ends it
/// keeps) never sit where a child's descriptors go (a daemon started with stdin closed gets
/// pipes at fd 0).
fn above_keepalive_fds(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > STDERR_KEEPALIVE_FD {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(
        fd.as_fd(),
        STDERR_KEEPALIVE_FD + 1,
    )?)
}

/// Bytes of pipe buffer this process has enlarged its pipes by, across all instances.
static ENLARGED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// How many bytes of enlarged pipe buffers the daemon allows itself.
///
/// For an unprivileged user the kernel counts pipe buffers per user: past
/// `/proc/sys/fs/pipe-user-pages-soft` (64 MiB by default) every NEW pipe of that user — of any of
/// its processes — gets a tiny 2-page buffer. A thousand instances with 2 MiB each would cross that
/// after 16, so the daemon keeps its enlarged pipes within half of the soft limit and leaves the
/// rest at the kernel default. Privileged daemons (CAP_SYS_RESOURCE or CAP_SYS_ADMIN) are exempt.
fn pipe_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let privileged = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
                u64::from_str_radix(hex, 16).ok()
            })
            .map(|caps| caps & ((1 << 24) | (1 << 21)) != 0)
            .unwrap_or(false);
        if privileged {
            return usize::MAX;
        }
        let soft_pages: usize = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        if soft_pages == 0 {
            return usize::MAX;
        }
        soft_pages.saturating_mul(rustix::param::page_size()) / 2
    })
}

/// The enlarged pipe capacity one instance holds; given back when its process is reaped.
#[derive(Debug, Default)]
pub(crate) struct PipeReservation(usize);

impl PipeReservation {
    /// Enlarges `pipe` to [`PIPE_SIZE`] if the budget allows; silently keeps the default otherwise
    /// (a bigger pipe is a throughput nicety, never a requirement).
    fn enlarge(&mut self, pipe: &OwnedFd) {
        let budget = pipe_budget();
        let reserved = ENLARGED_BYTES.fetch_add(PIPE_SIZE, Ordering::Relaxed);
        if reserved.saturating_add(PIPE_SIZE) > budget {
            ENLARGED_BYTES.fetch_sub(PIPE_SIZE, Ordering::Relaxed);
            return;
        }
        match rustix::pipe::fcntl_setpipe_size(pipe, PIPE_SIZE) {
            Ok(_) => self.0 += PIPE_SIZE,
            Err(_) => {
                ENLARGED_BYTES.fetch_sub(PIPE_SIZE, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for PipeReservation {
    fn drop(&mut self) {
        if self.0 > 0 {
            ENLARGED_BYTES.fetch_sub(self.0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Exec;

    #[test]
    fn pipes_are_cloexec_above_fd_4_and_enlarged_within_budget() {
        let mut res = PipeReservation::default();
        let (r, w) = output_pipe(&mut res).unwrap();
        for fd in [&r, &w] {
            assert!(fd.as_raw_fd() > 4);
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
        let size = rustix::pipe::fcntl_getpipe_size(&r).unwrap();
        if pipe_budget() == usize::MAX {
            assert_eq!(size, PIPE_SIZE);
        }
        assert!(size >= 4096);
    }

    #[tokio::test]
    async fn a_descriptor_inherited_without_cloexec_does_not_reach_the_child() {
        // A pipe without O_CLOEXEC stands for what a careless parent of the daemon might pass on.
        let (leaky_r, leaky_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap();
        let (leaky_r, leaky_w) = (
            above_keepalive_fds(leaky_r).unwrap(),
            above_keepalive_fds(leaky_w).unwrap(),
        );
        // `above_keepalive_fds` dups with CLOEXEC only when it had to move; clear it either way.
        for fd in [&leaky_r, &leaky_w] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).unwrap();
        }
        let spec = ProgramSpec::new("fds", Exec::Command("sleep 300".into()));
        let id = InstanceId::new("fds", 1, 1);
        let child = spawn_instance(&spec, &id, None).await.unwrap();
        let pid = child.pid;
        let fds_now = || {
            let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
                .collect();
            v.sort();
            v
        };
        // `sleep` itself may briefly hold a file while it starts (locale data): wait for it to
        // settle. An inherited descriptor would never go away, and fails the test.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut fds = fds_now();
        while fds != [0, 1, 2, 3, 4] && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            fds = fds_now();
        }
        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        let exit = child.watch.exited().await.unwrap();
        assert_eq!(exit.signal, Some(9));
        assert_eq!(fds, [0, 1, 2, 3, 4], "leaky fds {leaky_r:?} {leaky_w:?}");
    }

    #[tokio::test]
    async fn empty_commands_and_bad_work_dirs_are_typed_errors() {
        let id = InstanceId::new("x", 1, 1);
        let err = |spec: ProgramSpec| {
            let id = id.clone();
            async move {
                spawn_instance(&spec, &id, None)
                    .await
                    .err()
                    .expect("spawn must fail")
            }
        };
        let spec = ProgramSpec::new("x", Exec::Command("  ".into()));
        assert!(matches!(err(spec).await, SpawnError::EmptyCommand { .. }));
        let spec = ProgramSpec::new("x", Exec::Args(vec![]));
        assert!(matches!(err(spec).await, SpawnError::EmptyCommand { .. }));
        let mut spec = ProgramSpec::new("x", Exec::Command("true".into()));
        spec.work_dir = Some("/definitely/not/here".into());
        let e = err(spec.clone()).await;
        assert!(matches!(e, SpawnError::WorkDir { .. }), "{e}");
        assert!(e.to_string().contains("/definitely/not/here"), "{e}");
        let file = tempfile::NamedTempFile::new().unwrap();
        spec.work_dir = Some(file.path().to_path_buf());
        assert!(matches!(
            err(spec).await,
            SpawnError::WorkDirNotADirectory { .. }
        ));
        let spec = ProgramSpec::new("x", Exec::Args(vec!["/definitely/not/a/binary".into()]));
        let e = err(spec).await;
        assert!(matches!(e, SpawnError::Exec { .. }), "{e}");
        assert!(e.to_string().contains("/definitely/not/a/binary"), "{e}");
    }
}
