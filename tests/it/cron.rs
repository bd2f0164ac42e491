//! Cron jobs against a real daemon (`docs/configuration.md`, "Cron jobs"): schedules, trigger,
//! suspend and resume, concurrency, history with its log files, timeouts and retries, and what a
//! daemon killed or stopped in between does with runs (`docs/reliability.md`, "Cron jobs").

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

const WAIT: Duration = Duration::from_secs(40);

fn setup(dir: &Path, metrics: bool, programs: &[(&str, String)]) -> std::path::PathBuf {
    let cfg = dir.join("cfg.toml");
    let metrics = if metrics {
        "[metrics]\nenabled = true\n"
    } else {
        ""
    };
    write(
        &cfg,
        &format!("programs_directory = \"programs\"\n{metrics}"),
    );
    std::fs::create_dir_all(dir.join("programs")).unwrap();
    for (file, text) in programs {
        write(&dir.join("programs").join(file), text);
    }
    cfg
}

fn start(dir: &Path, cfg: &Path) -> TestDaemon {
    TestDaemon::start(dir, Some(cfg), &dir.join("state"))
}

fn history(d: &TestDaemon, job: &str) -> Vec<Value> {
    let (code, out, err) = d.cli(&["cron", "history", job, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn job(d: &TestDaemon, name: &str) -> Value {
    let (code, out, err) = d.cli(&["cron", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    list.into_iter().find(|j| j["name"] == name).unwrap()
}

fn time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(v.as_str().unwrap_or_else(|| panic!("a time: {v}"))).unwrap()
}

fn finished(runs: &[Value]) -> Vec<&Value> {
    runs.iter().filter(|r| r["result"] != "running").collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn a_job_every_2s_runs_every_2s_and_its_history_keeps_history_limit_runs_with_their_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job_text =
        "schedule = \"@every 2s\"\ncommand = \"echo run of $PROVISR_NAME\"\nhistory_limit = 3\n";
    let cfg = setup(d, false, &[("tick.toml", job_text.to_string())]);
    let daemon = start(d, &cfg);
    let status = daemon.status("tick");
    assert!(status["next_schedule_time"].is_string(), "{status}");
    assert_eq!(status["last_result"], Value::Null);
    let runs = wait_for(WAIT, "5 runs", || {
        let h = history(&daemon, "tick");
        (h.first()?["id"].as_u64()? >= 5 && h[0]["result"] != "running").then_some(h)
    });
    // The newest first; at most history_limit finished runs are kept.
    let done = finished(&runs);
    assert_eq!(done.len(), 3, "{runs:?}");
    let ids: Vec<u64> = done.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1] + 1), "{ids:?}");
    for r in &done {
        assert_eq!(r["result"], "succeeded", "{r}");
        assert_eq!(r["cause"], "schedule");
        assert_eq!(r["exit_code"], 0);
        // Runs every 2 s: the scheduled times are 2 s apart and each started on its time.
        let (scheduled, started) = (time(&r["scheduled_for"]), time(&r["started_at"]));
        let late = started.duration_since(scheduled).unwrap();
        assert!(late < Duration::from_secs(2), "started {late:?} late: {r}");
        let out = r["log"]["stdout"].as_str().unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "run of tick\n");
    }
    let spacing: Vec<Duration> = done
        .windows(2)
        .map(|w| {
            time(&w[0]["scheduled_for"])
                .duration_since(time(&w[1]["scheduled_for"]))
                .unwrap()
        })
        .collect();
    assert!(
        spacing.iter().all(|s| *s == Duration::from_secs(2)),
        "{spacing:?}"
    );
    // The runs the history dropped took their log files with them.
    let kept: Vec<&str> = done
        .iter()
        .map(|r| r["log"]["stdout"].as_str().unwrap())
        .collect();
    let cron_dir = Path::new(kept[0]).parent().unwrap();
    let first = cron_dir.join("1.stdout.log");
    assert!(
        !first.exists(),
        "run 1's log is gone once the history dropped it"
    );
    let status = daemon.status("tick");
    assert_eq!(status["last_result"], "succeeded");
    assert!(status["last_schedule_time"].is_string());
}

