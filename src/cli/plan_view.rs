//! Printing plans (`start --dry-run`, `diff`) and config errors.

use serde::Serialize;

use super::{exit, print_json_or_table, Format, Table};
use crate::config::{ConfigError, LoadedConfig};
use crate::plan::{self, Action, Desired, DesiredRun, Plan, RunSeq};

/// What a printed plan was computed against.
#[derive(Debug, Serialize)]
pub struct PlanReport<'a> {
    /// `"empty state"` without a daemon, else the daemon's URL.
    pub against: &'a str,
    pub steps: &'a [plan::Step],
}

/// Prints config errors to stderr, one per line, and returns the invalid-config exit code.
pub fn print_config_errors(errors: &[ConfigError]) -> i32 {
    eprintln!(
        "provisr: the configuration is invalid ({} error{}):",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        eprintln!("  {e}");
    }
    exit::USAGE
}

/// `start --config F --dry-run` with no daemon: every program of F desired running, nothing running.
pub fn print_offline_plan(loaded: &LoadedConfig, format: Format) -> i32 {
    let desired: Vec<Desired<'_>> = loaded
        .programs
        .iter()
        .map(|p| Desired {
            spec: &p.spec,
            run: DesiredRun::Running,
            seq: RunSeq::default(),
            overrides: None,
        })
        .collect();
    let plan = plan::plan(&desired, &[]);
    print_plan(&plan, "empty state", format);
    exit::OK
}

/// Prints a plan as a table (levels shown) or as JSON.
pub fn print_plan(plan: &Plan, against: &str, format: Format) {
    let report = PlanReport {
        against,
        steps: &plan.steps,
    };
    print_json_or_table(format, &report, || {
        let mut t = Table::new(&["LEVEL", "INSTANCE", "ACTION", "WHY"]);
        for s in &plan.steps {
            let mut why = s.reason.clone();
            for c in &s.changes {
                why.push_str(&format!("; {}: {} → {}", c.field, c.old, c.new));
            }
            if s.deferred && s.action != Action::Unchanged {
                why.push_str(" (after the level before)");
            }
            t.row(vec![
                s.priority.to_string(),
                s.instance.clone(),
                format!("{:?}", s.action).to_lowercase(),
                why,
            ]);
        }
        let changes = plan
            .steps
            .iter()
            .filter(|s| s.action != Action::Unchanged)
            .count();
        format!(
            "{}plan computed against {against}: {changes} change{}\n",
            t.render(),
            if changes == 1 { "" } else { "s" }
        )
    });
}
