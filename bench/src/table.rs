//! Statistics and the results table: distributions, value formats, rows and their printing.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Result};

/// The p50 and p99 of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dist {
    pub p50: Duration,
    pub p99: Duration,
    pub n: usize,
}

impl Dist {
    pub fn of(mut v: Vec<Duration>) -> Result<Dist> {
        ensure!(!v.is_empty(), "no samples");
        v.sort();
        let n = v.len();
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let at = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Ok(Dist {
            p50: at(0.50),
            p99: at(0.99),
            n,
        })
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 1.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.2} ms")
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}×", value / base)
    } else {
        "— (baseline 0)".into()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// No target: reported for reference.
    Info,
}

pub fn verdict(ok: bool) -> Verdict {
    if ok {
        Verdict::Pass
    } else {
        Verdict::Miss
    }
}

/// One line of the table.
pub struct Row {
    pub figure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

/// A time of provisr's and of its baseline.
#[derive(Clone, Copy)]
pub struct Pair {
    pub provisr: Duration,
    pub baseline: Duration,
}

impl Row {
    /// A [`Pair`] in seconds; `ok` is `None` when there is no target.
    pub fn times(figure: String, p: Pair, target: &str, ok: Option<bool>) -> Row {
        Row {
            figure,
            value: secs(p.provisr),
            baseline: secs(p.baseline),
            ratio: ratio(p.provisr.as_secs_f64(), p.baseline.as_secs_f64()),
            target: target.into(),
            verdict: ok.map_or(Verdict::Info, verdict),
        }
    }

    /// Two rows, p50 and p99 of `ours` against `base`, each with the largest ratio to the
    /// baseline that meets its target (`None`: no target).
    pub fn percentiles(
        rows: &mut Vec<Row>,
        what: &str,
        ours: Dist,
        base: Dist,
        targets: [Option<f64>; 2],
    ) {
        for (q, o, b, limit) in [
            ("p50", ours.p50, base.p50, targets[0]),
            ("p99", ours.p99, base.p99, targets[1]),
        ] {
            rows.push(Row {
                figure: format!("{what} {q} (n = {})", ours.n),
                value: ms(o),
                baseline: ms(b),
                ratio: ratio(o.as_secs_f64(), b.as_secs_f64()),
                target: limit.map_or("—".into(), |l| format!("≤ {l}×")),
                verdict: limit.map_or(Verdict::Info, |l| {
                    verdict(o.as_secs_f64() <= l * b.as_secs_f64())
                }),
            });
        }
    }
}

/// The rows as a Markdown table, columns padded to their widest cell.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.value.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                r.target.clone(),
                match r.verdict {
                    Verdict::Pass => "pass".into(),
                    Verdict::Miss => "MISS".into(),
                    Verdict::Info => "—".into(),
                },
            ]
        })
        .collect();
    let header = ["figure", "value", "baseline", "ratio", "target", "result"];
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |c: &[String]| {
        out.push('|');
        for (w, v) in width.iter().zip(c) {
            let _ = write!(out, " {v}{} |", " ".repeat(w - v.chars().count()));
        }
        out.push('\n');
    };
    line(&header.map(String::from));
    line(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for c in &cells {
        line(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        // 1..=100 ms shuffled: p50 is the 50th sample, p99 the 99th.
        let mut v: Vec<u64> = (1..=100).collect();
        v.reverse();
        let d = Dist::of(millis(&v)).unwrap();
        assert_eq!(
            (d.p50, d.p99, d.n),
            (Duration::from_millis(50), Duration::from_millis(99), 100)
        );
        // With fewer than 100 samples p99 is the largest.
        let d = Dist::of(millis(&[7, 3, 5])).unwrap();
        assert_eq!(
            (d.p50, d.p99),
            (Duration::from_millis(5), Duration::from_millis(7))
        );
        assert!(Dist::of(vec![]).is_err());
        assert_eq!(median(millis(&[9, 1, 4, 2])), Duration::from_millis(4));
    }

    #[test]
    fn formats_and_ratios() {
        assert_eq!(ms(Duration::from_micros(351)), "0.351 ms");
        assert_eq!(ms(Duration::from_micros(5490)), "5.49 ms");
        assert_eq!(secs(Duration::from_millis(634)), "0.634 s");
        assert_eq!(mib(10 * 1024 + 205), "10.2 MiB");
        assert_eq!(ratio(3.1, 1.0), "3.10×");
        assert_eq!(ratio(1.0, 0.0), "— (baseline 0)");
    }

    #[test]
    fn the_table_pads_columns_to_the_widest_cell() {
        let p = Pair {
            provisr: Duration::from_millis(634),
            baseline: Duration::from_millis(205),
        };
        let rows = [
            Row::times("spawn 200".into(), p, "≤ 1.5×", Some(false)),
            Row::times("stop".into(), p, "—", None),
        ];
        assert_eq!(
            render(&rows),
            "| figure    | value   | baseline | ratio | target | result |\n\
             | --------- | ------- | -------- | ----- | ------ | ------ |\n\
             | spawn 200 | 0.634 s | 0.205 s  | 3.09× | ≤ 1.5× | MISS   |\n\
             | stop      | 0.634 s | 0.205 s  | 3.09× | —      | —      |\n"
        );
    }
}
