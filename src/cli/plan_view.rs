//! Printing plans (`start --dry-run`, `diff`) and config errors.
//!
//! A plan prints as JSON when piped (`{"against", "changes", "steps"}`, every step with its
//! field changes) and, on a terminal, as a table of the steps that change something, each
//! followed by the fields that cause it with old and new values:
//!
//! ```text
//! plan computed against the daemon at http://127.0.0.1:8080/api: 2 changes, 1 unchanged
//! LEVEL  INSTANCE  ACTION   WHY
//! 0      web       restart  changed command
//!                             command: "sleep 1" → "sleep 2" (restart)
//! 5      api-3     start    scale 2 → 3 instances
//!                             instances: 2 → 3 (scale)
//! ```

use serde::Serialize;
use serde_json::Value;

use super::{exit, print_json_or_table, OutputFormat, Table};
use crate::config::{ConfigError, LoadedConfig};
use crate::plan::{self, Action, Desired, DesiredRun, Effect, FieldChange, Plan, RunSeq};

/// What a printed plan was computed against.
#[derive(Debug, Serialize)]
pub struct PlanReport<'a> {
    /// `"an empty state …"` without a daemon, else `"the daemon at URL"`.
    pub against: &'a str,
    /// How many steps change something (every step but `unchanged`).
    pub changes: usize,
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

/// `start --config F --dry-run` with no daemon: every program of F desired running, nothing
/// running. `url` is where no daemon answered.
pub fn print_offline_plan(loaded: &LoadedConfig, url: &str, format: OutputFormat) -> i32 {
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
    print_plan(
        &plan,
        &format!("an empty state (no daemon answered at {url})"),
        format,
    );
    exit::OK
}

/// The plan in a `POST /plan` answer; `None` (said on stderr) when the answer has none, so a
/// daemon speaking another version never reads as "no changes".
pub fn plan_of(answer: &Value) -> Option<Plan> {
    match serde_json::from_value(answer["steps"].clone()) {
        Ok(steps) => Some(Plan { steps }),
        Err(e) => {
            eprintln!("provisr: the daemon's plan could not be read: {e}");
            None
        }
    }
}

/// Reads the plan in a `POST /plan` or `POST /apply` answer from `location` and prints it,
/// against the fleet when the answer says it was planned there; `None` as [`plan_of`].
pub fn print_answer(answer: &Value, location: &str, format: OutputFormat) -> Option<Plan> {
    let plan = plan_of(answer)?;
    let against = match answer["against"].as_str() {
        Some("fleet") => format!("the fleet, through {location}"),
        _ => format!("the daemon at {location}"),
    };
    print_plan(&plan, &against, format);
    Some(plan)
}

/// Prints a plan as a table of its changes or as JSON (every step).
pub fn print_plan(plan: &Plan, against: &str, format: OutputFormat) {
    let changes = plan
        .steps
        .iter()
        .filter(|s| s.action != Action::Unchanged)
        .count();
    let report = PlanReport {
        against,
        changes,
        steps: &plan.steps,
    };
    print_json_or_table(format, &report, || render_table(plan, against));
}

/// The terminal form: a summary line, then one row per step that changes something and one
/// indented row per field that causes it.
fn render_table(plan: &Plan, against: &str) -> String {
    let changed: Vec<&plan::Step> = plan
        .steps
        .iter()
        .filter(|s| s.action != Action::Unchanged)
        .collect();
    let unchanged = plan.steps.len() - changed.len();
    let mut out = format!(
        "plan computed against {against}: {}, {unchanged} unchanged\n",
        match changed.len() {
            0 => "no changes".to_string(),
            1 => "1 change".to_string(),
            n => format!("{n} changes"),
        }
    );
    if changed.is_empty() {
        return out;
    }
    // A fleet's plan says which node would do each step.
    let fleet = plan.steps.iter().any(|s| s.node.is_some());
    let header: &[&str] = if fleet {
        &["NODE", "LEVEL", "INSTANCE", "ACTION", "WHY"]
    } else {
        &["LEVEL", "INSTANCE", "ACTION", "WHY"]
    };
    let mut t = Table::new(header);
    for s in changed {
        let mut row = vec![
            s.priority.to_string(),
            s.instance.clone(),
            action_name(s.action).to_string(),
            s.reason.clone(),
        ];
        if fleet {
            row.insert(0, s.node.clone().unwrap_or_else(|| "(none yet)".into()));
        }
        t.row(row);
        for c in &s.changes {
            let mut row = vec![
                String::new(),
                String::new(),
                String::new(),
                format!("  {}", change_line(c)),
            ];
            if fleet {
                row.insert(0, String::new());
            }
            t.row(row);
        }
    }
    out.push_str(&t.render());
    out
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Restart => "restart",
        Action::Update => "update",
        Action::Remove => "remove",
        Action::Unchanged => "unchanged",
    }
}

/// `command: "sleep 1" → "sleep 2" (restart)`.
fn change_line(c: &FieldChange) -> String {
    let effect = match c.effect {
        Effect::Restart => "restart",
        Effect::Scale => "scale",
        Effect::InPlace => "in place",
    };
    format!(
        "{}: {} → {} ({effect})",
        c.field,
        show_value(&c.old),
        show_value(&c.new)
    )
}

/// Strings quoted, `null` as `(none)`, the rest as compact JSON.
fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "(none)".to_string(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Exec, ProgramSpec};
    use crate::plan::Observed;
    use crate::supervisor::InstanceState;

    #[test]
    fn table_lists_changes_with_old_and_new_values() {
        let old = ProgramSpec::new("web", Exec::Command("sleep 1".into()));
        let mut new = old.clone();
        new.exec = Exec::Command("sleep 2".into());
        new.priority = 3;
        let ids = old.instances();
        let observed = [Observed {
            id: &ids[0],
            state: InstanceState::Running,
            spec: &old,
            seq: RunSeq::default(),
            has_process: true,
            healthy: true,
            exit_code: None,
        }];
        let desired = [Desired {
            spec: &new,
            run: DesiredRun::Running,
            seq: RunSeq::default(),
            overrides: None,
        }];
        let text = render_table(&plan::plan(&desired, &observed), "the daemon at X");
        assert_eq!(
            text,
            "plan computed against the daemon at X: 1 change, 0 unchanged\n\
             LEVEL  INSTANCE  ACTION   WHY\n\
             3      web       restart  changed command\n\
             \x20                           command: \"sleep 1\" → \"sleep 2\" (restart)\n\
             \x20                           priority: 0 → 3 (in place)\n"
        );
        let same = [Desired {
            spec: &old,
            ..desired[0]
        }];
        assert_eq!(
            render_table(&plan::plan(&same, &observed), "the daemon at X"),
            "plan computed against the daemon at X: no changes, 1 unchanged\n"
        );
    }

    #[test]
    fn values_read_like_the_config() {
        assert_eq!(show_value(&Value::Null), "(none)");
        assert_eq!(show_value(&serde_json::json!("1s")), "\"1s\"");
        assert_eq!(show_value(&serde_json::json!(10)), "10");
        assert_eq!(show_value(&serde_json::json!(["a", "b"])), "[\"a\",\"b\"]");
    }
}
