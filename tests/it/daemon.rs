//! The daemon end to end, as a user drives it: the real `provisr` binary serving on
//! 127.0.0.1 port 0, the CLI as a separate process, real children, real files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::util::{alive, group_written_bytes, proc_line, wait_for, GroupGuard, TagGuard};

const BIN: &str = env!("CARGO_BIN_EXE_provisr");

/// A daemon process on a free loopback port; stopped (SIGTERM, then SIGKILL) when dropped.
///
/// It is ready when it says so on its notify socket (`READY=1`, as under systemd: every
/// listener bound, the first reconcile pass done), which also carries the API's URL; the test
/// owns that socket and keeps every message for tests of the protocol itself.
pub struct TestDaemon {
    pub child: Child,
    pub url: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    notifications: Notifications,
    /// The read end of the daemon's stderr when the test reads it itself (nobody else does).
    log_pipe: Option<std::process::ChildStderr>,
}

/// The messages the daemon sent to its notify socket, in order.
pub struct Notifications {
    rx: mpsc::Receiver<String>,
    // For the sentinel that says the daemon exited.
    tx: mpsc::Sender<String>,
    seen: Vec<String>,
    // Messages before this one were already matched by a wait.
    cursor: usize,
    // The socket's directory; the reader thread ends when it is gone.
    _dir: tempfile::TempDir,
}

/// Sent on the notification channel when the daemon's stderr closes: it exited.
const EXITED: &str = "\u{0}exited";

impl Notifications {
    fn bind() -> (Notifications, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // A read timeout lets the thread notice the test is over (the receiver dropped).
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let reader_tx = tx.clone();
        std::thread::spawn(move || {
            let tx = reader_tx;
            let mut buf = vec![0u8; 8192];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        // Still wanted? A send of nothing would fail once the receiver is gone.
                        if tx.send(String::new()).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let n = Notifications {
            rx,
            tx,
            seen: Vec::new(),
            cursor: 0,
            _dir: dir,
        };
        (n, path)
    }

    /// Waits until a message not matched before holds the line `line` (e.g. `READY=1`);
    /// every message up to it, the matching one last. `None` on timeout or when the daemon
    /// exited.
    pub fn until(&mut self, line: &str, timeout: Duration) -> Option<Vec<String>> {
        let holds = |msg: &String| msg.lines().any(|l| l == line);
        if let Some(i) = self.seen[self.cursor..].iter().position(holds) {
            self.cursor += i + 1;
            return Some(self.seen[..self.cursor].to_vec());
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let msg = self.rx.recv_timeout(left).ok()?;
            if msg.is_empty() {
                continue;
            }
            if msg == EXITED {
                return None;
            }
            let found = holds(&msg);
            self.seen.push(msg);
            if found {
                self.cursor = self.seen.len();
                return Some(self.seen.clone());
            }
        }
    }
}

impl TestDaemon {
    /// `provisr serve --api-listen 127.0.0.1:0 [--config F] --state-dir S` in `cwd`.
    pub fn start(cwd: &Path, config: Option<&Path>, state_dir: &Path) -> TestDaemon {
        Self::start_on(cwd, config, state_dir, "127.0.0.1:0")
    }

    /// As [`TestDaemon::start`], listening on `listen` (a loopback address, port 0).
    pub fn start_on(
        cwd: &Path,
        config: Option<&Path>,
        state_dir: &Path,
        listen: &str,
    ) -> TestDaemon {
        Self::start_with_env(cwd, config, state_dir, listen, &[])
    }

    /// As [`TestDaemon::start_on`], with extra environment variables for the daemon.
    pub fn start_with_env(
        cwd: &Path,
        config: Option<&Path>,
        state_dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> TestDaemon {
        Self::launch(cwd, config, state_dir, listen, env, true)
    }

    /// As [`TestDaemon::start`], with nobody reading the daemon's stderr: the test holds its
    /// read end (`close_log_pipe`). The daemon logs little before READY, well under what the
    /// pipe holds.
    pub fn start_with_log_pipe(cwd: &Path, config: Option<&Path>, state_dir: &Path) -> TestDaemon {
        Self::launch(cwd, config, state_dir, "127.0.0.1:0", &[], false)
    }

    fn launch(
        cwd: &Path,
        config: Option<&Path>,
        state_dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
        read_log: bool,
    ) -> TestDaemon {
        let (mut notifications, notify_path) = Notifications::bind();
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        cmd.current_dir(cwd)
            .arg("serve")
            .args(["--api-listen", listen])
            .arg("--state-dir")
            .arg(state_dir)
            .env("PROVISR_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("spawn provisr serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut log_pipe = None;
        if read_log {
            let log2 = log.clone();
            let exited = notifications.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log2.lock().unwrap().push(line);
                }
                // The daemon closed its stderr: it exited (or never started).
                let _ = exited.send(EXITED.to_string());
            });
        } else {
            log_pipe = Some(stderr);
        }
        let ready = notifications.until("READY=1", Duration::from_secs(30));
        let url = ready.as_ref().and_then(|msgs| {
            msgs.last()?
                .lines()
                .find_map(|l| l.strip_prefix("PROVISR_API_URL="))
                .map(str::to_string)
        });
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon did not start: {:?}", log.lock().unwrap());
        };
        // Tests of the protocol see every message from the start.
        notifications.cursor = 0;
        TestDaemon {
            child,
            url,
            log,
            notifications,
            log_pipe,
        }
    }

