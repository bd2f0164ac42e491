//! API latency: `GET /status` with 1000 instances on one kept-alive connection, against
//! `GET /health`, interleaved. Bodies are read, not decoded: the figure is the daemon's.

use std::time::Instant;

use anyhow::{ensure, Result};

use crate::daemon::DaemonProc;
use crate::figures::Results;
use crate::opts::Ctx;
use crate::table::{Dist, Row};

pub struct Api {
    pub status: Dist,
    pub health: Dist,
}

/// `d` runs `n` instances; the size of the status page goes to the notes.
pub fn measure(ctx: &Ctx, d: &DaemonProc, n: usize, res: &mut Results) -> Result<Api> {
    let api = d.api();
    let count = api.get("/status", &[])?.as_array().map_or(0, Vec::len);
    ensure!(count == n, "GET /status listed {count} instances, not {n}");
    for _ in 0..5 {
        api.get_text("/status", &[])?;
        api.get_text("/health", &[])?;
    }
    let (mut s, mut h) = (vec![], vec![]);
    for _ in 0..ctx.sizes.api_requests {
        let t0 = Instant::now();
        api.get_text("/status", &[])?;
        s.push(t0.elapsed());
        let t0 = Instant::now();
        api.get_text("/health", &[])?;
        h.push(t0.elapsed());
    }
    let size = api.get_text("/status", &[])?.len();
    res.note(format!(
        "GET /status with {n} instances: {size} bytes of JSON"
    ));
    Ok(Api {
        status: Dist::of(s)?,
        health: Dist::of(h)?,
    })
}

impl Api {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        Row::percentiles(
            rows,
            "GET /status, 1000 instances, vs GET /health,",
            self.status,
            self.health,
            [None, None],
        );
    }
}
