//! Scenario `storm`: `kill -9` at random instances of many auto-restarting programs, thousands
//! of times.
//!
//! Programs run `sleep` with `auto_restart = true` and `restart_interval = "0s"`. Each round
//! picks a random set of instances, kills the process each runs (found in `/proc` by its tag,
//! signalled through a pidfd opened after checking its start time, so a recycled pid is never
//! hit) and waits for every one of them to be replaced. Invariants: every kill is followed by
//! exactly one replacement (never two processes of one instance), each instance's `restarts`
//! equals the kills it took, the daemon has no zombie children once the storm is over, and
//! after `stop` no process of any of them is left.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::Value;

use crate::harness::{poll, Daemon, Project, Report};
use crate::{procs, Ctx};

const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a killed instance may take to be replaced before it counts as not restarted.
const REPLACE_PATIENCE: Duration = Duration::from_secs(5);
/// Most instances killed in one round.
const MAX_BATCH: usize = 50;

fn name_of(i: usize) -> String {
    format!("s{i:04}")
}

/// One live process per instance name, and the names that run more than once.
///
/// A scan reads `/proc` one pid after another over some milliseconds, so a killed process read
/// just before it died and its replacement read just after it started both appear: a name
/// counts as doubled only if, after the scan, its processes are all still alive (same start
/// time, not a zombie).
fn scan(project: &Project) -> (BTreeMap<String, (i32, u64)>, Vec<String>) {
    let mut current = BTreeMap::new();
    let mut all: BTreeMap<String, Vec<procs::Proc>> = BTreeMap::new();
    for p in project.tagged() {
        // The newest is the one that counts, should a dying one be read too.
        let newest = current
            .get(&p.name)
            .is_none_or(|&(_, start): &(i32, u64)| p.start_time >= start);
        if newest {
            current.insert(p.name.clone(), (p.pid, p.start_time));
        }
        all.entry(p.name.clone()).or_default().push(p);
    }
    let still_alive = |p: &procs::Proc| {
        procs::stat(p.pid).is_some_and(|s| s.start_time == p.start_time && s.state != 'Z')
    };
    let doubled = all
        .into_iter()
        .filter(|(_, ps)| ps.len() > 1 && ps.iter().all(still_alive))
        .map(|(name, ps)| {
            let ps: Vec<String> = ps
                .iter()
                .map(|p| {
                    let parent = procs::stat(p.pid).map_or(0, |s| s.ppid);
                    format!("pid {} (parent {parent}) `{}`", p.pid, p.cmdline.join(" "))
                })
                .collect();
            format!("{name}: {}", ps.join(", "))
        })
        .collect();
    (current, doubled)
}

