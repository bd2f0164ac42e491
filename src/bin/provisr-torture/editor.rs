//! Scenario `editor`: program files saved the ways editors and tools save them, including
//! half-written files caught mid-write.
//!
//! Every version of a program file carries its version number twice: in `command` (first key)
//! and in `env` (last key). The command appends "<command's version> <env's version>" to a log
//! each time it starts, so every process the daemon ever started for the file is on record, and
//! one started from a partial file — cut before its last key, or inside it — shows a missing or
//! different env version. Each save waits until the new version runs, then checks:
//! - the final content is what runs (`/proc`: the instance's environment has the new version);
//! - `generation` moved by exactly one (a partial file applied on the way adds one more; a file
//!   seen missing removes the program and starts its generation over);
//! - no start ever logged two different versions (a partial file never ran).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use serde_json::Value;

use crate::harness::{poll, run_helper, Daemon, Project, Report};
use crate::Ctx;

/// One file per format.
const FILES: [&str; 4] = ["e0.toml", "e1.yaml", "e2.yml", "e3.json"];
/// How long a save may take to be applied.
const APPLY_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// Write a temp file, rename it over (most editors, `install`, config management).
    RenameOver,
    /// `open(O_TRUNC)` and a few writes (`>`, many programs).
    TruncateAndWrite,
    /// vim's default: probe `4913`, rename to `x~`, write `x`, delete `x~`.
    Vim,
    /// `sed -i`: a `sedXXXXXX` temp file renamed over.
    SedInPlace,
    /// Truncate, write part, pause longer than the watcher's quiet period, write the rest.
    HalfWritten,
}

const STYLES: [Style; 5] = [
    Style::RenameOver,
    Style::TruncateAndWrite,
    Style::Vim,
    Style::SedInPlace,
    Style::HalfWritten,
];

fn tag(version: u64) -> String {
    format!("v{version:06}")
}

/// The file's text for a version: `command` first, `env` last, a few keys between (each a line
/// a cut can end on).
fn text(file: &str, log: &Path, version: u64) -> String {
    let v = tag(version);
    let command = format!(
        "echo {v} $TORTURE_VERSION >> {}; exec sleep 3600",
        log.display()
    );
    match file.rsplit('.').next() {
        Some("toml") => format!(
            "command = {}\nstop_timeout = \"2s\"\nretry_count = 0\npriority = 0\nenv = [\"TORTURE_VERSION={v}\"]\n",
            toml_str(&command)
        ),
        Some("json") => format!(
            "{{\n  \"command\": {},\n  \"stop_timeout\": \"2s\",\n  \"retry_count\": 0,\n  \"priority\": 0,\n  \"env\": [\"TORTURE_VERSION={v}\"]\n}}\n",
            Value::String(command)
        ),
        _ => format!(
            "command: {}\nstop_timeout: \"2s\"\nretry_count: 0\npriority: 0\nenv:\n  - \"TORTURE_VERSION={v}\"\n",
            Value::String(command)
        ),
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Saves `new` over `path` in `style`; `old` is the current content (for `sed -i`).
fn save(
    style: Style,
    path: &Path,
    old_version: u64,
    new_version: u64,
    new: &str,
    rng: &mut fastrand::Rng,
) -> Result<()> {
    let dir = path.parent().ok_or_else(|| anyhow!("no directory"))?;
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| anyhow!("no file name"))?;
    match style {
        Style::RenameOver => {
            let tmp = dir.join(format!(".{file}.tmp"));
            fs::write(&tmp, new)?;
            fs::rename(&tmp, path)?;
        }
        Style::TruncateAndWrite => {
            let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
            for chunk in new.as_bytes().chunks(16) {
                f.write_all(chunk)?;
            }
        }
        Style::Vim => {
            let probe = dir.join("4913");
            fs::write(&probe, "")?;
            fs::remove_file(&probe)?;
            let backup = dir.join(format!("{file}~"));
            fs::rename(path, &backup)?;
            let mut f = fs::File::create(path)?;
            f.write_all(new.as_bytes())?;
            f.sync_all()?;
            drop(f);
            fs::remove_file(&backup)?;
        }
        Style::SedInPlace => {
            let status = run_helper(
                Command::new("sed")
                    .arg("-i")
                    .arg(format!("s/{}/{}/g", tag(old_version), tag(new_version)))
                    .arg(path),
                Duration::from_secs(30),
            )?;
            ensure!(status.success(), "sed -i failed: {status}");
            let now = fs::read_to_string(path)?;
            ensure!(now == new, "sed -i wrote {now:?}, expected {new:?}");
        }
        Style::HalfWritten => {
            // Half the time the cut falls at a line end: a prefix that may parse.
            let bytes = new.as_bytes();
            let cut = if rng.bool() {
                let ends: Vec<usize> = new.match_indices('\n').map(|(i, _)| i + 1).collect();
                ends[rng.usize(..ends.len().saturating_sub(1).max(1))]
            } else {
                rng.usize(1..bytes.len())
            };
            let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
            f.write_all(&bytes[..cut])?;
            // Longer than the watcher's 50 ms quiet period: the daemon sees the half.
            std::thread::sleep(Duration::from_millis(rng.u64(80..250)));
            f.write_all(&bytes[cut..])?;
        }
    }
    Ok(())
}

/// (generation, error) of a program, from `/programs`.
fn generation(d: &Daemon, name: &str) -> Option<(u64, bool)> {
    let all = d.api.get("/programs", &[]).ok()?;
    all.as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| Some((p["generation"].as_u64()?, !p["error"].is_null())))
}

