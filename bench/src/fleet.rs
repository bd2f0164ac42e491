//! A fleet: a daemon booted on a programs directory of N `sleep 3600` programs, timed until
//! every one is `running`.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::cleanup::Scratch;
use crate::daemon::{project, Api, DaemonProc};
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

/// Starts a daemon on `n` programs of `sleep 3600` and times it until every one is `running`,
/// from `/events` (subscribed as soon as the API listens; `GET /status` covers what became
/// running before the subscription).
pub fn boot_fleet(ctx: &Ctx, n: usize, label: &str) -> Result<Fleet> {
    let scratch = Scratch::new(label)?;
    let (config, programs) = project(&scratch, false)?;
    let names = write_programs(&programs, "s", n, "command = \"sleep 3600\"\n")?;
    let t0 = Instant::now();
    let daemon = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let events = daemon.events()?;
    let mut waiting: HashSet<&str> = names.iter().map(String::as_str).collect();
    let api = daemon.api();
    let remove_running = |waiting: &mut HashSet<&str>, api: &Api| -> Result<()> {
        let all = api.get("/status", &[])?;
        for s in all.as_array().into_iter().flatten() {
            if s["state"] == "running" {
                if let Some(name) = s["name"].as_str() {
                    waiting.remove(name);
                }
            }
        }
        Ok(())
    };
    remove_running(&mut waiting, &api)?;
    let mut end = Instant::now();
    let deadline = Instant::now() + PATIENCE;
    let mut lagged = 0;
    while !waiting.is_empty() && lagged == 0 {
        match events.next(deadline, "every program to run")? {
            Incoming::Transition(t) => {
                if t.to == "running" && waiting.remove(t.name.as_str()) {
                    end = t.at;
                }
            }
            Incoming::Lagged(n) => lagged = n,
            Incoming::Ended(why) => bail!("/events ended during the boot: {why}"),
        }
    }
    if lagged > 0 {
        // The daemon dropped the oldest events for this subscriber, so which instances ran is
        // unknown. The newest events are kept: keep reading, and each time the stream is quiet
        // for 50 ms ask GET /status (rarely, as it costs the daemon); once everything runs,
        // the last `running` read is the end.
        eprintln!("  /events lagged by {lagged} during the boot of {n}; confirming by GET /status");
        loop {
            match events.next_within(Duration::from_millis(50))? {
                Some(Incoming::Transition(t)) => {
                    if t.to == "running" {
                        waiting.remove(t.name.as_str());
                        end = t.at;
                    }
                }
                Some(Incoming::Lagged(_)) => {}
                Some(Incoming::Ended(why)) => bail!("/events ended during the boot: {why}"),
                None => {
                    remove_running(&mut waiting, &api)?;
                    if waiting.is_empty() {
                        break;
                    }
                    ensure!(Instant::now() < deadline, "{} never ran", waiting.len());
                }
            }
        }
    }
    // Closed here: the figures measured on a fleet start with no connection open.
    drop(events);
    drop(api);
    Ok(Fleet {
        boot: end - t0,
        lagged,
        daemon,
        names,
        _scratch: scratch,
    })
}
