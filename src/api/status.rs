//! The status object (`docs/api.md`) and the selectors that pick instances (`name`, `base`,
//! `wildcard`, `group`).

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{GroupSpec, InstanceId};
use crate::desired::Programs;
use crate::reconcile::{CronNext, LiveTable, Reconciler, Waiting};
use crate::store::{DesiredRun, ProgramRecord, RunResult};
use crate::supervisor::{ExitInfo, InstanceState, InstanceStatus};

use super::error::ApiError;

/// One instance's status as the API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusObject {
    pub name: String,
    pub program: String,
    pub instance: u32,
    pub state: InstanceState,
    pub running: bool,
    pub healthy: bool,
    pub pid: Option<i32>,
    pub restarts: u64,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub last_exit: Option<ExitInfo>,
    pub desired: DesiredRun,
    pub source: String,
    pub priority: i32,
    pub detected_by: Option<String>,
    pub next_retry_at: Option<String>,
    pub message: Option<String>,
    /// `running`, and the readiness probe (if any) passes.
    pub ready: bool,
    /// The dependencies its start waits for: `db (healthy): starting`.
    pub waiting_for: Vec<String>,
    /// A cron job's schedule: `last_schedule_time`, `next_schedule_time`, `last_result`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronStatus>,
}

/// The fields a cron job's status objects have besides the others.
#[derive(Debug, Clone, Serialize)]
pub struct CronStatus {
    pub last_schedule_time: Option<String>,
    pub next_schedule_time: Option<String>,
    pub last_result: Option<RunResult>,
}

/// What the loop knows beyond each actor's status: the starts waiting for dependencies, the
/// cron jobs' next times.
#[derive(Debug, Clone, Default)]
pub struct LoopView {
    pub waiting: Waiting,
    pub cron_next: CronNext,
}

impl LoopView {
    pub fn of(r: &Reconciler) -> LoopView {
        LoopView {
            waiting: r.waiting(),
            cron_next: r.cron_next(),
        }
    }
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

/// Builds the status of one instance from its program record and, when it has an actor, its
/// live status. A program file's error, if any, is the message: it stays visible until fixed.
pub fn status_of(
    record: &ProgramRecord,
    id: &InstanceId,
    live: Option<&InstanceStatus>,
    view: &LoopView,
) -> StatusObject {
    let desired = record.instance_desired(&id.name).run;
    let file_error = record.error.as_ref().map(|e| e.join("; "));
    let waiting_for = view.waiting.get(&id.name).cloned().unwrap_or_default();
    let cron = record.spec.cron.as_ref().map(|_| {
        let state = record.cron.as_ref();
        CronStatus {
            last_schedule_time: rfc3339(state.and_then(|c| c.last_schedule_time)),
            next_schedule_time: rfc3339(view.cron_next.get(&record.spec.name).copied().flatten()),
            last_result: state.and_then(|c| c.last_result()),
        }
    });
    let waiting_message =
        (!waiting_for.is_empty()).then(|| format!("waiting for {}", waiting_for.join(", ")));
    let mut status = match live {
        Some(s) => StatusObject {
            name: id.name.clone(),
            program: id.program.clone(),
            instance: id.index,
            state: s.state,
            running: s.state == InstanceState::Running,
            healthy: s.healthy,
            pid: s.pid,
            restarts: s.restarts,
            started_at: rfc3339(s.started_at),
            stopped_at: rfc3339(s.stopped_at),
            last_exit: s.last_exit,
            desired,
            source: record.source.to_string(),
            priority: record.spec.priority,
            detected_by: s.detected_by.clone(),
            next_retry_at: rfc3339(s.next_retry_at),
            message: file_error.or(waiting_message).or_else(|| s.message.clone()),
            ready: s.ready,
            waiting_for: Vec::new(),
            cron: None,
        },
        None => StatusObject {
            name: id.name.clone(),
            program: id.program.clone(),
            instance: id.index,
            state: InstanceState::Stopped,
            running: false,
            healthy: false,
            pid: None,
            restarts: 0,
            started_at: None,
            stopped_at: None,
            last_exit: None,
            desired,
            source: record.source.to_string(),
            priority: record.spec.priority,
            detected_by: None,
            next_retry_at: None,
            message: file_error.or(waiting_message).or_else(|| {
                if desired != DesiredRun::Running {
                    return None;
                }
                match &cron {
                    Some(c) => c
                        .next_schedule_time
                        .as_ref()
                        .map(|t| format!("next run at {t}")),
                    None => Some("waiting to start".to_string()),
                }
            }),
            ready: false,
            waiting_for: Vec::new(),
            cron: None,
        },
    };
    status.waiting_for = waiting_for;
    status.cron = cron;
    status
}

/// Which instances a request is about.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Selector {
    /// A program, an instance, or a `*` pattern; several separated by commas.
    pub name: Option<String>,
    /// A program: all its instances.
    pub base: Option<String>,
    /// A `*` pattern over instance and program names.
    pub wildcard: Option<String>,
    /// A group of the config.
    pub group: Option<String>,
}