#[test]
fn trigger_runs_at_once_and_suspend_stops_new_scheduled_runs_until_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marks = d.join("marks");
    let job_text = format!(
        "schedule = \"@every 1s\"\ncommand = \"echo x >> {}; sleep 2.5\"\nconcurrency = \"allow\"\ninstances = 3\n",
        marks.display()
    );
    let hourly = "schedule = \"@hourly\"\ncommand = \"echo triggered\"\n".to_string();
    let cfg = setup(
        d,
        false,
        &[("beat.toml", job_text), ("hourly.toml", hourly)],
    );
    let daemon = start(d, &cfg);
    let mut guard = GroupGuard::default();

    // An hourly job runs now when triggered, once.
    let (code, out, err) = daemon.cli(&["cron", "trigger", "hourly", "-o", "json"]);
    assert_eq!(code, 0, "{out} {err}");
    let run: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["run"]["cause"], "trigger");
    let h = wait_for(WAIT, "the triggered run done", || {
        let h = history(&daemon, "hourly");
        (h.len() == 1 && h[0]["result"] == "succeeded").then_some(h)
    });
    assert_eq!(h[0]["scheduled_for"], Value::Null);
    assert_eq!(daemon.status("hourly")["last_result"], "succeeded");

    // Suspended: no more scheduled runs, but a trigger still runs it.
    wait_for(WAIT, "a first scheduled run", || {
        (history(&daemon, "beat").len() >= 2).then_some(())
    });
    let (code, out, err) = daemon.cli(&["cron", "suspend", "beat", "-o", "json"]);
    assert_eq!(code, 0, "{out} {err}");
    let suspended: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(suspended["suspended"], true);
    assert_eq!(suspended["next_schedule_time"], Value::Null);
    let before = history(&daemon, "beat")[0]["id"].as_u64().unwrap();
    let (code, out, _) = daemon.cli(&["cron", "trigger", "beat", "-o", "json"]);
    assert_eq!(code, 0);
    let triggered: Value = serde_json::from_str(&out).unwrap();
    let id = triggered["run"]["id"].as_u64().unwrap();
    assert_eq!(id, before + 1);
    // The triggered run lasts 2.5 s, two and more scheduled times: none of them ran.
    let h = wait_for(WAIT, "the triggered run done", || {
        let h = history(&daemon, "beat");
        let t = h.iter().find(|r| r["id"] == id)?;
        (t["result"] == "succeeded").then_some(h)
    });
    assert_eq!(
        h[0]["id"].as_u64().unwrap(),
        id,
        "no scheduled run while suspended: {h:?}"
    );
    for s in daemon.all_status() {
        if let Some(pid) = s["pid"].as_i64() {
            guard.add(pid as i32);
        }
    }
    // Resumed: scheduled runs again, from the next time on.
    let (code, _, err) = daemon.cli(&["cron", "resume", "beat"]);
    assert_eq!(code, 0, "{err}");
    wait_for(WAIT, "a scheduled run after resume", || {
        let h = history(&daemon, "beat");
        (h[0]["id"].as_u64()? > id && h[0]["cause"] == "schedule").then_some(())
    });
    assert_eq!(job(&daemon, "beat")["suspended"], false);
    // Unknown jobs are 404 with a sentence, exit code 1.
    let (code, _, err) = daemon.cli(&["cron", "trigger", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no cron job is named \"nope\""), "{err}");
}