pub fn run(ctx: &Ctx, saves: usize) -> Result<Report> {
    let mut report = Report::new("editor: saves and half-written files");
    let project = Project::new("editor")?;
    let logs = project.root.join("starts");
    fs::create_dir_all(&logs)?;
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ 0xED17);
    let mut versions = [0u64; FILES.len()];
    let mut next = 0u64;
    for (i, file) in FILES.iter().enumerate() {
        next += 1;
        versions[i] = next;
        let log = logs.join(format!("{file}.log"));
        fs::write(project.programs.join(file), text(file, &log, next))?;
    }
    let d = Daemon::start(&ctx.bin, &project)?;
    let runs = |name: &str, version: u64| {
        let v = tag(version);
        project.tagged().iter().any(|p| {
            p.name == name && p.env.get("TORTURE_VERSION").map(String::as_str) == Some(&*v)
        })
    };
    for (i, file) in FILES.iter().enumerate() {
        let name = file.split('.').next().unwrap_or(file);
        poll(APPLY_PATIENCE, || runs(name, versions[i]).then_some(()))
            .ok_or_else(|| anyhow!("{file} never ran"))?;
    }

    let mut per_style = [(0usize, 0usize); STYLES.len()];
    let (mut not_applied, mut wrong_generation) = (0usize, 0usize);
    for n in 0..saves {
        let i = rng.usize(..FILES.len());
        let s = rng.usize(..STYLES.len());
        let (file, style) = (FILES[i], STYLES[s]);
        let name = file.split('.').next().unwrap_or(file);
        let path = project.programs.join(file);
        let log = logs.join(format!("{file}.log"));
        let (before, _) = generation(&d, name).ok_or_else(|| anyhow!("{name} is not a program"))?;
        next += 1;
        let new = text(file, &log, next);
        save(style, &path, versions[i], next, &new, &mut rng)?;
        versions[i] = next;
        per_style[s].0 += 1;
        if poll(APPLY_PATIENCE, || runs(name, next).then_some(())).is_none() {
            not_applied += 1;
            per_style[s].1 += 1;
            report.violation(format!(
                "save {n} ({style:?} of {file}, {}) not running within {APPLY_PATIENCE:?}",
                tag(next)
            ));
            continue;
        }
        match generation(&d, name) {
            Some((after, false)) if after == before + 1 => {}
            found => {
                wrong_generation += 1;
                per_style[s].1 += 1;
                report.violation(format!(
                    "save {n} ({style:?} of {file}): generation {before} → {found:?} (generation, error), expected {}",
                    before + 1
                ));
            }
        }
        if report.violations.len() >= ctx.max_violations {
            report.violation(format!("stopped after save {n} of {saves}"));
            break;
        }
    }

    // Every start the programs logged: the command's version and the env's must agree.
    let mut starts = 0usize;
    let mut partial = 0usize;
    for file in FILES {
        let log = fs::read_to_string(logs.join(format!("{file}.log"))).unwrap_or_default();
        for line in log.lines() {
            starts += 1;
            let mut f = line.split_whitespace();
            let (cmd_v, env_v) = (f.next(), f.next());
            if cmd_v.is_none() || cmd_v != env_v {
                partial += 1;
                report.violation(format!(
                    "{file}: a process started from a partial file: logged {line:?}"
                ));
            }
        }
    }
    let status = d.terminate(Duration::from_secs(60))?;
    if !status.success() {
        report.violation(format!("the daemon exited with {status} on SIGTERM"));
    }

    report.figure("saves", saves);
    for (style, (count, bad)) in STYLES.iter().zip(per_style) {
        report.figure(
            &format!("{style:?}: saves (with a violation)"),
            format!("{count} ({bad})"),
        );
    }
    report.figure("starts logged by the programs", starts);
    report.invariant("saves whose final content did not run", not_applied);
    report.invariant("saves that moved generation by ≠ 1", wrong_generation);
    report.invariant("processes started from a partial file", partial);
    Ok(report)
}
