//! Scenario `escapees`: programs that try to outlive their stop.
//!
//! Each round runs one program of every kind below, waits until all their processes run, then
//! ends them one way — `stop` through the API, removal (the file deleted), or the daemon's own
//! shutdown (SIGTERM), in turn — and checks in `/proc` (by tag, which survives `setsid` and
//! re-parenting) that no process of theirs is alive `stop_timeout` + 1 s later. Survivors are
//! then killed by the harness so the next round starts clean.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use crate::harness::{poll, Daemon, Project, Report};
use crate::Ctx;

/// A kind of escapee: its command, how many of its processes run once it is up (`None`: its
/// leader exits at once, leaving only what escaped) and how many of them lead a session of
/// their own by then (`setsid`: out of reach of any process-group signal).
struct Kind {
    name: &'static str,
    command: &'static str,
    processes: Option<usize>,
    escaped: usize,
}

/// Waits in the shell until process `$p` leads its own session (field 6 of its stat is its
/// pid), so the program is counted as up only once its escapee has escaped.
macro_rules! until_escaped {
    () => {
        "until [ \"$(cut -d' ' -f6 /proc/$p/stat)\" = \"$p\" ]; do sleep 0.01; done"
    };
}

const KINDS: &[Kind] = &[
    Kind {
        name: "ignores-term",
        command: "trap '' TERM; exec sleep 3600",
        processes: Some(1),
        escaped: 0,
    },
    Kind {
        name: "grandchild-ignores-term",
        command: "(trap '' TERM; exec sleep 3600) & exec sleep 3600",
        processes: Some(2),
        escaped: 0,
    },
    Kind {
        name: "double-fork",
        command: "(sleep 3600 &); exec sleep 3600",
        processes: Some(2),
        escaped: 0,
    },
    Kind {
        name: "setsid",
        command: "setsid sleep 3600 & exec sleep 3600",
        processes: Some(2),
        escaped: 1,
    },
    Kind {
        name: "setsid-double-fork-ignores-term",
        command: "setsid sh -c 'trap \"\" TERM; (sleep 3600 &); exec sleep 3600' & exec sleep 3600",
        processes: Some(3),
        escaped: 1,
    },
    Kind {
        name: "daemonizes",
        command: concat!("setsid sleep 3600 & p=$!; ", until_escaped!()),
        processes: None,
        escaped: 0,
    },
];

#[derive(Clone, Copy, Debug)]
enum StopBy {
    Api,
    Removal,
    Shutdown,
}