#[test]
fn forbid_skips_a_run_while_the_previous_one_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let release = d.join("release");
    // Each run lasts until the test releases it.
    let job_text = format!(
        "schedule = \"@every 1s\"\ncommand = \"while [ ! -f {0} ]; do sleep 0.05; done; rm -f {0}\"\n",
        release.display()
    );
    let cfg = setup(d, true, &[("slow.toml", job_text)]);
    let daemon = start(d, &cfg);
    let mut guard = GroupGuard::default();
    let first = wait_for(WAIT, "run 1 under way", || {
        let h = history(&daemon, "slow");
        let r = h.last()?;
        (r["id"] == 1 && r["started_at"].is_string()).then(|| r.clone())
    });
    if let Some(pid) = daemon.status("slow")["pid"].as_i64() {
        guard.add(pid as i32);
    }
    // A trigger while it lasts is refused, saying why (409, exit 1).
    let (code, _, err) = daemon.cli(&["cron", "trigger", "slow"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("run 1 (slow) still under way (concurrency = \"forbid\")"),
        "{err}"
    );
    // Two scheduled times pass while it lasts: both skipped, counted, not run.
    let scheduled = time(&first["scheduled_for"]);
    wait_for(WAIT, "two more scheduled times", || {
        let last = time(&job(&daemon, "slow")["last_schedule_time"]);
        (last >= scheduled + Duration::from_secs(2)).then_some(())
    });
    assert_eq!(
        history(&daemon, "slow").len(),
        1,
        "nothing ran beside run 1"
    );
    let base = daemon.url.trim_end_matches("/api").to_string();
    let text = ureq::get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let skipped = text
        .lines()
        .find(|l| l.starts_with("provisr_cron_runs_total{") && l.contains("result=\"skipped\""))
        .unwrap_or_else(|| panic!("no skipped runs in\n{text}"));
    assert!(skipped.contains("job=\"slow\""), "{skipped}");
    let count: f64 = skipped.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{skipped}");
    // Released, run 1 ends; the next run starts at a later scheduled time.
    std::fs::write(&release, "").unwrap();
    let h = wait_for(WAIT, "run 2 under way", || {
        let h = history(&daemon, "slow");
        (h.len() == 2 && h[0]["started_at"].is_string()).then_some(h)
    });
    std::fs::write(&release, "").unwrap();
    let (second, first) = (&h[0], &h[1]);
    assert_eq!(first["result"], "succeeded");
    assert!(time(&second["started_at"]) >= time(&first["finished_at"]));
    assert!(time(&second["scheduled_for"]) >= scheduled + Duration::from_secs(3));
    wait_for(WAIT, "run 2 done", || {
        (history(&daemon, "slow")[0]["result"] == "succeeded").then_some(())
    });
}

#[test]
fn a_run_over_its_timeout_is_stopped_and_a_failed_run_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tries = d.join("tries");
    let slow = "schedule = \"@hourly\"\ncommand = \"sleep 300\"\ntimeout = \"500ms\"\n".to_string();
    let flaky = format!(
        "schedule = \"@hourly\"\ncommand = \"echo try >> {}; exit 7\"\nretries = 2\nretry_interval = \"100ms\"\nretry_count = 0\n",
        tries.display()
    );
    let cfg = setup(d, false, &[("slow.toml", slow), ("flaky.toml", flaky)]);
    let daemon = start(d, &cfg);
    let mut guard = GroupGuard::default();
    for job in ["slow", "flaky"] {
        let (code, _, err) = daemon.cli(&["cron", "trigger", job]);
        assert_eq!(code, 0, "{err}");
    }
    let pid = wait_for(WAIT, "slow running", || {
        daemon.status("slow")["pid"].as_i64()
    });
    guard.add(pid as i32);
    let h = wait_for(WAIT, "slow timed out", || {
        let h = history(&daemon, "slow");
        (h[0]["result"] == "timeout").then_some(h)
    });
    assert!(!crate::util::alive(pid as i32), "the run's process is gone");
    assert_eq!(h[0]["exit_signal"], 15);
    let h = wait_for(WAIT, "flaky failed for good", || {
        let h = history(&daemon, "flaky");
        (h[0]["result"] == "failed").then_some(h)
    });
    assert_eq!(h.len(), 1, "one run, tried three times: {h:?}");
    assert_eq!(h[0]["attempts"], 3);
    assert_eq!(h[0]["exit_code"], 7);
    assert_eq!(lines(&tries), 3);
    assert_eq!(daemon.status("flaky")["last_result"], "failed");
}

