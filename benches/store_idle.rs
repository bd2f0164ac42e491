//! Idle cost and memory of an open desired-state store (docs/store.md, "Idle cost and memory").
//!
//! For each program count it runs two helper processes (this binary again), one after the other
//! on one temp dir: `write` opens a new store, writes that many programs in one `apply` and lists
//! them once (a first start on a big programs directory); `reopen` opens that store again and
//! lists them once (a daemon restart); `upgrade` opens, in a second temp dir, a sled 0.34 store
//! (schema version 1) of that many programs written by this process, which upgrades it to the
//! sled 1.x store, and lists them once (the first start after updating provisr, the only time
//! sled 0.34 runs). Each helper then blocks in a read of stdin, holding the
//! store open, while this process watches it from outside for `BENCH_STORE_IDLE_SECS` (default
//! 20): wakeups are the sum over `/proc/PID/task/*/status` of `voluntary_ctxt_switches +
//! nonvoluntary_ctxt_switches`, per thread name; CPU is the sum over `/proc/PID/task/*/schedstat`
//! of the time on CPU (nanoseconds; `utime + stime` of `/proc/PID/stat` counts 10 ms ticks, too
//! coarse for a 0.02 % budget). The helper's RSS is `VmRSS` of `/proc/PID/status` once it is idle.
//!
//! Watching from outside keeps the measurement from waking the process it measures: the helper's
//! main thread sleeps in `read`, and nothing else of it runs unless the store does.
//!
//! `cargo bench --bench store_idle`; `BENCH_STORE_PROGRAMS` (default `1000,10000`) picks the
//! program counts. Exits non-zero if the idle store (after `write` or `reopen`; `upgrade` is
//! reported only, sled 0.34 runs there by design) wakes more than 0.2 times a second (the whole
//! daemon's idle budget, `docs/benchmarks.md`) or uses more than 0.02 % of a core.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use provisr::config::{Exec, ProgramSpec, Source};
use provisr::store::migrations::LEGACY_DB_DIR;
use provisr::store::{DesiredStore, ProgramRecord, StoreWrite};

/// Set in the helper process: the program count.
const CHILD_ENV: &str = "PROVISR_BENCH_STORE_CHILD";
/// Set in the helper process: `write`, `reopen` or `upgrade`.
const MODE_ENV: &str = "PROVISR_BENCH_STORE_MODE";
/// Set in the helper process: its state directory.
const DIR_ENV: &str = "PROVISR_BENCH_STORE_DIR";
const READY: &str = "store-ready";
/// Between the helper's "ready" and the start of the measurement.
const SETTLE: Duration = Duration::from_secs(1);

/// The whole daemon's idle budget (wakeups per second and share of one core).
const MAX_WAKEUPS_PER_SEC: f64 = 0.2;
const MAX_CPU_SHARE: f64 = 0.0002;

fn main() {
    if let Ok(count) = std::env::var(CHILD_ENV) {
        let count = count.parse().expect("program count");
        let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("state dir"));
        let reopen = std::env::var(MODE_ENV).expect("mode") != "write";
        helper(count, reopen, &dir);
        return;
    }
    let counts: Vec<usize> = std::env::var("BENCH_STORE_PROGRAMS")
        .unwrap_or_else(|_| "1000,10000".to_string())
        .split(',')
        .map(|n| n.trim().parse().expect("BENCH_STORE_PROGRAMS: counts"))
        .collect();
    let idle = Duration::from_secs(
        std::env::var("BENCH_STORE_IDLE_SECS")
            .map(|s| s.parse().expect("BENCH_STORE_IDLE_SECS: seconds"))
            .unwrap_or(20),
    );
    let mut over_budget = false;
    for count in counts {
        let dir = tempfile::tempdir().expect("temp dir");
        let state_dir = dir.path().join("state");
        for mode in ["write", "reopen"] {
            over_budget |= measure(count, mode, &state_dir, idle);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let state_dir = dir.path().join("state");
        write_legacy(count, &state_dir.join(LEGACY_DB_DIR));
        // Expected over budget: sled 0.34's I/O pool runs from the upgrade until a restart.
        measure(count, "upgrade", &state_dir, idle);
    }
    if over_budget {
        eprintln!("MISS: the idle store is over the daemon's idle budget (see docs/store.md)");
        std::process::exit(1);
    }
}