    /// Closes the read end of the daemon's stderr (`start_with_log_pipe`): its log reader went
    /// away, and its next log line meets EPIPE.
    pub fn close_log_pipe(&mut self) {
        drop(
            self.log_pipe
                .take()
                .expect("started with start_with_log_pipe"),
        );
    }

    /// How many bytes wait unread in the daemon's stderr pipe (`start_with_log_pipe`).
    pub fn log_pipe_unread(&self) -> usize {
        let pipe = self
            .log_pipe
            .as_ref()
            .expect("started with start_with_log_pipe");
        rustix::io::ioctl_fionread(pipe).expect("FIONREAD") as usize
    }

    /// Starts reading the daemon's stderr (`start_with_log_pipe`) into [`TestDaemon::log`] from
    /// now on, after whatever waited unread.
    pub fn read_log_pipe(&mut self) {
        let pipe = self
            .log_pipe
            .take()
            .expect("started with start_with_log_pipe");
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }

    /// What the daemon said on its notify socket: waits until a message holds `line`.
    pub fn notified(&mut self, line: &str, timeout: Duration) -> Vec<String> {
        self.notifications
            .until(line, timeout)
            .unwrap_or_else(|| panic!("no {line:?} in {:?}", self.notifications.seen))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs the CLI against this daemon; (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli_with_url(&self.url, args)
    }

    /// `provisr status --name N` as JSON.
    pub fn status(&self, name: &str) -> Value {
        let (code, out, err) = self.cli(&["status", "--name", name]);
        assert_eq!(code, 0, "status {name}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {e}: {out}"))
    }

    pub fn all_status(&self) -> Vec<Value> {
        let (code, out, err) = self.cli(&["status"]);
        assert_eq!(code, 0, "status: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// SIGKILL: the daemon dies without stopping its children.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(self) -> Option<i32> {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    /// `sig` (a stop signal) and wait for the exit; returns the exit code.
    pub fn stop_with(mut self, sig: nix::sys::signal::Signal) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, sig);
        let code = wait_exit(&mut self.child, Duration::from_secs(30));
        std::mem::forget(self);
        code
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(20)).is_none() {
            eprintln!("daemon log: {:?}", self.log.lock().unwrap());
        }
    }
}

