//! Hot reload and dry-run diffs against a real daemon: the `provisr` binary serving on
//! 127.0.0.1 port 0 with a watched programs directory, files saved the ways editors save them,
//! and the CLI's `diff` and `start --dry-run` run as separate processes.
//!
//! Nothing here asks the daemon to reload: every change reaches it through the watcher (the
//! periodic resync is a minute away, far beyond any wait below).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use provisr::client::ApiClient;
use serde_json::Value;

use crate::daemon::{cli_with_url, TestDaemon};
use crate::util::{alive, wait_for, GroupGuard};

/// Generous: a loaded 2-core machine runs many daemons at once.
const WAIT: Duration = Duration::from_secs(20);

/// A config file and its programs directory in a temp dir.
struct Project {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    programs: PathBuf,
}

impl Project {
    /// `cfg.toml` with `programs_directory = "programs"` plus `extra` main-config lines.
    fn new(extra: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg.toml");
        let programs = dir.path().join("programs");
        std::fs::create_dir_all(&programs).unwrap();
        std::fs::write(&cfg, format!("programs_directory = \"programs\"\n{extra}")).unwrap();
        Project { dir, cfg, programs }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.programs.join(name)
    }

    /// Saves a program file atomically (temp file + rename), so no test but the editor-save
    /// one depends on the debounce.
    fn save(&self, name: &str, text: &str) {
        save_by_rename(&self.file(name), text);
    }

    fn start(&self) -> TestDaemon {
        TestDaemon::start(
            self.dir.path(),
            Some(&self.cfg),
            &self.dir.path().join("state"),
        )
    }
}

fn api(d: &TestDaemon) -> ApiClient {
    ApiClient::new(&d.url, None)
}

fn by_name(list: Value, key: &str) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .iter()
        .map(|v| (v[key].as_str().unwrap().to_string(), v.clone()))
        .collect()
}

/// Every instance's status, by instance name.
fn statuses(d: &TestDaemon) -> BTreeMap<String, Value> {
    by_name(api(d).get("/status", &[]).expect("GET /status"), "name")
}

/// Every program's desired state (`GET /programs`), by program name.
fn programs(d: &TestDaemon) -> BTreeMap<String, Value> {
    by_name(api(d).get("/programs", &[]).expect("GET /programs"), "name")
}

fn pid(s: &Value) -> i32 {
    s["pid"].as_i64().unwrap_or_else(|| panic!("a pid: {s}")) as i32
}

fn generation(p: &Value) -> u64 {
    p["generation"].as_u64().unwrap()
}

fn command_of(p: &Value) -> &str {
    p["spec"]["exec"]["command"].as_str().unwrap_or_default()
}

fn started_at(s: &Value) -> SystemTime {
    humantime::parse_rfc3339(s["started_at"].as_str().expect("started_at")).unwrap()
}

/// Waits until `name` is running with a pid accepted by `pid_ok`; guards that pid.
fn running_where(
    d: &TestDaemon,
    guard: &mut GroupGuard,
    name: &str,
    pid_ok: impl Fn(i32) -> bool,
) -> Value {
    let s = wait_for(WAIT, &format!("{name} running"), || {
        let s = statuses(d).remove(name)?;
        let ok = s["state"] == "running" && s["pid"].as_i64().is_some_and(|p| pid_ok(p as i32));
        ok.then_some(s)
    });
    guard.add(pid(&s));
    s
}

fn running(d: &TestDaemon, guard: &mut GroupGuard, name: &str) -> Value {
    running_where(d, guard, name, |_| true)
}

/// Waits until `name` runs with a pid other than `old`: it was restarted.
fn restarted(d: &TestDaemon, guard: &mut GroupGuard, name: &str, old: i32) -> Value {
    running_where(d, guard, name, |p| p != old)
}

/// Waits until the program's desired state satisfies `cond`.
fn program_where(d: &TestDaemon, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_for(WAIT, &format!("{name}: {what}"), || {
        programs(d).remove(name).filter(|p| cond(p))
    })
}

