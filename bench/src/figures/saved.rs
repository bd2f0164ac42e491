//! Saved file: a new program file to its `running` transition (debounce included), against a
//! bare inotify watcher that spawns `sleep` on the file's creation (the floor: no debounce, no
//! parsing).

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::cleanup::{sleep_cmd, Kids, Scratch};
use crate::daemon::DaemonProc;
use crate::figures::Results;
use crate::opts::Ctx;
use crate::table::{ms, ratio, secs, verdict, Dist, Row, Verdict};

/// How long a saved program file may take to run before the figure counts as missed.
const SAVED_GIVE_UP: Duration = Duration::from_secs(5);

pub struct Saved {
    /// `None`: a saved file never ran within [`SAVED_GIVE_UP`].
    pub ours: Option<Dist>,
    pub base: Dist,
}

/// Saves files into `programs` (which `d` watches) and into a directory of the bare watcher's.
pub fn measure(
    ctx: &Ctx,
    d: &DaemonProc,
    scratch: &Scratch,
    programs: &Path,
    res: &mut Results,
) -> Result<Saved> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let ev = d.events()?;
    let watched = scratch.join("watched");
    fs::create_dir_all(&watched)?;
    let (tx, rx) = mpsc::channel::<(Instant, io::Result<Child>)>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            if matches!(e.kind, EventKind::Create(_)) {
                let child = sleep_cmd().process_group(0).spawn();
                let _ = tx.send((Instant::now(), child));
            }
        }
    })?;
    watcher.watch(&watched, RecursiveMode::NonRecursive)?;
    let mut kids = Kids::default();
    let (mut ours, mut base) = (vec![], vec![]);
    let text = "command = \"sleep 3600\"\n";
    for i in 1..=ctx.sizes.saved_samples {
        let name = format!("saved-{i:03}");
        let t0 = Instant::now();
        fs::write(watched.join(format!("{name}.toml")), text)?;
        let (at, child) = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the bare watcher saw no creation"))?;
        kids.adopt(child.context("the bare watcher's spawn")?);
        base.push(at - t0);

        let t0 = Instant::now();
        fs::write(programs.join(format!("{name}.toml")), text)?;
        match ev.wait_until(&format!("{name} to run"), SAVED_GIVE_UP, |t| {
            t.name == name && t.to == "running"
        })? {
            Some(t) => ours.push(t.at - t0),
            None => {
                // Not a harness error: the daemon does not act on the programs directory.
                res.note(format!(
                    "saved file: no transition of {name} within {SAVED_GIVE_UP:?}; \
                     is the programs directory watched?"
                ));
                break;
            }
        }
        // Apart by more than any debounce window, so that every sample starts from quiet.
        thread::sleep(Duration::from_millis(250));
    }
    drop(watcher);
    Ok(Saved {
        ours: (ours.len() == ctx.sizes.saved_samples)
            .then(|| Dist::of(ours))
            .transpose()?,
        base: Dist::of(base)?,
    })
}

impl Saved {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        let b = self.base;
        rows.push(match self.ours {
            Some(o) => Row {
                figure: format!(
                    "saved file → running p50 vs bare inotify + spawn (n = {})",
                    o.n
                ),
                value: ms(o.p50),
                baseline: ms(b.p50),
                ratio: ratio(o.p50.as_secs_f64(), b.p50.as_secs_f64()),
                target: "≤ 100 ms".into(),
                verdict: verdict(o.p50 <= Duration::from_millis(100)),
            },
            None => Row {
                figure: "saved file → running vs bare inotify + spawn".into(),
                value: format!("not within {}", secs(SAVED_GIVE_UP)),
                baseline: ms(b.p50),
                ratio: "—".into(),
                target: "≤ 100 ms".into(),
                verdict: Verdict::Miss,
            },
        });
    }
}