pub fn cli_with_url(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("PROVISR_API_URL", url)
        .env_remove("PROVISR_TOKEN")
        .env_remove("PROVISR_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run provisr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Remembers every pid a daemon reported so the test can kill their groups if it fails.
pub fn guard_pids(guard: &mut GroupGuard, statuses: &[Value]) {
    for s in statuses {
        if let Some(pid) = s["pid"].as_i64() {
            guard.add(pid as i32);
        }
    }
}

pub fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn empty_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("cfg.toml");
    std::fs::create_dir_all(dir.join("programs")).unwrap();
    write(&cfg, "programs_directory = \"programs\"\n");
    cfg
}

/// The first number after `key` on its line of `/proc/PID/FILE`.
fn proc_number(pid: i32, file: &str, key: &str) -> u64 {
    let line = proc_line(pid, file, key);
    line[key.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// The daemon makes room in its descriptor table before it starts any thread, so opening the
/// descriptors of many instances never grows the table under its threads, which stalls them all
/// (`docs/runtime.md`, "Descriptors"). With no program it holds a few dozen descriptors: left
/// to itself, its table would have 64 or 128 slots.
#[test]
fn the_descriptor_table_has_room_for_a_thousand_instances_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let size = proc_number(d.pid(), "status", "FDSize:");
    let soft = proc_number(d.pid(), "limits", "Max open files");
    let want = provisr::supervisor::FD_TABLE_AT_START.min(soft);
    assert!(size >= want, "FDSize {size}, want at least {want}");
}

#[test]
fn adhoc_program_is_restarted_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let (code, out, err) = d.cli(&[
        "start",
        "--name",
        "test",
        "--cmd",
        "sleep 300",
        "--auto_restart",
        "true",
        "--config",
        "",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let first = d.status("test");
    let pid = first["pid"].as_i64().expect("a pid") as i32;
    guard.add(pid);
    assert_eq!(first["state"], "running");
    assert_eq!(first["restarts"], 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = wait_for(Duration::from_secs(10), "a new pid", || {
        let s = d.status("test");
        (s["pid"].as_i64().is_some_and(|p| p as i32 != pid) && s["state"] == "running").then_some(s)
    });
    guard.add(second["pid"].as_i64().unwrap() as i32);
    assert_eq!(second["restarts"], 1);
    assert_eq!(second["source"], "api");
    drop(d);
    wait_for(Duration::from_secs(5), "the child to be gone", || {
        (!alive(second["pid"].as_i64().unwrap() as i32)).then_some(())
    });
}

/// A programs directory in all four formats with priorities, instances and groups.
fn four_format_project(dir: &Path) -> PathBuf {
    let cfg = dir.join("config.toml");
    write(
        &cfg,
        r#"programs_directory = "programs"

[[groups]]
name = "infra"
members = ["db", "cache"]

[[groups]]
name = "web"
members = ["api", "front"]
"#,
    );
    let p = dir.join("programs");
    write(
        &p.join("db.yml"),
        "command: sleep 300\npriority: 1\nauto_restart: true\nstart_duration: 200ms\n",
    );
    write(
        &p.join("cache.json"),
        r#"{"name": "cache", "command": "sleep 300", "priority": 2, "start_duration": "200ms"}"#,
    );
    write(
        &p.join("api.toml"),
        "type = \"process\"\n[spec]\nname = \"api\"\ncommand = \"sleep 300\"\npriority = 5\ninstances = 2\nstart_duration = \"200ms\"\n",
    );
    write(
        &p.join("front.yaml"),
        "command: sleep 300\npriority: 10\nstart_duration: 200ms\n",
    );
    cfg
}

fn by_name(statuses: &[Value]) -> std::collections::BTreeMap<String, Value> {
    statuses
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn started_at(s: &Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(s["started_at"].as_str().expect("started_at")).unwrap()
}

/// One program file per name under `dir/programs`, each running `sleep 300`.
fn write_sleepers(dir: &Path, names: &[impl AsRef<str>]) {
    for n in names {
        write(
            &dir.join(format!("programs/{}.toml", n.as_ref())),
            "command = \"sleep 300\"\n",
        );
    }
}

fn all_running(d: &TestDaemon, names: &[&str]) -> Option<Vec<Value>> {
    let all = d.all_status();
    let m = by_name(&all);
    names
        .iter()
        .all(|n| m.get(*n).is_some_and(|s| s["state"] == "running"))
        .then_some(all)
}

#[test]
fn priority_levels_groups_and_sticky_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = four_format_project(dir.path());
    let state = dir.path().join("state");
    let names = ["db", "cache", "api-1", "api-2", "front"];
    let mut guard = GroupGuard::default();
    let d = TestDaemon::start(dir.path(), Some(&cfg), &state);
    let all = wait_for(Duration::from_secs(20), "everything running", || {
        all_running(&d, &names)
    });
    guard_pids(&mut guard, &all);
    let m = by_name(&all);
    // Level by level: each level started after the one before was running (start_duration 200ms).
    assert!(started_at(&m["db"]) < started_at(&m["cache"]));
    assert!(started_at(&m["cache"]) < started_at(&m["api-1"]));
    assert!(started_at(&m["cache"]) < started_at(&m["api-2"]));
    assert!(started_at(&m["api-2"]) < started_at(&m["front"]));

    // Groups act on exactly their members.
    let (code, out, err) = d.cli(&["group-status", "--group", "infra"]);
    assert_eq!(code, 0, "{err}");
    let members: Vec<Value> = serde_json::from_str(&out).unwrap();
    let names_of = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names_of(&members), ["cache", "db"]);
    let (code, _, err) = d.cli(&["group-stop", "--group", "web"]);
    assert_eq!(code, 0, "{err}");
    let m = by_name(&d.all_status());
    for n in ["api-1", "api-2", "front"] {
        assert_eq!(m[n]["state"], "stopped", "{n}");
        assert_eq!(m[n]["pid"], Value::Null, "{n}");
    }
    for n in ["db", "cache"] {
        assert_eq!(m[n]["state"], "running", "{n}");
    }
    let (code, _, err) = d.cli(&["group-start", "--group", "web"]);
    assert_eq!(code, 0, "{err}");
    let all = wait_for(Duration::from_secs(20), "web running again", || {
        all_running(&d, &names)
    });
    guard_pids(&mut guard, &all);

    // An explicit stop survives a reload and a daemon restart, until an explicit start.
    let (code, _, err) = d.cli(&["stop", "--name", "cache"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.status("cache")["state"], "stopped");
    let reload = ureq_post(&d.url, "/reload");
    assert!(reload["errors"].as_array().unwrap().is_empty(), "{reload}");
    assert_eq!(d.status("cache")["state"], "stopped");
    assert_eq!(d.terminate(), Some(0));
    for s in &all {
        let pid = s["pid"].as_i64().unwrap() as i32;
        assert!(!alive(pid), "{} left running after SIGTERM", s["name"]);
    }
    let d = TestDaemon::start(dir.path(), Some(&cfg), &state);
    let all = wait_for(Duration::from_secs(20), "all but cache running", || {
        all_running(&d, &["db", "api-1", "api-2", "front"])
    });
    guard_pids(&mut guard, &all);
    assert_eq!(d.status("cache")["state"], "stopped");
    assert_eq!(d.status("cache")["desired"], "stopped");
    let (code, _, err) = d.cli(&["start", "--name", "cache"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.status("cache")["state"], "running");
}

/// POST to the API with an empty body; the JSON answer.
fn ureq_post(url: &str, path: &str) -> Value {
    let client = provisr::client::ApiClient::new(url, None);
    client.post::<Value>(path, &[], None).expect("POST")
}

#[test]
fn kill_9_of_the_daemon_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    let counter_log = dir.path().join("counter.log");
    // The counter prints a number every 50 ms, except while `pause` exists: then it says it
    // has paused (`paused`) instead.
    let (pause, paused) = (dir.path().join("pause"), dir.path().join("paused"));
    write(
        &dir.path().join("programs/counter.toml"),
        &format!(
            "command = \"sh -c 'i=0; while :; do if [ -e {} ]; then touch {}; else i=$((i+1)); echo $i; fi; sleep 0.05; done'\"\n[log]\nstdout = \"{}\"\n",
            pause.display(),
            paused.display(),
            counter_log.display()
        ),
    );
    write(
        &dir.path().join("programs/pair.toml"),
        "command = \"sleep 300\"\ninstances = 2\n",
    );
    let state = dir.path().join("state");
    let mut guard = GroupGuard::default();
    let d = TestDaemon::start(dir.path(), Some(&cfg), &state);
    let (code, _, err) = d.cli(&[
        "start",
        "--name",
        "test",
        "--cmd",
        "sleep 300",
        "--auto_restart",
        "true",
        "--config",
        "",
    ]);
    assert_eq!(code, 0, "{err}");
    let test_pid = d.status("test")["pid"].as_i64().unwrap() as i32;
    guard.add(test_pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(test_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "test restarted", || {
        let s = d.status("test");
        (s["restarts"] == 1 && s["state"] == "running").then_some(())
    });
    let before = wait_for(Duration::from_secs(20), "everything running", || {
        all_running(&d, &["counter", "pair-1", "pair-2", "test"])
    });
    guard_pids(&mut guard, &before);
    // Let the counter print a while, then kill the daemon outright.
    wait_for(Duration::from_secs(10), "counter output", || {
        let text = std::fs::read_to_string(&counter_log).unwrap_or_default();
        (text.lines().count() >= 10).then_some(())
    });
    let counter = by_name(&before)["counter"]["pid"].as_i64().unwrap() as i32;
    // The daemon dies between two batches of the counter's output, not inside one: the counter
    // pauses, and the daemon is killed once all it wrote is in the file. Bytes the daemon has
    // read and not yet written when it is killed are lost (docs/reliability.md, "Output read
    // but not yet written"); what this test checks is every line written around and during the
    // outage.
    write(&pause, "");
    wait_for(Duration::from_secs(10), "the counter paused", || {
        paused.exists().then_some(())
    });
    let written = group_written_bytes(counter);
    wait_for(
        Duration::from_secs(10),
        "the counter's output all in its file",
        || {
            let in_file = std::fs::metadata(&counter_log).map_or(0, |m| m.len());
            (in_file == written).then_some(())
        },
    );
    d.kill9();
    std::fs::remove_file(&pause).unwrap();
    // The children live on while no daemon runs: the counter goes on writing into its pipe
    // (it blocks at worst, never dies of SIGPIPE).
    wait_for(
        Duration::from_secs(10),
        "the counter writing with no daemon",
        || (group_written_bytes(counter) >= written + 20).then_some(()),
    );
    for s in &before {
        let pid = s["pid"].as_i64().unwrap() as i32;
        assert!(alive(pid), "{} died with the daemon", s["name"]);
    }
    let d = TestDaemon::start(dir.path(), Some(&cfg), &state);
    let after = wait_for(Duration::from_secs(20), "everything adopted", || {
        all_running(&d, &["counter", "pair-1", "pair-2", "test"])
    });
    let (b, a) = (by_name(&before), by_name(&after));
    for name in ["counter", "pair-1", "pair-2", "test"] {
        assert_eq!(a[name]["pid"], b[name]["pid"], "{name} was not adopted");
    }
    assert_eq!(a["test"]["restarts"], 1, "restarts kept their value");
    assert_eq!(a["test"]["source"], "api");
    // Every number exactly once, in order, across the whole episode.
    let seen = wait_for(Duration::from_secs(10), "more counter output", || {
        let text = std::fs::read_to_string(&counter_log).unwrap_or_default();
        let n = text.lines().count();
        (n >= 40).then_some(text)
    });
    let numbers: Vec<u64> = seen.lines().map(|l| l.trim().parse().unwrap()).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "the log lost or repeated a line");
    // No program runs twice: one process per instance with our command line.
    assert_eq!(a.len(), 4);
}

#[test]
fn bad_input_gets_4xx_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    write(
        &dir.path().join("programs/keep.toml"),
        "command = \"sleep 300\"\n",
    );
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let s = wait_for(Duration::from_secs(10), "keep running", || {
        let s = d.status("keep");
        (s["state"] == "running").then_some(s)
    });
    let pid = s["pid"].as_i64().unwrap() as i32;
    guard.add(pid);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |path: &str, body: &str| {
        let mut r = agent
            .post(format!("{}{path}", d.url))
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (status, text)
    };
    let cases = [
        ("/register", "{not json".to_string(), 400),
        (
            "/register",
            r#"{"name": "x", "comand": "sleep 1"}"#.to_string(),
            400,
        ),
        (
            "/register",
            r#"{"name": "../x", "command": "sleep 1"}"#.to_string(),
            400,
        ),
        (
            "/register",
            format!(r#"{{"name": "big", "command": "{}"}}"#, "x".repeat(2 << 20)),
            413,
        ),
        ("/start?name=../x", String::new(), 400),
        ("/stop?name=nope", String::new(), 404),
        (
            "/register",
            r#"{"name": "keep", "command": "sleep 1"}"#.to_string(),
            409,
        ),
    ];
    for (path, body, want) in cases {
        let (status, text) = post(path, &body);
        assert_eq!(status, want, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        let sentence = v["error"].as_str().unwrap();
        assert!(sentence.len() > 10, "{path}: {sentence}");
    }
    let mut r = agent
        .get(format!("{}/status", d.url))
        .header("host", "evil.example.com")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.body_mut().read_to_string().unwrap().contains("Host"));
    // Nothing changed: the daemon answers, the child runs with the same pid, no program was added.
    let all = d.all_status();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["pid"].as_i64().unwrap() as i32, pid);
    assert!(alive(pid));
}

#[test]
fn non_loopback_listen_without_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--api-listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
    assert!(err.contains("0.0.0.0"), "{err}");
}

#[test]
fn embedded_default_serves_the_repository_programs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join("programs")).unwrap();
    for entry in std::fs::read_dir(repo.join("programs")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("programs").join(entry.file_name()),
        )
        .unwrap();
    }
    let d = TestDaemon::start(dir.path(), None, &dir.path().join(".provisr"));
    let mut guard = GroupGuard::default();
    let all = wait_for(Duration::from_secs(20), "the example programs", || {
        let all = d.all_status();
        let m = by_name(&all);
        (["database", "cache", "api-1", "api-2", "frontend"]
            .iter()
            .all(|n| m.get(*n).is_some_and(|s| s["state"] == "running"))
            && ["worker-1", "worker-2"]
                .iter()
                .all(|n| m.get(*n).is_some_and(|s| s["state"] == "exited")))
        .then_some(all)
    });
    guard_pids(&mut guard, &all);
    let (code, out, _) = d.cli(&["status", "-o", "table"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("database"), "{out}");
    // The examples of dependencies, probes, hooks and cron jobs work as their comments say.
    let m = by_name(&all);
    assert_eq!(m["database"]["ready"], true);
    assert_eq!(m["migrate"]["state"], "exited");
    assert_eq!(m["migrate"]["last_exit"]["code"], 0);
    let api = &m["api-1"];
    assert!(
        humantime::parse_rfc3339_weak(api["started_at"].as_str().unwrap()).unwrap()
            >= humantime::parse_rfc3339_weak(m["migrate"]["stopped_at"].as_str().unwrap()).unwrap()
    );
    let (_, logs, _) = d.cli(&["logs", "api-1"]);
    assert!(
        logs.contains("[check-config] config of api-1 looks fine"),
        "{logs}"
    );
    for job in ["report", "cleanup"] {
        assert!(m[job]["next_schedule_time"].is_string(), "{}", m[job]);
    }
    let (code, out, err) = d.cli(&["cron", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let jobs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs.len(), 2, "{out}");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let state = dir.path().join("state");
    let first = TestDaemon::start(dir.path(), Some(&cfg), &state);
    // `output()` returning at all shows it exits instead of waiting for the lock.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--api-listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another provisr daemon"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    // The first one is unaffected.
    assert_eq!(first.cli(&["status"]).0, 0);
}

/// The initial environment of `pid` (`/proc/PID/environ`), as `NAME → value`.
pub fn environ(pid: i32) -> std::collections::BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn every_child_is_tagged_with_the_canonical_state_dir_its_name_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    // The tag names the directory itself, however the daemon was told about it.
    std::fs::create_dir_all(dir.path().join("real-state")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real-state"), dir.path().join("link")).unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    let given = dir.path().join("sub/../link");
    let canonical = std::fs::canonicalize(dir.path().join("real-state")).unwrap();
    let probe_env = dir.path().join("probe.env");
    write(
        &dir.path().join("programs/web.toml"),
        &format!(
            "command = \"sleep 300\"\ninstances = 2\nenv = [\"PROVISR_STATE_DIR=/elsewhere\"]\n\
             [[detectors]]\ntype = \"command\"\ncommand = \"env > {}; false\"\ninterval = \"100ms\"\n",
            probe_env.display()
        ),
    );
    let d = TestDaemon::start(dir.path(), Some(&cfg), &given);
    let mut guard = GroupGuard::default();
    let all = wait_for(Duration::from_secs(20), "web running", || {
        all_running(&d, &["web-1", "web-2"])
    });
    guard_pids(&mut guard, &all);
    for s in &all {
        let env = environ(s["pid"].as_i64().unwrap() as i32);
        let name = s["name"].as_str().unwrap();
        assert_eq!(
            env.get("PROVISR_STATE_DIR").map(String::as_str),
            canonical.to_str(),
            "{name}: {env:?}"
        );
        assert_eq!(env.get("PROVISR_NAME").map(String::as_str), Some(name));
        let index = s["instance"].to_string();
        assert_eq!(env.get("PROVISR_INSTANCE"), Some(&index), "{name}");
    }
    // Detector commands are children too, and carry the same tag. (This one fails on purpose:
    // passing before the first spawn would mean "already running elsewhere".)
    let text = wait_for(Duration::from_secs(20), "a probe's environment", || {
        std::fs::read_to_string(&probe_env)
            .ok()
            .filter(|t| t.contains("PROVISR_DETECTOR_COMMAND="))
    });
    let line = format!("PROVISR_STATE_DIR={}", canonical.display());
    assert!(text.lines().any(|l| l == line), "{text}");
}

/// The daemon's live children whose command line holds `needle`.
fn children_with(daemon: i32, needle: &str) -> Vec<i32> {
    crate::util::proc_stats()
        .filter(|s| s.ppid == daemon && s.state != 'Z')
        .map(|s| s.pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

#[test]
fn children_come_from_a_spawner_with_few_descriptors_that_is_started_again_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let names: Vec<String> = (1..=30).map(|i| format!("s{i:02}")).collect();
    write_sleepers(dir.path(), &names);
    write(
        &dir.path().join("programs/later.toml"),
        "command = \"sleep 301\"\nautostart = false\n",
    );
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let all = wait_for(Duration::from_secs(30), "30 programs running", || {
        all_running(&d, &refs)
    });
    guard_pids(&mut guard, &all);
    let spawners = children_with(d.pid(), "__provisr-spawner");
    assert_eq!(spawners.len(), 1, "one spawner: {spawners:?}");
    let spawner = spawners[0];
    // The daemon holds a pidfd and two pipe read ends per instance; the spawner none of them,
    // and each child only its own five.
    let (daemon_fds, spawner_fds) = (open_fds(d.pid()).len(), open_fds(spawner).len());
    assert!(daemon_fds > 90, "the daemon holds {daemon_fds} descriptors");
    assert!(
        spawner_fds < 12,
        "the spawner holds {:?}",
        open_fds(spawner)
    );
    for s in all.iter().filter(|s| s["name"] != "later") {
        let pid = s["pid"].as_i64().unwrap() as i32;
        let ppid = crate::util::proc_stats()
            .find(|p| p.pid == pid)
            .map(|p| p.ppid);
        assert_eq!(ppid, Some(d.pid()), "{pid} is the daemon's own child");
        assert_eq!(open_fds(pid), [0, 1, 2, 3, 4], "descriptors of {pid}");
    }

    // Killed, it is reaped and the next start brings a new one.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the spawner reaped", || {
        (!crate::util::proc_stats().any(|p| p.pid == spawner)).then_some(())
    });
    let (code, _, err) = d.cli(&["start", "--name", "later"]);
    assert_eq!(code, 0, "start later: {err}");
    let later = wait_for(Duration::from_secs(20), "later running", || {
        all_running(&d, &["later"])
    });
    guard_pids(&mut guard, &later);
    let again = children_with(d.pid(), "__provisr-spawner");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0], spawner);
    assert!(crate::util::zombies_of(d.pid()).is_empty());
    assert_eq!(d.terminate(), Some(0));
    // The spawner ends with the daemon.
    assert!(!alive(again[0]), "the spawner outlived the daemon");
}

