//! Stop 200: one `POST /stop` of every program until it answers that all are stopped, against
//! `killpg` of every group and reaping.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use nix::sys::signal::Signal;

use crate::cleanup::Kids;
use crate::fleet::Fleet;
use crate::table::{Pair, Row};

pub struct Stop {
    /// Medians.
    pub times: Pair,
}

/// Stops every program of `fleet` with one request; the time until it answered, all stopped.
pub fn stop_fleet(fleet: &Fleet) -> Result<Duration> {
    let api = fleet.daemon.api();
    let query = [("name", fleet.names.join(",")), ("wait", "60s".to_string())];
    let t0 = Instant::now();
    let stopped = api.post("/stop", &query)?;
    let took = t0.elapsed();
    let states: Vec<&str> = stopped
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["state"].as_str())
        .collect();
    ensure!(
        states.len() == fleet.names.len() && states.iter().all(|s| *s == "stopped"),
        "POST /stop answered {} statuses, not all stopped: {:?}",
        states.len(),
        states.iter().collect::<BTreeSet<_>>()
    );
    Ok(took)
}

/// The baseline stopper: SIGTERM to every group, then reap every child.
pub fn direct_stop(mut kids: Kids) -> Duration {
    let t0 = Instant::now();
    kids.signal_and_reap(Signal::SIGTERM);
    t0.elapsed()
}

impl Stop {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        let p = self.times;
        let r = p.provisr.as_secs_f64() / p.baseline.as_secs_f64();
        rows.push(Row::times(
            "stop 200 (POST /stop → all stopped) vs direct killpg".into(),
            p,
            "≤ 1.5×",
            Some(r <= 1.5),
        ));
    }
}