#[test]
fn a_cron_run_never_runs_twice_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marks = d.join("marks");
    let job_text = format!(
        "schedule = \"@every 1s\"\ncommand = \"echo run >> {}; sleep 1.5\"\n",
        marks.display()
    );
    let cfg = setup(d, false, &[("beat.toml", job_text)]);
    let daemon = start(d, &cfg);
    let mut guard = GroupGuard::default();
    // Killed while a run is under way.
    let pid = wait_for(WAIT, "a run under way", || {
        let s = daemon.status("beat");
        (s["state"] == "running")
            .then(|| s["pid"].as_i64())
            .flatten()
    });
    guard.add(pid as i32);
    daemon.kill9();
    let daemon = start(d, &cfg);
    let h = wait_for(WAIT, "three more runs", || {
        let h = history(&daemon, "beat");
        (h[0]["id"].as_u64()? >= 4 && h[0]["result"] != "running").then_some(h)
    });
    for s in daemon.all_status() {
        if let Some(pid) = s["pid"].as_i64() {
            guard.add(pid as i32);
        }
    }
    let runs = h[0]["id"].as_u64().unwrap() as usize;
    // Every run id ran exactly once: as many lines as runs, none twice.
    assert_eq!(lines(&marks), runs, "{h:?}");
    let ids: Vec<u64> = h.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique);
}

/// Waits until the wall clock has passed `t`: how a test lets scheduled times go by.
fn wait_until(t: SystemTime) {
    wait_for(WAIT, "the time to come", || {
        (SystemTime::now() > t).then_some(())
    });
}

#[test]
fn runs_missed_while_no_daemon_ran_run_once_within_starting_deadline_and_never_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let with = "schedule = \"@every 1s\"\ncommand = \"true\"\nstarting_deadline = \"1h\"\n";
    let without = "schedule = \"@every 1s\"\ncommand = \"true\"\n";
    let cfg = setup(
        d,
        false,
        &[
            ("caught.toml", with.to_string()),
            ("lost.toml", without.to_string()),
        ],
    );
    let daemon = start(d, &cfg);
    for job in ["caught", "lost"] {
        wait_for(WAIT, "a first run", || {
            (!finished(&history(&daemon, job)).is_empty()).then_some(())
        });
    }
    assert_eq!(daemon.terminate(), Some(0));
    // No daemon runs for several scheduled times.
    let stopped = SystemTime::now();
    wait_until(stopped + Duration::from_millis(3500));
    // Each job's runs so far and the last time it was scheduled for: `@every` times follow
    // on from it, one second apart.
    let before: Vec<(u64, SystemTime)> = ["caught", "lost"]
        .iter()
        .map(|job| {
            let store = provisr::store::DesiredStore::open(&d.join("state")).unwrap();
            let cron = store.get_program(job).unwrap().unwrap().cron.unwrap();
            (cron.runs, cron.last_schedule_time.unwrap())
        })
        .collect();
    let restarted = SystemTime::now();
    let daemon = start(d, &cfg);
    let after = |job: &str, last: u64| -> Vec<Value> {
        wait_for(WAIT, "two runs after the restart", || {
            let h = history(&daemon, job);
            let new: Vec<Value> = h
                .into_iter()
                .filter(|r| r["id"].as_u64().is_some_and(|id| id > last))
                .collect();
            (new.len() >= 2 && new.iter().all(|r| r["result"] == "succeeded")).then_some(new)
        })
    };
    // With a starting deadline: the missed times run once, at start up, no more. What was
    // missed is what fell due before the daemon's first pass, which comes a moment after
    // `restarted`: a time may fall due in between, and is missed too.
    let mut caught = after("caught", before[0].0);
    caught.sort_by_key(|r| r["id"].as_u64());
    let (first, second) = (&caught[0], &caught[1]);
    let due = time(&first["scheduled_for"]);
    let ms = |from: SystemTime, to: SystemTime| {
        to.duration_since(from).map_or(-1, |d| d.as_millis() as i64)
    };
    let since_last = ms(before[0].1, due);
    // Down 3.5 s: at least three times were missed, and the one run is the latest of them...
    assert!(since_last >= 2998, "{since_last} ms: {caught:?}");
    assert!(
        since_last % 1000 <= 2 || since_last % 1000 >= 998,
        "a time of the schedule: {since_last} ms"
    );
    assert!(
        due <= time(&first["started_at"]),
        "run late, at start-up: {caught:?}"
    );
    assert!(
        ms(restarted, due + Duration::from_secs(1)) > 0,
        "none later was left out: {caught:?}"
    );
    // ...and the schedule goes on from it.
    let next = ms(due, time(&second["scheduled_for"]));
    assert!((998..=1002).contains(&next), "{next} ms: {caught:?}");
    // Without one: none of the missed times runs.
    let lost = after("lost", before[1].0);
    assert!(
        lost.iter().all(|r| time(&r["scheduled_for"]) >= restarted),
        "{lost:?}"
    );
}