fn wait_gone(pid: i32) {
    wait_for(WAIT, &format!("pid {pid} to exit"), || {
        (!alive(pid)).then_some(())
    });
}

/// Temp file in the same directory (hidden, so never a program), then rename over: most editors.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Truncate and rewrite in place, one `write` per line, as many programs do. Every prefix that
/// ends after a line of the files used below is itself a valid spec, so a half-written file
/// that were applied would show up as an extra generation.
fn save_in_pieces(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for line in text.split_inclusive('\n') {
        f.write_all(line.as_bytes()).unwrap();
    }
    f.sync_all().unwrap();
}

/// vim's default: probe the directory with `4913`, move the file to `file~`, write the file
/// anew, delete the backup.
fn save_like_vim(path: &Path, text: &str) {
    let dir = path.parent().unwrap();
    let probe = dir.join("4913");
    std::fs::write(&probe, "").unwrap();
    std::fs::remove_file(&probe).unwrap();
    let backup = path.with_file_name(format!("{}~", path.file_name().unwrap().to_string_lossy()));
    std::fs::rename(path, &backup).unwrap();
    save_in_pieces(path, text);
    std::fs::remove_file(&backup).unwrap();
}

/// `sed -i`: the real tool (a temp file `sedXXXXXX`, renamed over).
fn save_with_sed(path: &Path, expression: &str) {
    let out = Command::new("sed")
        .arg("-i")
        .arg(expression)
        .arg(path)
        .output()
        .expect("run sed");
    assert!(out.status.success(), "sed: {out:?}");
}

#[test]
fn a_new_file_runs_at_once_and_a_deleted_file_stops_and_removes_its_program() {
    let p = Project::new("");
    let d = p.start();
    let mut guard = GroupGuard::default();
    assert!(statuses(&d).is_empty());

    let written = SystemTime::now();
    p.save("web.toml", "command = \"sleep 300\"\n");
    let web = running(&d, &mut guard, "web");
    // From the save to the spawn, as the daemon itself timed it.
    let latency = started_at(&web).duration_since(written).unwrap_or_default();
    eprintln!("a saved file was running after {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "a new file must run within 1 s; took {latency:?}"
    );
    assert_eq!(programs(&d)["web"]["source"].as_str().unwrap(), {
        format!("file:{}", p.file("web.toml").display())
    });

    std::fs::remove_file(p.file("web.toml")).unwrap();
    wait_for(WAIT, "web removed", || {
        (!statuses(&d).contains_key("web") && !programs(&d).contains_key("web")).then_some(())
    });
    wait_gone(pid(&web));

    // What no file event reports — an edit of a symlinked file's target — SIGHUP picks up.
    let real = p.dir.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("sym.toml"), "command = \"sleep 300\"\n").unwrap();
    std::os::unix::fs::symlink(real.join("sym.toml"), p.file("sym.toml")).unwrap();
    let sym = running(&d, &mut guard, "sym");
    save_by_rename(&real.join("sym.toml"), "command = \"sleep 301\"\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    program_where(&d, "sym", "the target's edit applied", |p| {
        command_of(p) == "sleep 301"
    });
    restarted(&d, &mut guard, "sym", pid(&sym));
    std::fs::remove_file(p.file("sym.toml")).unwrap();

    // Deleted while no daemon ran: the next daemon stops the process it finds, and forgets it.
    p.save("job.toml", "command = \"sleep 300\"\n");
    let job = running(&d, &mut guard, "job");
    d.kill9();
    assert!(
        alive(pid(&job)),
        "a killed daemon leaves its children running"
    );
    std::fs::remove_file(p.file("job.toml")).unwrap();
    let d = p.start();
    wait_gone(pid(&job));
    assert!(!statuses(&d).contains_key("job"));
    assert!(!programs(&d).contains_key("job"));
}

/// A program file with the given top-level lines and `[log] max_size_mb`.
fn web_file(command: &str, top: &str, max_size_mb: u32) -> String {
    format!("command = \"{command}\"\n{top}[log]\nmax_size_mb = {max_size_mb}\n")
}

