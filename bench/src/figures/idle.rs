//! Idle cost with 1000 running children and 10 cron jobs due hourly: the daemon's CPU and
//! wakeups over a window between runs with no API connection open, against an idle `sleep`
//! over the same window.

use std::thread;
use std::time::Duration;

use anyhow::Result;

use crate::cleanup::{sleep_cmd, Kids};
use crate::daemon::DaemonProc;
use crate::figures::Results;
use crate::opts::Ctx;
use crate::table::{ms, ratio, verdict, Row};
use crate::usage::{clock_tick, Usage};

pub struct Idle {
    pub window: Duration,
    pub daemon_cpu: Duration,
    pub daemon_switches: u64,
    pub sleep_cpu: Duration,
    pub sleep_switches: u64,
}

/// Measures `d` (booted, no connection open); the per-thread breakdown goes to the notes.
pub fn measure(ctx: &Ctx, d: &DaemonProc, res: &mut Results) -> Result<Idle> {
    let mut kids = Kids::default();
    let sleeper = kids.spawn(&mut sleep_cmd())?;
    // Let the boot's aftermath (store writes, the first detector rounds) settle first.
    thread::sleep(Duration::from_secs(3));
    let (d0, s0) = (Usage::of(d.pid)?, Usage::of(sleeper)?);
    thread::sleep(ctx.sizes.idle_window);
    let (d1, s1) = (Usage::of(d.pid)?, Usage::of(sleeper)?);
    let (dd, sd) = (d0.delta(&d1), s0.delta(&s1));
    let cpu = Duration::from_nanos(dd.cpu_ns);
    res.note(format!(
        "idle: daemon {} CPU by schedstat ({} ticks of {} by /proc/PID/stat), {} context \
         switches, {} threads came or went; by thread: {}",
        ms(cpu),
        dd.ticks,
        ms(clock_tick()),
        dd.switches,
        dd.threads_changed,
        dd.by_thread
            .iter()
            .map(|(t, ns, sw)| format!("{t} {sw} sw {}", ms(Duration::from_nanos(*ns))))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Idle {
        window: ctx.sizes.idle_window,
        daemon_cpu: cpu,
        daemon_switches: dd.switches,
        sleep_cpu: Duration::from_nanos(sd.cpu_ns),
        sleep_switches: sd.switches,
    })
}

impl Idle {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        let w = self.window.as_secs_f64();
        let pct = |d: Duration| d.as_secs_f64() / w * 100.0;
        rows.push(Row {
            figure: format!(
                "idle CPU, 1000 children + {} hourly cron jobs, {:.0} s (vs idle sleep)",
                crate::phases::CRON_JOBS,
                w
            ),
            value: format!("{:.4} % core", pct(self.daemon_cpu)),
            baseline: format!("{:.4} % core", pct(self.sleep_cpu)),
            ratio: ratio(pct(self.daemon_cpu), pct(self.sleep_cpu)),
            target: "≤ 0.02 %".into(),
            verdict: verdict(pct(self.daemon_cpu) <= 0.02),
        });
        let rate = |n: u64| n as f64 / w;
        rows.push(Row {
            figure: format!(
                "idle wakeups, 1000 children + {} hourly cron jobs, {:.0} s (vs idle sleep)",
                crate::phases::CRON_JOBS,
                w
            ),
            value: format!("{:.2} /s", rate(self.daemon_switches)),
            baseline: format!("{:.2} /s", rate(self.sleep_switches)),
            ratio: ratio(rate(self.daemon_switches), rate(self.sleep_switches)),
            target: "≤ 0.2 /s".into(),
            verdict: verdict(rate(self.daemon_switches) <= 0.2),
        });
    }
}
