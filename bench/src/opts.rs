//! The command line: which figures to run and how many repetitions.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Every figure `--only` accepts, in the order of the table.
pub const FIGURES: &[&str] = &[
    "spawn",
    "stop",
    "restart",
    "idle",
    "logs",
    "reconcile",
    "api",
    "rss",
    "saved",
    "fleet",
];

/// Figures a run has only when `--only` names them: `fleet` needs a `provisr` built with
/// `--features etcd` and the distribution's etcd.
pub const OPT_IN: &[&str] = &["fleet"];

pub const USAGE: &str = "usage: provisr-bench [--quick] [--only NAME[,NAME...]]
  --quick       fewer repetitions and a 5 s idle window (same sizes)
  --only NAMES  run only these figures: spawn, stop, restart, idle, logs, reconcile, api, rss, saved,
                and fleet (only when named: needs `cargo build --release --features etcd` and etcd)";

/// Repetitions and windows; the sizes of the figures (N, MiB, programs) never change.
pub struct Sizes {
    pub spawn_runs: usize,
    pub restart_samples: usize,
    pub saved_samples: usize,
    pub idle_window: Duration,
    pub log_mib: u64,
    pub log_runs: usize,
    pub passes: usize,
    pub reloads: usize,
    pub api_requests: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                spawn_runs: 1,
                restart_samples: 50,
                saved_samples: 10,
                idle_window: Duration::from_secs(5),
                log_mib: 256,
                log_runs: 1,
                passes: 5,
                reloads: 2,
                api_requests: 100,
            }
        } else {
            Sizes {
                spawn_runs: 3,
                restart_samples: 250,
                saved_samples: 20,
                idle_window: Duration::from_secs(20),
                log_mib: 256,
                log_runs: 3,
                passes: 20,
                reloads: 5,
                api_requests: 100,
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Opts {
    pub quick: bool,
    pub only: Option<BTreeSet<String>>,
}

impl Opts {
    pub fn want(&self, figure: &str) -> bool {
        match &self.only {
            Some(o) => o.contains(figure),
            None => !OPT_IN.contains(&figure),
        }
    }

    pub fn want_any(&self, figures: &[&str]) -> bool {
        figures.iter().any(|f| self.want(f))
    }
}

/// What a run needs: the daemon binary, the options and the sizes they imply.
pub struct Ctx {
    pub bin: PathBuf,
    pub opts: Opts,
    pub sizes: Sizes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    Bench(Opts),
    /// The restart baseline's helper process (`figures/restart.rs`).
    RespawnLoop,
    Help,
}

/// The arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Mode, String> {
    let mut quick = false;
    let mut only: Option<BTreeSet<String>> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let list = match arg.as_str() {
            "--quick" => {
                quick = true;
                continue;
            }
            "--respawn-loop" => return Ok(Mode::RespawnLoop),
            "-h" | "--help" => return Ok(Mode::Help),
            "--only" => args.next().ok_or("--only needs a figure name")?,
            a if a.starts_with("--only=") => a["--only=".len()..].to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !FIGURES.contains(&name) {
                return Err(format!(
                    "unknown figure {name:?}; the figures are {}",
                    FIGURES.join(", ")
                ));
            }
            only.get_or_insert_with(BTreeSet::new)
                .insert(name.to_string());
        }
    }
    Ok(Mode::Bench(Opts { quick, only }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Mode, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn only_takes_lists_in_both_spellings_and_repeats() {
        let Ok(Mode::Bench(o)) = parse(&["--only", "stop, spawn", "--quick", "--only=api"]) else {
            panic!("not a bench run");
        };
        assert!(o.quick);
        let only: Vec<&str> = o.only.iter().flatten().map(String::as_str).collect();
        assert_eq!(only, ["api", "spawn", "stop"]);
        assert!(o.want("stop") && !o.want("idle"));
        assert!(o.want_any(&["idle", "api"]) && !o.want_any(&["rss", "saved"]));
    }

    #[test]
    fn no_only_wants_every_figure_but_the_opt_in_ones() {
        let Ok(Mode::Bench(o)) = parse(&[]) else {
            panic!("not a bench run");
        };
        assert!(!o.quick);
        assert!(FIGURES.iter().all(|f| o.want(f) != OPT_IN.contains(f)));
        let Ok(Mode::Bench(o)) = parse(&["--only", "fleet"]) else {
            panic!("not a bench run");
        };
        assert!(o.want("fleet") && !o.want("spawn"));
    }

    #[test]
    fn bad_usage_names_what_is_wrong() {
        let e = parse(&["--only", "spawn,boot"]).unwrap_err();
        assert!(
            e.contains("\"boot\"") && e.contains("spawn, stop, restart"),
            "{e}"
        );
        assert_eq!(
            parse(&["--only"]).unwrap_err(),
            "--only needs a figure name"
        );
        assert!(parse(&["--fast"]).unwrap_err().contains("\"--fast\""));
        assert_eq!(parse(&["--respawn-loop"]), Ok(Mode::RespawnLoop));
        assert_eq!(parse(&["-h"]), Ok(Mode::Help));
    }
}
