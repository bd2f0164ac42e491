//! Starting one child: what it is started with ([`Launch`]), and the code that runs in it
//! between `clone` and `exec`.
//!
//! A [`Launch`] describes a child in plain data: argv, environment, working directory, what it
//! gets at descriptors 0 to 4, the open-file limit to restore and who it runs as
//! ([`Identity`]). [`start`] carries it out in the calling process the way `posix_spawn` does:
//! `clone(CLONE_VM | CLONE_VFORK)`, so the child borrows the caller's memory until it has
//! exec'd and nothing of the caller's address space is copied. Unlike `posix_spawn`, the child
//! also switches user and groups, applies `[limits]`, `nice`, `oom_score_adj` and `umask`.
//!
//! It runs in the spawner process (`spawner.rs`), with `CLONE_PARENT` so that the child is the
//! daemon's child; there the child inherits almost nothing, since the spawner holds a handful of
//! descriptors. Without a spawner (the runtime inside a test), it runs in the calling process
//! itself. Either way the child has its own process group, only fds 0–4 survive its `exec`, and
//! a failure at any step (which step, and the errno) comes back to the caller.
//!
//! The child shares the caller's memory and runs on a stack of its own until `exec`: it only
//! makes system calls on data prepared beforehand ([`Prepared`]), never allocates, takes no lock
//! and cannot panic. The identity calls (`setgroups`, `setgid`, `setuid`) are raw system calls:
//! glibc's wrappers would broadcast the change to every thread of the caller, whose memory the
//! child shares.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::libc::{self, c_char, c_int, c_void};

/// How many descriptors a child can be given: 0, 1, 2, and the fd 3/4 keepalives.
pub(crate) const CHILD_FDS: usize = 5;

/// The user, group and supplementary groups a child switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// What a child runs as and within (`docs/configuration.md`, "Privileges and limits"), resolved
/// to numbers by the daemon (`identity.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub ids: Option<Ids>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    pub oom_score_adj: Option<i32>,
    /// `(RLIMIT_*, value)`: soft and hard limit both set to the value.
    pub limits: Vec<(u32, u64)>,
}

/// Everything a child is started with.
pub(crate) struct Launch<'a> {
    /// `argv[0]` is the program as written: a path, or a name looked up in the child's `PATH`.
    pub argv: Vec<OsString>,
    /// `KEY=VALUE` entries, in order.
    pub env: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// What the child gets at fd 0, 1, …: a descriptor of the caller's (duplicated), or `None`
    /// for `/dev/null`. At most [`CHILD_FDS`]; everything else is closed at `exec`.
    pub fds: Vec<Option<BorrowedFd<'a>>>,
    /// The `RLIMIT_NOFILE` `(soft, hard)` to restore, when the daemon raised its own.
    pub nofile: Option<(u64, u64)>,
    pub identity: Identity,
}

/// Which step of starting a child failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Prepare,
    Clone,
    ProcessGroup,
    Descriptors,
    WorkDir,
    OomScoreAdj,
    Nice,
    Limits,
    Groups,
    Group,
    User,
    Exec,
    /// The spawner process could not be reached, or died while starting the child.
    Spawner,
}

impl Stage {
    const ALL: [Stage; 13] = [
        Stage::Prepare,
        Stage::Clone,
        Stage::ProcessGroup,
        Stage::Descriptors,
        Stage::WorkDir,
        Stage::OomScoreAdj,
        Stage::Nice,
        Stage::Limits,
        Stage::Groups,
        Stage::Group,
        Stage::User,
        Stage::Exec,
        Stage::Spawner,
    ];

    /// The stage's number on the wire and in the child's failure word (never 0).
    pub(crate) fn code(self) -> u32 {
        Stage::ALL
            .iter()
            .position(|&s| s == self)
            .map_or(0, |i| i as u32 + 1)
    }

    pub(crate) fn from_code(code: u32) -> Option<Stage> {
        Stage::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// What was being done, as words that end before the program's name: error messages say
    /// "cannot {doing} {program}".
    pub(crate) fn doing(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare the arguments and environment of",
            Stage::Clone => "create a process for",
            Stage::ProcessGroup => "give a process group of its own to",
            Stage::Descriptors => "set up the descriptors of",
            Stage::WorkDir => "change to the work_dir of",
            Stage::OomScoreAdj => "set the oom_score_adj of",
            Stage::Nice => "set the nice value of",
            Stage::Limits => "apply the [limits] of",
            Stage::Groups => "set the supplementary_groups of",
            Stage::Group => "switch to the group of",
            Stage::User => "switch to the user of",
            Stage::Exec => "execute",
            Stage::Spawner => "reach the spawner process to execute",
        }
    }
}

