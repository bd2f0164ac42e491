//! The fleet on etcd (`docs/fleet.md`): 1000 programs applied to three nodes, timed until all
//! run, against one node of the same build taking its third (333) on the same etcd — the
//! fleet's target is at most 2× that. Beside it, etcd's own round trips as this machine gives
//! them (a put, which etcd commits with an fsync, and a range read), through etcd's JSON
//! gateway: what every write and claim of the fleet costs at least. And a bare spawner's 1000
//! `sleep`s on the same CPUs against the target's budget: the least any fleet sharing them needs.
//!
//! Opt-in (`--only fleet`): it needs a `provisr` built with `--features etcd` and the
//! distribution's etcd (`/usr/bin/etcd`), which it starts on free loopback ports with its data
//! in the run's scratch directory.

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use provisr::client::ApiClient;
use provisr::config::{Exec, ProgramSpec};
use serde_json::{json, Value};

use crate::cleanup::{Kids, Scratch};
use crate::daemon::{toml_str, DaemonProc};
use crate::events::{Events, Incoming};
use crate::figures::spawn::direct_spawn;
use crate::opts::Ctx;
use crate::table::{median, ms, ratio, secs, verdict, Dist, Pair, Row};
use crate::usage::{clock_tick, Usage};
use crate::PATIENCE;

const ETCD: &str = "/usr/bin/etcd";
/// The programs of the fleet, and the nodes they are spread over.
const PROGRAMS: usize = 1000;
const NODES: usize = 3;
/// Round trips measured per kind.
const ROUND_TRIPS: usize = 200;

pub struct Fleet {
    /// Apply of 1000 over three nodes until all run, and one node's third, per run.
    pub times: Vec<Pair>,
    /// The same 1000 over three nodes, and one node taking all 1000 on the same CPUs: what
    /// the fleet's coordination costs when its nodes share a machine, as here.
    pub whole: Vec<Pair>,
    /// The nodes' CPU time per program from the apply until all run: three nodes over 1000,
    /// one node over its 333. Independent of how many CPUs the nodes share.
    pub cpu: Vec<Pair>,
    /// A bare spawner starting 1000 `sleep`s on these CPUs, and the target's budget (2× one
    /// node's 333): when the spawner alone needs more, no fleet sharing this machine's CPUs can
    /// meet the target, whatever its coordination costs.
    pub floor: Vec<Pair>,
    pub put: Dist,
    pub range: Dist,
}

impl Fleet {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        let p = medians(&self.times);
        let ok = p.provisr.as_secs_f64() <= 2.0 * p.baseline.as_secs_f64();
        rows.push(Row {
            figure: format!(
                "fleet: {PROGRAMS} programs over {NODES} nodes, all running (median of {}; baseline one node, {})",
                self.times.len(),
                PROGRAMS / NODES
            ),
            value: secs(p.provisr),
            baseline: secs(p.baseline),
            ratio: ratio(p.provisr.as_secs_f64(), p.baseline.as_secs_f64()),
            target: "≤ 2×".into(),
            verdict: verdict(ok),
        });
        let w = medians(&self.whole);
        rows.push(Row::times(
            format!("fleet: the same, against one node running all {PROGRAMS} on the same CPUs"),
            w,
            "-",
            None,
        ));
        let f = medians(&self.floor);
        rows.push(info(
            format!(
                "fleet: a bare spawner of {PROGRAMS} `sleep`s on these CPUs, against the target's budget (2× one node's {})",
                PROGRAMS / NODES
            ),
            f,
            secs,
        ));
        let c = medians(&self.cpu);
        rows.push(info(
            format!(
                "fleet: the nodes' CPU per program ({NODES} nodes, {PROGRAMS}; baseline one node, {})",
                PROGRAMS / NODES
            ),
            c,
            ms,
        ));
        for (what, d) in [
            ("etcd put (committed)", &self.put),
            ("etcd range read", &self.range),
        ] {
            for (q, v) in [("p50", d.p50), ("p99", d.p99)] {
                rows.push(Row {
                    figure: format!("{what} {q} (n = {})", d.n),
                    value: ms(v),
                    baseline: "-".into(),
                    ratio: "-".into(),
                    target: "-".into(),
                    verdict: crate::table::Verdict::Info,
                });
            }
        }
    }
}

