//! Daemon RSS with 0 programs (against an idle `sleep`), 1000 running and 10 000 stopped
//! (against 0 programs). Sampled by the phases that run those daemons.

use std::thread;
use std::time::Duration;

use anyhow::Result;

use crate::cleanup::{sleep_cmd, Kids};
use crate::table::{mib, ratio, verdict, Row, Verdict};
use crate::usage::rss_kib;

/// KiB; each `None` until its phase ran.
#[derive(Default)]
pub struct Rss {
    pub sleep: Option<u64>,
    pub zero: Option<u64>,
    pub thousand: Option<u64>,
    pub ten_thousand: Option<u64>,
}

/// The RSS of an idle `sleep`.
pub fn idle_sleep() -> Result<u64> {
    let mut kids = Kids::default();
    let sleeper = kids.spawn(&mut sleep_cmd())?;
    // Just past exec its pages are not faulted in yet.
    thread::sleep(Duration::from_millis(200));
    rss_kib(sleeper)
}

impl Rss {
    pub fn rows(&self, rows: &mut Vec<Row>) {
        if let (Some(r), Some(s)) = (self.zero, self.sleep) {
            rows.push(Row {
                figure: "daemon RSS, 0 programs (vs an idle sleep)".into(),
                value: mib(r),
                baseline: mib(s),
                ratio: ratio(r as f64, s as f64),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let (Some(r), Some(b)) = (self.thousand, self.zero) {
            rows.push(Row {
                figure: "daemon RSS, 1000 running programs (vs 0 programs)".into(),
                value: mib(r),
                baseline: mib(b),
                ratio: ratio(r as f64, b as f64),
                target: "≤ 15 MiB".into(),
                verdict: verdict(r <= 15 * 1024),
            });
        }
        if let (Some(r), Some(b)) = (self.ten_thousand, self.zero) {
            rows.push(Row {
                figure: "daemon RSS, 10 000 stopped programs (vs 0 programs)".into(),
                value: mib(r),
                baseline: mib(b),
                ratio: ratio(r as f64, b as f64),
                target: "≤ 40 MiB".into(),
                verdict: verdict(r <= 40 * 1024),
            });
        }
    }
}
