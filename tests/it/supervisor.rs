//! The process runtime with real processes: restarts, retries, stop escalation, process groups,
//! environment, descriptors, adoption after a "daemon restart", detectors, and no leftovers.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use provisr::config::{DetectorKind, DetectorSpec, Dur, Exec, InstanceId, ProgramSpec};
use provisr::supervisor::spawn::MINIMAL_PATH;
use provisr::supervisor::{
    probe_detectors, proc_start_time, raise_fd_limit, Event, Initial, InstanceHandle,
    InstanceState, InstanceStatus, OutputSink, RuntimeContext,
};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use crate::util::{alive, group_members, wait_for_async, written_bytes, zombies_of, GroupGuard};

/// Generous: the machine is small and shared.
const WAIT: Duration = Duration::from_secs(30);

/// A real output sink for tests: one task per pipe appends everything it reads to a file.
struct FileSink {
    stdout: PathBuf,
    stderr: PathBuf,
    readers: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl FileSink {
    fn new(dir: &Path, name: &str) -> Arc<FileSink> {
        Arc::new(FileSink {
            stdout: dir.join(format!("{name}.stdout")),
            stderr: dir.join(format!("{name}.stderr")),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Stops reading and closes the read ends, as a killed daemon would.
    fn close(&self) {
        for reader in self.readers.lock().unwrap().drain(..) {
            reader.abort();
        }
    }

    /// True once every pipe attached so far has reached end-of-file.
    fn finished(&self) -> bool {
        let readers = self.readers.lock().unwrap();
        !readers.is_empty() && readers.iter().all(|r| r.is_finished())
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl OutputSink for FileSink {
    fn attach(&self, stdout: OwnedFd, stderr: OwnedFd) {
        let mut readers = self.readers.lock().unwrap();
        for (fd, path) in [(stdout, self.stdout.clone()), (stderr, self.stderr.clone())] {
            readers.push(tokio::spawn(drain(fd, path)).abort_handle());
        }
    }
}

/// Copies a pipe into a file until end-of-file. Read and write happen without an await between
/// them, so aborting the task never loses bytes that were already read.
async fn drain(fd: OwnedFd, path: PathBuf) {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).expect("a pipe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("sink file");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => file.write_all(&buf[..n]).expect("write sink file"),
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    events: broadcast::Receiver<Event>,
    ctx: RuntimeContext,
    sink: Arc<FileSink>,
    guard: GroupGuard,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(dir.path(), "out");
    let (tx, events) = broadcast::channel(4096);
    let ctx = RuntimeContext {
        events: tx,
        changed: Default::default(),
        output: sink.clone(),
        state_dir: None,
        launches: None,
        counters: Default::default(),
    };
    Fixture {
        dir,
        events,
        ctx,
        sink,
        guard: GroupGuard::default(),
    }
}

fn spec(name: &str, command: &str) -> ProgramSpec {
    let mut s = ProgramSpec::new(name, Exec::Command(command.to_string()));
    s.retry_interval = Dur::from_millis(100);
    s.restart_interval = Dur::from_millis(100);
    s.stop_timeout = Dur::from_secs(5);
    s
}

fn launch(f: &Fixture, spec: ProgramSpec, initial: Initial) -> InstanceHandle {
    let id = InstanceId::new(&spec.name, 1, 1);
    InstanceHandle::spawn(id, Arc::new(spec), f.ctx.clone(), initial)
}

async fn wait_status(
    h: &InstanceHandle,
    what: &str,
    cond: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    wait_for_async(WAIT, what, || {
        let st = h.status();
        cond(&st).then_some(st)
    })
    .await
}

async fn wait_running(h: &InstanceHandle, guard: &mut GroupGuard) -> i32 {
    let st = wait_status(h, "running", |s| {
        s.state == InstanceState::Running && s.pid.is_some()
    })
    .await;
    let pid = st.pid.unwrap();
    guard.add(pid);
    pid
}

/// Every event received so far.
fn drain_events(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

/// Nothing of these process groups is alive, and none of these pids is a zombie of ours.
async fn assert_clean(pids: &[i32]) {
    wait_for_async(WAIT, "process groups gone", || {
        pids.iter()
            .all(|&p| group_members(p).is_empty())
            .then_some(())
    })
    .await;
    let me = std::process::id() as i32;
    wait_for_async(WAIT, "no zombies of ours", || {
        let zombies = zombies_of(me);
        (!pids.iter().any(|p| zombies.contains(p))).then_some(())
    })
    .await;
}

fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_publishes_events_and_a_crash_is_restarted_after_restart_interval() {
    let mut f = fixture();
    let mut s = spec("crashy", "sleep 300");
    s.auto_restart = true;
    s.restart_interval = Dur::from_millis(300);
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    assert_eq!(h.status().state, InstanceState::Stopped);
    h.start();
    let first = wait_running(&h, &mut f.guard).await;
    let st = h.status();
    assert!(st.healthy);
    assert_eq!(st.detected_by.as_deref(), Some("exec:pid"));
    assert_eq!(st.pid_start_time, proc_start_time(first));
    assert!(st.started_at.is_some());
    let moves: Vec<_> = drain_events(&mut f.events)
        .into_iter()
        .map(|e| (e.from, e.to, e.name))
        .collect();
    assert_eq!(
        moves,
        [
            (
                InstanceState::Stopped,
                InstanceState::Starting,
                "crashy".to_string()
            ),
            (
                InstanceState::Starting,
                InstanceState::Running,
                "crashy".to_string()
            ),
        ]
    );

    sigkill(first);
    let st = wait_status(&h, "restarted", |s| {
        s.state == InstanceState::Running && s.pid.is_some() && s.pid != Some(first)
    })
    .await;
    f.guard.add(st.pid.unwrap());
    assert_eq!(st.restarts, 1);
    assert_eq!(st.last_exit.unwrap().signal, Some(9));
    let events = drain_events(&mut f.events);
    let backoff = events
        .iter()
        .find(|e| e.to == InstanceState::Backoff)
        .expect("a backoff event");
    assert_eq!(backoff.reason, "killed by SIGKILL; restarting in 300ms");
    assert_eq!(backoff.program, "crashy");
    assert_eq!(
        (backoff.exit.and_then(|x| x.signal), backoff.restart),
        (Some(9), false)
    );
    let restart = events
        .iter()
        .find(|e| e.from == InstanceState::Backoff && e.to == InstanceState::Starting)
        .expect("a restart event");
    assert!(restart.restart, "{restart:?}");
    assert_eq!(restart.exit, None);

    let second = st.pid.unwrap();
    h.shutdown().await;
    assert_clean(&[first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_before_start_duration_is_retried_retry_count_times_then_failed() {
    let mut f = fixture();
    let runs = f.dir.path().join("runs");
    let mut s = spec("flaky", &format!("echo $$ >> {}; exit 3", runs.display()));
    s.start_duration = Dur::from_secs(5);
    s.retry_count = 2;
    s.auto_restart = true;
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let st = wait_status(&h, "failed", |s| s.state == InstanceState::Failed).await;
    let message = st.message.unwrap();
    assert_eq!(
        message,
        "exited before start_duration 5s (exited with code 3); gave up after 2 retries"
    );
    assert_eq!(st.restarts, 0, "retries of failed starts are not restarts");
    assert_eq!(st.pid, None);
    assert_eq!(st.last_exit.unwrap().code, Some(3));
    let pids: Vec<i32> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "one start and two retries");
    let backoffs: Vec<Event> = drain_events(&mut f.events)
        .into_iter()
        .filter(|e| e.to == InstanceState::Backoff)
        .collect();
    assert!(
        backoffs
            .iter()
            .all(|e| e.exit.and_then(|x| x.code) == Some(3) && !e.restart),
        "{backoffs:?}"
    );
    let reasons: Vec<String> = backoffs.into_iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [
            "exited before start_duration 5s (exited with code 3), retry 1/2",
            "exited before start_duration 5s (exited with code 3), retry 2/2",
        ]
    );
    for &p in &pids {
        f.guard.add(p);
    }
    h.shutdown().await;
    assert_clean(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_errors_are_failed_starts_with_a_message() {
    let f = fixture();
    let mut s = ProgramSpec::new(
        "nobin",
        Exec::Args(vec!["/definitely/not/a/binary".into(), "x".into()]),
    );
    s.retry_count = 1;
    s.retry_interval = Dur::from_millis(50);
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let st = wait_status(&h, "failed", |s| s.state == InstanceState::Failed).await;
    let message = st.message.unwrap();
    assert!(
        message.starts_with(
            "failed to start: program nobin: cannot execute \"/definitely/not/a/binary\""
        ),
        "{message}"
    );
    assert!(message.ends_with("gave up after 1 retries"), "{message}");
    h.shutdown().await;

    let mut s = spec("nodir", "sleep 300");
    s.work_dir = Some(f.dir.path().join("missing"));
    s.retry_count = 0;
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let st = wait_status(&h, "failed", |s| s.state == InstanceState::Failed).await;
    let message = st.message.unwrap();
    assert!(message.contains("work_dir"), "{message}");
    assert!(message.contains("missing"), "{message}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_ignoring_process_is_killed_after_stop_timeout() {
    let mut f = fixture();
    // The shell stays the group leader (it has work after sleep, so it cannot exec it) and ignores
    // TERM; `sleep` inherits the ignored disposition.
    let mut s = spec("stubborn", "trap '' TERM; echo ready; sleep 300; echo done");
    s.stop_timeout = Dur::from_millis(500);
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    wait_for_async(WAIT, "trap installed", || {
        f.sink.stdout_text().contains("ready").then_some(())
    })
    .await;
    h.stop();
    let st = wait_status(&h, "stopped", |s| s.state == InstanceState::Stopped).await;
    assert_eq!(st.last_exit.unwrap().signal, Some(9), "{st:?}");
    assert_eq!(st.message.as_deref(), Some("stopped (killed by SIGKILL)"));
    assert_eq!(st.pid, None);
    assert!(!f.sink.stdout_text().contains("done"));
    h.shutdown().await;
    assert_clean(&[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_leaves_nothing_of_the_process_group() {
    let mut f = fixture();
    let h = launch(
        &f,
        spec("forky", "sleep 300 & sleep 300"),
        Initial::Fresh { restarts: 0 },
    );
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    wait_for_async(WAIT, "a grandchild", || {
        (group_members(pid).len() >= 2).then_some(())
    })
    .await;
    h.stop();
    wait_status(&h, "stopped", |s| s.state == InstanceState::Stopped).await;
    assert_clean(&[pid]).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_outliving_the_leader_are_killed_without_waiting_for_stop_timeout() {
    let mut f = fixture();
    // The background subshell ignores TERM, the leader does not: after the stop signal the leader
    // exits and only the leftover-member kill can end the grandchild before the 300 s timeout.
    let mut s = spec(
        "lingering",
        "(trap '' TERM; echo ready; exec sleep 300) & sleep 300",
    );
    s.stop_timeout = Dur::from_secs(300);
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    wait_for_async(WAIT, "grandchild ignoring TERM", || {
        f.sink.stdout_text().contains("ready").then_some(())
    })
    .await;
    h.stop();
    let st = wait_status(&h, "stopped", |s| s.state == InstanceState::Stopped).await;
    assert_eq!(st.last_exit.unwrap().signal, Some(15), "{st:?}");
    assert_clean(&[pid]).await;
    h.shutdown().await;
}

/// An instance of `sleep 300` that restarts at once after every exit.
fn instant_restarter(f: &Fixture, name: &str) -> InstanceHandle {
    let mut s = spec(name, "sleep 300");
    s.auto_restart = true;
    s.restart_interval = Dur::ZERO;
    launch(f, s, Initial::Fresh { restarts: 0 })
}

/// `kill -9` of `pid`, then its replacement's status once it runs (its pid guarded).
async fn kill_and_await_replacement(
    h: &InstanceHandle,
    pid: i32,
    guard: &mut GroupGuard,
) -> InstanceStatus {
    sigkill(pid);
    let st = wait_status(h, "replacement running", |s| {
        s.state == InstanceState::Running && s.pid.is_some() && s.pid != Some(pid)
    })
    .await;
    guard.add(st.pid.unwrap());
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sigkills_are_two_hundred_restarts_and_leave_nothing() {
    let mut f = fixture();
    let h = instant_restarter(&f, "punching-bag");
    h.start();
    let mut pid = wait_running(&h, &mut f.guard).await;
    let mut pids = vec![pid];
    for round in 1..=200u64 {
        let st = kill_and_await_replacement(&h, pid, &mut f.guard).await;
        assert_eq!(st.restarts, round);
        pid = st.pid.unwrap();
        pids.push(pid);
    }
    assert_eq!(h.status().restarts, 200);
    h.shutdown().await;
    assert_clean(&pids).await;
    assert!(pids.iter().all(|&p| !alive(p)));
}

/// An event goes out after the status it reports is published, so whoever reads an event and
/// then the status never finds the status older than the event. A thread takes each event the
/// moment it is sent (it polls without pause) and reads the status at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_is_published_before_its_event() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::sync::broadcast::error::TryRecvError;

    let mut f = fixture();
    let h = instant_restarter(&f, "watched");
    let mut events = f.events.resubscribe();
    let status = h.watch();
    /// Stops the reader when dropped, so a failing assertion leaves no thread spinning.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let done = Done(Arc::new(AtomicBool::new(false)));
    let running = Arc::new(AtomicUsize::new(0));
    let reader = std::thread::spawn({
        let (done, running) = (done.0.clone(), running.clone());
        move || {
            // Within one start the status goes stopped, starting, running; each restart counts.
            let rank = |s: InstanceState| match s {
                InstanceState::Starting => 1,
                InstanceState::Running => 2,
                _ => 0,
            };
            let (mut restarts, mut stale) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match events.try_recv() {
                    Ok(e) => {
                        // The status may be newer still (the thread may wait for a CPU), never older.
                        let now = status.borrow().clone();
                        restarts += u64::from(e.restart);
                        if e.to == InstanceState::Running {
                            running.fetch_add(1, Ordering::Relaxed);
                        }
                        let behind = now.restarts < restarts
                            || (now.restarts == restarts && rank(now.state) < rank(e.to));
                        if behind {
                            stale.push(format!("{} → {}, status {:?}", e.from, e.to, now.state));
                        }
                    }
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("events: {e}"),
                }
            }
            stale
        }
    });
    h.start();
    let mut pid = wait_running(&h, &mut f.guard).await;
    let mut pids = vec![pid];
    for _ in 0..30 {
        pid = kill_and_await_replacement(&h, pid, &mut f.guard)
            .await
            .pid
            .unwrap();
        pids.push(pid);
    }
    // The last event follows the status the loop above saw.
    wait_for_async(WAIT, "every start's event", || {
        (running.load(Ordering::Relaxed) == pids.len()).then_some(())
    })
    .await;
    drop(done);
    let stale = reader.join().unwrap();
    h.shutdown().await;
    assert_clean(&pids).await;
    assert!(stale.is_empty(), "events ahead of the status: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_get_the_open_file_limit_the_daemon_started_with() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Make the raise observable even when this process starts at soft = hard. Only this test
    // raises the limit in this binary, so the call below records `lowered` for children.
    let lowered = soft.min(hard - 1);
    setrlimit(Resource::RLIMIT_NOFILE, lowered, hard).unwrap();
    let r = raise_fd_limit().unwrap();
    assert!(r.soft > lowered, "{r:?}");
    assert_eq!(r.children, lowered);
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (r.soft, hard));

    let f = fixture();
    let h = launch(
        &f,
        spec("limits", "echo $(ulimit -Sn) $(ulimit -Hn)"),
        Initial::Fresh { restarts: 0 },
    );
    h.start();
    wait_status(&h, "exited", |s| s.state == InstanceState::Exited).await;
    wait_for_async(WAIT, "all output", || f.sink.finished().then_some(())).await;
    let hard_text = if hard == RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        hard.to_string()
    };
    assert_eq!(
        f.sink.stdout_text().trim(),
        format!("{lowered} {hard_text}")
    );
    // The daemon keeps its raised limit.
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, r.soft);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_sees_its_name_index_and_overlay_and_a_minimal_env_without_os_env() {
    let f = fixture();
    let mut s = spec("envy", "env");
    s.instances = 2;
    s.env = BTreeMap::from([("FOO".to_string(), "bar baz".to_string())]);
    let id = InstanceId::new("envy", 2, 2);
    let h = InstanceHandle::spawn(
        id.clone(),
        Arc::new(s.clone()),
        f.ctx.clone(),
        Initial::Fresh { restarts: 0 },
    );
    h.start();
    wait_status(&h, "exited", |s| s.state == InstanceState::Exited).await;
    wait_for_async(WAIT, "all output", || f.sink.finished().then_some(())).await;
    let text = f.sink.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"PROVISR_NAME=envy-2"), "{text}");
    assert!(lines.contains(&"PROVISR_INSTANCE=2"), "{text}");
    assert!(lines.contains(&"FOO=bar baz"), "{text}");
    let path = format!("PATH={}", std::env::var("PATH").unwrap());
    assert!(
        lines.contains(&path.as_str()),
        "daemon env inherited: {text}"
    );
    h.shutdown().await;

    let sink = FileSink::new(f.dir.path(), "minimal");
    let ctx = RuntimeContext {
        output: sink.clone(),
        ..f.ctx.clone()
    };
    s.use_os_env = false;
    // The tag's digest of the spec the child was spawned with.
    let digest = format!("PROVISR_SPEC={:016x}", s.digest());
    let h = InstanceHandle::spawn(id, Arc::new(s), ctx, Initial::Fresh { restarts: 0 });
    h.start();
    wait_status(&h, "exited", |s| s.state == InstanceState::Exited).await;
    wait_for_async(WAIT, "all output", || sink.finished().then_some(())).await;
    let text = sink.stdout_text();
    let mut got: Vec<&str> = text.lines().collect();
    got.sort();
    let path = format!("PATH={MINIMAL_PATH}");
    let home = std::env::var("HOME").map(|h| format!("HOME={h}"));
    let mut want = vec![
        "FOO=bar baz",
        path.as_str(),
        "PROVISR_INSTANCE=2",
        "PROVISR_NAME=envy-2",
        digest.as_str(),
    ];
    if let Ok(home) = &home {
        want.push(home.as_str());
    }
    want.sort();
    assert_eq!(got, want);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_fds_0_to_4_are_open_in_the_child_and_3_4_are_its_own_pipes() {
    let mut f = fixture();
    let h = launch(&f, spec("fds", "sleep 300"), Initial::Fresh { restarts: 0 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3, 4]);
    let link = |fd: i32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(link(0), "/dev/null");
    assert!(link(1).starts_with("pipe:"), "{}", link(1));
    assert_eq!(link(1), link(3), "fd 3 reads the stdout pipe");
    assert_eq!(link(2), link(4), "fd 4 reads the stderr pipe");
    assert_ne!(link(1), link(2));
    h.shutdown().await;
    assert_clean(&[pid]).await;
}

/// The numbers a counting child printed, from one or more sink files, in order.
fn numbers(texts: &[String]) -> Vec<u64> {
    texts
        .concat()
        .lines()
        .map(|l| l.parse().expect("a number per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_child_keeps_printing_and_is_adopted_without_losing_a_line() {
    let mut f = fixture();
    let s = spec(
        "counter",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done",
    );
    let h = launch(&f, s.clone(), Initial::Fresh { restarts: 0 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    let start_time = h.status().pid_start_time.expect("start time");
    wait_for_async(WAIT, "output", || {
        (numbers(&[f.sink.stdout_text()]).len() >= 5).then_some(())
    })
    .await;

    // The daemon "dies": the actor ends without stopping the child, the read ends are closed.
    h.detach();
    f.sink.close();
    // The child goes on writing into the pipe with no reader but its own fd 3.
    let written = written_bytes(pid).expect("/proc/PID/io");
    wait_for_async(WAIT, "the child writing with no daemon", || {
        (written_bytes(pid)? >= written + 20).then_some(())
    })
    .await;
    assert!(alive(pid), "no SIGPIPE without the daemon's read end");

    // A reused pid is never taken for ours.
    let wrong = launch(
        &f,
        s.clone(),
        Initial::Adopt {
            pid,
            start_time: start_time + 1,
            restarts: 7,
        },
    );
    let st = wait_status(&wrong, "adoption refused", |s| s.message.is_some()).await;
    assert_eq!(st.state, InstanceState::Stopped);
    assert_eq!(st.pid, None);
    assert!(
        st.message.as_deref().unwrap().contains("not adopted"),
        "{st:?}"
    );
    wrong.shutdown().await;
    assert!(alive(pid), "a refused adoption leaves the process alone");

    // The next daemon adopts it and drains what was written meanwhile.
    let sink2 = FileSink::new(f.dir.path(), "adopted");
    let ctx = RuntimeContext {
        output: sink2.clone(),
        ..f.ctx.clone()
    };
    let h2 = InstanceHandle::spawn(
        InstanceId::new("counter", 1, 1),
        Arc::new(s),
        ctx,
        Initial::Adopt {
            pid,
            start_time,
            restarts: 7,
        },
    );
    let st = wait_status(&h2, "adopted", |s| s.state == InstanceState::Running).await;
    assert_eq!(st.pid, Some(pid));
    assert_eq!(st.pid_start_time, Some(start_time));
    assert_eq!(st.restarts, 7);
    assert_eq!(st.detected_by.as_deref(), Some("exec:pid"));
    assert!(st.started_at.is_some());
    let before = numbers(&[f.sink.stdout_text()]).len();
    let all = wait_for_async(WAIT, "adopted output", || {
        let n = numbers(&[f.sink.stdout_text(), sink2.stdout_text()]);
        (n.len() >= before + 30).then_some(n)
    })
    .await;
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "every line arrives exactly once, in order");

    h2.shutdown().await;
    assert_clean(&[pid]).await;
}

fn command_detector(command: String, timeout: Dur, threshold: u32) -> DetectorSpec {
    DetectorSpec {
        kind: DetectorKind::Command { command, timeout },
        interval: Dur::from_millis(100),
        failure_threshold: threshold,
    }
}

fn probe_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_detector_makes_the_instance_unhealthy_and_restarts_it() {
    let mut f = fixture();
    let ok = f.dir.path().join("healthy");
    let probes = f.dir.path().join("probes");
    let pidfile = f.dir.path().join("app.pid");
    std::fs::write(&ok, "").unwrap();
    let mut s = spec(
        "checked",
        &format!("echo $$ > {}; exec sleep 300", pidfile.display()),
    );
    s.auto_restart = true;
    s.restart_interval = Dur::ZERO;
    // Checks the program's own process too, or the probe before the first spawn would find it
    // "already running elsewhere".
    let check = format!(
        "echo $$ >> {}; test -f {} && kill -0 \"$(cat {})\"",
        probes.display(),
        ok.display(),
        pidfile.display()
    );
    s.detectors = vec![command_detector(check.clone(), Dur::from_secs(10), 2)];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let first = wait_running(&h, &mut f.guard).await;
    wait_for_async(WAIT, "three passing probes", || {
        (probe_pids(&probes).len() >= 3).then_some(())
    })
    .await;
    let st = h.status();
    assert!(st.healthy);
    assert_eq!((st.pid, st.restarts), (Some(first), 0));

    std::fs::remove_file(&ok).unwrap();
    let st = wait_status(&h, "restarted", |s| {
        s.state == InstanceState::Running && s.pid.is_some() && s.pid != Some(first)
    })
    .await;
    f.guard.add(st.pid.unwrap());
    assert_eq!(st.restarts, 1);
    let events = drain_events(&mut f.events);
    let unhealthy = events
        .iter()
        .find(|e| e.from == InstanceState::Running && e.to == InstanceState::Stopping)
        .expect("a stop for being unhealthy");
    assert_eq!(unhealthy.healthy, Some(false));
    let restart = events
        .iter()
        .find(|e| e.from == InstanceState::Stopping && e.to == InstanceState::Starting)
        .expect("the restart after the stop");
    assert!(restart.restart && restart.exit.is_some(), "{restart:?}");
    assert_eq!(
        unhealthy.reason,
        format!(
            "unhealthy: command:{check} failed 2 times in a row: exited with code 1; restarting"
        )
    );

    std::fs::write(&ok, "").unwrap();
    let second = st.pid.unwrap();
    h.shutdown().await;
    let mut pids = probe_pids(&probes);
    pids.extend([first, second]);
    assert_clean(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_restart_an_unhealthy_instance_keeps_running_and_can_recover() {
    let mut f = fixture();
    let ok = f.dir.path().join("healthy");
    let mut s = spec("watched", "sleep 300");
    s.detectors = vec![command_detector(
        format!("test -f {}", ok.display()),
        Dur::from_secs(10),
        2,
    )];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    let st = wait_status(&h, "unhealthy", |s| !s.healthy).await;
    assert_eq!(st.state, InstanceState::Running);
    assert_eq!(st.pid, Some(pid));
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .starts_with("unhealthy: command:test -f"),
        "{st:?}"
    );
    std::fs::write(&ok, "").unwrap();
    let st = wait_status(&h, "healthy again", |s| s.healthy).await;
    assert_eq!(
        (st.state, st.pid, st.restarts),
        (InstanceState::Running, Some(pid), 0)
    );
    // Both changes of health are events, though the state never left `running`.
    let health: Vec<_> = drain_events(&mut f.events)
        .into_iter()
        .filter(|e| e.healthy.is_some())
        .map(|e| (e.from, e.to, e.healthy))
        .collect();
    assert_eq!(
        health,
        [
            (InstanceState::Running, InstanceState::Running, Some(false)),
            (InstanceState::Running, InstanceState::Running, Some(true)),
        ]
    );
    h.shutdown().await;
    assert_clean(&[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_detector_that_hangs_is_killed_on_timeout_and_reaped() {
    let mut f = fixture();
    let probes = f.dir.path().join("probes");
    let mut s = spec("hung-check", "sleep 300");
    s.detectors = vec![command_detector(
        format!(
            "echo $$ >> {}; sleep 300 & exec sleep 300",
            probes.display()
        ),
        Dur::from_millis(200),
        1,
    )];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;
    let st = wait_status(&h, "unhealthy", |s| !s.healthy).await;
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .ends_with("timed out after 200ms"),
        "{st:?}"
    );
    let probe = probe_pids(&probes)[0];
    f.guard.add(probe);
    h.shutdown().await;
    let mut pids = probe_pids(&probes);
    pids.push(pid);
    assert_clean(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pidfile_detector_follows_the_named_process() {
    let mut f = fixture();
    let pidfile = f.dir.path().join("app.pid");
    let mut s = spec(
        "pidfiled",
        &format!("echo $$ > {}; exec sleep 300", pidfile.display()),
    );
    s.auto_restart = true;
    s.restart_interval = Dur::ZERO;
    s.detectors = vec![DetectorSpec {
        kind: DetectorKind::Pidfile {
            path: pidfile.clone(),
        },
        interval: Dur::from_millis(100),
        failure_threshold: 2,
    }];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let first = wait_running(&h, &mut f.guard).await;
    wait_for_async(WAIT, "pidfile written", || {
        (std::fs::read_to_string(&pidfile).ok()?.trim() == first.to_string()).then_some(())
    })
    .await;

    // A pid that surely names no process: one of ours, exited and reaped.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(&pidfile, format!("{gone_pid}\n")).unwrap();

    let st = wait_status(&h, "restarted", |s| {
        s.state == InstanceState::Running && s.pid.is_some() && s.pid != Some(first)
    })
    .await;
    let second = st.pid.unwrap();
    f.guard.add(second);
    assert_eq!(st.restarts, 1);
    let st = wait_status(&h, "healthy after restart", |s| {
        s.healthy && s.restarts == 1
    })
    .await;
    assert_eq!(st.pid, Some(second));
    h.shutdown().await;
    assert_clean(&[first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_detectors_names_the_first_detector_that_passes() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("x.pid");
    let mut s = spec("elsewhere", "sleep 300");
    let id = InstanceId::new("elsewhere", 1, 1);
    assert_eq!(probe_detectors(&s, &id, None).await, None, "no detectors");
    s.detectors = vec![
        DetectorSpec {
            kind: DetectorKind::ExecPid,
            interval: Dur::from_secs(10),
            failure_threshold: 3,
        },
        DetectorSpec {
            kind: DetectorKind::Pidfile {
                path: pidfile.clone(),
            },
            interval: Dur::from_secs(10),
            failure_threshold: 3,
        },
        command_detector(
            "test \"$PROVISR_NAME\" = elsewhere".into(),
            Dur::from_secs(10),
            3,
        ),
    ];
    assert_eq!(
        probe_detectors(&s, &id, None).await.as_deref(),
        Some("command:test \"$PROVISR_NAME\" = elsewhere"),
        "exec:pid never counts; the missing pidfile fails; the command passes"
    );
    std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
    assert_eq!(
        probe_detectors(&s, &id, None).await,
        Some(format!("pidfile:{}", pidfile.display()))
    );
    s.detectors.truncate(2);
    std::fs::write(&pidfile, "0").unwrap();
    assert_eq!(probe_detectors(&s, &id, None).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_backoff_cancels_the_restart_and_spec_updates_apply_in_place() {
    let mut f = fixture();
    let mut s = spec("patient", "sleep 300");
    s.auto_restart = true;
    s.restart_interval = Dur::from_secs(60);
    let h = launch(&f, s.clone(), Initial::Fresh { restarts: 3 });
    h.start();
    let pid = wait_running(&h, &mut f.guard).await;

    // In place: new stop settings and restart policy, same process.
    s.stop_timeout = Dur::from_secs(1);
    s.priority = 5;
    h.update_spec(Arc::new(s));
    h.restart();
    let st = wait_status(&h, "restarted on request", |s| {
        s.state == InstanceState::Running && s.pid.is_some() && s.pid != Some(pid)
    })
    .await;
    assert_eq!(st.restarts, 3, "an explicit restart is not counted");
    let second = st.pid.unwrap();
    f.guard.add(second);

    sigkill(second);
    let st = wait_status(&h, "backoff", |s| s.state == InstanceState::Backoff).await;
    assert!(st.next_retry_at.is_some());
    assert_eq!(st.pid, None);
    h.stop();
    let st = wait_status(&h, "stopped", |s| s.state == InstanceState::Stopped).await;
    assert_eq!(st.next_retry_at, None);
    assert_eq!(st.restarts, 3, "the cancelled restart never happened");
    h.shutdown().await;
    assert_clean(&[pid, second]).await;
}

// ---- "already running elsewhere" (`docs/runtime.md`) ----------------------------------------------------

/// A process the test starts itself, standing for a program started outside provisr: it leads a
/// process group of its own so the fixture's guard can kill it should the test fail.
fn external_sleeper() -> std::process::Child {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("300");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().unwrap()
}

/// Kills and reaps the external process.
fn end_external(mut child: std::process::Child) {
    sigkill(child.id() as i32);
    child.wait().unwrap();
}

impl FileSink {
    /// How many times a process's output was attached: once per spawn or adoption.
    fn attached(&self) -> usize {
        self.readers.lock().unwrap().len() / 2
    }
}

/// Every event received so far appended to `log`; the events matching `what`, in order.
fn events_where(
    rx: &mut broadcast::Receiver<Event>,
    log: &mut Vec<Event>,
    what: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    log.extend(drain_events(rx));
    log.iter().filter(|e| what(e)).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_found_by_its_pidfile_runs_elsewhere_until_that_process_dies_then_is_spawned() {
    let mut f = fixture();
    let pidfile = f.dir.path().join("app.pid");
    let probes = f.dir.path().join("probes");
    let external = external_sleeper();
    let ext = external.id() as i32;
    f.guard.add(ext);
    std::fs::write(&pidfile, format!("{ext}\n")).unwrap();

    // Our own copy writes its pid to the same file, as such programs do.
    let mut s = spec(
        "found",
        &format!("echo $$ > {}; exec sleep 300", pidfile.display()),
    );
    s.auto_restart = true;
    s.restart_interval = Dur::ZERO;
    s.start_duration = Dur::from_millis(100);
    s.detectors = vec![
        DetectorSpec {
            kind: DetectorKind::Pidfile {
                path: pidfile.clone(),
            },
            interval: Dur::from_millis(100),
            failure_threshold: 2,
        },
        // Always passes; its probes show the health schedule runs.
        command_detector(
            format!("echo $$ >> {}", probes.display()),
            Dur::from_secs(10),
            2,
        ),
    ];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let label = format!("pidfile:{}", pidfile.display());
    let st = wait_status(&h, "running elsewhere", |s| {
        s.state == InstanceState::Running
    })
    .await;
    assert_eq!(st.pid, None, "{st:?}");
    assert_eq!(st.detected_by.as_deref(), Some(label.as_str()));
    assert!(st.healthy);
    assert_eq!(st.started_at, None, "when it started is unknown");
    assert_eq!(
        st.message,
        Some(format!(
            "already running elsewhere (detected by {label}); not started again"
        ))
    );

    // It stays so while the detectors keep passing, and nothing is spawned.
    wait_for_async(WAIT, "three health probes", || {
        (probe_pids(&probes).len() >= 3).then_some(())
    })
    .await;
    let st = h.status();
    assert_eq!(
        (st.state, st.pid, st.detected_by.as_deref(), st.healthy),
        (InstanceState::Running, None, Some(label.as_str()), true)
    );
    assert_eq!(f.sink.attached(), 0, "no process of ours");
    let mut log = Vec::new();
    let moves: Vec<_> = events_where(&mut f.events, &mut log, |_| true)
        .into_iter()
        .map(|e| (e.from, e.to, e.spawn))
        .collect();
    assert_eq!(
        moves,
        [
            (InstanceState::Stopped, InstanceState::Starting, false),
            (InstanceState::Starting, InstanceState::Running, false),
        ]
    );

    // The process it found dies: after failure_threshold failures ours is spawned, a restart.
    end_external(external);
    let st = wait_status(&h, "our own process", |s| {
        s.state == InstanceState::Running && s.pid.is_some()
    })
    .await;
    let own = st.pid.unwrap();
    f.guard.add(own);
    assert_ne!(own, ext);
    assert_eq!(st.restarts, 1);
    assert_eq!(st.detected_by.as_deref(), Some("exec:pid"));
    assert_eq!(f.sink.attached(), 1);
    let respawn = events_where(&mut f.events, &mut log, |e| {
        e.from == InstanceState::Running && e.to == InstanceState::Starting
    });
    let respawn = respawn.first().expect("the respawn event");
    assert!(respawn.spawn && respawn.restart, "{respawn:?}");
    assert_eq!(
        respawn.reason,
        format!(
            "no longer running elsewhere: {label} failed 2 times in a row: pid {ext} from {} is \
             not running; restarting",
            pidfile.display()
        )
    );
    // Its own pid in the pidfile keeps it healthy: no further restart.
    wait_for_async(WAIT, "the pidfile names our process", || {
        (std::fs::read_to_string(&pidfile).ok()?.trim() == own.to_string()).then_some(())
    })
    .await;
    let seen = probe_pids(&probes).len();
    wait_for_async(WAIT, "more health probes", || {
        (probe_pids(&probes).len() >= seen + 4).then_some(())
    })
    .await;
    let st = h.status();
    assert_eq!(
        (st.pid, st.restarts, st.healthy),
        (Some(own), 1, true),
        "{st:?}"
    );

    h.shutdown().await;
    let mut pids = probe_pids(&probes);
    pids.extend([own, ext]);
    assert_clean(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_restart_and_shutdown_leave_a_process_running_elsewhere_alone() {
    let mut f = fixture();
    let external = external_sleeper();
    let ext = external.id() as i32;
    f.guard.add(ext);
    let check = format!("test -d /proc/{ext}");
    let mut s = spec("outside", "sleep 300");
    s.auto_restart = true;
    s.detectors = vec![command_detector(check.clone(), Dur::from_secs(10), 3)];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    let label = format!("command:{check}");
    let elsewhere = |s: &InstanceStatus| {
        s.state == InstanceState::Running
            && s.pid.is_none()
            && s.detected_by.as_deref() == Some(label.as_str())
    };

    h.start();
    wait_status(&h, "running elsewhere", elsewhere).await;

    // Restart: nothing of ours to restart; probed again and found again.
    let mut log = Vec::new();
    h.restart();
    wait_for_async(WAIT, "restart, probe, found again", || {
        let found = events_where(&mut f.events, &mut log, |e| e.to == InstanceState::Running);
        (found.len() == 2 && elsewhere(&h.status())).then_some(())
    })
    .await;
    let restart = events_where(&mut f.events, &mut log, |e| {
        e.from == InstanceState::Running && e.to == InstanceState::Starting
    });
    assert_eq!(
        restart[0].reason,
        format!(
            "restart requested; the process running elsewhere (detected by {label}) is not \
             provisr's to restart: probing the detectors again"
        )
    );
    assert!(alive(ext));

    // Stop: forgotten, not signalled.
    h.stop();
    let st = wait_status(&h, "stopped", |s| s.state == InstanceState::Stopped).await;
    assert_eq!((st.pid, st.detected_by.as_deref()), (None, None));
    assert!(st.stopped_at.is_some());
    assert_eq!(
        st.message,
        Some(format!(
            "stop requested; the process running elsewhere (detected by {label}) was not \
             started by provisr and is left alone"
        ))
    );
    assert!(alive(ext), "the external process was not touched");

    // Start again: found again rather than started twice.
    h.start();
    wait_status(&h, "running elsewhere again", elsewhere).await;
    h.shutdown().await;
    assert!(alive(ext), "shutdown does not touch it either");
    assert_eq!(f.sink.attached(), 0, "nothing was ever spawned");
    assert!(events_where(&mut f.events, &mut log, |e| e.spawn).is_empty());
    end_external(external);
    assert_clean(&[ext]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_whose_detector_fails_at_first_start_is_spawned_and_restarts_do_not_probe() {
    let mut f = fixture();
    let pidfile = f.dir.path().join("app.pid");
    let probes = f.dir.path().join("probes");
    let mut s = spec(
        "fresh",
        &format!("echo $$ > {}; exec sleep 300", pidfile.display()),
    );
    s.start_duration = Dur::from_millis(100);
    // Fails until our process has written its pid.
    s.detectors = vec![command_detector(
        format!(
            "echo $$ >> {}; kill -0 \"$(cat {})\"",
            probes.display(),
            pidfile.display()
        ),
        Dur::from_secs(10),
        3,
    )];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let first = wait_running(&h, &mut f.guard).await;
    let st = wait_status(&h, "healthy", |s| s.healthy).await;
    assert_eq!(st.detected_by.as_deref(), Some("exec:pid"));
    let mut log = Vec::new();
    let moves: Vec<_> = events_where(&mut f.events, &mut log, |_| true)
        .into_iter()
        .map(|e| (e.from, e.to, e.spawn, e.reason))
        .collect();
    assert_eq!(
        moves[..3],
        [
            (
                InstanceState::Stopped,
                InstanceState::Starting,
                false,
                "start requested; probing the detectors first: is it already running elsewhere?"
                    .to_string()
            ),
            (
                InstanceState::Starting,
                InstanceState::Starting,
                true,
                "not running elsewhere (no detector passed); spawning".to_string()
            ),
            (
                InstanceState::Starting,
                InstanceState::Running,
                false,
                "up for start_duration 100ms".to_string()
            ),
        ]
    );

    // An explicit restart spawns without probing first: the instance is ours now.
    let before = log.len();
    h.restart();
    let st = wait_status(&h, "restarted", |s| {
        s.state == InstanceState::Running && s.pid.is_some() && s.pid != Some(first)
    })
    .await;
    let second = st.pid.unwrap();
    f.guard.add(second);
    events_where(&mut f.events, &mut log, |_| true);
    assert!(
        log[before..]
            .iter()
            .all(|e| e.to != InstanceState::Starting || e.spawn),
        "{:?}",
        &log[before..]
    );
    h.shutdown().await;
    let mut pids = probe_pids(&probes);
    pids.extend([first, second]);
    assert_clean(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_probe_before_the_first_spawn_holds_up_neither_a_stop_nor_new_detectors() {
    let mut f = fixture();
    let probes = f.dir.path().join("probes");
    let mut s = spec("slow-probe", "sleep 300");
    s.detectors = vec![command_detector(
        format!("echo $$ >> {}; exec sleep 300", probes.display()),
        Dur::from_secs(300),
        3,
    )];
    let h = launch(&f, s, Initial::Fresh { restarts: 0 });
    h.start();
    let probe = wait_for_async(WAIT, "the probe", || probe_pids(&probes).first().copied()).await;
    f.guard.add(probe);
    let st = h.status();
    assert_eq!((st.state, st.pid), (InstanceState::Starting, None));
    assert!(st.message.unwrap().contains("probing the detectors first"));

    h.stop();
    let st = wait_status(&h, "stopped", |s| s.state == InstanceState::Stopped).await;
    assert_eq!(st.message.as_deref(), Some("stop requested"));
    assert!(alive(probe), "the stop did not wait for the probe");
    h.shutdown().await;
    assert_eq!(f.sink.attached(), 0);

    // The abandoned probe is still reaped once it ends.
    nix::sys::signal::killpg(Pid::from_raw(probe), Signal::SIGKILL).unwrap();
    assert_clean(&[probe]).await;

    // New detectors while probing: the old probe is abandoned and the new ones asked at once.
    let mut s = spec("reprobed", "sleep 300");
    s.detectors = vec![command_detector(
        format!("echo $$ >> {}; exec sleep 300", probes.display()),
        Dur::from_secs(300),
        3,
    )];
    let h = launch(&f, s.clone(), Initial::Fresh { restarts: 0 });
    h.start();
    let slow = wait_for_async(WAIT, "the second slow probe", || {
        probe_pids(&probes).get(1).copied()
    })
    .await;
    f.guard.add(slow);
    s.detectors = vec![command_detector("exit 1".into(), Dur::from_secs(10), 3)];
    h.update_spec(Arc::new(s));
    let pid = wait_running(&h, &mut f.guard).await;
    assert!(alive(slow), "spawned without waiting for the old probe");
    h.shutdown().await;
    nix::sys::signal::killpg(Pid::from_raw(slow), Signal::SIGKILL).unwrap();
    assert_clean(&[slow, pid]).await;
}

#[test]
fn the_daemon_reports_a_program_found_by_its_pidfile_as_running_elsewhere() {
    use crate::daemon::{write, TestDaemon};
    let dir = tempfile::tempdir().unwrap();
    let mut guard = GroupGuard::default();
    let external = external_sleeper();
    let ext = external.id() as i32;
    guard.add(ext);
    let pidfile = dir.path().join("found.pid");
    std::fs::write(&pidfile, format!("{ext}\n")).unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    write(
        &dir.path().join("programs/found.toml"),
        &format!(
            "command = \"sleep 300\"\nauto_restart = true\n\n[[detectors]]\ntype = \"pidfile\"\npath = \"{}\"\n",
            pidfile.display()
        ),
    );
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let st = crate::util::wait_for(WAIT, "found running elsewhere", || {
        let s = d.status("found");
        (s["state"] == "running").then_some(s)
    });
    if let Some(pid) = st["pid"].as_i64() {
        guard.add(pid as i32);
    }
    assert_eq!(st["pid"], serde_json::Value::Null, "{st}");
    assert_eq!(st["running"], true);
    assert_eq!(
        st["detected_by"],
        format!("pidfile:{}", pidfile.display()).as_str()
    );
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .starts_with("already running elsewhere"),
        "{st}"
    );

    let (code, _, err) = d.cli(&["stop", "--name", "found"]);
    assert_eq!(code, 0, "{err}");
    crate::util::wait_for(WAIT, "stopped", || {
        (d.status("found")["state"] == "stopped").then_some(())
    });
    assert!(alive(ext), "the external process was not touched");
    assert_eq!(d.terminate(), Some(0));
    assert!(alive(ext));
    end_external(external);
}
