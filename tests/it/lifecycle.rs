//! Dependencies, readiness and liveness probes, hooks and pid files against a real daemon: real
//! processes listening on real ports on 127.0.0.1, real files (`docs/configuration.md`,
//! "Dependencies", "Probes", "Hooks").

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::daemon::{write, TestDaemon};
use crate::util::{alive, wait_for, GroupGuard};

const BIN: &str = env!("CARGO_BIN_EXE_provisr");
const WAIT: Duration = Duration::from_secs(30);

/// A loopback port that is free now, for a program under test to bind later. It is taken below
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where no socket bound to port 0
/// lands: the tests beside this one bind many, and one could take a port freed in the ephemeral
/// range before the program binds it. Each call gives another port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, span) = (1024, low.saturating_sub(1024).max(1));
    // Where this process starts in the range: runs of the suite side by side start apart.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port below {low}");
}

/// A daemon on `dir` with the programs written there.
fn daemon(dir: &Path, programs: &[(&str, String)]) -> TestDaemon {
    let cfg = dir.join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    std::fs::create_dir_all(dir.join("programs")).unwrap();
    for (file, text) in programs {
        write(&dir.join("programs").join(file), text);
    }
    TestDaemon::start(dir, Some(&cfg), &dir.join("state"))
}

fn time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(v.as_str().unwrap_or_else(|| panic!("a time, got {v}"))).unwrap()
}

/// A unix time written by `date +%s.%N` or Python's `time.time()`.
fn file_time(path: &Path) -> SystemTime {
    let text = std::fs::read_to_string(path).unwrap();
    let secs: f64 = text.trim().parse().unwrap_or_else(|_| panic!("{text:?}"));
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

/// A Python one-liner listening on `port` after `delay` seconds, writing when it did into
/// `opened`, accepting and closing connections until killed.
fn late_listener(port: u16, delay: &str, opened: &Path) -> String {
    format!(
        "sleep {delay}; exec python3 -c 'import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((\"127.0.0.1\",{port}))\ns.listen()\nopen(\"{}\",\"w\").write(repr(time.time()))\nwhile True: s.accept()[0].close()'",
        opened.display()
    )
}

fn guard_status(guard: &mut GroupGuard, s: &Value) {
    if let Some(pid) = s["pid"].as_i64() {
        guard.add(pid as i32);
    }
}

#[test]
fn a_service_starts_after_its_database_is_healthy_and_its_migration_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db_port, web_port) = (free_port(), free_port());
    let opened = d.join("db-opened");
    let migrated = d.join("migrated");
    let db = format!(
        "command = '''{}'''\n[readiness]\ntype = \"tcp\"\naddress = \"127.0.0.1:{db_port}\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
        late_listener(db_port, "1", &opened)
    );
    let migrate = format!(
        "command = \"sleep 0.3; date +%s.%N > {}\"\n",
        migrated.display()
    );
    let web = format!(
        "command = \"python3 -m http.server {web_port} --bind 127.0.0.1\"\n[depends_on]\ndb = \"healthy\"\nmigrate = \"completed_successfully\"\n[readiness]\ntype = \"http\"\nurl = \"http://127.0.0.1:{web_port}/\"\ninterval = \"200ms\"\n"
    );
    let daemon = daemon(
        d,
        &[
            ("db.toml", db),
            ("migrate.toml", migrate),
            ("web.toml", web),
        ],
    );
    let mut guard = GroupGuard::default();
    // While the database is not listening yet, the service says what it waits for.
    let waiting = wait_for(WAIT, "web waiting for db", || {
        let s = daemon.status("web");
        guard_status(&mut guard, &daemon.status("db"));
        let says_db = s["waiting_for"]
            .as_array()?
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with("db (healthy)")));
        says_db.then_some(s)
    });
    assert_eq!(waiting["pid"], Value::Null, "{waiting}");
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("waiting for db (healthy)")),
        "{waiting}"
    );
    let web = wait_for(WAIT, "web running and ready", || {
        let s = daemon.status("web");
        guard_status(&mut guard, &s);
        (s["state"] == "running" && s["ready"] == true && s["healthy"] == true).then_some(s)
    });
    assert_eq!(web["waiting_for"], serde_json::json!([]));
    let started = time(&web["started_at"]);
    let port_opened = file_time(&opened);
    let migrate = daemon.status("migrate");
    assert_eq!(migrate["state"], "exited");
    assert_eq!(migrate["last_exit"]["code"], 0);
    // Never before: the port opened, the migration wrote its line and exited, then web started.
    assert!(
        started > port_opened,
        "web {started:?} db port {port_opened:?}"
    );
    assert!(started >= time(&migrate["stopped_at"]), "{web} {migrate}");
    assert!(started > file_time(&migrated));
    let db = daemon.status("db");
    assert_eq!(
        (db["ready"].clone(), db["healthy"].clone()),
        (true.into(), true.into())
    );
    // The service really serves.
    let answer = ureq::get(format!("http://127.0.0.1:{web_port}/")).call();
    assert_eq!(answer.map(|r| r.status().as_u16()).ok(), Some(200));
}

