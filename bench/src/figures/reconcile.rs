//! Reconcile and reload with 10 000 programs in the store, against the same with none: the mean
//! pass time from the daemon's own histogram, the round trip of forced passes, and
//! `POST /reload` of an unchanged directory.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};

use crate::daemon::Api;
use crate::table::{ms, ratio, verdict, Dist, Row, Verdict};

pub struct PassCost {
    /// Mean pass duration from the daemon's own histogram.
    pub server_mean: Duration,
    pub rtt: Dist,
}

/// Each `None` until its phase ran.
#[derive(Default)]
pub struct Reconcile {
    pub pass0: Option<PassCost>,
    pub pass10k: Option<PassCost>,
    pub reload0: Option<Dist>,
    pub reload10k: Option<Dist>,
}

/// The mean pass time from the daemon's `provisr_reconcile_duration_seconds` histogram over
/// `passes` forced passes, and their round trips.
pub fn pass_cost(api: &Api, passes: usize) -> Result<PassCost> {
    let hist = || -> Result<(f64, f64)> {
        let text = api.metrics()?;
        let find = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("provisr_reconcile_duration_seconds{suffix}")))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .ok_or_else(|| anyhow!("/metrics has no reconcile_duration{suffix}"))
        };
        Ok((find("_sum")?, find("_count")?))
    };
    let (s0, c0) = hist()?;
    let mut rtt = Vec::new();
    for _ in 0..passes {
        let t0 = Instant::now();
        api.post("/debug/reconcile", &[])?;
        rtt.push(t0.elapsed());
    }
    let (s1, c1) = hist()?;
    ensure!(c1 - c0 >= passes as f64, "the histogram missed passes");
    Ok(PassCost {
        server_mean: Duration::from_secs_f64((s1 - s0) / (c1 - c0)),
        rtt: Dist::of(rtt)?,
    })
}

/// Round trips of `POST /reload` when no file changed.
pub fn reload_cost(api: &Api, reloads: usize) -> Result<Dist> {
    let mut rtt = Vec::new();
    for _ in 0..reloads {
        let t0 = Instant::now();
        let r = api.post("/reload", &[])?;
        rtt.push(t0.elapsed());
        ensure!(
            r["errors"].as_array().is_some_and(Vec::is_empty) && r["changed"] == 0,
            "an unchanged reload reported {r}"
        );
    }
    Dist::of(rtt)
}

impl Reconcile {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        if let (Some(p), Some(b)) = (&self.pass10k, &self.pass0) {
            rows.push(Row {
                figure: "reconcile pass, 10 000 programs (daemon histogram mean) vs 0 programs"
                    .into(),
                value: ms(p.server_mean),
                baseline: ms(b.server_mean),
                ratio: ratio(p.server_mean.as_secs_f64(), b.server_mean.as_secs_f64()),
                target: "≤ 20 ms".into(),
                verdict: verdict(p.server_mean <= Duration::from_millis(20)),
            });
            rows.push(Row {
                figure: format!(
                    "POST /debug/reconcile round trip p50, 10 000 vs 0 programs (n = {})",
                    p.rtt.n
                ),
                value: ms(p.rtt.p50),
                baseline: ms(b.rtt.p50),
                ratio: ratio(p.rtt.p50.as_secs_f64(), b.rtt.p50.as_secs_f64()),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let (Some(r), Some(b)) = (self.reload10k, self.reload0) {
            rows.push(Row {
                figure: format!("POST /reload p50, 10 000 vs 0 programs (n = {})", r.n),
                value: ms(r.p50),
                baseline: ms(b.p50),
                ratio: ratio(r.p50.as_secs_f64(), b.p50.as_secs_f64()),
                target: "≤ 100 ms".into(),
                verdict: verdict(r.p50 <= Duration::from_millis(100)),
            });
        }
    }
}