/// sled runs the system's `sync` command when it opens a database; the daemon flushes the
/// store's own files instead and hides the command from sled (docs/store.md, "Opening"). A
/// `sync` first on the daemon's `PATH` records every call; children still get the daemon's
/// `PATH` as it was given.
#[test]
fn opening_the_store_does_not_sync_the_whole_machine() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let bin = dir.path().join("bin");
    let calls = dir.path().join("sync-calls");
    write(
        &bin.join("sync"),
        &format!("#!/bin/sh\necho called >> {}\n", calls.display()),
    );
    std::fs::set_permissions(
        bin.join("sync"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    write(
        &dir.path().join("programs/web.toml"),
        "command = \"sleep 300\"\n",
    );
    let state = dir.path().join("state");
    let mut guard = GroupGuard::default();
    // The first daemon creates the store, the second recovers it.
    for round in ["create", "recover"] {
        let d = TestDaemon::start_with_env(
            dir.path(),
            Some(&cfg),
            &state,
            "127.0.0.1:0",
            &[("PATH", &path)],
        );
        let all = wait_for(Duration::from_secs(20), "web running", || {
            all_running(&d, &["web"])
        });
        guard_pids(&mut guard, &all);
        let pid = all[0]["pid"].as_i64().unwrap() as i32;
        assert_eq!(environ(pid).get("PATH"), Some(&path), "{round}");
        assert!(
            !calls.exists(),
            "{round}: sled ran `sync`: {:?}",
            std::fs::read_to_string(&calls)
        );
        let log = d.log.lock().unwrap().join("\n");
        assert!(!log.contains("sync command"), "{round}: {log}");
    }
}

/// A daemon whose log reader went away (journald restarted, `provisr serve | tee` with tee
/// killed) keeps running, dropping its log lines, and on `sig` stops every child and exits 0
/// (docs/reliability.md).
fn stops_every_child_after_its_log_reader_went_away(sig: nix::sys::signal::Signal) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let names = ["p1", "p2", "p3", "p4"];
    write_sleepers(dir.path(), &names);
    let mut d = TestDaemon::start_with_log_pipe(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let all = wait_for(Duration::from_secs(20), "every program running", || {
        all_running(&d, &names)
    });
    guard_pids(&mut guard, &all);
    let pids: Vec<i32> = all
        .iter()
        .map(|s| s["pid"].as_i64().unwrap() as i32)
        .collect();
    let spawners = children_with(d.pid(), "__provisr-spawner");
    assert_eq!(spawners.len(), 1, "one spawner: {spawners:?}");

    d.close_log_pipe();
    // The daemon goes on working (and logging, into the void): one program stopped through
    // the API is gone, the others still run.
    let (code, _, err) = d.cli(&["stop", "--name", "p1"]);
    assert_eq!(code, 0, "stop p1: {err}");
    wait_for(Duration::from_secs(20), "p1 stopped", || {
        (d.status("p1")["state"] == "stopped").then_some(())
    });
    assert!(!alive(pids[0]), "p1 ({}) outlived its stop", pids[0]);
    assert!(pids[1..].iter().all(|&p| alive(p)), "{pids:?}");

    let pid = d.pid();
    assert_eq!(d.stop_with(sig), Some(0), "{sig} of daemon {pid}");
    for (name, p) in names.iter().zip(&pids) {
        assert!(!alive(*p), "{name} ({p}) outlived the daemon");
    }
    assert!(!alive(spawners[0]), "the spawner outlived the daemon");
}

#[test]
fn sigterm_stops_every_child_after_the_log_reader_went_away() {
    stops_every_child_after_its_log_reader_went_away(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn sigint_stops_every_child_after_the_log_reader_went_away() {
    stops_every_child_after_its_log_reader_went_away(nix::sys::signal::Signal::SIGINT);
}

/// A daemon whose log reader stalls (a full pipe that stays open: a paused `less`, a journald
/// that does not keep up) goes on supervising: while nobody reads, its log lines are dropped and
/// counted, never waited for, and once they are read again it says how many it dropped
/// (docs/reliability.md).
#[test]
fn a_stalled_log_reader_never_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_config(dir.path());
    let names: Vec<String> = (1..=50).map(|i| format!("p{i}")).collect();
    write_sleepers(dir.path(), &names);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let state = dir.path().join("state");
    let mut d = TestDaemon::start_with_log_pipe(dir.path(), Some(&cfg), &state);
    // The rounds start processes whose pids this test never learns if the daemon hangs.
    let _guard = TagGuard(state.clone());
    wait_for(Duration::from_secs(20), "every program running", || {
        all_running(&d, &refs)
    });

    // Each round stops and starts all 50 (four transition lines each, about 25 KiB): the pipe
    // (64 KiB) is full after a few, and the rounds after that would hang on a daemon whose log
    // writes wait for the reader. 30 more rounds log more lines than the daemon queues.
    let query = [("name", names.join(",")), ("wait", "30s".to_string())];
    const ROUNDS_AFTER_FULL: usize = 30;
    let mut rounds_after_full = 0;
    for round in 1..=60 {
        for path in ["/stop", "/start"] {
            let (tx, rx) = mpsc::channel();
            let (url, query) = (d.url.clone(), query.clone());
            std::thread::spawn(move || {
                let client = provisr::client::ApiClient::new(&url, None);
                let _ = tx.send(
                    client
                        .post::<Value>(path, &query, None)
                        .map_err(|e| e.to_string()),
                );
            });
            let answer = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
                panic!("round {round}: POST {path} got no answer in 60 s: the daemon waits on its log reader")
            });
            let states = answer.unwrap_or_else(|e| panic!("round {round}: POST {path}: {e}"));
            let want = if path == "/stop" {
                "stopped"
            } else {
                "running"
            };
            let all_there = states
                .as_array()
                .is_some_and(|a| a.len() == names.len() && a.iter().all(|s| s["state"] == want));
            assert!(all_there, "round {round}: POST {path}: {states}");
        }
        if d.log_pipe_unread() >= 60 * 1024 {
            rounds_after_full += 1;
            if rounds_after_full == ROUNDS_AFTER_FULL {
                break;
            }
        }
    }
    assert_eq!(
        rounds_after_full,
        ROUNDS_AFTER_FULL,
        "the rounds never filled the pipe ({} bytes unread)",
        d.log_pipe_unread()
    );
    let all = wait_for(Duration::from_secs(20), "every program running", || {
        all_running(&d, &refs)
    });

    // Read again: what was queued comes out, then a note of what was dropped.
    d.read_log_pipe();
    let (code, _, err) = d.cli(&["stop", "--name", "p1"]);
    assert_eq!(code, 0, "stop p1: {err}");
    wait_for(Duration::from_secs(20), "the note of dropped lines", || {
        let log = d.log.lock().unwrap();
        log.iter()
            .find(|l| l.contains("log lines were dropped: standard error was not read"))
            .cloned()
    });
    let pid = d.pid();
    assert_eq!(
        d.stop_with(nix::sys::signal::Signal::SIGTERM),
        Some(0),
        "SIGTERM of daemon {pid}"
    );
    for s in &all {
        let p = s["pid"].as_i64().unwrap() as i32;
        assert!(!alive(p), "{} ({p}) outlived the daemon", s["name"]);
    }
}