/// The medians of each side of `pairs`.
fn medians(pairs: &[Pair]) -> Pair {
    Pair {
        provisr: median(pairs.iter().map(|p| p.provisr).collect()),
        baseline: median(pairs.iter().map(|p| p.baseline).collect()),
    }
}

/// A row shown for what it says, with no target.
fn info(figure: String, p: Pair, show: fn(Duration) -> String) -> Row {
    Row {
        figure,
        value: show(p.provisr),
        baseline: show(p.baseline),
        ratio: ratio(p.provisr.as_secs_f64(), p.baseline.as_secs_f64()),
        target: "-".into(),
        verdict: crate::table::Verdict::Info,
    }
}

/// An etcd server of this run, in its own process group, killed when dropped.
struct Etcd {
    _kids: Kids,
    url: String,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    fn start(dir: &Path) -> Result<Etcd> {
        ensure!(
            Path::new(ETCD).exists(),
            "the fleet figure needs etcd: apt-get install etcd-server"
        );
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let mut kids = Kids::default();
        kids.spawn(
            Command::new(ETCD)
                .arg("--name=bench")
                .arg(format!("--data-dir={}", dir.display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=bench={peer}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let api = ApiClient::new(&url, None);
        let t0 = Instant::now();
        loop {
            if let Ok(v) = api.get("/health", &[]) {
                if v["health"] == "true" {
                    break;
                }
            }
            ensure!(t0.elapsed() < PATIENCE, "etcd did not become healthy");
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Etcd { _kids: kids, url })
    }
}

/// etcd's put and range round trips through its JSON gateway, `ROUND_TRIPS` each.
fn round_trips(etcd: &Etcd) -> Result<(Dist, Dist)> {
    let api = ApiClient::new(&etcd.url, None);
    let b64 = |s: &str| data_encoding::BASE64.encode(s.as_bytes());
    let (mut puts, mut ranges) = (Vec::new(), Vec::new());
    for i in 0..ROUND_TRIPS {
        let key = b64(&format!("/bench-rtt/{i}"));
        let t0 = Instant::now();
        api.post(
            "/v3/kv/put",
            &[],
            Some(&json!({"key": key, "value": b64("x")})),
        )
        .context("etcd put")?;
        puts.push(t0.elapsed());
        let t0 = Instant::now();
        api.post("/v3/kv/range", &[], Some(&json!({"key": key})))
            .context("etcd range")?;
        ranges.push(t0.elapsed());
    }
    Ok((Dist::of(puts)?, Dist::of(ranges)?))
}

/// A node's config: the fleet's etcd and prefix, its name.
fn node_config(dir: &Path, etcd: &Etcd, prefix: &str, name: &str) -> Result<std::path::PathBuf> {
    fs::create_dir_all(dir.join("programs"))?;
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "programs_directory = \"programs\"\n\n[store]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = {}\n\n[node]\nname = {}\n",
            toml_str(&etcd.url),
            toml_str(prefix),
            toml_str(name)
        ),
    )?;
    Ok(config)
}

/// `nodes` nodes on `prefix`; `n` programs applied through the first; the time from the apply
/// to the last `running` transition read on any node, and the CPU time the nodes spent in it.
fn apply_and_wait(
    ctx: &Ctx,
    scratch: &Scratch,
    etcd: &Etcd,
    prefix: &str,
    nodes: usize,
    n: usize,
) -> Result<(Duration, Duration)> {
    let mut daemons = Vec::new();
    for i in 1..=nodes {
        let dir = scratch.join(&format!("{}-n{i}", prefix.trim_start_matches('/')));
        let config = node_config(&dir, etcd, prefix, &format!("n{i}"))
            .with_context(|| format!("config of node {i}"))?;
        daemons.push(DaemonProc::start(&ctx.bin, &dir, &config)?);
    }
    let api = daemons[0].api();
    let t0 = Instant::now();
    loop {
        let v = api.get("/nodes", &[])?;
        ensure!(
            v["fleet"] == true,
            "the daemon is not a fleet node: is it built with --features etcd?"
        );
        let live = v["nodes"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["alive"] == true).count());
        if live == nodes {
            break;
        }
        ensure!(
            t0.elapsed() < PATIENCE,
            "{live} of {nodes} nodes registered"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let events: Vec<Events> = daemons
        .iter()
        .map(DaemonProc::events)
        .collect::<Result<_>>()?;
    let programs: Vec<Value> = (1..=n)
        .map(|i| {
            let name = format!("f{i:05}");
            // Every other key at its default, as a program file of one line has it.
            let spec = ProgramSpec::new(&name, Exec::Command("sleep 3600".into()));
            json!({"spec": spec, "path": format!("/bench/{name}.toml")})
        })
        .collect();
    let mut waiting: HashSet<String> = (1..=n).map(|i| format!("f{i:05}")).collect();
    let ticks = || -> Result<u64> {
        daemons
            .iter()
            .map(|d| Ok(Usage::of(d.pid)?.ticks))
            .sum::<Result<u64>>()
    };
    let ticks0 = ticks()?;
    let t0 = Instant::now();
    api.post_json("/apply", &json!({ "programs": programs }))?;
    let mut end = t0;
    while !waiting.is_empty() {
        ensure!(
            t0.elapsed() < PATIENCE,
            "{} of {n} programs never ran",
            waiting.len()
        );
        // Each transition carries the time its reader thread received it, so the order this
        // loop reads the streams in does not change the figure.
        for e in &events {
            match e.next_within(Duration::from_millis(5))? {
                Some(Incoming::Transition(t)) if t.to == "running" && waiting.remove(&t.name) => {
                    end = end.max(t.at);
                }
                Some(Incoming::Transition(_)) => {}
                Some(Incoming::Lagged(k)) => {
                    bail!("/events lagged by {k}; the figure would be wrong")
                }
                Some(Incoming::Ended(why)) => bail!("/events ended: {why}"),
                None => {}
            }
        }
    }
    let cpu = clock_tick() * u32::try_from(ticks()? - ticks0).unwrap_or(u32::MAX);
    drop(events);
    drop(api);
    for d in daemons {
        d.terminate()?;
    }
    Ok((end - t0, cpu))
}

pub fn measure(ctx: &Ctx) -> Result<Fleet> {
    let scratch = Scratch::new("fleet-etcd")?;
    let etcd = Etcd::start(&scratch.join("etcd"))?;
    let (put, range) = round_trips(&etcd)?;
    eprintln!(
        "  etcd put p50 {} p99 {}, range p50 {} p99 {}",
        ms(put.p50),
        ms(put.p99),
        ms(range.p50),
        ms(range.p99)
    );
    let (mut times, mut whole, mut cpu, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=ctx.sizes.spawn_runs {
        let third = PROGRAMS / NODES;
        let solo = format!("/solo{run}");
        let (baseline, cpu_third) = apply_and_wait(ctx, &scratch, &etcd, &solo, 1, third)?;
        let trio = format!("/trio{run}");
        let (fleet, cpu_fleet) = apply_and_wait(ctx, &scratch, &etcd, &trio, NODES, PROGRAMS)?;
        let all = format!("/all{run}");
        let (all, _) = apply_and_wait(ctx, &scratch, &etcd, &all, 1, PROGRAMS)?;
        let (bare, kids) = direct_spawn(PROGRAMS)?;
        drop(kids);
        floor.push(Pair {
            provisr: bare,
            baseline: 2 * baseline,
        });
        // Per program: the three nodes' CPU over 1000, one node's over its 333.
        cpu.push(Pair {
            provisr: cpu_fleet / PROGRAMS as u32,
            baseline: cpu_third / third as u32,
        });
        eprintln!(
            "  run {run}: {PROGRAMS} over {NODES} nodes {}, one node's {third} {}, one node's {PROGRAMS} {}, a bare spawner's {PROGRAMS} {}",
            secs(fleet),
            secs(baseline),
            secs(all),
            secs(bare)
        );
        times.push(Pair {
            provisr: fleet,
            baseline,
        });
        whole.push(Pair {
            provisr: fleet,
            baseline: all,
        });
    }
    Ok(Fleet {
        times,
        whole,
        cpu,
        floor,
        put,
        range,
    })
}