#[test]
fn changes_restart_scale_or_apply_in_place_as_classified() {
    let p = Project::new("");
    p.save("web.toml", &web_file("sleep 301", "", 10));
    p.save("pool.toml", "command = \"sleep 300\"\ninstances = 2\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let web = running(&d, &mut guard, "web");
    let web_pid = pid(&web);
    let pool1 = pid(&running(&d, &mut guard, "pool-1"));
    let pool2 = pid(&running(&d, &mut guard, "pool-2"));

    // In place: the pid stays, the generation moves by one, the new value is in effect.
    type Case = (&'static str, String, fn(&Value) -> bool);
    let in_place: [Case; 4] = [
        (
            "priority",
            web_file("sleep 301", "priority = 5\n", 10),
            |p| p["spec"]["priority"] == 5,
        ),
        (
            "restart_interval",
            web_file(
                "sleep 301",
                "priority = 5\nrestart_interval = \"300ms\"\n",
                10,
            ),
            |p| p["spec"]["restart_interval"] == "300ms",
        ),
        (
            "log.max_size_mb",
            web_file(
                "sleep 301",
                "priority = 5\nrestart_interval = \"300ms\"\n",
                2,
            ),
            |p| p["spec"]["log"]["max_size_mb"] == 2,
        ),
        (
            "auto_restart",
            web_file(
                "sleep 301",
                "priority = 5\nrestart_interval = \"300ms\"\nauto_restart = true\n",
                2,
            ),
            |p| p["spec"]["auto_restart"] == true,
        ),
    ];
    for (field, text, applied) in in_place {
        let before = generation(&programs(&d)["web"]);
        p.save("web.toml", &text);
        let after = program_where(&d, "web", &format!("{field} applied"), applied);
        assert_eq!(generation(&after), before + 1, "{field}");
        let s = statuses(&d).remove("web").unwrap();
        assert_eq!(s["state"], "running", "{field}: {s}");
        assert_eq!(pid(&s), web_pid, "{field} must not restart web");
    }
    assert_eq!(statuses(&d)["web"]["priority"], 5);
    // The running actor has the new spec: with auto_restart now on, a crash is restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(web_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crashed = restarted(&d, &mut guard, "web", web_pid);
    assert_eq!(crashed["restarts"], 1, "{crashed}");
    let web_pid = pid(&crashed);

    // Restart: a new pid, the old process gone.
    let before = generation(&programs(&d)["web"]);
    p.save(
        "web.toml",
        &web_file(
            "sleep 302",
            "priority = 5\nrestart_interval = \"300ms\"\nauto_restart = true\n",
            2,
        ),
    );
    let after = program_where(&d, "web", "command applied", |p| {
        command_of(p) == "sleep 302"
    });
    assert_eq!(generation(&after), before + 1);
    restarted(&d, &mut guard, "web", web_pid);
    wait_gone(web_pid);

    // Scale: 2 → 3 starts pool-3 only, 3 → 2 stops it only.
    p.save("pool.toml", "command = \"sleep 300\"\ninstances = 3\n");
    let pool3 = pid(&running(&d, &mut guard, "pool-3"));
    let s = statuses(&d);
    assert_eq!(pid(&s["pool-1"]), pool1);
    assert_eq!(pid(&s["pool-2"]), pool2);
    p.save("pool.toml", "command = \"sleep 300\"\ninstances = 2\n");
    wait_for(WAIT, "pool-3 removed", || {
        (!statuses(&d).contains_key("pool-3")).then_some(())
    });
    wait_gone(pool3);
    let s = statuses(&d);
    assert_eq!(pid(&s["pool-1"]), pool1);
    assert_eq!(pid(&s["pool-2"]), pool2);
    assert_eq!(s["pool-1"]["state"], "running");
}

#[test]
fn an_env_file_edit_restarts_its_programs_level_by_level() {
    let p = Project::new("env_files = [\"app.env\"]\n");
    std::fs::write(p.dir.path().join("app.env"), "GREETING=one\n").unwrap();
    // `first` takes half a second to stop and counts as started only 300 ms after its spawn;
    // `second` must wait for all of that.
    p.save(
        "first.toml",
        "command = \"trap 'sleep 0.5; exit 0' TERM; sleep 300 & wait\"\n\
         priority = 0\nstart_duration = \"300ms\"\n",
    );
    p.save("second.toml", "command = \"sleep 300\"\npriority = 10\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let first = running(&d, &mut guard, "first");
    let second = running(&d, &mut guard, "second");
    let gens = programs(&d);

    save_by_rename(&p.dir.path().join("app.env"), "GREETING=two\n");
    let first2 = restarted(&d, &mut guard, "first", pid(&first));
    let second2 = restarted(&d, &mut guard, "second", pid(&second));
    let now = programs(&d);
    for name in ["first", "second"] {
        assert_eq!(now[name]["spec"]["env"]["GREETING"], "two");
        assert_eq!(
            generation(&now[name]),
            generation(&gens[name]) + 1,
            "{name}"
        );
    }
    let gap = started_at(&second2)
        .duration_since(started_at(&first2))
        .unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(300),
        "second restarted {gap:?} after first, before first was running again"
    );
    wait_gone(pid(&first));
    wait_gone(pid(&second));
}

/// The editor-test program: every line-ending prefix of it is a valid, different spec.
fn ed_file(command: &str, priority: i32) -> String {
    format!("command = \"{command}\"\npriority = {priority}\nstop_timeout = \"5s\"\n")
}

#[test]
fn every_editor_save_style_applies_exactly_the_final_content_once() {
    let p = Project::new("");
    p.save("ed.toml", &ed_file("sleep 300", 1));
    let d = p.start();
    let mut guard = GroupGuard::default();
    let mut ed_pid = pid(&running(&d, &mut guard, "ed"));
    let path = p.file("ed.toml");

    type Save = Box<dyn Fn(&Path)>;
    // (style, save, final command, final priority): a command change restarts, a priority
    // change alone does not.
    let styles: Vec<(&str, Save, &str, i32)> = vec![
        (
            "temp file + rename",
            Box::new(|path| save_by_rename(path, &ed_file("sleep 301", 2))),
            "sleep 301",
            2,
        ),
        (
            "truncate and rewrite in several writes",
            Box::new(|path| save_in_pieces(path, &ed_file("sleep 302", 3))),
            "sleep 302",
            3,
        ),
        (
            "vim: 4913 probe, backup rename, new file",
            Box::new(|path| save_like_vim(path, &ed_file("sleep 303", 4))),
            "sleep 303",
            4,
        ),
        (
            "sed -i (in place: priority only)",
            Box::new(|path| save_with_sed(path, "s/^priority = 4$/priority = 7/")),
            "sleep 303",
            7,
        ),
        (
            "truncate and rewrite, in place",
            Box::new(|path| save_in_pieces(path, &ed_file("sleep 303", 8))),
            "sleep 303",
            8,
        ),
        (
            "vim, in place",
            Box::new(|path| save_like_vim(path, &ed_file("sleep 303", 9))),
            "sleep 303",
            9,
        ),
    ];
    for (style, save, command, priority) in styles {
        let before = programs(&d).remove("ed").unwrap();
        let restart = command_of(&before) != command;
        save(&path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            ed_file(command, priority)
        );
        let after = program_where(&d, "ed", &format!("{style} applied"), |p| {
            command_of(p) == command && p["spec"]["priority"] == priority
        });
        // One save, one new spec: no half-written or missing file was ever applied (a missing
        // one would have removed the program and started its generation over at 1).
        assert_eq!(
            generation(&after),
            generation(&before) + 1,
            "{style}: generation {} → {}",
            generation(&before),
            generation(&after)
        );
        assert!(after["error"].is_null(), "{style}: {after}");
        if restart {
            let old = ed_pid;
            ed_pid = pid(&restarted(&d, &mut guard, "ed", old));
            wait_gone(old);
        } else {
            let s = statuses(&d).remove("ed").unwrap();
            assert_eq!(pid(&s), ed_pid, "{style} must not restart");
            assert_eq!(s["state"], "running", "{style}");
        }
    }
    // Editor leftovers never became programs.
    assert_eq!(programs(&d).len(), 1);
}

#[test]
fn a_broken_file_keeps_its_program_on_the_last_good_spec_until_fixed() {
    let p = Project::new("");
    p.save("web.toml", "command = \"sleep 301\"\n");
    p.save("other.toml", "command = \"sleep 401\"\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let web_pid = pid(&running(&d, &mut guard, "web"));
    let other_pid = pid(&running(&d, &mut guard, "other"));

    // A syntax error on line 2.
    p.save("web.toml", "command = \"sleep 302\"\n[log\n");
    let broken = program_where(&d, "web", "the error recorded", |p| !p["error"].is_null());
    let error = broken["error"].to_string();
    assert!(
        error.contains("web.toml:2"),
        "file and line in /programs: {error}"
    );
    assert_eq!(command_of(&broken), "sleep 301", "the last good spec stays");
    let s = statuses(&d).remove("web").unwrap();
    assert_eq!(s["state"], "running");
    assert_eq!(pid(&s), web_pid);
    assert!(
        s["message"].as_str().unwrap().contains("web.toml:2"),
        "status message: {s}"
    );
    let report: Value = api(&d)
        .post::<Value>("/reload", &[], None)
        .expect("POST /reload");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(errors[0]["file"].as_str().unwrap().ends_with("web.toml"));
    assert_eq!(errors[0]["line"], 2);
    assert!(report["failed"].is_null());

    // Other files' changes meanwhile apply normally.
    p.save("other.toml", "command = \"sleep 402\"\n");
    restarted(&d, &mut guard, "other", other_pid);
    p.save("third.toml", "command = \"sleep 300\"\n");
    running(&d, &mut guard, "third");
    let still = programs(&d).remove("web").unwrap();
    assert!(!still["error"].is_null());
    assert_eq!(pid(&statuses(&d)["web"]), web_pid);

    // A validation error names the key and says how to fix it.
    p.save("web.toml", "comand = \"sleep 302\"\n");
    program_where(&d, "web", "the key error recorded", |p| {
        p["error"].to_string().contains("comand")
    });
    let report: Value = api(&d).post::<Value>("/reload", &[], None).unwrap();
    let e = &report["errors"][0];
    assert_eq!(e["line"], 1, "{report}");
    assert!(e["hint"].as_str().unwrap().contains("command"), "{report}");
    assert_eq!(pid(&statuses(&d)["web"]), web_pid);

    // Fixed: applied, and the error is gone everywhere.
    p.save("web.toml", "command = \"sleep 303\"\n");
    let fixed = program_where(&d, "web", "the fix applied", |p| {
        command_of(p) == "sleep 303"
    });
    assert!(fixed["error"].is_null(), "{fixed}");
    let s = restarted(&d, &mut guard, "web", web_pid);
    assert!(!s["message"].to_string().contains("web.toml"), "{s}");

    // Broken when a daemon starts: the stored program still runs on its last good spec.
    p.save("web.toml", "command = \"sleep 304\"\n[log\n");
    program_where(&d, "web", "broken again", |p| !p["error"].is_null());
    assert_eq!(d.terminate(), Some(0));
    let d = p.start();
    let s = running(&d, &mut guard, "web");
    assert!(s["message"].as_str().unwrap().contains("web.toml:2"), "{s}");
    let stored = programs(&d).remove("web").unwrap();
    assert_eq!(command_of(&stored), "sleep 303");
    assert!(!stored["error"].is_null());
    running(&d, &mut guard, "other");
}

/// Runs one reconcile pass and returns once it is done: every store write made before has been
/// acted on (the pass carries out whatever an earlier one had not yet).
fn settle(d: &TestDaemon) {
    api(d)
        .post::<Value>("/debug/reconcile", &[], None)
        .expect("POST /debug/reconcile");
}

/// What a daemon shows that a `diff` must not change: every pid and every generation.
fn fingerprint(d: &TestDaemon) -> (BTreeMap<String, Value>, BTreeMap<String, u64>) {
    let pids = statuses(d)
        .into_iter()
        .map(|(n, s)| (n, s["pid"].clone()))
        .collect();
    let gens = programs(d)
        .into_iter()
        .map(|(n, p)| (n, generation(&p)))
        .collect();
    (pids, gens)
}

fn step<'a>(plan: &'a Value, instance: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance"] == instance)
        .unwrap_or_else(|| panic!("a step for {instance}: {plan}"))
}

/// The one field change of a step: (field, old, new).
fn change(step: &Value) -> (String, Value, Value) {
    let changes = step["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{step}");
    let c = &changes[0];
    (
        c["field"].as_str().unwrap().to_string(),
        c["old"].clone(),
        c["new"].clone(),
    )
}

#[test]
fn diff_and_dry_run_show_the_plan_and_change_nothing() {
    let live = Project::new("");
    live.save("a.toml", "command = \"sleep 301\"\n");
    live.save("b.toml", "command = \"sleep 300\"\n");
    live.save("pool.toml", "command = \"sleep 300\"\ninstances = 2\n");
    live.save("gone.toml", "command = \"sleep 300\"\n");
    let d = live.start();
    let mut guard = GroupGuard::default();
    for n in ["a", "b", "pool-1", "pool-2", "gone"] {
        running(&d, &mut guard, n);
    }
    // The edited config, not yet where the daemon looks.
    let next = Project::new("");
    next.save("a.toml", "command = \"sleep 302\"\n");
    next.save("b.toml", "command = \"sleep 300\"\npriority = 5\n");
    next.save("pool.toml", "command = \"sleep 300\"\ninstances = 3\n");
    next.save("new.toml", "command = \"sleep 300\"\n");
    let next_cfg = next.cfg.to_str().unwrap();

    let before = fingerprint(&d);
    let (code, out, err) = d.cli(&["diff", "--config", next_cfg]);
    assert_eq!(code, 1, "changes exit 1: {out} {err}");
    let plan: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(plan["changes"], 5, "{plan}");
    let expect = [
        ("a", "restart", Some(("command", "sleep 301", "sleep 302"))),
        ("b", "update", None),
        ("pool-1", "unchanged", None),
        ("pool-2", "unchanged", None),
        ("pool-3", "start", None),
        ("new", "start", None),
        ("gone", "remove", None),
    ];
    for (instance, action, command) in expect {
        let s = step(&plan, instance);
        assert_eq!(s["action"], action, "{instance}: {s}");
        if let Some((field, old, new)) = command {
            assert_eq!(change(s), (field.to_string(), old.into(), new.into()));
        }
    }
    assert_eq!(
        change(step(&plan, "b")),
        ("priority".to_string(), 0.into(), 5.into())
    );
    assert_eq!(
        change(step(&plan, "pool-3")),
        ("instances".to_string(), 2.into(), 3.into())
    );
    let (code, table, _) = d.cli(&["diff", "--config", next_cfg, "-o", "table"]);
    assert_eq!(code, 1);
    for line in [
        "command: \"sleep 301\" → \"sleep 302\" (restart)",
        "priority: 0 → 5 (in place)",
        "instances: 2 → 3 (scale)",
        "program removed",
    ] {
        assert!(table.contains(line), "{line:?} in\n{table}");
    }
    // `start --dry-run` against the daemon: the plan, and nothing started.
    let (code, out, err) = d.cli(&["start", "--config", next_cfg, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert!(dry["against"].as_str().unwrap().contains(&d.url), "{dry}");
    assert_eq!(step(&dry, "new")["action"], "start");
    assert_eq!(
        fingerprint(&d),
        before,
        "diff and dry run changed the daemon"
    );
    assert!(!programs(&d).contains_key("new"));

    // Apply the edit where the daemon looks.
    let a_pid = pid(&statuses(&d)["a"]);
    for name in ["a.toml", "b.toml", "pool.toml", "new.toml"] {
        live.save(name, &std::fs::read_to_string(next.file(name)).unwrap());
    }
    std::fs::remove_file(live.file("gone.toml")).unwrap();
    restarted(&d, &mut guard, "a", a_pid);
    for n in ["pool-3", "new"] {
        running(&d, &mut guard, n);
    }
    program_where(&d, "b", "priority 5", |p| p["spec"]["priority"] == 5);
    wait_for(WAIT, "gone removed", || {
        (!statuses(&d).contains_key("gone")).then_some(())
    });
    settle(&d);
    let before = fingerprint(&d);
    let (code, out, err) = d.cli(&["diff", "--config", next_cfg]);
    assert_eq!(code, 0, "no change exits 0: {out} {err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["changes"], 0, "{plan}");
    let (code, table, _) = d.cli(&["diff", "--config", next_cfg, "-o", "table"]);
    assert_eq!(code, 0);
    assert!(table.contains("no changes"), "{table}");
    assert_eq!(fingerprint(&d), before, "diff changed the daemon");

    // An in-place change alone: once applied, the running instance carries the new spec too.
    next.save("b.toml", "command = \"sleep 300\"\npriority = 6\n");
    live.save("b.toml", "command = \"sleep 300\"\npriority = 6\n");
    program_where(&d, "b", "priority 6", |p| p["spec"]["priority"] == 6);
    settle(&d);
    let (code, out, err) = d.cli(&["diff", "--config", next_cfg]);
    assert_eq!(code, 0, "no change after an in-place update: {out} {err}");
    let before = fingerprint(&d);

    // An invalid config exits 2 and names the file; no daemon exits 3.
    next.save("bad.toml", "comand = \"sleep 1\"\n");
    let (code, _, err) = d.cli(&["diff", "--config", next_cfg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    std::fs::remove_file(next.file("bad.toml")).unwrap();
    let nobody = "http://127.0.0.1:1/api";
    let (code, _, err) = cli_with_url(nobody, &["diff", "--config", next_cfg]);
    assert_eq!(code, 3, "{err}");
    // A dry run needs no daemon: it plans against an empty state and says so.
    let (code, out, err) = cli_with_url(nobody, &["start", "--config", next_cfg, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let offline: Value = serde_json::from_str(&out).unwrap();
    assert!(
        offline["against"].as_str().unwrap().contains("empty state"),
        "{offline}"
    );
    assert_eq!(offline["changes"], 6, "{offline}");
    let (_, table, _) = cli_with_url(
        nobody,
        &["start", "--config", next_cfg, "--dry-run", "-o", "table"],
    );
    assert!(
        table.starts_with("plan computed against an empty state"),
        "{table}"
    );
    assert_eq!(fingerprint(&d), before);
}

/// A dry run is the loop's own plan: a restart the loop has not carried out yet (held back by a
/// priority level still coming up) shows in the dry run as the deferred restart the next passes
/// then make — not as "unchanged", which a plan built outside the loop, from desired state's
/// request counters, would show.
#[test]
fn a_dry_run_shows_a_held_back_restart_that_the_next_passes_carry_out() {
    let p = Project::new("");
    p.save("web.toml", "command = \"sleep 300\"\npriority = 10\n");
    let d = p.start();
    let mut guard = GroupGuard::default();
    let web = running(&d, &mut guard, "web");
    // A first level that keeps coming up for a while holds back every later level.
    p.save(
        "blocker.toml",
        "command = \"sleep 300\"\npriority = 0\nstart_duration = \"6s\"\n",
    );
    wait_for(WAIT, "blocker starting", || {
        (statuses(&d).get("blocker")?["state"] == "starting").then_some(())
    });
    let (code, _, err) = d.cli(&["restart", "--name", "web", "--wait", "0s"]);
    assert_eq!(code, 0, "{err}");
    let dry = api(&d)
        .post::<Value>("/reload", &[("dry_run", "true".to_string())], None)
        .unwrap();
    let web_step = step(&dry, "web");
    assert_eq!(web_step["action"], "restart", "{dry}");
    assert_eq!(web_step["deferred"], true, "{dry}");
    assert_eq!(statuses(&d)["web"]["pid"], web["pid"], "not yet restarted");
    // Once the first level is up, the passes do exactly that.
    restarted(&d, &mut guard, "web", pid(&web));
}