/// A selected instance, and whether it was named on its own (an instance-level request) or
/// through its program.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Picked {
    pub id: InstanceId,
    pub by_instance: bool,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.base.is_none()
            && self.wildcard.is_none()
            && self.group.is_none()
    }

    /// The instances this selector names, sorted by name; 404 for a name that matches nothing.
    /// An empty selector picks every instance.
    pub fn pick(&self, programs: &Programs, groups: &[GroupSpec]) -> Result<Vec<Picked>, ApiError> {
        let mut out: BTreeSet<Picked> = BTreeSet::new();
        let all = || programs.values().flat_map(|r| r.spec.instances());
        let whole = |program: &ProgramRecord, out: &mut BTreeSet<Picked>| {
            for id in program.spec.instances() {
                out.insert(Picked {
                    id,
                    by_instance: false,
                });
            }
        };
        if self.is_empty() {
            for r in programs.values() {
                whole(r, &mut out);
            }
        }
        let mut patterns: Vec<&str> = Vec::new();
        for name in self.name.iter().flat_map(|n| n.split(',')).map(str::trim) {
            if name.contains('*') {
                patterns.push(name);
                continue;
            }
            check_selector_name(name)?;
            if let Some(r) = programs.get(name) {
                whole(r, &mut out);
            } else if let Some(id) = all().find(|i| i.name == name) {
                out.insert(Picked {
                    id,
                    by_instance: true,
                });
            } else {
                return Err(ApiError::not_found(format!(
                    "no program or instance is named {name:?}; `provisr status` lists them"
                )));
            }
        }
        if let Some(base) = &self.base {
            check_selector_name(base)?;
            let r = programs.get(base.as_str()).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no program is named {base:?}; `provisr status` lists them"
                ))
            })?;
            whole(r, &mut out);
        }
        patterns.extend(self.wildcard.as_deref());
        for pattern in patterns {
            let before = out.len();
            for r in programs.values() {
                if glob(pattern, &r.spec.name) {
                    whole(r, &mut out);
                } else {
                    for id in r.spec.instances() {
                        if glob(pattern, &id.name) {
                            out.insert(Picked {
                                id,
                                by_instance: true,
                            });
                        }
                    }
                }
            }
            if out.len() == before && !programs.values().any(|r| glob(pattern, &r.spec.name)) {
                return Err(ApiError::not_found(format!(
                    "no program or instance matches {pattern:?}; `provisr status` lists them"
                )));
            }
        }
        if let Some(group) = &self.group {
            let g = groups.iter().find(|g| &g.name == group).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no group is named {group:?}; groups are defined by [[groups]] in the config (GET /groups lists them)"
                ))
            })?;
            for member in &g.members {
                if let Some(r) = programs.get(member) {
                    whole(r, &mut out);
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Names in requests follow the name rule (`docs/configuration.md`), so none can reach a path it should not.
pub fn check_selector_name(name: &str) -> Result<(), ApiError> {
    crate::config::check_name(name).map_err(ApiError::bad_request)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    // The middle parts must appear in order between the fixed prefix and suffix.
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The status objects of `picked`, in name order.
pub fn statuses(
    programs: &Programs,
    live: &LiveTable,
    view: &LoopView,
    picked: &[Picked],
) -> Vec<StatusObject> {
    picked
        .iter()
        .filter_map(|p| {
            let record = programs.get(&p.id.program)?;
            let s = live.get(&p.id.name).map(|l| l.status.borrow().clone());
            Some(status_of(record, &p.id, s.as_ref(), view))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("web-*", "web-1"));
        assert!(glob("*", "x"));
        assert!(glob("a*c", "abc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "ab"));
        assert!(glob("*-2", "web-2"));
        assert!(!glob("web-*", "api-1"));
        assert!(glob("w*b*", "web"));
        assert!(!glob("aa*aa", "aaa"));
        assert!(glob("exact", "exact"));
    }
}
