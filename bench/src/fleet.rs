//! A fleet: a daemon booted on a programs directory of N `sleep 3600` programs (and maybe cron
//! jobs beside them), timed until every one is `running`.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::cleanup::Scratch;
use crate::daemon::{project, DaemonProc};
use crate::events::Incoming;
use crate::opts::Ctx;
use crate::PATIENCE;

/// A daemon booted on a programs directory of `n` programs, all `running`.
pub struct Fleet {
    pub daemon: DaemonProc,
    pub names: Vec<String>,
    /// From spawning `provisr serve` to the last `running` transition.
    pub boot: Duration,
    /// Events `/events` dropped for this subscriber during the boot.
    pub lagged: u64,
    /// How many times the boot asked `GET /status` (see [`boot_fleet`]).
    pub status_checks: usize,
    _scratch: Scratch,
}

impl Fleet {
    pub fn terminate(self) -> Result<Duration> {
        self.daemon.terminate()
    }
}

/// Writes `n` program files of `body`, named `<prefix>NNNNN`, into `programs`.
pub fn write_programs(programs: &Path, prefix: &str, n: usize, body: &str) -> Result<Vec<String>> {
    (1..=n)
        .map(|i| {
            let name = format!("{prefix}{i:05}");
            fs::write(programs.join(format!("{name}.toml")), body)
                .with_context(|| format!("writing program {name}"))?;
            Ok(name)
        })
        .collect()
}

/// How long `/events` must be quiet, with programs still not seen running, before the boot asks
/// `GET /status` which of them run.
const QUIET: Duration = Duration::from_millis(100);

/// Starts a daemon on `n` programs of `sleep 3600` and times it until every one is `running`,
/// from `/events`, subscribed as soon as the API listens.
///
/// Programs can run before the subscription: the daemon starts them while it binds its
/// listeners. `GET /status` shows the instances as of the last finished reconcile pass, so while
/// the first pass is still spawning it may show none of them. And a subscriber that falls behind
/// is told how many events it lost (`lagged`), not which. So whenever the stream is quiet for
/// [`QUIET`] with programs still waiting, the boot asks `GET /status` (rarely, as it costs the
/// daemon). The end is the last `running` transition read; when `GET /status` confirmed some
/// programs, the stream is read until quiet again, since their transitions may still be on the
/// way.
pub fn boot_fleet(ctx: &Ctx, n: usize, label: &str) -> Result<Fleet> {
    boot_fleet_with(ctx, n, label, &[])
}

/// [`boot_fleet`] with more program files beside the `n` (`(file name, text)`), which the boot
/// does not wait for: cron jobs, say.
pub fn boot_fleet_with(
    ctx: &Ctx,
    n: usize,
    label: &str,
    extra: &[(String, String)],
) -> Result<Fleet> {
    let scratch = Scratch::new(label)?;
    let (config, programs) = project(&scratch, false)?;
    let names = write_programs(&programs, "s", n, "command = \"sleep 3600\"\n")?;
    for (file, text) in extra {
        fs::write(programs.join(file), text).with_context(|| format!("writing {file}"))?;
    }
    let t0 = Instant::now();
    let daemon = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let events = daemon.events()?;
    let mut waiting: HashSet<&str> = names.iter().map(String::as_str).collect();
    // Programs GET /status showed running before their transition was read.
    let mut by_status: HashSet<String> = HashSet::new();
    let api = daemon.api();
    let mut status_checks = 0;
    let mut check_status = |waiting: &mut HashSet<&str>, by_status: &mut HashSet<String>| {
        status_checks += 1;
        let all = api.get("/status", &[])?;
        for s in all.as_array().into_iter().flatten() {
            if s["state"] == "running" {
                if let Some(name) = s["name"].as_str() {
                    if waiting.remove(name) {
                        by_status.insert(name.to_string());
                    }
                }
            }
        }
        anyhow::Ok(())
    };
    check_status(&mut waiting, &mut by_status)?;
    let mut end = Instant::now();
    let deadline = Instant::now() + PATIENCE;
    let mut lagged = 0;
    // Until every program was seen running, then (if GET /status confirmed some) until quiet.
    while !waiting.is_empty() || !by_status.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "{} of {n} programs never ran",
            waiting.len()
        );
        match events.next_within(QUIET)? {
            Some(Incoming::Transition(t)) => {
                let name = t.name.as_str();
                if t.to == "running" && (waiting.remove(name) || by_status.remove(name)) {
                    end = t.at;
                }
            }
            Some(Incoming::Lagged(dropped)) => {
                if lagged == 0 {
                    eprintln!(
                        "  /events lagged by {dropped} during the boot of {n}; confirming by \
                         GET /status"
                    );
                }
                lagged += dropped;
            }
            Some(Incoming::Ended(why)) => bail!("/events ended during the boot: {why}"),
            None if waiting.is_empty() => break,
            None => check_status(&mut waiting, &mut by_status)?,
        }
    }
    // Closed here: the figures measured on a fleet start with no connection open.
    drop(events);
    drop(api);
    Ok(Fleet {
        boot: end - t0,
        lagged,
        status_checks,
        daemon,
        names,
        _scratch: scratch,
    })
}