pub fn run(ctx: &Ctx, programs: usize, kills: usize) -> Result<Report> {
    let mut report = Report::new("storm: kill -9 at random instances");
    let project = Project::new("storm")?;
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ 0x5707);
    let names: Vec<String> = (0..programs).map(name_of).collect();
    for name in &names {
        fs::write(
            project.programs.join(format!("{name}.toml")),
            format!(
                "command = \"sleep 3600\"\nauto_restart = true\nrestart_interval = \"0s\"\nstop_timeout = \"{}s\"\n",
                STOP_TIMEOUT.as_secs()
            ),
        )?;
    }
    let d = Daemon::start(&ctx.bin, &project)?;
    let mut current = poll(Duration::from_secs(120), || {
        let (current, doubled) = scan(&project);
        (current.len() == programs && doubled.is_empty()).then_some(current)
    })
    .ok_or_else(|| anyhow!("the {programs} programs did not all start within 120 s"))?;

    let mut kills_of: BTreeMap<String, u64> = BTreeMap::new();
    let (mut done, mut vanished, mut not_replaced, mut duplicates) = (0usize, 0, 0, 0);
    let mut latencies: Vec<Duration> = Vec::with_capacity(kills);
    let started = Instant::now();
    while done < kills {
        let mut pool: Vec<&String> = current.keys().collect();
        if pool.is_empty() {
            report.violation("no instance is left running to kill".into());
            break;
        }
        rng.shuffle(&mut pool);
        let batch = rng.usize(1..=MAX_BATCH.min(kills - done).min(pool.len()));
        let mut killed: Vec<(String, (i32, u64), Instant)> = Vec::with_capacity(batch);
        for name in pool.into_iter().take(batch) {
            let (pid, start) = current[name];
            if procs::kill(pid, start) {
                *kills_of.entry(name.clone()).or_default() += 1;
                killed.push((name.clone(), (pid, start), Instant::now()));
            } else {
                // Nothing else kills these processes: gone on its own is a finding too.
                vanished += 1;
                report.violation(format!("{name}: pid {pid} was gone before it was killed"));
            }
        }
        done += killed.len();
        let mut waiting: Vec<(String, (i32, u64), Instant)> = killed;
        let deadline = Instant::now() + REPLACE_PATIENCE;
        loop {
            let (now, doubled) = scan(&project);
            let seen = Instant::now();
            waiting.retain(|(name, old, at)| match now.get(name) {
                Some(new) if new != old => {
                    latencies.push(seen - *at);
                    current.insert(name.clone(), *new);
                    false
                }
                _ => true,
            });
            if waiting.is_empty() || seen >= deadline {
                for found in doubled {
                    duplicates += 1;
                    report.violation(format!("running twice after a kill: {found}"));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for (name, (pid, _), _) in waiting {
            not_replaced += 1;
            report.violation(format!(
                "{name}: killed (pid {pid}) and not replaced within {REPLACE_PATIENCE:?}"
            ));
            current.remove(&name);
        }
        if report.violations.len() >= ctx.max_violations {
            report.violation(format!("stopped after {done} of {kills} kills"));
            break;
        }
    }
    let storm_took = started.elapsed();

    // `restarts` counts every kill, exactly.
    let mut wrong_counts = Vec::new();
    poll(Duration::from_secs(10), || {
        let all = d.api.get("/status", &[]).ok()?;
        wrong_counts = all
            .as_array()?
            .iter()
            .filter_map(|s: &Value| {
                let name = s["name"].as_str()?;
                let restarts = s["restarts"].as_u64()?;
                let kills = kills_of.get(name).copied().unwrap_or(0);
                (restarts != kills || s["state"] != "running")
                    .then(|| format!("{name}: {kills} kills, restarts {restarts}, {}", s["state"]))
            })
            .collect();
        wrong_counts.is_empty().then_some(())
    });
    for w in &wrong_counts {
        report.violation(format!("restarts miscounted: {w}"));
    }
    let zombies = poll(Duration::from_secs(2), || {
        procs::zombie_children(d.pid).is_empty().then_some(())
    })
    .map_or_else(|| procs::zombie_children(d.pid).len(), |()| 0);
    if zombies > 0 {
        report.violation(format!(
            "{zombies} zombie children of the daemon after the storm"
        ));
    }

    // Stop them all: nothing may be left within stop_timeout + 1 s.
    let t0 = Instant::now();
    d.api.post::<Value>(
        "/stop",
        &[("name", "*".into()), ("wait", "0s".into())],
        None,
    )?;
    let limit = STOP_TIMEOUT + Duration::from_secs(1);
    let left = poll(limit.saturating_sub(t0.elapsed()), || {
        project.tagged().is_empty().then_some(())
    })
    .map_or_else(|| project.tagged().len(), |()| 0);
    if left > 0 {
        report.violation(format!("{left} processes still alive {limit:?} after stop"));
    }
    let status = d.terminate(Duration::from_secs(60))?;
    if !status.success() {
        report.violation(format!("the daemon exited with {status} on SIGTERM"));
    }

    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or("-".to_string(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            })
    };
    report.figure("programs (auto_restart, restart_interval 0s)", programs);
    report.figure("kill -9s", done);
    report.figure(
        "kills per second",
        format!("{:.0}", done as f64 / storm_took.as_secs_f64().max(1e-9)),
    );
    report.figure("kill → replacement seen in /proc, median", pct(0.5));
    report.figure("kill → replacement seen in /proc, 99th pct", pct(0.99));
    report.invariant("kills not followed by a restart", not_replaced);
    report.invariant("instances running twice", duplicates);
    report.invariant("processes gone before their kill", vanished);
    report.invariant("instances whose restarts ≠ kills", wrong_counts.len());
    report.invariant("zombie children after the storm", zombies);
    report.invariant("processes left 1 s after stop_timeout", left);
    Ok(report)
}