/// A child that is running its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Started {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`, when known without reading it (see [`StartClock`]).
    pub start_time: Option<u64>,
}

/// Starting a child failed at `stage`.
#[derive(Debug)]
pub(crate) struct LaunchError {
    /// A child that was created and has exited already: its parent must reap it.
    pub pid: Option<i32>,
    pub stage: Stage,
    pub source: io::Error,
    /// The spawner died with the request in hand: a child may have been created and be
    /// running, unknown to the caller (it carries its tag; see `spawn.rs`).
    pub maybe_started: bool,
}

impl LaunchError {
    pub(crate) fn new(stage: Stage, source: io::Error) -> LaunchError {
        LaunchError {
            pid: None,
            stage,
            source,
            maybe_started: false,
        }
    }
}

/// Whose child the new process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parent {
    /// The caller's: the runtime without a spawner.
    Caller,
    /// The caller's parent (`CLONE_PARENT`): the spawner starting a child of the daemon.
    CallersParent,
}

/// A `/dev/null` opened once, above fd 4 and close-on-exec, for the slots that want it.
fn dev_null() -> io::Result<BorrowedFd<'static>> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_fd());
    }
    let fd = rustix::fs::open(
        c"/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let fd = above_child_fds(fd.as_fd())?.unwrap_or(fd);
    Ok(NULL.get_or_init(|| fd).as_fd())
}

/// A close-on-exec duplicate of `fd` above the child's descriptors when `fd` is one of them
/// (0–4), so that placing one descriptor can never overwrite another; `None` when it is not.
fn above_child_fds(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    if fd.as_raw_fd() >= CHILD_FDS as RawFd {
        return Ok(None);
    }
    Ok(Some(rustix::io::fcntl_dupfd_cloexec(
        fd,
        CHILD_FDS as RawFd,
    )?))
}