pub fn run(ctx: &Ctx, rounds: usize, stop_timeout: Duration) -> Result<Report> {
    let mut report = Report::new("escapees: nothing outlives its stop");
    let project = Project::new("escapees")?;
    let limit = stop_timeout + Duration::from_secs(1);
    let mut survivors_by_kind = vec![0usize; KINDS.len()];
    let mut stops = 0usize;
    let mut slowest: Vec<Option<Duration>> = vec![None; KINDS.len()];
    let mut daemon = Some(Daemon::start(&ctx.bin, &project)?);
    for round in 0..rounds {
        let by = [StopBy::Api, StopBy::Removal, StopBy::Shutdown][round % 3];
        for kind in KINDS {
            let file = project.programs.join(format!("{}.json", kind.name));
            let spec = json!({
                "command": kind.command,
                "stop_timeout": format!("{}ms", stop_timeout.as_millis()),
            });
            fs::write(&file, spec.to_string())?;
        }
        // The daemon picks the files up (a new daemon after a shutdown reads them at start).
        let all_up = poll(Duration::from_secs(30), || {
            let procs = project.tagged();
            let status = d_status(daemon.as_ref()?)?;
            KINDS
                .iter()
                .all(|k| {
                    let mine: Vec<_> = procs.iter().filter(|p| p.name == k.name).collect();
                    let escaped = mine.iter().filter(|p| p.sid == p.pid).count();
                    match k.processes {
                        Some(n) => mine.len() == n && escaped == k.escaped,
                        // The leader is done; whether its escapee still runs is for the check.
                        None => status.get(k.name).is_some_and(|s| s == "exited"),
                    }
                })
                .then_some(())
        });
        if all_up.is_none() {
            return Err(anyhow!(
                "round {round}: the escapees did not all start within 30 s; running: {:?}",
                project
                    .tagged()
                    .iter()
                    .map(|p| (p.name.clone(), p.cmdline.join(" ")))
                    .collect::<Vec<_>>()
            ));
        }
        let d = daemon.take().ok_or_else(|| anyhow!("no daemon runs"))?;
        let t0 = Instant::now();
        let (kept, shutdown) = match by {
            StopBy::Api => {
                let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
                d.api.post::<Value>(
                    "/stop",
                    &[("name", names.join(",")), ("wait", "0s".into())],
                    None,
                )?;
                (Some(d), None)
            }
            StopBy::Removal => {
                for kind in KINDS {
                    fs::remove_file(project.programs.join(format!("{}.json", kind.name)))?;
                }
                (Some(d), None)
            }
            // In a thread: the daemon exits only once every stop is complete.
            StopBy::Shutdown => (
                None,
                Some(std::thread::spawn(move || {
                    d.terminate(Duration::from_secs(60))
                })),
            ),
        };
        // Each kind's time from the stop until nothing of it is alive, if within the limit.
        let mut gone_after: Vec<Option<Duration>> = vec![None; KINDS.len()];
        poll(limit, || {
            let procs = project.tagged();
            for (i, k) in KINDS.iter().enumerate() {
                if gone_after[i].is_none() && procs.iter().all(|p| p.name != k.name) {
                    gone_after[i] = Some(t0.elapsed());
                }
            }
            gone_after.iter().all(Option::is_some).then_some(())
        });
        stops += KINDS.len();
        let procs = project.tagged();
        for (i, kind) in KINDS.iter().enumerate() {
            match gone_after[i] {
                Some(t) => slowest[i] = Some(slowest[i].map_or(t, |s| s.max(t))),
                None => {
                    let left: Vec<String> = procs
                        .iter()
                        .filter(|p| p.name == kind.name)
                        .map(|p| format!("pid {} `{}`", p.pid, p.cmdline.join(" ")))
                        .collect();
                    survivors_by_kind[i] += left.len();
                    report.violation(format!(
                        "round {round} ({by:?}): {} left {} alive {limit:?} after the stop: {}",
                        kind.name,
                        left.len(),
                        left.join(", ")
                    ));
                }
            }
        }
        project_kill_all(&project);
        daemon = Some(match (kept, shutdown) {
            (_, Some(t)) => {
                let status = t
                    .join()
                    .map_err(|_| anyhow!("the shutdown thread panicked"))?;
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => report.violation(format!("round {round}: the daemon exited with {s}")),
                    Err(e) => report.violation(format!("round {round}: {e:#}")),
                }
                // The next round runs on a new daemon; with the files still there it would
                // start them at once, so they are removed first and written again.
                for kind in KINDS {
                    fs::remove_file(project.programs.join(format!("{}.json", kind.name)))?;
                }
                Daemon::start(&ctx.bin, &project)?
            }
            (Some(d), None) => {
                if matches!(by, StopBy::Api) {
                    // Removal clears the stop for the next round.
                    for kind in KINDS {
                        fs::remove_file(project.programs.join(format!("{}.json", kind.name)))?;
                    }
                    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
                    poll(Duration::from_secs(10), || {
                        let programs = d.api.get("/programs", &[]).ok()?;
                        programs
                            .as_array()?
                            .iter()
                            .all(|p| !names.contains(&p["name"].as_str().unwrap_or_default()))
                            .then_some(())
                    })
                    .ok_or_else(|| anyhow!("round {round}: the removed files stayed programs"))?;
                }
                d
            }
            (None, None) => return Err(anyhow!("no daemon runs")),
        });
    }
    let d = daemon.ok_or_else(|| anyhow!("no daemon runs"))?;
    let status = d.terminate(Duration::from_secs(60))?;
    if !status.success() {
        report.violation(format!("the last daemon exited with {status}"));
    }

    report.figure("rounds (stop by API, removal, shutdown in turn)", rounds);
    report.figure("programs stopped", stops);
    report.figure("stop_timeout", format!("{stop_timeout:?}"));
    for (kind, slowest) in KINDS.iter().zip(&slowest) {
        report.figure(
            &format!("{}: slowest stop to nothing alive", kind.name),
            slowest.map_or("never".into(), |s| {
                format!("{:.0} ms", s.as_secs_f64() * 1e3)
            }),
        );
    }
    for (kind, survivors) in KINDS.iter().zip(survivors_by_kind) {
        report.invariant(
            &format!("{}: processes alive after stop_timeout + 1 s", kind.name),
            survivors,
        );
    }
    Ok(report)
}

/// Instance name → state, from `/status`.
fn d_status(d: &Daemon) -> Option<std::collections::BTreeMap<String, String>> {
    let all = d.api.get("/status", &[]).ok()?;
    Some(
        all.as_array()?
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.into(), s["state"].as_str()?.into())))
            .collect(),
    )
}

fn project_kill_all(project: &Project) {
    crate::procs::kill_tagged(&project.state_dir);
}
