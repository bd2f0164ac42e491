//! Observability against a real daemon: `/metrics`, `/events`, `logs -f`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::OpenMetricsValue;
use serde_json::Value;

use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

const BIN: &str = env!("CARGO_BIN_EXE_provisr");

fn scrape(d: &TestDaemon) -> String {
    let base = d.url.trim_end_matches("/api");
    let mut r = ureq::get(format!("{base}/metrics"))
        .call()
        .expect("GET /metrics");
    r.body_mut().read_to_string().unwrap()
}

/// The value of the sample of `family` whose `name` label is `instance`.
fn sample(text: &str, family: &str, instance: &str) -> Option<f64> {
    let exp = parse_openmetrics(text).unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
    let found = exp.families.get(family)?.iter_samples().find_map(|s| {
        let labels = s.get_labelset().ok()?;
        (labels.get_label_value("name") == Some(instance)).then(|| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!("{family}: {other:?}"),
        })
    });
    found
}

#[test]
fn metrics_parse_and_move_when_a_child_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        "programs_directory = \"programs\"\n[metrics]\nenabled = true\n",
    );
    write(
        &dir.path().join("programs/crashy.toml"),
        "command = \"sleep 300\"\nauto_restart = true\nrestart_interval = \"0s\"\n",
    );
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let s = wait_for(Duration::from_secs(10), "crashy running", || {
        let s = d.status("crashy");
        (s["state"] == "running").then_some(s)
    });
    let pid = s["pid"].as_i64().unwrap() as i32;
    guard.add(pid);
    let before = scrape(&d);
    assert_eq!(sample(&before, "provisr_instance_up", "crashy"), Some(1.0));
    let restarts_before = sample(&before, "provisr_restarts", "crashy").unwrap_or(0.0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = wait_for(Duration::from_secs(10), "the restart counted", || {
        let text = scrape(&d);
        // The counter (from the restart event) and the gauge (from the status) are read at
        // scrape time from two sources; wait until both show the restart.
        (sample(&text, "provisr_restarts", "crashy").unwrap_or(0.0) > restarts_before
            && sample(&text, "provisr_instance_restarts", "crashy") == Some(1.0))
        .then_some(text)
    });
    guard.add(d.status("crashy")["pid"].as_i64().unwrap() as i32);
    assert_eq!(
        sample(&after, "provisr_instance_restarts", "crashy"),
        Some(1.0)
    );
    assert!(after.contains("provisr_reconcile_passes"), "{after}");
}

#[test]
fn events_stream_delivers_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    std::fs::create_dir_all(dir.path().join("programs")).unwrap();
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let mut events = Command::new(BIN)
        .args(["events", "-o", "json"])
        .env("PROVISR_API_URL", &d.url)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let out = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The subscription is live once the first request got through; start until it sees one.
    let seen = wait_for(Duration::from_secs(20), "a transition of ev", || {
        let (code, _, _) = d.cli(&[
            "start",
            "--name",
            "ev",
            "--cmd",
            "sleep 300",
            "--config",
            "",
        ]);
        assert_eq!(code, 0);
        if let Ok(pid) = d.status("ev")["pid"].as_i64().ok_or(()) {
            guard.add(pid as i32);
        }
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let e: Value = serde_json::from_str(&line).unwrap();
            if e["name"] == "ev" && e["to"] == "running" {
                return Some(e);
            }
        }
        d.cli(&["stop", "--name", "ev"]);
        None
    });
    assert!(
        seen["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{seen}"
    );
    assert!(seen["time"].is_string());
    let _ = events.kill();
    let _ = events.wait();
}

#[test]
fn logs_follow_sees_new_lines_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    let go = dir.path().join("go");
    let out = dir.path().join("chatty.log");
    // 40 000 lines of ~40 bytes: 1.6 MiB, so the 1 MiB file rotates once while we follow. The
    // writer pauses every 2000 lines (80 KiB, well inside the 256 KiB memory tail a follower reads
    // from), so a follower that a loaded machine schedules late can still catch up; one that
    // falls further behind is told how many bytes it missed instead.
    write(
        &dir.path().join("programs/chatty.toml"),
        &format!(
            "command = \"sh -c 'echo ready; while [ ! -e {go} ]; do sleep 0.02; done; i=0; while [ $i -lt 40000 ]; do echo \\\"line $i xxxxxxxxxxxxxxxxxxxxxxxxx\\\"; i=$((i+1)); [ $((i % 2000)) -eq 0 ] && sleep 0.05; done; exec sleep 300'\"\n[log]\nstdout = \"{out}\"\nmax_size_mb = 1\nmax_backups = 2\n",
            go = go.display(),
            out = out.display()
        ),
    );
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mut guard = GroupGuard::default();
    let s = wait_for(Duration::from_secs(10), "chatty running", || {
        let s = d.status("chatty");
        (s["state"] == "running").then_some(s)
    });
    guard.add(s["pid"].as_i64().unwrap() as i32);
    let mut follower = Command::new(BIN)
        .args(["logs", "chatty", "-f", "-n", "1"])
        .env("PROVISR_API_URL", &d.url)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The backlog line says the follower is connected; only then does the output start.
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the backlog line");
    assert_eq!(first, "ready");
    std::fs::write(&go, "").unwrap();
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lines.len() < 40_000 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(lines.len(), 40_000, "the follower missed lines");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("line {i} ")), "line {i} is {l:?}");
    }
    assert!(
        dir.path().join("chatty.log.1").exists(),
        "the log did not rotate while we followed"
    );
}
