//! What `/proc` says about processes and the machine: liveness and children (for cleanup), CPU
//! time and context switches per thread, RSS, load average, CPU steal and the CPU model.

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Result};

/// A fields view of `/proc/PID/stat` after the command name: index 0 is field 3 (state).
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// Live children of `parent`, each with its process group.
pub fn children_of(parent: i32) -> Vec<(i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            let ppid: i32 = f.get(1)?.parse().ok()?;
            let pgrp: i32 = f.get(2)?.parse().ok()?;
            (ppid == parent && f[0] != "Z").then_some((pid, pgrp))
        })
        .collect()
}

/// CPU and context switches of one process, as of one moment.
#[derive(Clone, Default)]
pub struct Usage {
    /// Field 14+15 of `/proc/PID/stat`: every thread, living or gone, in clock ticks.
    pub ticks: u64,
    /// Per thread: name, CPU time (`schedstat`, ns) and context switches (both kinds).
    threads: BTreeMap<i32, (String, u64, u64)>,
}

impl Usage {
    pub fn of(pid: i32) -> Result<Usage> {
        let f = stat_fields(pid).ok_or_else(|| anyhow!("no /proc/{pid}/stat"))?;
        let num = |i: usize| -> Result<u64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {}", i + 3))
        };
        let ticks = num(11)? + num(12)?;
        let mut threads = BTreeMap::new();
        for e in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            let dir = e.path();
            // A thread may end between listing and reading: skip it.
            let (Ok(comm), Ok(sched), Ok(status)) = (
                fs::read_to_string(dir.join("comm")),
                fs::read_to_string(dir.join("schedstat")),
                fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let ns = sched
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            threads.insert(tid, (comm.trim().to_string(), ns, switches));
        }
        Ok(Usage { ticks, threads })
    }

    /// CPU ns and switches from `self` to `later`, over threads present at both ends, plus a
    /// per-thread breakdown and how many threads came or went.
    pub fn delta(&self, later: &Usage) -> UsageDelta {
        let mut d = UsageDelta {
            ticks: later.ticks.saturating_sub(self.ticks),
            ..UsageDelta::default()
        };
        for (tid, (comm, ns, sw)) in &later.threads {
            match self.threads.get(tid) {
                Some((_, ns0, sw0)) => {
                    let (dn, ds) = (ns.saturating_sub(*ns0), sw.saturating_sub(*sw0));
                    d.cpu_ns += dn;
                    d.switches += ds;
                    if ds > 0 || dn > 0 {
                        d.by_thread.push((format!("{comm}/{tid}"), dn, ds));
                    }
                }
                None => d.threads_changed += 1,
            }
        }
        d.threads_changed += self
            .threads
            .keys()
            .filter(|t| !later.threads.contains_key(t))
            .count();
        d.by_thread.sort_by_key(|t| std::cmp::Reverse(t.2));
        d
    }
}

#[derive(Default)]
pub struct UsageDelta {
    pub ticks: u64,
    pub cpu_ns: u64,
    pub switches: u64,
    pub threads_changed: usize,
    /// Thread (`name/tid`), CPU ns and switches, the busiest first.
    pub by_thread: Vec<(String, u64, u64)>,
}

pub fn clock_tick() -> Duration {
    // CLK_TCK is 100 on every Linux this targets; sysconf would need libc for no gain.
    Duration::from_millis(10)
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// (steal, total) jiffies of all CPUs from `/proc/stat`: on a VM, time the host gave to others.
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    Some((*v.get(7)?, v.iter().take(8).sum()))
}

pub fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("{cpus} CPUs, {model}, Linux {kernel}")
}
