//! Output capture throughput: a child writing lines (a) straight to a file and (b) through a pipe
//! into `InstanceLog` capture to a file.
//!
//! Prints the wall time of each, the ratio capture speed / direct speed, and the CPU time the
//! capture cost this process (`getrusage(RUSAGE_SELF)`: every thread of the daemon side, no
//! child). Each variant runs `BENCH_LOG_RUNS` times (default 3), alternating, and the median is
//! reported.
//!
//! `cargo bench --bench log_capture`; `BENCH_LOG_MIB` (default 256) shrinks the output,
//! `BENCH_LOG_DIR` picks where the files go (default: the system temp dir).

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::resource::{getrusage, UsageWho};
use provisr::config::LogPaths;
use provisr::logs::{InstanceLog, Rotation};

/// 63 characters and a newline: the child prints 64-byte lines.
const LINE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";

#[derive(Clone, Copy)]
enum Variant {
    Direct,
    /// Capture into one file that never rotates.
    Capture,
    /// Capture with the default rotation of `docs/logs.md` (10 MiB, 3 backups), no compression.
    CaptureRotating,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Direct => "direct to file",
            Variant::Capture => "capture",
            Variant::CaptureRotating => "capture, rotating at 10 MiB",
        }
    }
}

struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn cpu_self() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

fn script(bytes: u64) -> String {
    format!("yes {LINE} | head -c {bytes}")
}

/// Bytes in the log file and its backups (not counting hidden files rotation dropped, which the
/// background thread may not have deleted yet).
fn written(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read bench dir")
        .map(|e| e.expect("dir entry"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn run(variant: Variant, dir: &Path, bytes: u64, rt: &tokio::runtime::Runtime) -> Sample {
    let path = dir.join("out.log");
    let cpu0 = cpu_self();
    let start = Instant::now();
    match variant {
        Variant::Direct => {
            let file = File::create(&path).expect("create output file");
            let status = Command::new("/bin/sh")
                .arg("-c")
                .arg(script(bytes))
                .stdout(file)
                .process_group(0)
                .status()
                .expect("run child");
            assert!(status.success());
        }
        Variant::Capture | Variant::CaptureRotating => {
            let rotation = match variant {
                Variant::Capture => Rotation {
                    max_bytes: 0,
                    ..Rotation::default()
                },
                _ => Rotation::default(),
            };
            rt.block_on(async {
                let log = InstanceLog::with_rotation(
                    "bench",
                    LogPaths {
                        stdout: Some(path.clone()),
                        stderr: None,
                    },
                    rotation,
                );
                let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
                let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
                let mut child = {
                    let mut cmd = Command::new("/bin/sh");
                    cmd.arg("-c")
                        .arg(script(bytes))
                        .stdout(Stdio::from(out_w))
                        .stderr(Stdio::from(err_w))
                        .process_group(0);
                    cmd.spawn().expect("spawn child")
                };
                log.attach(out_r, err_r);
                log.flushed().await;
                assert!(child.wait().expect("wait").success());
            });
        }
    }
    let sample = Sample {
        wall: start.elapsed(),
        cpu: cpu_self() - cpu0,
    };
    let got = written(dir);
    match variant {
        // Rotation keeps the current file and 3 backups of 10 MiB: older output is gone by design.
        Variant::CaptureRotating if bytes > 40 << 20 => {
            assert!(
                got > 30 << 20 && got <= 40 << 20,
                "rotating: {got} bytes on disk"
            )
        }
        _ => assert_eq!(got, bytes, "{}: bytes on disk", variant.label()),
    }
    for entry in fs::read_dir(dir).expect("read bench dir") {
        // The background thread may delete a dropped file first.
        match fs::remove_file(entry.expect("dir entry").path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("remove output: {e}"),
            _ => {}
        }
    }
    sample
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let env_num = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} must be a number"))
            })
            .unwrap_or(default)
    };
    let mib = env_num("BENCH_LOG_MIB", 256).max(1);
    let runs = env_num("BENCH_LOG_RUNS", 3).max(1);
    let bytes = mib * 1024 * 1024;
    let base = std::env::var_os("BENCH_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let variants = [Variant::Direct, Variant::Capture, Variant::CaptureRotating];
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, &v) in variants.iter().enumerate() {
            samples[i].push(run(v, dir.path(), bytes, &rt));
        }
    }

    println!(
        "log capture: {mib} MiB of 64-byte lines from `{}`, median of {runs} runs, files in {}",
        script(bytes),
        base.display()
    );
    let direct = median(samples[0].iter().map(|s| s.wall).collect());
    for (i, v) in variants.iter().enumerate() {
        let wall = median(samples[i].iter().map(|s| s.wall).collect());
        let cpu = median(samples[i].iter().map(|s| s.cpu).collect());
        let speed = mib as f64 / wall.as_secs_f64();
        let mut line = format!(
            "  {:<28} wall {:>7.3} s  {:>7.0} MiB/s",
            v.label(),
            wall.as_secs_f64(),
            speed
        );
        if !matches!(v, Variant::Direct) {
            line.push_str(&format!(
                "  ratio {:.2}  cpu {:.3} s ({:.3} s per 256 MiB)",
                direct.as_secs_f64() / wall.as_secs_f64(),
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 256.0 / mib as f64
            ));
        }
        println!("{line}");
    }
}