#[test]
fn replace_stops_the_run_under_way_and_allow_runs_beside_it_in_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let release = d.join("release");
    let wait = format!("while [ ! -f {} ]; do sleep 0.05; done", release.display());
    let replace = format!(
        "schedule = \"@every 1s\"\ncommand = \"{wait}\"\nconcurrency = \"replace\"\nstop_timeout = \"2s\"\n"
    );
    let allow = format!(
        "schedule = \"@every 1s\"\ncommand = \"{wait}\"\nconcurrency = \"allow\"\ninstances = 2\n"
    );
    let cfg = setup(d, false, &[("rep.toml", replace), ("par.toml", allow)]);
    let daemon = start(d, &cfg);
    let mut guard = GroupGuard::default();
    // replace: each new time stops the run under way; only one process at a time.
    let h = wait_for(WAIT, "two runs replaced", || {
        let h = history(&daemon, "rep");
        (h.iter().filter(|r| r["result"] == "replaced").count() >= 2).then_some(h)
    });
    assert_eq!(
        h.iter().filter(|r| r["result"] == "running").count(),
        1,
        "{h:?}"
    );
    if let Some(pid) = daemon.status("rep")["pid"].as_i64() {
        guard.add(pid as i32);
    }
    // allow: the second run beside the first, in job-2; the third has no free instance.
    let h = wait_for(WAIT, "both instances busy", || {
        let h = history(&daemon, "par");
        let running: Vec<&str> = h
            .iter()
            .filter(|r| r["result"] == "running" && r["started_at"].is_string())
            .filter_map(|r| r["instance"].as_str())
            .collect();
        (running.len() == 2).then_some(h)
    });
    let mut instances: Vec<&str> = h.iter().filter_map(|r| r["instance"].as_str()).collect();
    instances.sort_unstable();
    assert_eq!(instances, ["par-1", "par-2"], "{h:?}");
    for name in ["par-1", "par-2"] {
        let s = daemon.status(name);
        assert_eq!(s["state"], "running");
        if let Some(pid) = s["pid"].as_i64() {
            guard.add(pid as i32);
        }
    }
    let last = time(&job(&daemon, "par")["last_schedule_time"]);
    wait_for(WAIT, "a later time", || {
        (time(&job(&daemon, "par")["last_schedule_time"]) > last).then_some(())
    });
    assert_eq!(
        history(&daemon, "par").len(),
        2,
        "no third run: both instances were busy"
    );
    std::fs::write(&release, "").unwrap();
    wait_for(WAIT, "the runs done", || {
        let h = history(&daemon, "par");
        h.iter()
            .filter(|r| r["id"].as_u64() <= Some(2))
            .all(|r| r["result"] == "succeeded")
            .then_some(())
    });
}
