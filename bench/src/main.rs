//! `provisr-bench`: provisr's benchmark suite (see `docs/benchmarks.md`).
//!
//! Drives the real release `provisr` binary (the one next to this executable) as a separate
//! process on 127.0.0.1 port 0, in temporary directories, through the project's own API client,
//! and reports every figure as a ratio to a baseline measured in the same run: a minimal direct
//! spawner, killer or wait-and-respawn loop, an idle `sleep`, a producer writing straight to its
//! file, a bare inotify watcher. It ends every process it started, by process group, on success,
//! on error and on SIGINT/SIGTERM.
//!
//! `cargo run --release -p provisr-bench [-- --quick] [-- --only NAME[,NAME…]]`.
//! Exit status: 0 when every figure was measured (a missed target is a finding, not a failure),
//! 1 when the harness itself failed, 2 for bad usage.
//!
//! Harness: `opts` (the command line), `cleanup` (process groups, temp dirs, interrupts),
//! `daemon` (the daemon under test and its API), `events` (its `/events`), `fleet` (a daemon
//! booted on N programs), `usage` (`/proc`: CPU, wakeups, RSS, the machine), `table`
//! (statistics and the table). `figures/` holds one module per figure; `phases` runs them
//! against the daemon each needs.

mod cleanup;
mod daemon;
mod events;
mod figures;
mod fleet;
mod opts;
mod phases;
mod table;
mod usage;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use opts::{parse_args, Ctx, Mode, Sizes, USAGE};
use usage::{cpu_jiffies, loadavg, machine};

/// How long any single wait of the harness may take before it counts as a harness error.
const PATIENCE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Bench(o)) => o,
        Ok(Mode::RespawnLoop) => return figures::restart::respawn_loop(),
        Ok(Mode::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("provisr-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "provisr-bench: this is a debug build; run `cargo run --release -p provisr-bench`"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = cleanup::install_interrupt_cleanup() {
        eprintln!("provisr-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let bin = match daemon::provisr_binary(opts.want("fleet")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("provisr-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx {
        bin,
        sizes: Sizes::new(opts.quick),
        opts,
    };
    let started = Instant::now();
    eprintln!("machine: {}", machine());
    eprintln!("daemon: {}", ctx.bin.display());
    let load_before = loadavg();
    let jiffies_before = cpu_jiffies();
    let (res, errors) = phases::run(&ctx);
    println!();
    println!(
        "provisr-bench{} — {} — {} s",
        if ctx.opts.quick { " --quick" } else { "" },
        machine(),
        started.elapsed().as_secs()
    );
    println!();
    print!("{}", table::render(&res.rows()));
    println!();
    println!(
        "Load average (1, 5, 15 min) before the run: {load_before}; after: {}. The machine is \
         shared: a busy one inflates values and baselines alike.",
        loadavg()
    );
    if let (Some((s0, t0)), Some((s1, t1))) = (jiffies_before, cpu_jiffies()) {
        if t1 > t0 {
            println!(
                "CPU steal during the run (time the VM's host gave to others): {:.0} %.",
                (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64
            );
        }
    }
    println!(
        "Reference, not measured here: Horust starts 200 programs in 0.7 s; supervisord spends \
         0.28 s of CPU per 256 MiB of captured output."
    );
    println!(
        "Latencies end when this process reads the `running` transition off /events (receive \
         time; the event's own `time` has millisecond resolution only)."
    );
    for n in &res.notes {
        println!("- {n}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("provisr-bench: harness error in {e}");
        }
        ExitCode::FAILURE
    }
}