/// Starts the child `launch` describes from the calling process (see the module docs) and
/// returns once it has exec'd its program, or failed to.
pub(crate) fn start(launch: &Launch<'_>, parent: Parent) -> Result<Started, LaunchError> {
    let prepare = |e| LaunchError::new(Stage::Prepare, e);
    if launch.fds.len() > CHILD_FDS {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "more than 5 child descriptors");
        return Err(prepare(e));
    }
    // Sources above fd 4; the duplicates made for that live until the child has exec'd.
    let mut moved = Vec::new();
    let mut fds = Vec::with_capacity(launch.fds.len());
    for slot in &launch.fds {
        let fd = match slot {
            Some(fd) => *fd,
            None => dev_null().map_err(prepare)?,
        };
        match above_child_fds(fd).map_err(prepare)? {
            Some(dup) => {
                fds.push(dup.as_raw_fd());
                moved.push(dup);
            }
            None => fds.push(fd.as_raw_fd()),
        }
    }
    let prepared = Prepared::new(launch, fds, parent == Parent::Caller).map_err(prepare)?;
    let before = boottime_ns();
    let pid = clone_child(&prepared, parent)?;
    drop(moved);
    match prepared.failure() {
        None => Ok(Started {
            pid,
            start_time: START_CLOCK.start_time(pid, before, prepared.began.load(Ordering::Acquire)),
        }),
        Some((stage, errno)) => Err(LaunchError {
            pid: Some(pid),
            stage,
            source: io::Error::from_raw_os_error(errno),
            maybe_started: false,
        }),
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock the kernel stamps a new task's start with.
fn boottime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// A child's start time (field 22 of `/proc/PID/stat`) without reading `/proc`, which costs
/// about 100 µs per read on a busy machine (the child is in the middle of its `exec`), on the
/// path of every spawn.
///
/// The kernel stamps a task with `CLOCK_BOOTTIME` when `clone` creates it and shows it in clock
/// ticks, rounded down. The caller reads the clock just before the clone and the child first
/// thing once it runs: when both readings fall in the same tick, so does the start. Otherwise
/// (about one spawn in a hundred) the start time is left to a read of `/proc`. The first spawns
/// of each process check the estimate against `/proc`; one mismatch (a kernel that stamps
/// otherwise) and `/proc` is read for every spawn.
struct StartClock {
    /// Estimates found equal to `/proc` so far, up to [`StartClock::TRUSTED`]; `u32::MAX` once
    /// one was not.
    checked: AtomicU32,
}

static START_CLOCK: StartClock = StartClock {
    checked: AtomicU32::new(0),
};

impl StartClock {
    const TRUSTED: u32 = 3;

    fn start_time(&self, pid: i32, before: u64, began: u64) -> Option<u64> {
        let checked = self.checked.load(Ordering::Relaxed);
        if checked == u32::MAX || began == 0 {
            return None;
        }
        let tick = 1_000_000_000 / rustix::param::clock_ticks_per_second().max(1);
        let estimate = (before / tick == began / tick).then_some(before / tick)?;
        if checked < Self::TRUSTED {
            let actual = super::process::proc_start_time(pid);
            if actual != Some(estimate) {
                self.checked.store(u32::MAX, Ordering::Relaxed);
                return actual;
            }
            self.checked.fetch_add(1, Ordering::Relaxed);
        }
        Some(estimate)
    }
}

/// Bytes of stack the child runs on until `exec`: its calls are a few system-call wrappers.
const CHILD_STACK: usize = 64 * 1024;

thread_local! {
    // One stack per calling thread, reused: with CLONE_VFORK the caller is suspended until the
    // child has exec'd or exited, so a thread never has two children on its stack at once.
    static STACK: std::cell::RefCell<Vec<u128>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `clone(CLONE_VM | CLONE_VFORK [| CLONE_PARENT])` running [`child_main`]; returns once the
/// child has exec'd or exited.
// The clone is unsafe because the child shares this process's memory: it runs `child_main` on
// a stack of its own, touching only `prepared` (alive until the child is done, since the caller
// is suspended until then: CLONE_VFORK) and making system calls. Signals are blocked around the
// clone when the caller is the daemon itself, so none of its handlers can run in the child
// before the child has reset them.
#[allow(unsafe_code)]
fn clone_child(prepared: &Prepared, parent: Parent) -> Result<i32, LaunchError> {
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    if parent == Parent::CallersParent {
        flags |= libc::CLONE_PARENT;
    }
    STACK.with_borrow_mut(|stack| {
        if stack.is_empty() {
            stack.resize(CHILD_STACK / std::mem::size_of::<u128>(), 0);
        }
        // The stack grows down from its end, which a `u128` buffer keeps 16-byte aligned.
        let top = stack.as_mut_ptr_range().end.cast::<c_void>();
        let arg = std::ptr::from_ref(prepared).cast_mut().cast::<c_void>();
        // SAFETY: see the comment on this function. `sigfillset`/`pthread_sigmask` only write
        // the masks given; `clone` gets a valid function, the aligned end of a live stack
        // buffer and a pointer to `prepared`, which outlives the child's use of it.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            let block = prepared.reset_signals;
            if block {
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            }
            let pid = libc::clone(child_main, top, flags, arg);
            let clone_error = io::Error::last_os_error();
            if block {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
            if pid < 0 {
                return Err(LaunchError::new(Stage::Clone, clone_error));
            }
            Ok(pid)
        }
    })
}

/// A [`Launch`] turned into what the child's system calls take, before the clone.
struct Prepared {
    /// Where to look for the program, in order: argv[0] itself when it has a `/`, else each
    /// directory of the child's `PATH`.
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    cwd: Option<CString>,
    /// The caller's descriptor for each child descriptor 0, 1, …; all above 4.
    fds: Vec<RawFd>,
    nofile: Option<libc::rlimit>,
    oom_score_adj: Option<Vec<u8>>,
    nice: Option<i32>,
    limits: Vec<(u32, libc::rlimit)>,
    umask: Option<u32>,
    ids: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// Reset every signal handler (the caller is the daemon, which has some); the spawner has
    /// none but `SIGPIPE`'s, which is always reset.
    reset_signals: bool,
    /// Written by a child that failed: `stage << 32 | errno`; 0 while none did.
    failure: AtomicU64,
    /// `CLOCK_BOOTTIME` as the child began, in nanoseconds (see [`StartClock`]).
    began: AtomicU64,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} contains a NUL byte",
                String::from_utf8_lossy(bytes)
                    .chars()
                    .take(60)
                    .collect::<String>()
            ),
        )
    })
}

