//! `provisr-torture`: the crash-consistency and robustness suite (`docs/reliability.md`).
//!
//! Drives the real `provisr` binary (the one next to this executable, or `--provisr`) as a
//! separate process on 127.0.0.1 port 0, in temporary directories, through the project's own
//! HTTP client, and checks every invariant by scanning `/proc` for the processes tagged with the
//! test's state directory — never by asking the daemon what it thinks it runs. Each scenario
//! prints a table; the exit status is 0 when every invariant held, 1 on any violation, 2 for
//! bad usage, 3 when the harness itself failed.
//!
//! `cargo run --release --bin provisr-torture [-- --only kill9,storm] [-- --seed N]`.

mod editor;
mod escapees;
mod harness;
mod kill9;
mod procs;
mod storm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;

use harness::Report;

/// Every scenario, in the order they run.
const SCENARIOS: &[&str] = &["kill9", "storm", "escapees", "editor"];

#[derive(Debug, Parser)]
#[command(
    name = "provisr-torture",
    about = "Kill the daemon, its children and its config files in every way, and check nothing is lost, doubled or leaked"
)]
struct Args {
    /// Run only these scenarios: kill9, storm, escapees, editor.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seed of every random choice; a run with the same seed makes the same choices.
    #[arg(long)]
    seed: Option<u64>,
    /// The daemon binary; default: `provisr` next to this executable.
    #[arg(long)]
    provisr: Option<PathBuf>,
    /// kill9: start, write, kill -9 cycles.
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// storm: auto-restarting programs.
    #[arg(long, default_value_t = 200)]
    storm_programs: usize,
    /// storm: kill -9s of their processes.
    #[arg(long, default_value_t = 10_000)]
    storm_kills: usize,
    /// escapees: rounds (each stops every kind of escapee one way: stop, removal, shutdown).
    #[arg(long, default_value_t = 6)]
    escapee_rounds: usize,
    /// escapees: the programs' stop_timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    escapee_stop_timeout_ms: u64,
    /// editor: saves of program files, each in one of the editor styles.
    #[arg(long, default_value_t = 200)]
    saves: usize,
    /// How many violations each table lists in words.
    #[arg(long, default_value_t = 25)]
    show_violations: usize,
    /// Stop a scenario after this many violations (it fails either way).
    #[arg(long, default_value_t = 25)]
    max_violations: usize,
}

/// What every scenario gets.
pub struct Ctx {
    pub bin: PathBuf,
    pub seed: u64,
    pub max_violations: usize,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            eprintln!(
                "provisr-torture: unknown scenario {s:?}; the scenarios are {}",
                SCENARIOS.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("provisr-torture: harness error: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    harness::install_interrupt_cleanup()?;
    harness::start_reaper()?;
    let bin = match &args.provisr {
        Some(p) => p.clone(),
        None => sibling_binary()?,
    };
    ensure!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --release --bins`) or pass --provisr",
        bin.display()
    );
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let ctx = Ctx {
        bin,
        seed,
        max_violations: args.max_violations.max(1),
    };
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    println!(
        "provisr-torture — seed {seed} — daemon {} — {}",
        ctx.bin.display(),
        machine()
    );
    let load_before = loadavg();
    let started = Instant::now();
    let mut reports: Vec<Report> = Vec::new();
    let mut errors = Vec::new();
    type Scenario<'a> = (&'static str, Box<dyn Fn() -> Result<Report> + 'a>);
    let scenarios: Vec<Scenario<'_>> = vec![
        ("kill9", Box::new(|| kill9::run(&ctx, args.cycles))),
        (
            "storm",
            Box::new(|| storm::run(&ctx, args.storm_programs, args.storm_kills)),
        ),
        (
            "escapees",
            Box::new(|| {
                escapees::run(
                    &ctx,
                    args.escapee_rounds,
                    Duration::from_millis(args.escapee_stop_timeout_ms),
                )
            }),
        ),
        ("editor", Box::new(|| editor::run(&ctx, args.saves))),
    ];
    for (name, scenario) in scenarios {
        if !want(name) {
            continue;
        }
        let t0 = Instant::now();
        match scenario() {
            Ok(mut r) => {
                r.took = t0.elapsed();
                println!("\n{}", r.render(args.show_violations));
                reports.push(r);
            }
            Err(e) => {
                println!("\n== {name} — HARNESS ERROR: {e:#}");
                errors.push(name);
            }
        }
    }
    println!(
        "\nsummary (seed {seed}, {:.0} s; load average before {load_before}, after {}):",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    for r in &reports {
        println!(
            "  {:<9} {}  {} violations  {:.1} s",
            r.scenario,
            if r.passed() { "PASS" } else { "FAIL" },
            r.violations.len(),
            r.took.as_secs_f64()
        );
    }
    for e in &errors {
        println!("  {e:<9} HARNESS ERROR");
    }
    ensure!(
        errors.is_empty(),
        "{} scenario(s) could not run",
        errors.len()
    );
    Ok(reports.iter().all(Report::passed))
}

/// `provisr` next to this executable (`target/<profile>/`). Under `cargo run`, which builds only
/// this binary, the daemon is built first with the same profile, so it is never stale.
fn sibling_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let release = ["--bin", "provisr", "--release"];
    let args = if cfg!(debug_assertions) {
        &release[..2]
    } else {
        &release[..]
    };
    if let Some(mut cmd) = provisr::sibling_build::cargo_build(args) {
        eprintln!("building the daemon: {cmd:?}");
        // A build from scratch takes minutes on a small machine.
        let status = harness::run_helper(&mut cmd, Duration::from_secs(30 * 60))?;
        ensure!(status.success(), "building the daemon failed: {cmd:?}");
    }
    Ok(exe.with_file_name("provisr"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("{cpus} CPUs, Linux {kernel}")
}
