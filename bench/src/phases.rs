//! Which daemon each figure runs against: four daemon setups, each running the figures wanted
//! on it, in this order.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};

use crate::cleanup::{settle_writeback, Scratch};
use crate::daemon::{project, DaemonProc};
use crate::figures::{api, idle, logs, reconcile, restart, rss, saved, spawn, stop, Results};
use crate::fleet::{boot_fleet, boot_fleet_with, write_programs, Fleet};
use crate::opts::Ctx;
use crate::table::{median, mib, secs, Pair};
use crate::usage::rss_kib;

type Phase = fn(&Ctx, &mut Results) -> Result<()>;

/// What each phase is, the figures it serves, and the phase.
pub const PHASES: [(&str, &[&str], Phase); 5] = [
    (
        "empty daemon: restart, saved file, log capture, 0-program baselines",
        &["restart", "saved", "logs", "reconcile", "rss"],
        empty,
    ),
    ("spawn and stop of 200", &["spawn", "stop"], two_hundred),
    (
        "1000 running children and 10 hourly cron jobs: spawn, idle, API, RSS",
        &["spawn", "idle", "api", "rss"],
        thousand,
    ),
    (
        "10 000 programs in the store: reconcile, reload, RSS",
        &["reconcile", "rss"],
        ten_thousand,
    ),
    (
        "a fleet on etcd: 1000 programs over 3 nodes, etcd round trips",
        &["fleet"],
        fleet_on_etcd,
    ),
];

/// The fleet figure (opt-in, `docs/fleet.md`).
fn fleet_on_etcd(ctx: &Ctx, res: &mut Results) -> Result<()> {
    res.fleet = Some(crate::figures::fleet::measure(ctx)?);
    Ok(())
}

/// Runs the phases that serve a wanted figure; a phase's harness error is reported and the
/// next phase runs.
pub fn run(ctx: &Ctx) -> (Results, Vec<String>) {
    let mut res = Results::default();
    let mut errors = Vec::new();
    for (what, figures, phase) in PHASES {
        if !ctx.opts.want_any(figures) {
            continue;
        }
        eprintln!("== {what}");
        let t0 = Instant::now();
        if let Err(e) = phase(ctx, &mut res) {
            eprintln!("  harness error: {e:#}");
            errors.push(format!("{what}: {e:#}"));
        }
        eprintln!("  ({} s)", t0.elapsed().as_secs());
    }
    (res, errors)
}

/// Restart, saved file, log capture, and the zero-program baselines of reconcile and RSS: one
/// daemon on an empty directory.
fn empty(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let scratch = Scratch::new("empty")?;
    let (config, programs) = project(&scratch, true)?;
    let d = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let api = d.api();
    thread::sleep(Duration::from_secs(1));
    if ctx.opts.want("rss") {
        res.rss.zero = Some(rss_kib(d.pid)?);
        res.rss.sleep = Some(rss::idle_sleep()?);
    }
    if ctx.opts.want("reconcile") {
        res.reconcile.pass0 = Some(reconcile::pass_cost(&api, ctx.sizes.passes)?);
        res.reconcile.reload0 = Some(reconcile::reload_cost(&api, ctx.sizes.reloads)?);
    }
    if ctx.opts.want("restart") {
        eprintln!("restart latency ({} samples)", ctx.sizes.restart_samples);
        res.restart = Some(restart::measure(ctx, &d, &api, &programs)?);
    }
    if ctx.opts.want("saved") {
        eprintln!("saved file → running ({} samples)", ctx.sizes.saved_samples);
        res.saved = Some(saved::measure(ctx, &d, &scratch, &programs, res)?);
    }
    if ctx.opts.want("logs") {
        eprintln!(
            "log capture ({} MiB × {} runs)",
            ctx.sizes.log_mib, ctx.sizes.log_runs
        );
        res.logs = Some(logs::measure(ctx, &d, &api, &scratch, &programs)?);
    }
    d.terminate()?;
    Ok(())
}

/// Spawn of 200 and stop of 200, each run alternating with the direct baselines.
fn two_hundred(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = 200;
    let (mut boots, mut directs, mut stops, mut kills) = (vec![], vec![], vec![], vec![]);
    for run in 1..=ctx.sizes.spawn_runs {
        settle_writeback();
        let (t, kids) = spawn::direct_spawn(n)?;
        directs.push(t);
        kills.push(stop::direct_stop(kids));

        let fleet = boot_fleet(ctx, n, "spawn200")?;
        boots.push(fleet.boot);
        let checks = fleet.status_checks;
        let took = stop::stop_fleet(&fleet)?;
        stops.push(took);
        fleet.terminate()?;
        eprintln!(
            "  run {run}: boot {} ({checks} × GET /status; direct {}), stop {} (direct {})",
            secs(*boots.last().unwrap_or(&Duration::ZERO)),
            secs(*directs.last().unwrap_or(&Duration::ZERO)),
            secs(took),
            secs(*kills.last().unwrap_or(&Duration::ZERO)),
        );
    }
    if ctx.opts.want("spawn") {
        res.spawn.by_n.insert(
            n,
            Pair {
                provisr: median(boots),
                baseline: median(directs),
            },
        );
    }
    if ctx.opts.want("stop") {
        res.stop = Some(stop::Stop {
            times: Pair {
                provisr: median(stops),
                baseline: median(kills),
            },
        });
    }
    Ok(())
}