fn rlimit(soft: u64, hard: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    }
}

/// `execvp`'s default search path when the environment has no `PATH`.
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

impl Prepared {
    fn new(launch: &Launch<'_>, fds: Vec<RawFd>, reset_signals: bool) -> io::Result<Prepared> {
        let Some(program) = launch.argv.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
        };
        let program = program.as_bytes();
        let candidates = if program.contains(&b'/') {
            vec![cstring(program)?]
        } else {
            let path = launch
                .env
                .iter()
                .rev()
                .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
                .unwrap_or(DEFAULT_PATH);
            path.split(|&b| b == b':')
                .map(|dir| match dir {
                    // An empty entry is the working directory, as for execvp.
                    b"" => cstring(program),
                    dir => cstring(&[dir, b"/", program].concat()),
                })
                .collect::<io::Result<Vec<CString>>>()?
        };
        let argv: Vec<CString> = launch
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let envp: Vec<CString> = launch
            .env
            .iter()
            .map(|e| cstring(e.as_bytes()))
            .collect::<io::Result<_>>()?;
        let pointers = |v: &[CString]| {
            let mut p: Vec<*const c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let identity = &launch.identity;
        Ok(Prepared {
            candidates,
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            _argv: argv,
            _envp: envp,
            cwd: launch
                .cwd
                .as_deref()
                .map(|d| cstring(OsStr::as_bytes(d.as_os_str())))
                .transpose()?,
            fds,
            nofile: launch.nofile.map(|(soft, hard)| rlimit(soft, hard)),
            oom_score_adj: identity.oom_score_adj.map(|n| n.to_string().into_bytes()),
            nice: identity.nice,
            limits: identity
                .limits
                .iter()
                .map(|&(resource, value)| (resource, rlimit(value, value)))
                .collect(),
            umask: identity.umask,
            ids: identity
                .ids
                .as_ref()
                .map(|ids| (ids.uid, ids.gid, ids.groups.clone())),
            reset_signals,
            failure: AtomicU64::new(0),
            began: AtomicU64::new(0),
        })
    }

    /// The stage and errno a failed child left, if it failed.
    fn failure(&self) -> Option<(Stage, i32)> {
        let word = self.failure.load(Ordering::Acquire);
        (word != 0).then(|| {
            let stage = Stage::from_code((word >> 32) as u32).unwrap_or(Stage::Exec);
            (stage, word as u32 as i32)
        })
    }
}