/// Runs one helper with `count` programs; true if it was over budget.
fn measure(count: usize, mode: &str, state_dir: &Path, idle: Duration) -> bool {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_ENV, count.to_string())
        .env(MODE_ENV, mode)
        .env(DIR_ENV, state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start helper");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut phases = Vec::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).expect("read helper") == 0 {
            panic!("helper exited early: {:?}", child.wait());
        }
        let line = line.trim();
        if line == READY {
            break;
        }
        phases.push(line.to_string());
    }
    // The helper's main thread still has to reach its read of stdin after printing.
    std::thread::sleep(SETTLE);
    let rss = status_kib(pid, "VmRSS");
    let hwm = status_kib(pid, "VmHWM");
    let before = threads(pid);
    let start = Instant::now();
    std::thread::sleep(idle);
    let after = threads(pid);
    let secs = start.elapsed().as_secs_f64();
    drop(child.stdin.take());
    let status = child.wait().expect("wait helper");
    assert!(status.success(), "helper: {status:?}");

    // A thread that started during the window counts from zero; one that ended is not seen (the
    // bench reports thread counts, so churn would show).
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut cpu_ns = 0;
    for (tid, now) in &after {
        let old = before.get(tid).cloned().unwrap_or_default();
        let group = now
            .name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        let entry = by_name.entry(group).or_default();
        entry.0 += 1;
        entry.1 += now.switches - old.switches;
        cpu_ns += now.cpu_ns - old.cpu_ns;
    }
    let wakeups: u64 = by_name.values().map(|(_, w)| w).sum();
    let per_sec = wakeups as f64 / secs;
    let share = cpu_ns as f64 / 1e9 / secs;
    println!("== {mode}: store with {count} programs ==");
    for phase in phases {
        println!("  {phase}");
    }
    println!(
        "  RSS when idle: {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  idle {secs:.1} s: {wakeups} wakeups ({per_sec:.3}/s), CPU {:.1} µs ({:.5} % of a core), {} threads",
        cpu_ns as f64 / 1e3,
        share * 100.0,
        after.len()
    );
    for (name, (n, w)) in &by_name {
        println!("    {name:<16} x{n:<3} {w} wakeups");
    }
    per_sec > MAX_WAKEUPS_PER_SEC || share > MAX_CPU_SHARE
}

/// The `i`th program of a bench store.
fn program(i: usize) -> (ProgramSpec, Source) {
    let name = format!("prog-{i:05}");
    let spec = ProgramSpec::new(&name, Exec::Command(format!("sleep {}", 1000 + i)));
    let source = Source::File(PathBuf::from(format!("/etc/provisr/programs/{name}.toml")));
    (spec, source)
}

/// A sled 0.34 store at schema version 1 holding `count` programs, as provisr wrote it before
/// the move to sled 1.x.
fn write_legacy(count: usize, db_dir: &Path) {
    let db = old_sled::Config::new()
        .path(db_dir)
        .flush_every_ms(None)
        .open()
        .expect("open sled 0.34");
    let programs = db.open_tree("programs").expect("programs tree");
    for i in 0..count {
        let (spec, source) = program(i);
        let name = spec.name.clone();
        let record = serde_json::to_vec(&ProgramRecord::new(spec, source)).expect("encode");
        programs.insert(name.as_bytes(), record).expect("insert");
    }
    db.open_tree("meta")
        .expect("meta tree")
        .insert("schema_version", &b"1"[..])
        .expect("stamp");
    db.flush().expect("flush");
}

/// The helper process: writes `count` programs into a new store, or opens the store (upgrading
/// it if it is a sled 0.34 one) and lists them; reports, then idles until stdin closes.
fn helper(count: usize, reopen: bool, state_dir: &Path) {
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let store = DesiredStore::open(state_dir).expect("open store");
    if reopen {
        assert_eq!(store.list_programs().expect("list").len(), count);
        writeln!(
            out,
            "opened and listed in {:.2?}; on disk {:.1} MiB",
            start.elapsed(),
            dir_bytes(state_dir) as f64 / (1 << 20) as f64
        )
        .expect("stdout");
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let writes = (0..count)
            .map(|i| {
                let (spec, source) = program(i);
                StoreWrite::PutProgram {
                    spec: spec.into(),
                    source,
                }
            })
            .collect();
        let start = Instant::now();
        let changed = rt.block_on(store.apply(writes)).expect("apply");
        assert_eq!(changed, count);
        let write = start.elapsed();
        assert_eq!(store.list_programs().expect("list").len(), count);
        writeln!(
            out,
            "one apply of {count} programs in {write:.2?}, then listed"
        )
        .expect("stdout");
    }
    writeln!(out, "{READY}").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(store);
}

#[derive(Clone, Default)]
struct Thread {
    name: String,
    /// Voluntary + nonvoluntary context switches.
    switches: u64,
    /// Time on CPU.
    cpu_ns: u64,
}

/// Every thread of `pid` by tid.
fn threads(pid: u32) -> BTreeMap<u32, Thread> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let entry = entry.expect("task");
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(status), Ok(schedstat)) = (
            fs::read_to_string(entry.path().join("status")),
            fs::read_to_string(entry.path().join("schedstat")),
        ) else {
            continue; // the thread just ended
        };
        let mut thread = Thread::default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Name:") {
                thread.name = v.trim().to_string();
            } else if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                thread.switches += v.trim().parse::<u64>().expect("ctxt switches");
            }
        }
        thread.cpu_ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .expect("schedstat: time on CPU");
        out.insert(tid, thread);
    }
    out
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}
