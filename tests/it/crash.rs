//! Crash consistency: the windows in which a daemon crash (`kill -9`), a full disk, a dropped
//! request or two racing writers could lose, duplicate or leak a process, each closed and proven
//! here against real processes, a real store and a real daemon (`docs/reliability.md`).

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use provisr::config::{Exec, ProgramSpec, Source};
use provisr::desired::DesiredState;
use provisr::store::{DesiredStore, RunRequest, StoreWrite};
use serde_json::Value;

use crate::daemon::{environ, write, TestDaemon};
use crate::util::{alive, group_members, proc_stats, wait_for, wait_for_async, GroupGuard};

/// Generous: a loaded 2-core machine runs many daemons at once.
const WAIT: Duration = Duration::from_secs(20);

/// A config, its programs directory and a state directory in a temp dir.
struct Project {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    state: PathBuf,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg.toml");
        write(&cfg, "programs_directory = \"programs\"\n");
        std::fs::create_dir_all(dir.path().join("programs")).unwrap();
        let state = dir.path().join("state");
        Project { dir, cfg, state }
    }

    /// A project whose state directory is `state` (e.g. on a small tmpfs).
    fn with_state(state: PathBuf) -> Project {
        Project {
            state,
            ..Project::new()
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join("programs").join(name)
    }

    /// Saves a program file atomically (temp file + rename).
    fn save(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.file(name)).unwrap();
    }

    fn start(&self) -> TestDaemon {
        TestDaemon::start(self.dir.path(), Some(&self.cfg), &self.state)
    }

    fn options(&self) -> provisr::daemon::ServeOptions {
        provisr::daemon::ServeOptions {
            config: Some(self.cfg.clone()),
            api_listen: Some("127.0.0.1:0".into()),
            state_dir: Some(self.state.clone()),
            store: None,
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One instance's status from the daemon's API, if it has one.
fn status(d: &TestDaemon, name: &str) -> Option<Value> {
    let all: Value = provisr::client::ApiClient::new(&d.url, None)
        .get("/status", &[])
        .unwrap();
    all.as_array()?.iter().find(|s| s["name"] == name).cloned()
}

/// Waits until `name` runs with a pid accepted by `ok`; guards that pid's group.
fn running_where(
    d: &TestDaemon,
    guard: &mut GroupGuard,
    name: &str,
    ok: impl Fn(i32) -> bool,
) -> i32 {
    let pid = wait_for(WAIT, &format!("{name} running"), || {
        let s = status(d, name)?;
        let pid = s["pid"].as_i64()? as i32;
        (s["state"] == "running" && ok(pid)).then_some(pid)
    });
    guard.add(pid);
    pid
}

fn running(d: &TestDaemon, guard: &mut GroupGuard, name: &str) -> i32 {
    running_where(d, guard, name, |_| true)
}

fn wait_gone(pid: i32, within: Duration) {
    wait_for(within, &format!("pid {pid} to be gone"), || {
        (!alive(pid)).then_some(())
    });
}

/// Pids of the live processes tagged with `state_dir` and instance `name` that are not detector
/// commands: what `/proc` says runs for that instance (`docs/runtime.md`, the tag).
fn tagged(state_dir: &Path, name: &str) -> Vec<i32> {
    let dir = std::fs::canonicalize(state_dir).unwrap();
    let dir = dir.to_str().unwrap();
    let mut pids: Vec<i32> = proc_stats()
        .filter(|s| s.state != 'Z')
        .map(|s| s.pid)
        .filter(|&pid| {
            let env = environ(pid);
            env.get("PROVISR_STATE_DIR").map(String::as_str) == Some(dir)
                && env.get("PROVISR_NAME").map(String::as_str) == Some(name)
                && !env.contains_key("PROVISR_DETECTOR_COMMAND")
        })
        .collect();
    pids.sort();
    pids
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn ppid(pid: i32) -> Option<i32> {
    proc_stats().find(|s| s.pid == pid).map(|s| s.ppid)
}

/// A command whose whole process group ignores SIGTERM, so a stop lasts its `stop_timeout`
/// (the shell it runs in ignores it, and `sleep` inherits that).
const DEAF: &str = "trap '' TERM; sleep 300";

/// A small tmpfs mounted for one test (tests run as root), unmounted when dropped: the one way to
/// give the store a real full disk.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "these tests run as root and mount a tmpfs");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", filler.display()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No space left"), "{err}");
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

// ---- 1. a pid published before it is durable ---------------------------------------------

#[test]
fn a_child_the_store_never_recorded_is_found_by_its_tag() {
    let p = Project::new();
    p.save("web.toml", "command = \"sleep 300\"\n");
    p.save("gone.toml", "command = \"sleep 300\"\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let web = running(&d, &mut guard, "web");
    let gone = running(&d, &mut guard, "gone");
    d.kill9();
    // The crash window: both processes spawned, neither recorded yet.
    block_on(async {
        let store = DesiredStore::open(&p.state).unwrap();
        store.delete_instance("web").await.unwrap();
        store.delete_instance("gone").await.unwrap();
    });
    std::fs::remove_file(p.file("gone.toml")).unwrap();
    let d = p.start();
    // Still desired: adopted, not started a second time.
    running_where(&d, &mut guard, "web", |pid| pid == web);
    assert_eq!(tagged(&p.state, "web"), [web]);
    // No longer desired: stopped, not leaked.
    wait_gone(gone, WAIT);
    assert!(status(&d, "gone").is_none());
}

#[test]
fn a_restart_the_killed_daemon_had_not_recorded_is_adopted_and_counted() {
    let p = Project::new();
    p.save("web.toml", "command = \"sleep 300\"\nauto_restart = true\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let old = running(&d, &mut guard, "web");
    // One more pass records web's process (a kill right after `running` could come before
    // that, and then nothing says the old process was ever recorded: no restart to count).
    provisr::client::ApiClient::new(&d.url, None)
        .post::<Value>("/debug/reconcile", &[], None)
        .unwrap();
    d.kill9();
    // The daemon had restarted web (a process tagged like its own) and died before recording it.
    let state = std::fs::canonicalize(&p.state).unwrap();
    let old_start = provisr::supervisor::proc_start_time(old).unwrap();
    let mut replacement = wait_for(WAIT, "a replacement started after the old process", || {
        let mut child = Command::new("sleep")
            .arg("300")
            .env("PROVISR_STATE_DIR", &state)
            .env("PROVISR_NAME", "web")
            .env("PROVISR_INSTANCE", "1")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        if provisr::supervisor::proc_start_time(pid).unwrap() > old_start {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    });
    let new = replacement.id() as i32;
    guard.add(new);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(old, WAIT);
    let d = p.start();
    running_where(&d, &mut guard, "web", |pid| pid == new);
    assert_eq!(status(&d, "web").unwrap()["restarts"], 1);
    drop(d);
    let _ = replacement.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_is_recorded_before_its_pid_is_published() {
    let p = Project::new();
    let opened = provisr::daemon::open(&p.options()).await.unwrap();
    let daemon = opened.state.clone();
    let mut guard = GroupGuard::default();
    let put = |command: &str| StoreWrite::PutProgram {
        spec: web_spec(command).into(),
        source: Source::Api,
    };
    let request = |request| StoreWrite::Request {
        name: "web".into(),
        instance: None,
        request,
    };
    daemon.desired.apply(vec![put("sleep 300")]).await.unwrap();
    let live = wait_for_async(WAIT, "web running", || {
        let live = daemon.reconciler.live().get("web")?.clone();
        let running = live.status.borrow().state.as_str() == "running";
        running.then_some(live)
    })
    .await;
    guard.add(live.status.borrow().pid.unwrap());
    let mut status = live.status.clone();
    // The moment a new pid shows in the status, the store already says what it runs: the pid
    // itself, or the start written ahead, which a process found by its tag then runs.
    let mut check = |pid: i32, command: &str| {
        guard.add(pid);
        let record = daemon.desired.store().get_instance("web").unwrap();
        let written = record.as_ref().is_some_and(|r| {
            r.pid == Some(pid)
                || r.starting
                    .as_ref()
                    .is_some_and(|l| l.spec.exec == Exec::Command(command.into()))
        });
        assert!(written, "web runs as pid {pid}; the store says {record:?}");
    };
    // A start of a stopped instance, then a restart for a new command.
    daemon
        .desired
        .apply(vec![request(RunRequest::Stop)])
        .await
        .unwrap();
    wait_for_async(WAIT, "web stopped", || {
        let s = status.borrow();
        (s.state.as_str() == "stopped").then_some(())
    })
    .await;
    status.borrow_and_update();
    for (write, command) in [
        (request(RunRequest::Start), "sleep 300"),
        (put("sleep 301"), "sleep 301"),
    ] {
        let before = status.borrow_and_update().pid;
        daemon.desired.apply(vec![write]).await.unwrap();
        let pid = loop {
            tokio::time::timeout(WAIT, status.changed())
                .await
                .expect("a new process")
                .unwrap();
            let pid = status.borrow_and_update().pid;
            if let Some(pid) = pid.filter(|p| Some(*p) != before) {
                break pid;
            }
        };
        check(pid, command);
    }
    opened.shutdown().await.unwrap();
}

// ---- 2. records deleted before their processes stop ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_program_keeps_its_instance_record_until_its_process_has_stopped() {
    let p = Project::new();
    p.save(
        "web.toml",
        &format!("command = \"{DEAF}\"\nstop_timeout = \"60s\"\n"),
    );
    let opened = provisr::daemon::open(&p.options()).await.unwrap();
    let daemon = opened.state.clone();
    let mut guard = GroupGuard::default();
    let pid = wait_for_async(WAIT, "web running", || {
        let live = daemon.reconciler.live();
        let s = live.get("web")?.status.borrow().clone();
        (s.state.as_str() == "running").then_some(s.pid).flatten()
    })
    .await;
    guard.add(pid);
    wait_for_async(WAIT, "web recorded", || {
        let r = daemon.desired.store().get_instance("web").unwrap()?;
        (r.pid == Some(pid)).then_some(())
    })
    .await;
    std::fs::remove_file(p.file("web.toml")).unwrap();
    daemon.reloader.reload(false).await;
    assert!(
        daemon.desired.get("web").is_none(),
        "web is no longer desired"
    );
    // The pass after the removal has sent the stop signal.
    daemon.reconciler.pass_now().await;
    // Its process is alive (it ignores SIGTERM for 60 s): a crash now must not leak it.
    assert!(alive(pid));
    let record = daemon.desired.store().get_instance("web").unwrap();
    assert_eq!(
        record.map(|r| r.pid),
        Some(Some(pid)),
        "the record of a process still stopping is gone"
    );
    // Once it has stopped, the record goes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for_async(WAIT, "the record to go", || {
        daemon
            .desired
            .store()
            .get_instance("web")
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    opened.shutdown().await.unwrap();
}

// ---- 3. a finished removal deletes a newer instance's record --------------------------------

async fn put_api(desired: &DesiredState, command: &str, instances: u32, stop_timeout: &str) {
    let mut spec = ProgramSpec::new("web", Exec::Command(command.into()));
    spec.instances = instances;
    spec.stop_timeout = stop_timeout.parse().unwrap();
    desired
        .apply(vec![StoreWrite::PutProgram {
            spec: spec.into(),
            source: Source::Api,
        }])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_removal_never_deletes_the_record_of_a_newer_instance() {
    let p = Project::new();
    let opened = provisr::daemon::open(&p.options()).await.unwrap();
    let daemon = opened.state.clone();
    let desired = daemon.desired.clone();
    let mut guard = GroupGuard::default();
    let live_pid = |name: &str| {
        daemon.reconciler.live().get(name).and_then(|l| {
            let s = l.status.borrow();
            (s.state.as_str() == "running").then_some(s.pid).flatten()
        })
    };
    let recorded = |name: &str| {
        desired
            .store()
            .get_instance(name)
            .unwrap()
            .and_then(|r| r.pid)
    };

    // Scale 3 → 2 → 3 while the removal of web-3 still waits for its stop_timeout.
    put_api(&desired, DEAF, 3, "1s").await;
    let old = wait_for_async(WAIT, "web-3 running", || live_pid("web-3")).await;
    guard.add(old);
    put_api(&desired, DEAF, 2, "1s").await;
    wait_for_async(WAIT, "web-3 stopping", || {
        daemon.reconciler.live().get("web-3").map_or(Some(()), |l| {
            (l.status.borrow().state.as_str() != "running").then_some(())
        })
    })
    .await;
    put_api(&desired, DEAF, 3, "1s").await;
    let new = wait_for_async(WAIT, "a new web-3", || {
        live_pid("web-3").filter(|p| *p != old)
    })
    .await;
    guard.add(new);
    wait_for_async(WAIT, "the old web-3 gone", || (!alive(old)).then_some(())).await;
    daemon.reconciler.pass_now().await;
    assert_eq!(
        recorded("web-3"),
        Some(new),
        "web-3's record after the scale"
    );

    // Unregister and register again while the old process is still stopping.
    put_api(&desired, DEAF, 1, "1s").await;
    let old = wait_for_async(WAIT, "web running", || live_pid("web")).await;
    guard.add(old);
    wait_for_async(WAIT, "web recorded", || {
        (recorded("web") == Some(old)).then_some(())
    })
    .await;
    desired
        .apply(vec![StoreWrite::DeleteProgram { name: "web".into() }])
        .await
        .unwrap();
    put_api(&desired, DEAF, 1, "1s").await;
    let new = wait_for_async(WAIT, "a new web", || live_pid("web").filter(|p| *p != old)).await;
    guard.add(new);
    wait_for_async(WAIT, "the old web gone", || (!alive(old)).then_some(())).await;
    daemon.reconciler.pass_now().await;
    assert_eq!(
        recorded("web"),
        Some(new),
        "web's record after it came back"
    );
    opened.shutdown().await.unwrap();
}

// ---- 4. shutdown does not wait for removals in flight -------------------------------------

#[test]
fn shutdown_waits_for_a_removal_in_flight() {
    let p = Project::new();
    p.save(
        "web.toml",
        &format!("command = \"{DEAF}\"\nstop_timeout = \"2s\"\n"),
    );
    let d = p.start();
    let mut guard = GroupGuard::default();
    let pid = running(&d, &mut guard, "web");
    std::fs::remove_file(p.file("web.toml")).unwrap();
    wait_for(WAIT, "web removed", || {
        status(&d, "web").is_none().then_some(())
    });
    assert!(alive(pid), "it ignores SIGTERM for its 2 s stop_timeout");
    assert_eq!(d.terminate(), Some(0));
    assert!(
        !alive(pid),
        "the daemon exited while a removed program still ran"
    );
}

// ---- 5. mirror drift -------------------------------------------------------------------------

fn web_spec(command: &str) -> ProgramSpec {
    ProgramSpec::new("web", Exec::Command(command.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_went_away_still_reaches_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(&dir.path().join("state")).unwrap();
    let wake = Arc::new(tokio::sync::Notify::new());
    let metrics = Arc::new(provisr::metrics::Metrics::new());
    let desired = DesiredState::new(store, wake, metrics).unwrap();
    let write = desired.apply(vec![StoreWrite::PutProgram {
        spec: web_spec("sleep 300").into(),
        source: Source::Api,
    }]);
    // Polled once, then dropped: the HTTP client hung up while the write was in flight.
    assert!(
        futures_util::FutureExt::now_or_never(write).is_none(),
        "the write waits for its flush"
    );
    wait_for_async(WAIT, "the store to have web", || {
        desired.store().get_program("web").unwrap()
    })
    .await;
    wait_for_async(WAIT, "the mirror to have web", || desired.get("web")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_until_space_is_freed_and_never_wedges_the_store() {
    let fs = Tmpfs::mount("8m");
    let state = fs.path().join("state");
    let store = DesiredStore::open(&state).unwrap();
    let wake = Arc::new(tokio::sync::Notify::new());
    let metrics = Arc::new(provisr::metrics::Metrics::new());
    let desired = DesiredState::new(store, wake, metrics).unwrap();
    let put = |command: &str| {
        vec![StoreWrite::PutProgram {
            spec: web_spec(command).into(),
            source: Source::Api,
        }]
    };
    desired.apply(put("sleep 1")).await.unwrap();
    let filler = fs.fill();
    let refused = desired.apply(put("sleep 2")).await;
    assert!(refused.is_err(), "a write to a full disk was acknowledged");
    assert_eq!(
        *desired.get("web").unwrap().spec,
        web_spec("sleep 1"),
        "the mirror shows a write that was not acknowledged"
    );
    std::fs::remove_file(filler).unwrap();
    // Once there is room again, the same write goes through and is durable.
    desired.apply(put("sleep 2")).await.unwrap();
    assert_eq!(*desired.get("web").unwrap().spec, web_spec("sleep 2"));
    drop(desired);
    let store = DesiredStore::open(&state).unwrap();
    assert_eq!(
        *store.get_program("web").unwrap().unwrap().spec,
        web_spec("sleep 2")
    );
}

// ---- 6. a failed instance-record write is retried -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_record_write_is_retried() {
    let fs = Tmpfs::mount("8m");
    let p = Project::with_state(fs.path().join("state"));
    p.save(
        "web.toml",
        "command = \"sleep 300\"\nauto_restart = true\nrestart_interval = \"0s\"\n",
    );
    let opened = provisr::daemon::open(&p.options()).await.unwrap();
    let daemon = opened.state.clone();
    let mut guard = GroupGuard::default();
    let live_pid = || {
        daemon.reconciler.live().get("web").and_then(|l| {
            let s = l.status.borrow();
            (s.state.as_str() == "running").then_some(s.pid).flatten()
        })
    };
    let recorded = || {
        daemon
            .desired
            .store()
            .get_instance("web")
            .unwrap()
            .and_then(|r| r.pid)
    };
    let first = wait_for_async(WAIT, "web running", live_pid).await;
    guard.add(first);
    wait_for_async(WAIT, "web recorded", || {
        (recorded() == Some(first)).then_some(())
    })
    .await;
    let filler = fs.fill();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = wait_for_async(WAIT, "web restarted", || live_pid().filter(|p| *p != first)).await;
    guard.add(second);
    daemon.reconciler.pass_now().await;
    assert_eq!(
        recorded(),
        Some(first),
        "the disk is full: nothing can be recorded"
    );
    std::fs::remove_file(filler).unwrap();
    // Nothing else happens: only a retry records the new pid.
    wait_for_async(WAIT, "the new pid recorded", || {
        (recorded() == Some(second)).then_some(())
    })
    .await;
    opened.shutdown().await.unwrap();
}

// ---- 7. check-then-write ownership ---------------------------------------------------------

#[test]
fn concurrent_registers_of_one_name_create_it_once() {
    let p = Project::new();
    let d = p.start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let n = 16;
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (agent, barrier, url) = (agent.clone(), barrier.clone(), d.url.clone());
                s.spawn(move || {
                    let body = format!(
                        r#"{{"name": "x", "command": "sleep {}", "autostart": false}}"#,
                        300 + i
                    );
                    barrier.wait();
                    let mut r = agent
                        .post(format!("{url}/register"))
                        .header("content-type", "application/json")
                        .send(body.as_bytes())
                        .unwrap();
                    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&(u16, String)> = answers.iter().filter(|(c, _)| *c == 201).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(c, _)| *c == 201 || *c == 409),
        "{answers:?}"
    );
    // What is stored is what the one acknowledged register sent.
    let winner: Value = serde_json::from_str(&created[0].1).unwrap();
    let programs: Value = provisr::client::ApiClient::new(&d.url, None)
        .get("/programs", &[])
        .unwrap();
    let stored = programs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "x")
        .unwrap();
    assert_eq!(stored["spec"], winner["spec"]);
}

// ---- 8. an adopted process is compared with the spec it was started with -------------------

#[test]
fn an_edit_made_while_no_daemon_ran_is_applied_to_the_adopted_process() {
    let p = Project::new();
    p.save("web.toml", "command = \"sleep 300\"\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let old = running(&d, &mut guard, "web");
    d.kill9();
    p.save("web.toml", "command = \"sleep 301\"\n");
    let d = p.start();
    let new = running_where(&d, &mut guard, "web", |pid| pid != old);
    assert_eq!(cmdline(new), "sleep 301");
    wait_gone(old, WAIT);
}

// ---- 9. signals to adopted processes; the boot id --------------------------------------------

#[test]
fn a_record_from_another_boot_is_never_adopted() {
    let p = Project::new();
    p.save("web.toml", "command = \"sleep 300\"\n");
    // A process that happens to have the recorded pid and start time, as after a reboot.
    let stranger = Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let spid = stranger.id() as i32;
    let mut guard = GroupGuard::default();
    guard.add(spid);
    let start_time = provisr::supervisor::proc_start_time(spid).unwrap();
    drop(DesiredStore::open(&p.state).unwrap());
    {
        let db: sled::Db = sled::Config::new()
            .path(p.state.join(provisr::store::DB_DIR))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let record = serde_json::json!({
            "program": "web", "pid": spid, "start_time": start_time, "restarts": 0,
            "boot_id": "00000000-0000-4000-8000-000000000000", "generation": null,
            "spec": null, "starting": null, "seq": null, "finished": null,
        });
        db.insert("i/web", serde_json::to_vec(&record).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let d = p.start();
    let pid = running(&d, &mut guard, "web");
    assert_ne!(pid, spid, "a process from another boot was adopted");
    assert!(alive(spid), "a stranger was signalled");
    drop(d);
    let mut stranger = stranger;
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[test]
fn processes_left_by_a_leader_that_died_while_no_daemon_ran_are_stopped() {
    let p = Project::new();
    p.save(
        "web.toml",
        "command = \"sleep 300 & sleep 301 & wait\"\nauto_restart = true\n",
    );
    let d = p.start();
    let mut guard = GroupGuard::default();
    let leader = running(&d, &mut guard, "web");
    let members: Vec<i32> = wait_for(WAIT, "the leader's two sleeps", || {
        let m: Vec<i32> = group_members(leader)
            .into_iter()
            .filter(|&pid| pid != leader)
            .collect();
        (m.len() == 2).then_some(m)
    });
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(leader, WAIT);
    assert!(members.iter().all(|&m| alive(m)), "its group outlives it");
    let d = p.start();
    running_where(&d, &mut guard, "web", |pid| pid != leader);
    for m in members {
        wait_gone(m, WAIT);
    }
}

// ---- 10. a finished job does not run again -------------------------------------------------

#[test]
fn a_finished_job_does_not_run_again_when_the_daemon_restarts() {
    let p = Project::new();
    let ran = p.dir.path().join("ran");
    p.save(
        "job.toml",
        &format!("command = \"sh -c 'echo ran >> {}'\"\n", ran.display()),
    );
    let runs = || {
        std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let exited = |d: &TestDaemon| {
        wait_for(WAIT, "job exited", || {
            status(d, "job").filter(|s| s["state"] == "exited")
        })
    };
    let d = p.start();
    exited(&d);
    assert_eq!(runs(), 1);
    assert_eq!(d.terminate(), Some(0));
    let d = p.start();
    let s = exited(&d);
    assert_eq!(runs(), 1, "the job ran again after a restart of the daemon");
    assert_eq!(s["last_exit"]["code"], 0, "how it ended is kept: {s}");
    d.kill9();
    let d = p.start();
    exited(&d);
    assert_eq!(runs(), 1, "the job ran again after kill -9 of the daemon");
    // An explicit start runs it again; a daemon killed the moment it has exited (its exit
    // perhaps not recorded yet) does not run it a third time.
    let (code, _, err) = d.cli(&["start", "--name", "job"]);
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "a second run", || (runs() == 2).then_some(()));
    exited(&d);
    d.kill9();
    let d = p.start();
    let s = exited(&d);
    assert_eq!(
        runs(),
        2,
        "the job ran again after kill -9 of the daemon: {s}"
    );
}

/// Found by `provisr-torture --only kill9`: a restart (here, an edit of `args`) whose old process
/// takes a while to stop, with the daemon killed meanwhile. The old process is gone when the next
/// daemon looks and the new one was never spawned: that is an unfinished restart to carry out,
/// not a job that ended on its own.
#[test]
fn a_restart_interrupted_while_the_old_process_stops_is_carried_out() {
    let p = Project::new();
    let svc = |n: u32| {
        format!(
            "args = [\"sh\", \"-c\", \"trap 'sleep 1; exit 0' TERM; sleep {n} & wait\"]\nstop_timeout = \"5s\"\n"
        )
    };
    p.save("svc.toml", &svc(3600));
    let d = p.start();
    let mut guard = GroupGuard::default();
    let old = running(&d, &mut guard, "svc");
    p.save("svc.toml", &svc(3601));
    wait_for(WAIT, "the restart under way", || {
        status(&d, "svc").filter(|s| s["state"] == "stopping")
    });
    d.kill9();
    wait_gone(old, WAIT);
    let d = p.start();
    let new = running_where(&d, &mut guard, "svc", |pid| pid != old);
    let s = status(&d, "svc").unwrap();
    assert_eq!(s["desired"], "running", "{s}");
    let cmdline = std::fs::read_to_string(format!("/proc/{new}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.contains("sleep 3601"),
        "the edited spec runs: {cmdline:?}"
    );
}

// ---- 11. the daemon as child subreaper -----------------------------------------------------

#[test]
fn the_daemon_reaps_orphans_and_stops_escapees_as_their_subreaper() {
    let p = Project::new();
    p.save(
        "web.toml",
        "command = \"sh -c '(sleep 300 &); setsid sleep 301 & sleep 302'\"\nstop_timeout = \"1s\"\n",
    );
    let d = p.start();
    let mut guard = GroupGuard::default();
    let leader = running(&d, &mut guard, "web");
    let find = |command: &str| {
        wait_for(WAIT, command, || {
            tagged(&p.state, "web")
                .into_iter()
                .find(|&pid| cmdline(pid) == command)
        })
    };
    // Double-forked: its parent exited at once, so it is re-parented — to the daemon.
    let orphan = find("sleep 300");
    guard.add(orphan);
    assert_eq!(
        ppid(orphan),
        Some(d.pid()),
        "the orphan went past the daemon"
    );
    // When it dies, the daemon reaps it: no zombie is left.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(orphan),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(WAIT, "the orphan reaped", || {
        (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    });
    // Its own session, out of reach of group signals; still stopped with its program.
    let escapee = find("sleep 301");
    guard.add(escapee);
    assert!(!group_members(leader).contains(&escapee));
    let (code, _, err) = d.cli(&["stop", "--name", "web"]);
    assert_eq!(code, 0, "{err}");
    wait_gone(leader, Duration::from_secs(5));
    wait_gone(escapee, Duration::from_secs(2));
}