#[test]
fn a_failing_migration_keeps_the_service_waiting_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let daemon = daemon(
        d,
        &[
            (
                "migrate.toml",
                "command = \"echo no such table >&2; exit 3\"\nretry_count = 0\n".to_string(),
            ),
            (
                "web.toml",
                "command = \"sleep 300\"\ndepends_on = { migrate = \"completed_successfully\" }\n"
                    .to_string(),
            ),
        ],
    );
    let web = wait_for(WAIT, "web waiting for a failed migration", || {
        let s = daemon.status("web");
        let w = s["waiting_for"].as_array()?.first()?.as_str()?.to_string();
        (w == "migrate (completed_successfully): exited with code 3").then_some(s)
    });
    assert_eq!(web["state"], "stopped");
    assert_eq!(web["pid"], Value::Null);
    assert_eq!(web["started_at"], Value::Null);
    assert_eq!(
        web["message"],
        "waiting for migrate (completed_successfully): exited with code 3"
    );
    // The plan says the same: a deferred start waiting for the migration.
    let mut guard = GroupGuard::default();
    let plan: Value = {
        let cfg = d.join("cfg.toml");
        let cfg = cfg.to_str().unwrap();
        let (code, out, err) = daemon.cli(&["start", "--config", cfg, "--dry-run", "-o", "json"]);
        let _ = &mut guard;
        assert!(code == 0 || code == 1, "{out} {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let steps = plan["steps"].as_array().unwrap();
    let step = steps.iter().find(|s| s["instance"] == "web").unwrap();
    assert_eq!(step["action"], "start");
    assert_eq!(step["deferred"], true);
    assert_eq!(
        step["waiting_for"],
        serde_json::json!(["migrate (completed_successfully): exited with code 3"])
    );
    // Once the migration is fixed and run again, the service starts.
    write(&d.join("programs/migrate.toml"), "command = \"true\"\n");
    wait_for(WAIT, "the fixed migration loaded", || {
        let mut r = ureq::get(format!("{}/programs", daemon.url)).call().ok()?;
        let programs: Value = r.body_mut().read_json().ok()?;
        let fixed = programs
            .as_array()?
            .iter()
            .any(|p| p["name"] == "migrate" && p["spec"]["exec"]["command"] == "true");
        fixed.then_some(())
    });
    let (code, _, err) = daemon.cli(&["restart", "--name", "migrate"]);
    assert_eq!(code, 0, "{err}");
    let web = wait_for(WAIT, "web running", || {
        let s = daemon.status("web");
        (s["state"] == "running").then_some(s)
    });
    guard_status(&mut guard, &web);
}

/// `provisr events -o json`, read on a thread of its own; killed when dropped.
struct EventTap {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl EventTap {
    fn open(d: &TestDaemon) -> EventTap {
        let mut child = Command::new(BIN)
            .args(["events", "-o", "json"])
            .env("PROVISR_API_URL", &d.url)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        EventTap { child, seen }
    }

    /// Waits for an event `pick` accepts.
    fn wait(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        wait_for(WAIT, what, || {
            self.seen.lock().unwrap().iter().find(|e| pick(e)).cloned()
        })
    }

    /// Makes sure the subscription is live: starts `marker` until an event of it arrives.
    fn live(&self, d: &TestDaemon, guard: &mut GroupGuard) {
        wait_for(WAIT, "the event stream", || {
            let (code, _, _) = d.cli(&["restart", "--name", "marker"]);
            assert_eq!(code, 0);
            guard_status(guard, &d.status("marker"));
            let seen = self.seen.lock().unwrap();
            seen.iter().any(|e| e["name"] == "marker").then_some(())
        });
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_failing_liveness_probe_restarts_the_instance_and_a_log_probe_makes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alive_flag = d.join("alive");
    std::fs::write(&alive_flag, "").unwrap();
    let live = format!(
        "command = \"sleep 300\"\nauto_restart = true\nrestart_interval = \"0s\"\n[liveness]\ntype = \"exec\"\ncommand = \"test -f {}\"\ninterval = \"200ms\"\nfailure_threshold = 2\n",
        alive_flag.display()
    );
    let ready = "command = \"echo booting; sleep 0.5; echo listening now; exec sleep 300\"\n[readiness]\ntype = \"log\"\npattern = \"^listening\"\n".to_string();
    let daemon = daemon(
        d,
        &[
            ("live.toml", live),
            ("ready.toml", ready),
            ("marker.toml", "command = \"sleep 300\"\n".to_string()),
        ],
    );
    let mut guard = GroupGuard::default();
    let tap = EventTap::open(&daemon);
    tap.live(&daemon, &mut guard);
    let first = wait_for(WAIT, "live running", || {
        let s = daemon.status("live");
        (s["state"] == "running").then_some(s)
    });
    guard_status(&mut guard, &first);
    // The log probe makes `ready` ready at its line.
    let r = wait_for(WAIT, "ready ready", || {
        let s = daemon.status("ready");
        guard_status(&mut guard, &s);
        (s["ready"] == true).then_some(s)
    });
    assert_eq!(r["healthy"], true);

    // Liveness fails: restarted, with the reason in the message and on /events.
    std::fs::remove_file(&alive_flag).unwrap();
    let event = tap.wait("the liveness failure on /events", |e| {
        e["name"] == "live"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("liveness probe failed: exec:test -f"))
    });
    assert_eq!(
        (event["from"].clone(), event["to"].clone()),
        ("running".into(), "stopping".into())
    );
    std::fs::write(&alive_flag, "").unwrap();
    let again = wait_for(WAIT, "live restarted", || {
        let s = daemon.status("live");
        guard_status(&mut guard, &s);
        (s["state"] == "running" && s["pid"] != first["pid"] && s["restarts"] == 1).then_some(s)
    });
    assert!(
        again["message"]
            .as_str()
            .is_some_and(|m| m.contains("after liveness probe failed")),
        "{again}"
    );
    // The other program, ready by its log line, was never touched.
    let r2 = daemon.status("ready");
    assert_eq!(
        (r2["pid"].clone(), r2["restarts"].clone()),
        (r["pid"].clone(), 0.into())
    );
}

#[test]
fn readiness_going_false_makes_healthy_false_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flag = d.join("ready");
    std::fs::write(&flag, "").unwrap();
    let web = format!(
        "command = \"sleep 300\"\nauto_restart = true\n[readiness]\ntype = \"exec\"\ncommand = \"test -f {}\"\ninterval = \"100ms\"\nfailure_threshold = 2\nsuccess_threshold = 2\n",
        flag.display()
    );
    let daemon = daemon(d, &[("web.toml", web)]);
    let mut guard = GroupGuard::default();
    let ready = wait_for(WAIT, "web ready", || {
        let s = daemon.status("web");
        guard_status(&mut guard, &s);
        (s["ready"] == true).then_some(s)
    });
    assert_eq!(ready["healthy"], true);
    std::fs::remove_file(&flag).unwrap();
    let not_ready = wait_for(WAIT, "web not ready", || {
        let s = daemon.status("web");
        (s["ready"] == false).then_some(s)
    });
    assert_eq!(not_ready["healthy"], false);
    assert_eq!(not_ready["state"], "running");
    assert_eq!(not_ready["pid"], ready["pid"], "not restarted");
    assert_eq!(not_ready["restarts"], 0);
    assert!(
        not_ready["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("not ready: readiness probe exec:test -f")),
        "{not_ready}"
    );
    std::fs::write(&flag, "").unwrap();
    wait_for(WAIT, "web ready again", || {
        let s = daemon.status("web");
        (s["ready"] == true && s["healthy"] == true && s["pid"] == ready["pid"]).then_some(())
    });
}

#[test]
fn hooks_run_in_order_around_start_and_stop_with_their_output_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let order = d.join("order");
    let pid_file = d.join("run/web.pid");
    let hook = |phase: &str, name: &str| {
        format!(
            "[[hooks.{phase}]]\nname = \"{name}\"\ncommand = \"echo {phase} >> {}; echo {name} says hello\"\n",
            order.display()
        )
    };
    let web = format!(
        "command = \"echo web >> {}; exec sleep 300\"\npid_file = \"{}\"\nstop_timeout = \"5s\"\n{}{}{}{}",
        order.display(),
        pid_file.display(),
        hook("pre_start", "prepare"),
        hook("post_start", "announce"),
        hook("pre_stop", "drain"),
        hook("post_stop", "cleanup"),
    );
    let daemon = daemon(d, &[("web.toml", web)]);
    let mut guard = GroupGuard::default();
    let s = wait_for(WAIT, "web running, post_start done", || {
        let s = daemon.status("web");
        guard_status(&mut guard, &s);
        let text = std::fs::read_to_string(&order).unwrap_or_default();
        (s["state"] == "running" && text.contains("post_start")).then_some(s)
    });
    // The pid file names the process, mode 0644.
    let pid = s["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pid_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let (code, _, err) = daemon.cli(&["stop", "--name", "web"]);
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "post_stop done", || {
        let text = std::fs::read_to_string(&order).unwrap_or_default();
        text.contains("post_stop").then_some(())
    });
    let text = std::fs::read_to_string(&order).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The hooks in their order; the program's own line after pre_start and before pre_stop
    // (post_start runs once it is `running`, beside whatever it does first).
    let hooks: Vec<&str> = lines.iter().copied().filter(|l| *l != "web").collect();
    assert_eq!(hooks, ["pre_start", "post_start", "pre_stop", "post_stop"]);
    let at = |what: &str| lines.iter().position(|l| *l == what).unwrap();
    assert!(
        at("pre_start") < at("web") && at("web") < at("pre_stop"),
        "{lines:?}"
    );
    assert!(!pid_file.exists(), "the pid file is removed at stop");
    assert!(!alive(pid as i32));
    // The hooks' output is in the instance's log, each line prefixed with the hook's name.
    let (code, out, err) = daemon.cli(&["logs", "web", "-n", "50"]);
    assert_eq!(code, 0, "{err}");
    for name in ["prepare", "announce", "drain", "cleanup"] {
        assert!(
            out.contains(&format!("[{name}] {name} says hello")),
            "{name} in {out}"
        );
    }
}

#[test]
fn a_failing_pre_start_hook_leaves_the_instance_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ran = d.join("ran");
    let web = format!(
        "command = \"touch {}; exec sleep 300\"\n[[hooks.pre_start]]\nname = \"migrate\"\ncommand = \"echo checking schema; echo no such table: users >&2; exit 4\"\n",
        ran.display()
    );
    let daemon = daemon(d, &[("web.toml", web)]);
    let s = wait_for(WAIT, "web failed", || {
        let s = daemon.status("web");
        (s["state"] == "failed").then_some(s)
    });
    assert_eq!(s["pid"], Value::Null);
    assert_eq!(
        s["message"],
        "pre_start hook `migrate` failed: exited with code 4; last output: no such table: users; not started"
    );
    assert!(!ran.exists(), "the program itself never ran");
    let (_, out, _) = daemon.cli(&["logs", "web", "--stderr"]);
    assert!(out.contains("[migrate] no such table: users"), "{out}");
    // It stays failed: no retry of the program, no loop.
    let (code, out, _) = daemon.cli(&["status", "--name", "web"]);
    assert_eq!(code, 0);
    assert!(out.contains("failed"));
}

#[test]
fn shutdown_stops_a_program_before_the_programs_it_depends_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let order = d.join("order");
    let program = |name: &str, deps: &str| {
        format!(
            "command = \"sleep 300\"\n{deps}[[hooks.pre_stop]]\nname = \"note\"\ncommand = \"echo {name} >> {}\"\n",
            order.display()
        )
    };
    let daemon = daemon(
        d,
        &[
            ("db.toml", program("db", "")),
            ("cache.toml", program("cache", "depends_on = [\"db\"]\n")),
            (
                "web.toml",
                program("web", "depends_on = [\"db\", \"cache\"]\n"),
            ),
        ],
    );
    let mut guard = GroupGuard::default();
    for name in ["db", "cache", "web"] {
        let s = wait_for(WAIT, "running", || {
            let s = daemon.status(name);
            (s["state"] == "running").then_some(s)
        });
        guard_status(&mut guard, &s);
    }
    assert_eq!(daemon.terminate(), Some(0));
    let text = std::fs::read_to_string(&order).unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), ["web", "cache", "db"]);
}
