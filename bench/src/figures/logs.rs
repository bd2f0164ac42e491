//! Log capture: `yes | head -c 256MiB` through the daemon's stdout capture into a file, against
//! the same pipeline with its stdout on the file; alternating runs, medians. Also the daemon's
//! CPU per 256 MiB beside supervisord's (a reference, not measured).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};

use crate::cleanup::{Kids, Scratch};
use crate::daemon::{toml_str, Api, DaemonProc};
use crate::opts::Ctx;
use crate::table::{median, ratio, secs, verdict, Row, Verdict};
use crate::usage::{clock_tick, Usage};
use crate::PATIENCE;

/// 63 characters and a newline: the log writer prints 64-byte lines (as `benches/log_capture.rs`).
const LINE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";
/// supervisord's CPU time to capture 256 MiB of stdout (a published reference, not measured).
const SUPERVISORD_CPU_PER_256MIB: f64 = 0.28;

pub struct Logs {
    pub mib: u64,
    pub capture: Duration,
    pub direct: Duration,
    pub daemon_cpu: Duration,
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn measure(
    ctx: &Ctx,
    d: &DaemonProc,
    api: &Api,
    scratch: &Scratch,
    programs: &Path,
) -> Result<Logs> {
    let mib = ctx.sizes.log_mib;
    let bytes = mib << 20;
    let cmd = format!("yes {LINE} | head -c {bytes}");
    let out_dir = scratch.join("logs");
    fs::create_dir_all(&out_dir)?;
    let runs = ctx.sizes.log_runs;
    for i in 1..=runs {
        let log = out_dir.join(format!("writer-{i}.log"));
        // No rotation within the run: the direct file does not rotate either.
        let text = format!(
            "command = {}\nautostart = false\n\n[log]\nstdout = {}\nmax_size_mb = 4096\n",
            toml_str(&cmd),
            toml_str(&log.display().to_string())
        );
        fs::write(programs.join(format!("writer-{i}.toml")), text)?;
    }
    api.post("/reload", &[])?;
    api.get("/status", &[("name", format!("writer-{runs}"))])
        .map_err(|e| anyhow!("the writers did not load: {e:#}"))?;
    let ev = d.events()?;
    let (mut cap, mut direct, mut cpu) = (vec![], vec![], vec![]);
    for i in 1..=runs {
        let path = out_dir.join(format!("direct-{i}.log"));
        let file = fs::File::create(&path)?;
        let t0 = Instant::now();
        let mut kids = Kids::default();
        kids.spawn(
            Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .stdout(file),
        )?;
        let status = kids
            .children
            .first_mut()
            .ok_or_else(|| anyhow!("no writer"))?
            .wait()?;
        direct.push(t0.elapsed());
        ensure!(status.success(), "the direct writer failed: {status}");
        ensure!(
            file_len(&path) == bytes,
            "the direct writer wrote {}",
            file_len(&path)
        );
        fs::remove_file(&path)?;

        let name = format!("writer-{i}");
        let log = out_dir.join(format!("{name}.log"));
        ev.drain();
        let u0 = Usage::of(d.pid)?;
        let t0 = Instant::now();
        api.post("/start", &[("name", name.clone()), ("wait", "0s".into())])?;
        let deadline = Instant::now() + PATIENCE;
        while file_len(&log) < bytes {
            ensure!(
                Instant::now() < deadline,
                "{name}: {} bytes captured",
                file_len(&log)
            );
            thread::sleep(Duration::from_millis(1));
        }
        cap.push(t0.elapsed());
        ev.wait_for(&format!("{name} to exit"), PATIENCE, |t| {
            t.name == name && t.to == "exited"
        })?;
        let u1 = Usage::of(d.pid)?;
        cpu.push(clock_tick() * u0.delta(&u1).ticks as u32);
        ensure!(file_len(&log) == bytes, "{name}: {} bytes", file_len(&log));
        fs::remove_file(&log)?;
        eprintln!(
            "  run {i}: capture {} (daemon CPU {}), direct {}",
            secs(*cap.last().unwrap_or(&Duration::ZERO)),
            secs(*cpu.last().unwrap_or(&Duration::ZERO)),
            secs(*direct.last().unwrap_or(&Duration::ZERO))
        );
    }
    Ok(Logs {
        mib,
        capture: median(cap),
        direct: median(direct),
        daemon_cpu: median(cpu),
    })
}

impl Logs {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        let speed = |d: Duration| self.mib as f64 / d.as_secs_f64();
        rows.push(Row {
            figure: format!(
                "log capture {} MiB vs straight to file (throughput)",
                self.mib
            ),
            value: format!("{:.0} MiB/s", speed(self.capture)),
            baseline: format!("{:.0} MiB/s", speed(self.direct)),
            ratio: ratio(speed(self.capture), speed(self.direct)),
            target: "≥ 0.9×".into(),
            verdict: verdict(speed(self.capture) / speed(self.direct) >= 0.9),
        });
        let per256 = self.daemon_cpu.as_secs_f64() * 256.0 / self.mib as f64;
        rows.push(Row {
            figure: "log capture: daemon CPU per 256 MiB vs supervisord (reference)".into(),
            value: format!("{per256:.3} s"),
            baseline: format!("{SUPERVISORD_CPU_PER_256MIB} s (not measured)"),
            ratio: ratio(per256, SUPERVISORD_CPU_PER_256MIB),
            target: "—".into(),
            verdict: Verdict::Info,
        });
    }
}
