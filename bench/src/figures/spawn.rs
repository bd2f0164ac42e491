//! Spawn N (200 and 1000): daemon start to every program `running` (a fleet's boot, `fleet.rs`),
//! against a direct spawner of the same N `sleep`s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cleanup::{sleep_cmd, Kids};
use crate::table::{Pair, Row};

/// Median boot and direct spawn per N.
#[derive(Default)]
pub struct Spawn {
    pub by_n: BTreeMap<usize, Pair>,
}

/// The baseline spawner: `n` × `sleep 3600`, each in its own process group. `spawn` returns
/// once the child has exec'd (std reports exec failures through a pipe), so all exist after it.
pub fn direct_spawn(n: usize) -> Result<(Duration, Kids)> {
    let mut kids = Kids::default();
    kids.children.reserve(n);
    let t0 = Instant::now();
    for _ in 0..n {
        kids.spawn(&mut sleep_cmd())?;
    }
    Ok((t0.elapsed(), kids))
}

impl Spawn {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        for (&n, &p) in &self.by_n {
            let r = p.provisr.as_secs_f64() / p.baseline.as_secs_f64();
            rows.push(Row::times(
                format!("spawn {n} (daemon start → all running) vs direct spawner"),
                p,
                "≤ 1.5×",
                Some(r <= 1.5),
            ));
        }
    }
}