/// How many hourly cron jobs the fleet of 1000 has beside its children.
pub const CRON_JOBS: usize = 10;

/// `CRON_JOBS` cron jobs due hourly, at the minute half an hour from now, so no run falls in
/// the figures' windows: the idle figure measures the cost of their schedule between runs.
fn hourly_cron_jobs() -> Vec<(String, String)> {
    let minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 60 + 30) % 60);
    (1..=CRON_JOBS)
        .map(|i| {
            let text = format!("schedule = \"{minute} * * * *\"\ncommand = \"true\"\n");
            (format!("cron{i:02}.toml"), text)
        })
        .collect()
}

/// Spawn of 1000 (beside 10 hourly cron jobs), then idle, API and RSS on the last fleet of
/// 1000 running children.
fn thousand(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = 1000;
    // Only spawn repeats: the last fleet stays up for the other figures.
    let runs = if ctx.opts.want("spawn") {
        ctx.sizes.spawn_runs
    } else {
        1
    };
    let (mut boots, mut directs) = (vec![], vec![]);
    let mut fleet = None;
    for run in 1..=runs {
        if let Some(f) = fleet.take() {
            Fleet::terminate(f)?;
        }
        settle_writeback();
        let (direct, kids) = spawn::direct_spawn(n)?;
        stop::direct_stop(kids);
        directs.push(direct);
        let f = boot_fleet_with(ctx, n, "fleet1000", &hourly_cron_jobs())?;
        boots.push(f.boot);
        eprintln!(
            "  run {run}: boot {} (listening after {}, {} × GET /status), direct {}",
            secs(f.boot),
            secs(f.daemon.to_listen),
            f.status_checks,
            secs(direct)
        );
        if f.lagged > 0 {
            res.note(format!(
                "/events dropped {} of the {} transitions of a boot of {n} for a subscriber \
                 reading as fast as it can (the daemon's event channel holds fewer)",
                f.lagged,
                2 * n
            ));
        }
        fleet = Some(f);
    }
    let fleet = fleet.ok_or_else(|| anyhow!("no fleet was booted"))?;
    if ctx.opts.want("spawn") {
        res.spawn.by_n.insert(
            n,
            Pair {
                provisr: median(boots),
                baseline: median(directs),
            },
        );
    }
    let d = &fleet.daemon;
    let jobs = d.api().get("/cronjobs", &[])?;
    let scheduled = jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["next_schedule_time"].is_string())
        .count();
    ensure!(
        scheduled == CRON_JOBS,
        "{scheduled} of the {CRON_JOBS} cron jobs are scheduled"
    );
    if ctx.opts.want("idle") {
        res.idle = Some(idle::measure(ctx, d, res)?);
    }
    if ctx.opts.want("api") {
        // Each cron job's instance is listed too, `stopped` between runs.
        res.api = Some(api::measure(ctx, d, n + CRON_JOBS, res)?);
    }
    if ctx.opts.want("rss") {
        res.rss.thousand = Some(rss_kib(d.pid)?);
    }
    let took = fleet.terminate()?;
    res.note(format!(
        "shutdown (SIGTERM) with {n} running children: {}",
        secs(took)
    ));
    Ok(())
}

/// Reconcile, reload and RSS with a store of 10 000 programs that do not autostart.
fn ten_thousand(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = 10_000;
    let scratch = Scratch::new("store10k")?;
    let (config, programs) = project(&scratch, true)?;
    write_programs(
        &programs,
        "p",
        n,
        "command = \"sleep 3600\"\nautostart = false\n",
    )?;
    let d = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let api = d.api();
    let count = api.get("/programs", &[])?.as_array().map_or(0, Vec::len);
    ensure!(count == n, "the store holds {count} programs, not {n}");
    res.note(format!(
        "{n} programs: the daemon listened {} after it was spawned",
        secs(d.to_listen)
    ));
    thread::sleep(Duration::from_secs(1));
    if ctx.opts.want("rss") {
        res.rss.ten_thousand = Some(rss_kib(d.pid)?);
    }
    if ctx.opts.want("reconcile") {
        res.reconcile.pass10k = Some(reconcile::pass_cost(&api, ctx.sizes.passes)?);
        res.reconcile.reload10k = Some(reconcile::reload_cost(&api, ctx.sizes.reloads)?);
        res.note(format!(
            "RSS after the reloads with {n} programs: {}",
            mib(rss_kib(d.pid)?)
        ));
    }
    d.terminate()?;
    Ok(())
}