/// The child's entry point (see [`child`]).
// Unsafe only to turn the pointer `clone_child` passed back into the reference it was made from.
#[allow(unsafe_code)]
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&Prepared` `clone_child` passed, alive until this child has
    // exec'd or exited.
    let prepared = unsafe { &*arg.cast_const().cast::<Prepared>() };
    child(prepared)
}

/// The last errno of this thread.
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Runs in the child, between `clone` and `exec`: the order is the only one that works —
/// what needs privileges (process group, descriptors, limits, priority, OOM score) first, then
/// the umask, the groups, the group and last the user — and ends in `exec` or `_exit(127)`.
// Unsafe because every step is a raw system call through libc on pointers prepared before the
// clone. Nothing here allocates, locks, unwinds or reads anything but `p` (and the vDSO's clock):
// the child shares the caller's memory (see the module docs). A failure is stored in `p.failure` for the caller,
// who is suspended until this child exits.
#[allow(unsafe_code)]
fn child(p: &Prepared) -> c_int {
    let fail = |stage: Stage, errno: i32| -> c_int {
        let word = (u64::from(stage.code()) << 32) | u64::from(errno as u32);
        p.failure.store(word, Ordering::Release);
        // SAFETY: ends this child at once, without running anything of the caller's.
        unsafe { libc::_exit(127) }
    };
    p.began.store(boottime_ns(), Ordering::Release);
    // SAFETY: see the comment on this function; every pointer comes from `p`.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        if p.reset_signals {
            let mut old: libc::sigaction = std::mem::zeroed();
            for sig in 1..65 {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction != libc::SIG_IGN
                    && old.sa_sigaction != libc::SIG_DFL
                {
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
        }
        // Rust ignores SIGPIPE in its programs; children get the default, as std gives them.
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        if libc::setpgid(0, 0) != 0 {
            return fail(Stage::ProcessGroup, errno());
        }
        for (target, &source) in p.fds.iter().enumerate() {
            // dup2 leaves the new descriptor without FD_CLOEXEC: these survive exec.
            if libc::dup2(source, target as c_int) < 0 {
                return fail(Stage::Descriptors, errno());
            }
        }
        // Everything from the first descriptor not given is closed at exec, including what the
        // caller may have inherited without the flag. Kernels before 5.11 lack the flag; the
        // caller's own descriptors are close-on-exec anyway.
        libc::syscall(
            libc::SYS_close_range,
            p.fds.len() as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if let Some(limit) = &p.nofile {
            // Lowering a soft limit cannot be refused; should it be anyway, a child with the
            // daemon's higher limit still runs fine, so this never fails the spawn.
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        if let Some(dir) = &p.cwd {
            if libc::chdir(dir.as_ptr()) != 0 {
                return fail(Stage::WorkDir, errno());
            }
        }
        if let Some(text) = &p.oom_score_adj {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd < 0 || libc::write(fd, text.as_ptr().cast(), text.len()) < 0 {
                return fail(Stage::OomScoreAdj, errno());
            }
            libc::close(fd);
        }
        if let Some(n) = p.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0 {
                return fail(Stage::Nice, errno());
            }
        }
        for (resource, limit) in &p.limits {
            if libc::setrlimit(*resource as _, limit) != 0 {
                return fail(Stage::Limits, errno());
            }
        }
        if let Some(mask) = p.umask {
            libc::umask(mask as libc::mode_t);
        }
        if let Some((uid, gid, groups)) = &p.ids {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                return fail(Stage::Groups, errno());
            }
            if libc::syscall(libc::SYS_setgid, *gid) != 0 {
                return fail(Stage::Group, errno());
            }
            if libc::syscall(libc::SYS_setuid, *uid) != 0 {
                return fail(Stage::User, errno());
            }
        }
        // As execvp: go on past directories without the program, remember a permission error.
        let mut denied = false;
        for candidate in &p.candidates {
            libc::execve(
                candidate.as_ptr(),
                p.argv_ptrs.as_ptr(),
                p.envp_ptrs.as_ptr(),
            );
            match errno() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                other => return fail(Stage::Exec, other),
            }
        }
        fail(
            Stage::Exec,
            if denied { libc::EACCES } else { libc::ENOENT },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_through_their_codes() {
        for s in Stage::ALL {
            assert_ne!(s.code(), 0);
            assert_eq!(Stage::from_code(s.code()), Some(s));
        }
        assert_eq!(Stage::from_code(0), None);
        assert_eq!(Stage::from_code(99), None);
    }

    #[test]
    fn the_start_time_known_without_proc_is_the_one_proc_shows() {
        let launch = Launch {
            argv: vec!["sleep".into(), "300".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: None,
            fds: vec![None, None, None],
            nofile: None,
            identity: Identity::default(),
        };
        let mut known = 0;
        for _ in 0..40 {
            let started = start(&launch, Parent::Caller).unwrap();
            let actual = crate::supervisor::process::proc_start_time(started.pid);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(started.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
            if let Some(t) = started.start_time {
                assert_eq!(Some(t), actual, "pid {}", started.pid);
                known += 1;
            }
        }
        // A start falls between two ticks now and then; most are known.
        assert!(known >= 20, "only {known} of 40 start times were known");
    }

    #[test]
    fn the_program_is_looked_up_in_the_childs_path() {
        let launch = |argv0: &str, env: &[&str]| Launch {
            argv: vec![argv0.into()],
            env: env.iter().map(OsString::from).collect(),
            cwd: None,
            fds: Vec::new(),
            nofile: None,
            identity: Identity::default(),
        };
        let candidates = |l: &Launch<'_>| {
            Prepared::new(l, Vec::new(), false)
                .unwrap()
                .candidates
                .iter()
                .map(|c| c.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let l = launch("sleep", &["HOME=/root", "PATH=/a:/b/c::/d"]);
        assert_eq!(
            candidates(&l),
            ["/a/sleep", "/b/c/sleep", "sleep", "/d/sleep"]
        );
        assert_eq!(candidates(&launch("./x", &["PATH=/a"])), ["./x"]);
        assert_eq!(candidates(&launch("x", &[])), ["/bin/x", "/usr/bin/x"]);
        let nul = launch("x\0y", &[]);
        assert!(Prepared::new(&nul, Vec::new(), false).is_err());
    }
}
