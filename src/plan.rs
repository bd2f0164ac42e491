//! The plan: a pure function from desired state and observed state to the ordered steps that
//! would make them agree.
//!
//! The reconcile loop executes plans; `--dry-run`, `diff`, `POST /plan` and `POST /debug/reconcile`
//! print them. Because the same function serves all of them, what a dry run shows is what a real
//! run does. Nothing here touches a process, a file or a clock.
//!
//! Besides priority levels, dependencies (`depends_on`) order starts and stops: a start waits
//! until every dependency meets its condition, and says which do not (`waiting_for`); a stop
//! waits while a dependent that is going down too still runs. Cron jobs start only when a run
//! was asked for (a scheduled run, `trigger`, `start`), never just because they are stopped, and
//! neither wait for nor hold back priority levels (`docs/configuration.md`, "Cron jobs").

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{Condition, InstanceId, ProgramSpec};
pub use crate::store::{DesiredRun, InstanceDesired, RunSeq};
use crate::supervisor::InstanceState;

/// One program as the store wants it.
#[derive(Clone, Copy, Debug)]
pub struct Desired<'a> {
    pub spec: &'a ProgramSpec,
    /// The program-wide desired state.
    pub run: DesiredRun,
    /// The program-wide start and restart requests.
    pub seq: RunSeq,
    /// Instances started or stopped on their own (`stop --name web-2`).
    pub overrides: Option<&'a BTreeMap<String, InstanceDesired>>,
}

impl<'a> From<&'a crate::store::ProgramRecord> for Desired<'a> {
    fn from(r: &'a crate::store::ProgramRecord) -> Desired<'a> {
        Desired {
            spec: &r.spec,
            run: r.desired,
            seq: r.seq,
            overrides: Some(&r.instances),
        }
    }
}

impl Desired<'_> {
    /// What is wanted of one instance: its own override, else the program's.
    pub fn for_instance(&self, instance: &str) -> InstanceDesired {
        crate::store::resolve_instance(self.run, self.seq, self.overrides, instance)
    }
}

/// One instance as the runtime reports it.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub id: &'a InstanceId,
    pub state: InstanceState,
    /// The spec the instance currently runs with.
    pub spec: &'a ProgramSpec,
    /// The requests this instance has carried out.
    pub seq: RunSeq,
    /// It has a process (or one found running elsewhere).
    pub has_process: bool,
    /// Its status's `healthy`: running, detectors passing, readiness probe passing.
    pub healthy: bool,
    /// The exit code of its last process, when it exited with one.
    pub exit_code: Option<i32>,
}

impl Observed<'_> {
    /// Whether this instance meets a dependency condition (`docs/configuration.md`,
    /// "Dependencies").
    pub fn meets(&self, condition: Condition) -> bool {
        use InstanceState::*;
        match condition {
            Condition::Started => {
                matches!(self.state, Running | Exited)
                    || (self.state == Starting && self.has_process)
            }
            Condition::Running => self.state == Running,
            Condition::Healthy => self.state == Running && self.healthy,
            Condition::Completed => matches!(self.state, Exited | Failed),
            Condition::CompletedSuccessfully => self.state == Exited && self.exit_code == Some(0),
        }
    }

    /// What it is now, for `waiting_for`: `starting`, `exited with code 1`, `running, not ready`.
    fn describe(&self) -> String {
        match (self.state, self.exit_code) {
            (InstanceState::Exited, Some(code)) => format!("exited with code {code}"),
            (InstanceState::Running, _) if !self.healthy => "running, not healthy".to_string(),
            (state, _) => state.as_str().to_string(),
        }
    }
}

/// What a step does to one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Stop,
    Restart,
    /// Apply the new spec in place, no restart.
    Update,
    /// Stop and forget the instance (program deleted or scaled down).
    Remove,
    Unchanged,
}

impl Action {
    fn starts(self) -> bool {
        matches!(self, Action::Start | Action::Restart)
    }

    fn stops(self) -> bool {
        matches!(self, Action::Stop | Action::Remove)
    }
}

/// What a changed field does to running instances (`docs/configuration.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Restart,
    Scale,
    InPlace,
}

/// One field that differs between the running spec and the desired one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: serde_json::Value,
    pub new: serde_json::Value,
    pub effect: Effect,
}

/// One instance's step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub instance: String,
    pub program: String,
    pub priority: i32,
    pub action: Action,
    /// Waiting for an earlier priority level (starts) or a later one (stops) to settle; a later
    /// pass carries it out.
    pub deferred: bool,
    pub reason: String,
    pub changes: Vec<FieldChange>,
    /// The dependencies a deferred start waits for (`db (healthy): starting`), or the
    /// dependents a deferred stop waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// In a fleet's plan, the node that would carry the step out (`docs/fleet.md`); `None` in a
    /// daemon's own plan, or when no live node matches the program's placement yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The ordered steps: stops in descending priority, then starts in ascending priority, ties by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// True when the plan would change nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.iter().all(|s| s.action == Action::Unchanged)
    }

    /// The steps a pass carries out now.
    pub fn ready(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| !s.deferred && s.action != Action::Unchanged)
    }
}

/// Which fields restart a program when changed; `instances` scales; the rest apply in place.
/// Fields are the user's names, nested ones dotted (`env.PORT`, `log.max_size_mb`).
fn effect_of(field: &str) -> Effect {
    let top = field.split('.').next().unwrap_or(field);
    match top {
        "command" | "args" | "work_dir" | "env" | "use_os_env" => Effect::Restart,
        // What a process runs as and within is fixed when it starts.
        "user"
        | "group"
        | "supplementary_groups"
        | "umask"
        | "nice"
        | "oom_score_adj"
        | "limits" => Effect::Restart,
        "instances" => Effect::Scale,
        _ => Effect::InPlace,
    }
}

/// A spec as flat `field → value` pairs, in the names a user writes: `exec` becomes `command`
/// or `args`, objects become dotted keys (`log.max_size_mb`, `env.PORT`), lists stay whole.
fn flat_fields(spec: &ProgramSpec) -> BTreeMap<String, serde_json::Value> {
    fn flatten(
        prefix: String,
        value: serde_json::Value,
        out: &mut BTreeMap<String, serde_json::Value>,
    ) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    flatten(format!("{prefix}.{k}"), v, out);
                }
            }
            v => {
                out.insert(prefix, v);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(spec) {
        for (k, v) in map {
            match (k.as_str(), v) {
                ("name", _) => {}
                // `{"command": "…"}` or `{"args": […]}`: the key is the field the user wrote.
                ("exec", serde_json::Value::Object(exec)) => out.extend(exec),
                // A cron job's keys sit at the top of its file: `schedule`, not `cron.schedule`.
                ("cron", serde_json::Value::Object(cron)) => {
                    for (k, v) in cron {
                        flatten(k, v, &mut out);
                    }
                }
                // `spread` and `movable` sit at the top of the file too, beside `placement`.
                ("placement", serde_json::Value::Object(placement)) => {
                    for (k, v) in placement {
                        match k.as_str() {
                            "spread" | "movable" => flatten(k, v, &mut out),
                            _ => flatten(format!("placement.{k}"), v, &mut out),
                        }
                    }
                }
                (_, v) => flatten(k, v, &mut out),
            }
        }
    }
    out
}

/// The fields that differ between two specs of one program, with old and new values (`null`
/// for a field or key that one side does not have), sorted by field.
pub fn spec_changes(old: &ProgramSpec, new: &ProgramSpec) -> Vec<FieldChange> {
    if old == new {
        return Vec::new();
    }
    let (old, new) = (flat_fields(old), flat_fields(new));
    let fields: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    fields
        .into_iter()
        .filter_map(|f| {
            let (o, n) = (old.get(f), new.get(f));
            (o != n).then(|| FieldChange {
                field: f.clone(),
                old: o.cloned().unwrap_or(serde_json::Value::Null),
                new: n.cloned().unwrap_or(serde_json::Value::Null),
                effect: effect_of(f),
            })
        })
        .collect()
}

/// The `instances` change behind a scale step.
fn scale_change(old: u32, new: u32) -> FieldChange {
    FieldChange {
        field: "instances".to_string(),
        old: old.into(),
        new: new.into(),
        effect: Effect::Scale,
    }
}

fn is_active(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Starting
            | InstanceState::Running
            | InstanceState::Backoff
            | InstanceState::Stopping
    )
}

/// Still on its way up: holds back the next priority level.
fn is_coming_up(state: InstanceState) -> bool {
    matches!(state, InstanceState::Starting | InstanceState::Backoff)
}

/// Computes the plan. `desired` holds every program the store knows; `observed` every instance
/// the runtime has. Four named steps: one step per wanted instance, removals of the instances
/// nothing wants, the priority-level gates, the order. O(n log n) in the number of instances.
pub fn plan(desired: &[Desired<'_>], observed: &[Observed<'_>]) -> Plan {
    let observed_by_name: BTreeMap<&str, &Observed<'_>> =
        observed.iter().map(|o| (o.id.name.as_str(), o)).collect();
    // How many instances each program runs now (the largest count its instances were started
    // with), to tell a scale from a first start.
    let mut running_count: BTreeMap<&str, u32> = BTreeMap::new();
    for o in observed {
        let n = running_count.entry(o.id.program.as_str()).or_default();
        *n = (*n).max(o.spec.instances);
    }
    let mut gates = LevelGates::default();
    let mut steps = Vec::with_capacity(observed.len().max(desired.len()));
    for d in desired {
        for id in d.spec.instances() {
            let obs = observed_by_name.get(id.name.as_str()).copied();
            let want = d.for_instance(&id.name);
            let running = running_count.get(d.spec.name.as_str()).copied();
            let s = instance_step(d.spec, &id, want, obs, running);
            if !d.spec.is_cron() {
                gates.note(&s, want.run, obs);
            }
            steps.push(s);
        }
    }
    let removed = removals(desired, observed, &steps);
    for s in &removed {
        gates.note_removal(s);
    }
    steps.extend(removed);
    let cron: BTreeSet<&str> = desired
        .iter()
        .filter(|d| d.spec.is_cron())
        .map(|d| d.spec.name.as_str())
        .collect();
    gates.defer(&mut steps, &cron);
    dependencies(desired, observed, &observed_by_name, &mut steps);
    order(&mut steps);
    Plan { steps }
}

/// Holds back starts whose dependencies do not meet their conditions, and stops of programs
/// whose dependents, going down too, still run; each says what it waits for.
fn dependencies(
    desired: &[Desired<'_>],
    observed: &[Observed<'_>],
    observed_by_name: &BTreeMap<&str, &Observed<'_>>,
    steps: &mut [Step],
) {
    let specs: BTreeMap<&str, &ProgramSpec> = desired
        .iter()
        .map(|d| (d.spec.name.as_str(), d.spec))
        .chain(observed.iter().map(|o| (o.id.program.as_str(), o.spec)))
        .collect();
    if specs.values().all(|s| s.depends_on.is_empty()) {
        return;
    }
    let desired_names: BTreeSet<&str> = desired.iter().map(|d| d.spec.name.as_str()).collect();
    // Programs going down: a stop or removal planned, or an instance stopping.
    let mut going_down: BTreeSet<String> = steps
        .iter()
        .filter(|s| s.action.stops())
        .map(|s| s.program.clone())
        .collect();
    going_down.extend(
        observed
            .iter()
            .filter(|o| o.state == InstanceState::Stopping)
            .map(|o| o.id.program.clone()),
    );
    let mut active_by_program: BTreeMap<&str, Vec<&Observed<'_>>> = BTreeMap::new();
    for o in observed.iter().filter(|o| is_active(o.state)) {
        active_by_program
            .entry(o.id.program.as_str())
            .or_default()
            .push(o);
    }
    for s in steps.iter_mut() {
        let Some(spec) = specs.get(s.program.as_str()) else {
            continue;
        };
        let mut waiting = Vec::new();
        if s.action.starts() {
            for (dep, &condition) in &spec.depends_on {
                let unmet = match specs.get(dep.as_str()) {
                    Some(dep_spec) if desired_names.contains(dep.as_str()) => dep_spec
                        .instances()
                        .iter()
                        .find_map(|id| match observed_by_name.get(id.name.as_str()) {
                            Some(o) if o.meets(condition) => None,
                            Some(o) if dep_spec.instances > 1 => {
                                Some(format!("{} is {}", id.name, o.describe()))
                            }
                            Some(o) => Some(o.describe()),
                            None => Some("not started yet".to_string()),
                        }),
                    _ => Some("no such program".to_string()),
                };
                if let Some(why) = unmet {
                    waiting.push(format!("{dep} ({condition}): {why}"));
                }
            }
        } else if s.action.stops() {
            for (dependent, dependent_spec) in &specs {
                let stopping_dependent = dependent_spec.depends_on.contains_key(&s.program)
                    && going_down.contains(*dependent)
                    && active_by_program.contains_key(dependent);
                if stopping_dependent && *dependent != s.program {
                    waiting.push(format!("{dependent} (stopped): still running"));
                }
            }
        }
        if !waiting.is_empty() {
            s.deferred = true;
            s.reason = format!("{}; waiting for {}", s.reason, waiting.join(", "));
            s.waiting_for = waiting;
        }
    }
}

/// The step for one instance of a desired program, given what runs now.
fn instance_step(
    spec: &ProgramSpec,
    id: &InstanceId,
    want: InstanceDesired,
    obs: Option<&Observed<'_>>,
    running_count: Option<u32>,
) -> Step {
    let step = |action, reason: String, changes| Step {
        instance: id.name.clone(),
        program: spec.name.clone(),
        priority: spec.priority,
        action,
        deferred: false,
        reason,
        changes,
        waiting_for: Vec::new(),
        node: None,
    };
    let cron = spec.is_cron();
    // A run asked for and not carried out: the instance's requests are behind the program's.
    let requested = |seq: RunSeq| seq.start < want.seq.start || seq.restart < want.seq.restart;
    let unchanged =
        |o: &Observed<'_>, changes| step(Action::Unchanged, o.state.as_str().to_string(), changes);
    match (want.run, obs) {
        (DesiredRun::Running, None) if cron => {
            if requested(RunSeq::default()) {
                step(Action::Start, "run requested".to_string(), Vec::new())
            } else {
                step(Action::Unchanged, "scheduled".to_string(), Vec::new())
            }
        }
        (DesiredRun::Running, Some(o)) if cron => {
            // A change reaches a cron job at its next run: a run under way is never restarted
            // for it.
            let changes = spec_changes(o.spec, spec);
            if is_active(o.state) && o.seq.restart < want.seq.restart {
                step(Action::Restart, "run requested (replace)".into(), changes)
            } else if !is_active(o.state) && requested(o.seq) {
                step(Action::Start, "run requested".into(), changes)
            } else if !changes.is_empty() {
                step(Action::Update, "changed in place".into(), changes)
            } else {
                unchanged(o, changes)
            }
        }
        (DesiredRun::Running, None) => match running_count {
            Some(old) if old != spec.instances => step(
                Action::Start,
                format!("scale {old} → {} instances", spec.instances),
                vec![scale_change(old, spec.instances)],
            ),
            _ => step(Action::Start, "not running".to_string(), Vec::new()),
        },
        (DesiredRun::Stopped, None) => step(Action::Unchanged, "stopped".into(), vec![]),
        (DesiredRun::Running, Some(o)) => {
            let changes: Vec<FieldChange> = spec_changes(o.spec, spec)
                .into_iter()
                .filter(|c| c.effect != Effect::Scale)
                .collect();
            let restart_fields: Vec<&str> = changes
                .iter()
                .filter(|c| c.effect == Effect::Restart)
                .map(|c| c.field.as_str())
                .collect();
            if is_active(o.state) && !restart_fields.is_empty() {
                let reason = format!("changed {}", restart_fields.join(", "));
                step(Action::Restart, reason, changes)
            } else if is_active(o.state) && o.seq.restart < want.seq.restart {
                step(Action::Restart, "restart requested".into(), changes)
            } else if !is_active(o.state)
                && (o.state == InstanceState::Stopped
                    || o.seq.start < want.seq.start
                    || o.seq.restart < want.seq.restart)
            {
                let reason = format!("{:?} → running", o.state).to_lowercase();
                step(Action::Start, reason, changes)
            } else if !changes.is_empty() {
                step(Action::Update, "changed in place".into(), changes)
            } else {
                unchanged(o, changes)
            }
        }
        (DesiredRun::Stopped, Some(o)) => {
            let changes = spec_changes(o.spec, spec);
            if is_active(o.state) && o.state != InstanceState::Stopping {
                step(Action::Stop, "desired stopped".into(), changes)
            } else if !changes.is_empty() {
                step(Action::Update, "changed in place".into(), changes)
            } else {
                unchanged(o, changes)
            }
        }
    }
}

/// A removal for every observed instance no desired program wants: its program is gone, or
/// was scaled below it.
fn removals(desired: &[Desired<'_>], observed: &[Observed<'_>], wanted: &[Step]) -> Vec<Step> {
    let wanted: BTreeSet<&str> = wanted.iter().map(|s| s.instance.as_str()).collect();
    let desired_by_name: BTreeMap<&str, &Desired<'_>> =
        desired.iter().map(|d| (d.spec.name.as_str(), d)).collect();
    observed
        .iter()
        .filter(|o| !wanted.contains(o.id.name.as_str()))
        .map(|o| {
            let (reason, changes) = match desired_by_name.get(o.id.program.as_str()) {
                Some(d) => (
                    format!(
                        "scale {} → {} instances",
                        o.spec.instances, d.spec.instances
                    ),
                    vec![scale_change(o.spec.instances, d.spec.instances)],
                ),
                None => ("program removed".to_string(), Vec::new()),
            };
            Step {
                instance: o.id.name.clone(),
                program: o.id.program.clone(),
                priority: o.spec.priority,
                action: Action::Remove,
                deferred: false,
                reason,
                changes,
                waiting_for: Vec::new(),
                node: None,
            }
        })
        .collect()
}

/// Which priority levels hold back others: a level still coming up holds back every later
/// level's starts; a level still going down holds back every earlier level's stops.
#[derive(Debug, Default)]
struct LevelGates {
    coming_up: BTreeSet<i32>,
    going_down: BTreeSet<i32>,
}

impl LevelGates {
    fn note(&mut self, s: &Step, want: DesiredRun, obs: Option<&Observed<'_>>) {
        // A running-wanted instance that is stopping is being restarted: it holds back the
        // next level like a start does, so restarts too go level by level.
        let stopping = obs.is_some_and(|o| o.state == InstanceState::Stopping);
        if want == DesiredRun::Running
            && (s.action.starts() || stopping || obs.is_some_and(|o| is_coming_up(o.state)))
        {
            self.coming_up.insert(s.priority);
        }
        if s.action.stops() || stopping {
            self.going_down.insert(s.priority);
        }
    }

    fn note_removal(&mut self, s: &Step) {
        self.going_down.insert(s.priority);
    }

    /// Marks the steps that must wait for another level; cron jobs' runs wait for none.
    fn defer(&self, steps: &mut [Step], cron: &BTreeSet<&str>) {
        let first_up = self.coming_up.first().copied();
        let last_down = self.going_down.last().copied();
        for s in steps {
            s.deferred = if cron.contains(s.program.as_str()) && s.action.starts() {
                false
            } else if s.action.starts() {
                first_up.is_some_and(|l| s.priority > l)
            } else if s.action.stops() {
                last_down.is_some_and(|l| s.priority < l)
            } else {
                false
            };
        }
    }
}

/// How many programs that depend on it, one on the next, stop before each program does: 0 for a
/// program nothing among `specs` depends on. Shutdown stops within a priority level in rising
/// rank, so a program stops before what it depends on.
pub fn stop_ranks<'a>(specs: impl Iterator<Item = &'a ProgramSpec>) -> BTreeMap<String, u32> {
    let specs: BTreeMap<&str, &ProgramSpec> = specs.map(|s| (s.name.as_str(), s)).collect();
    let mut rank: BTreeMap<String, u32> = specs.keys().map(|n| (n.to_string(), 0)).collect();
    // Longest chains of dependents, by relaxation: at most one round per program (a cycle,
    // which the config refuses, stops the rounds rather than looping).
    for _ in 0..specs.len() {
        let mut changed = false;
        for (dependent, spec) in &specs {
            let r = rank.get(*dependent).copied().unwrap_or(0);
            for dep in spec.depends_on.keys() {
                if let Some(d) = rank.get_mut(dep.as_str()) {
                    if *d < r + 1 {
                        *d = r + 1;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    rank
}

/// Stops first, in descending priority; then everything else in ascending priority; ties by
/// instance name (`web-2` before `web-10` among starts).
fn order(steps: &mut [Step]) {
    steps.sort_by(|a, b| {
        let class = |s: &Step| u8::from(!s.action.stops());
        class(a).cmp(&class(b)).then_with(|| {
            if a.action.stops() {
                b.priority
                    .cmp(&a.priority)
                    .then_with(|| a.instance.cmp(&b.instance))
            } else {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| natural_cmp(&a.instance, &b.instance))
            }
        })
    });
}

/// Orders `web-2` before `web-10`; allocates nothing, since a sort calls it n log n times.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(s: &str) -> (&str, u64) {
        let head = s.trim_end_matches(|c: char| c.is_ascii_digit());
        (head, s[head.len()..].parse::<u64>().unwrap_or(0))
    }
    let (ha, na) = split(a);
    let (hb, nb) = split(b);
    ha.cmp(hb).then(na.cmp(&nb)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Exec};

    #[test]
    fn instance_names_sort_by_number() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        assert_eq!(natural_cmp("web-2", "web-10"), Less);
        assert_eq!(natural_cmp("web-10", "web-9"), Greater);
        assert_eq!(natural_cmp("web", "web-1"), Less);
        assert_eq!(natural_cmp("a1", "b0"), Less);
        assert_eq!(natural_cmp("web-01", "web-1"), Less);
        assert_eq!(natural_cmp("x", "x"), Equal);
    }

    fn spec(name: &str, priority: i32) -> ProgramSpec {
        let mut s = ProgramSpec::new(name, Exec::Command("sleep 300".into()));
        s.priority = priority;
        s
    }

    fn running(spec: &ProgramSpec) -> Desired<'_> {
        Desired {
            spec,
            run: DesiredRun::Running,
            seq: RunSeq::default(),
            overrides: None,
        }
    }

    fn actions(plan: &Plan) -> Vec<(String, Action, bool)> {
        plan.steps
            .iter()
            .map(|s| (s.instance.clone(), s.action, s.deferred))
            .collect()
    }

    fn obs<'a>(
        ids: &'a [InstanceId],
        spec: &'a ProgramSpec,
        state: InstanceState,
    ) -> Vec<Observed<'a>> {
        ids.iter()
            .map(|id| Observed {
                id,
                state,
                spec,
                seq: RunSeq::default(),
                has_process: state.has_process(),
                healthy: state == InstanceState::Running,
                exit_code: None,
            })
            .collect()
    }

    #[test]
    fn empty_state_starts_everything_in_priority_order_with_later_levels_deferred() {
        let (a, b, c) = (spec("b-late", 10), spec("a-first", 0), spec("c-mid", 5));
        let mut multi = spec("web", 5);
        multi.instances = 3;
        let desired = [running(&a), running(&b), running(&c), running(&multi)];
        let p = plan(&desired, &[]);
        let names: Vec<_> = p.steps.iter().map(|s| s.instance.as_str()).collect();
        assert_eq!(
            names,
            ["a-first", "c-mid", "web-1", "web-2", "web-3", "b-late"]
        );
        let deferred: Vec<_> = p.steps.iter().map(|s| s.deferred).collect();
        assert_eq!(deferred, [false, true, true, true, true, true]);
        assert!(p.steps.iter().all(|s| s.action == Action::Start));
        assert!(!p.is_empty());
    }

    #[test]
    fn a_level_starts_once_the_one_before_has_settled() {
        let (first, second) = (spec("db", 0), spec("app", 10));
        let desired = [running(&first), running(&second)];
        let ids = first.instances();
        for (state, app_deferred) in [
            (InstanceState::Starting, true),
            (InstanceState::Backoff, true),
            (InstanceState::Running, false),
            (InstanceState::Failed, false),
            (InstanceState::Exited, false),
        ] {
            let o = obs(&ids, &first, state);
            let p = plan(&desired, &o);
            let app = p.steps.iter().find(|s| s.instance == "app").unwrap();
            assert_eq!(app.action, Action::Start);
            assert_eq!(app.deferred, app_deferred, "db {state:?}");
        }
    }

    #[test]
    fn exited_and_failed_stay_down_until_an_explicit_start() {
        let s = spec("job", 0);
        let ids = s.instances();
        for state in [InstanceState::Exited, InstanceState::Failed] {
            let o = obs(&ids, &s, state);
            let p = plan(&[running(&s)], &o);
            assert_eq!(actions(&p), [("job".into(), Action::Unchanged, false)]);
            let again = Desired {
                seq: RunSeq {
                    start: 1,
                    restart: 0,
                },
                ..running(&s)
            };
            let p = plan(&[again], &o);
            assert_eq!(actions(&p), [("job".into(), Action::Start, false)]);
        }
        let o = obs(&ids, &s, InstanceState::Stopped);
        assert_eq!(plan(&[running(&s)], &o).steps[0].action, Action::Start);
    }

    #[test]
    fn desired_stopped_stops_active_instances_in_reverse_priority() {
        let (low, high) = (spec("db", 0), spec("app", 10));
        let (li, hi) = (low.instances(), high.instances());
        let mut o = obs(&li, &low, InstanceState::Running);
        o.extend(obs(&hi, &high, InstanceState::Running));
        let stop = |spec| Desired {
            run: DesiredRun::Stopped,
            ..running(spec)
        };
        let p = plan(&[stop(&low), stop(&high)], &o);
        assert_eq!(
            actions(&p),
            [
                ("app".into(), Action::Stop, false),
                ("db".into(), Action::Stop, true)
            ]
        );
        // Already stopped: nothing to do.
        let o = obs(&li, &low, InstanceState::Stopped);
        assert!(plan(&[stop(&low)], &o).is_empty());
    }

    #[test]
    fn changes_are_classified_restart_scale_or_in_place() {
        let old = spec("web", 0);
        let ids = old.instances();
        let o = obs(&ids, &old, InstanceState::Running);
        type Case = (&'static str, fn(&mut ProgramSpec), Action);
        let cases: [Case; 6] = [
            (
                "command",
                |s| s.exec = Exec::Command("sleep 5".into()),
                Action::Restart,
            ),
            (
                "env",
                |s| {
                    s.env.insert("A".into(), "1".into());
                },
                Action::Restart,
            ),
            (
                "work_dir",
                |s| s.work_dir = Some("/tmp".into()),
                Action::Restart,
            ),
            ("priority", |s| s.priority = 3, Action::Update),
            (
                "restart_interval",
                |s| s.restart_interval = Dur::from_secs(5),
                Action::Update,
            ),
            ("log", |s| s.log.max_size_mb = 1, Action::Update),
        ];
        for (what, change, want) in cases {
            let mut new = old.clone();
            change(&mut new);
            let p = plan(&[running(&new)], &o);
            assert_eq!(p.steps.len(), 1, "{what}");
            assert_eq!(p.steps[0].action, want, "{what}");
            assert!(!p.steps[0].changes.is_empty(), "{what}");
        }
        // A stopped instance with a restart-class change is only updated.
        let o = obs(&ids, &old, InstanceState::Exited);
        let mut new = old.clone();
        new.exec = Exec::Command("sleep 5".into());
        assert_eq!(plan(&[running(&new)], &o).steps[0].action, Action::Update);
    }

    #[test]
    fn field_changes_carry_old_and_new_values() {
        let old = spec("web", 0);
        let mut new = old.clone();
        new.priority = 7;
        let c = spec_changes(&old, &new);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "priority");
        assert_eq!(c[0].old, serde_json::json!(0));
        assert_eq!(c[0].new, serde_json::json!(7));
        assert_eq!(c[0].effect, Effect::InPlace);
        assert!(spec_changes(&old, &old).is_empty());
    }

    #[test]
    fn field_changes_use_the_names_users_write() {
        let old = spec("web", 0);
        let mut new = old.clone();
        new.exec = Exec::Command("sleep 2".into());
        new.env.insert("PORT".into(), "80".into());
        new.log.max_size_mb = 1;
        new.work_dir = Some("/srv".into());
        let c = spec_changes(&old, &new);
        let fields: Vec<(&str, Effect)> = c.iter().map(|c| (c.field.as_str(), c.effect)).collect();
        assert_eq!(
            fields,
            [
                ("command", Effect::Restart),
                ("env.PORT", Effect::Restart),
                ("log.max_size_mb", Effect::InPlace),
                ("work_dir", Effect::Restart),
            ]
        );
        assert_eq!(c[0].old, serde_json::json!("sleep 300"));
        assert_eq!(c[0].new, serde_json::json!("sleep 2"));
        assert_eq!(c[1].old, serde_json::Value::Null);
        assert_eq!(c[1].new, serde_json::json!("80"));
        // command → args: both fields show, one appearing and one going away.
        let mut args = old.clone();
        args.exec = Exec::Args(vec!["sleep".into(), "1".into()]);
        let c = spec_changes(&old, &args);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["args", "command"]);
        assert!(c.iter().all(|c| c.effect == Effect::Restart));
        // Detectors are compared as a whole list.
        let mut det = old.clone();
        det.detectors.push(crate::config::DetectorSpec {
            kind: crate::config::DetectorKind::Pidfile {
                path: "/run/x.pid".into(),
            },
            interval: Dur::from_secs(10),
            failure_threshold: 3,
        });
        let c = spec_changes(&old, &det);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "detectors");
        assert_eq!(c[0].effect, Effect::InPlace);
        // A cron job's schedule is named as written, and applies in place.
        let mut job = old.clone();
        job.cron = Some(Box::new(crate::config::CronSpec {
            schedule: "@hourly".parse().unwrap(),
            time_zone: None,
            concurrency: crate::config::Concurrency::Forbid,
            suspend: false,
            starting_deadline: None,
            history_limit: 10,
            timeout: None,
            retries: 0,
        }));
        let mut daily = job.clone();
        if let Some(c) = daily.cron.as_mut() {
            c.schedule = "@daily".parse().unwrap();
        }
        let c = spec_changes(&job, &daily);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].field.as_str(), c[0].effect),
            ("schedule", Effect::InPlace)
        );
    }

    #[test]
    fn restarts_go_level_by_level() {
        let (db, app) = (spec("db", 0), spec("app", 10));
        let (mut db2, mut app2) = (db.clone(), app.clone());
        db2.exec = Exec::Command("sleep 301".into());
        app2.exec = Exec::Command("sleep 302".into());
        let desired = [running(&db2), running(&app2)];
        let (dbi, appi) = (db.instances(), app.instances());
        // Both changed: db restarts now, app waits.
        let mut o = obs(&dbi, &db, InstanceState::Running);
        o.extend(obs(&appi, &app, InstanceState::Running));
        assert_eq!(
            actions(&plan(&desired, &o)),
            [
                ("db".into(), Action::Restart, false),
                ("app".into(), Action::Restart, true)
            ]
        );
        // db is on the new spec but still stopping or starting: app keeps waiting.
        for state in [InstanceState::Stopping, InstanceState::Starting] {
            let mut o = obs(&dbi, &db2, state);
            o.extend(obs(&appi, &app, InstanceState::Running));
            let p = plan(&desired, &o);
            assert_eq!(p.steps[1].instance, "app");
            assert_eq!(p.steps[1].action, Action::Restart);
            assert!(p.steps[1].deferred, "db {state:?}");
        }
        // db running again: now app.
        let mut o = obs(&dbi, &db2, InstanceState::Running);
        o.extend(obs(&appi, &app, InstanceState::Running));
        assert_eq!(
            actions(&plan(&desired, &o)),
            [
                ("db".into(), Action::Unchanged, false),
                ("app".into(), Action::Restart, false)
            ]
        );
    }

    #[test]
    fn scaling_adds_and_removes_only_the_highest_copies() {
        let mut two = spec("w", 0);
        two.instances = 2;
        let mut three = two.clone();
        three.instances = 3;
        let ids = two.instances();
        let o = obs(&ids, &two, InstanceState::Running);
        let p = plan(&[running(&three)], &o);
        assert_eq!(
            actions(&p),
            [
                ("w-1".into(), Action::Unchanged, false),
                ("w-2".into(), Action::Unchanged, false),
                ("w-3".into(), Action::Start, false),
            ]
        );
        assert!(p.steps[2].reason.contains("scale 2 → 3"));
        assert_eq!(p.steps[2].changes, [scale_change(2, 3)]);
        let ids3 = three.instances();
        let o = obs(&ids3, &three, InstanceState::Running);
        let p = plan(&[running(&two)], &o);
        assert_eq!(p.steps[0].instance, "w-3");
        assert_eq!(p.steps[0].action, Action::Remove);
    }

    #[test]
    fn removed_programs_are_removed() {
        let s = spec("gone", 0);
        let ids = s.instances();
        let o = obs(&ids, &s, InstanceState::Running);
        let p = plan(&[], &o);
        assert_eq!(actions(&p), [("gone".into(), Action::Remove, false)]);
        assert_eq!(p.steps[0].reason, "program removed");
    }

    #[test]
    fn restart_requests_and_instance_overrides() {
        let mut s = spec("w", 0);
        s.instances = 2;
        let ids = s.instances();
        let o = obs(&ids, &s, InstanceState::Running);
        let restart = Desired {
            seq: RunSeq {
                start: 0,
                restart: 1,
            },
            ..running(&s)
        };
        let p = plan(&[restart], &o);
        assert!(p.steps.iter().all(|s| s.action == Action::Restart));
        // Only w-2 is stopped on its own.
        let overrides = BTreeMap::from([(
            "w-2".to_string(),
            InstanceDesired {
                run: DesiredRun::Stopped,
                seq: RunSeq::default(),
            },
        )]);
        let one_stopped = Desired {
            overrides: Some(&overrides),
            ..running(&s)
        };
        assert_eq!(
            actions(&plan(&[one_stopped], &o)),
            [
                ("w-2".into(), Action::Stop, false),
                ("w-1".into(), Action::Unchanged, false),
            ]
        );
    }

    fn observed_with<'a>(
        id: &'a InstanceId,
        spec: &'a ProgramSpec,
        state: InstanceState,
        healthy: bool,
        exit_code: Option<i32>,
    ) -> Observed<'a> {
        Observed {
            id,
            state,
            spec,
            seq: RunSeq::default(),
            has_process: state.has_process(),
            healthy,
            exit_code,
        }
    }

    #[test]
    fn a_start_waits_for_each_dependency_to_meet_its_condition() {
        let (db, migrate) = (spec("db", 0), spec("migrate", 0));
        let mut web = spec("web", 0);
        web.depends_on.insert("db".into(), Condition::Healthy);
        web.depends_on
            .insert("migrate".into(), Condition::CompletedSuccessfully);
        let desired = [running(&db), running(&migrate), running(&web)];
        let (dbi, mi) = (db.instances(), migrate.instances());
        let web_step = |o: &[Observed<'_>]| {
            let p = plan(&desired, o);
            p.steps.into_iter().find(|s| s.instance == "web").unwrap()
        };
        // Nothing runs yet: web waits for both, and says why.
        let s = web_step(&[]);
        assert_eq!((s.action, s.deferred), (Action::Start, true));
        assert_eq!(
            s.waiting_for,
            [
                "db (healthy): not started yet",
                "migrate (completed_successfully): not started yet"
            ]
        );
        // db runs but is not ready, migrate failed.
        let o = [
            observed_with(&dbi[0], &db, InstanceState::Running, false, None),
            observed_with(&mi[0], &migrate, InstanceState::Exited, false, Some(1)),
        ];
        let s = web_step(&o);
        assert!(s.deferred);
        assert_eq!(
            s.waiting_for,
            [
                "db (healthy): running, not healthy",
                "migrate (completed_successfully): exited with code 1"
            ]
        );
        assert!(
            s.reason.contains("waiting for db (healthy)"),
            "{}",
            s.reason
        );
        // Both met: web starts now.
        let o = [
            observed_with(&dbi[0], &db, InstanceState::Running, true, None),
            observed_with(&mi[0], &migrate, InstanceState::Exited, false, Some(0)),
        ];
        let s = web_step(&o);
        assert_eq!((s.action, s.deferred), (Action::Start, false));
        assert!(s.waiting_for.is_empty());
        // A dependency no program provides keeps it waiting.
        let p = plan(&[running(&web)], &[]);
        assert_eq!(
            p.steps[0].waiting_for,
            [
                "db (healthy): no such program",
                "migrate (completed_successfully): no such program"
            ]
        );
    }

    #[test]
    fn every_condition_against_every_state() {
        let s = spec("x", 0);
        let id = &s.instances()[0];
        use Condition::{Completed, CompletedSuccessfully, Healthy, Started};
        use InstanceState::*;
        let cases = [
            (Starting, false, None, [true, false, false, false, false]),
            (Running, false, None, [true, true, false, false, false]),
            (Running, true, None, [true, true, true, false, false]),
            (Exited, false, Some(0), [true, false, false, true, true]),
            (Exited, false, Some(2), [true, false, false, true, false]),
            (Failed, false, None, [false, false, false, true, false]),
            (Stopped, false, None, [false, false, false, false, false]),
            (Backoff, false, None, [false, false, false, false, false]),
        ];
        for (state, healthy, code, want) in cases {
            let o = observed_with(id, &s, state, healthy, code);
            if state == Starting {
                let probing = Observed {
                    has_process: false,
                    ..o
                };
                assert!(!probing.meets(Started), "no process yet: not started");
            }
            let got = [
                Started,
                Condition::Running,
                Healthy,
                Completed,
                CompletedSuccessfully,
            ]
            .map(|c| o.meets(c));
            assert_eq!(got, want, "{state:?} healthy={healthy} code={code:?}");
        }
    }

    #[test]
    fn a_program_stops_before_the_programs_it_depends_on() {
        let db = spec("db", 0);
        let mut web = spec("web", 0);
        web.depends_on.insert("db".into(), Condition::Running);
        let stop = |spec| Desired {
            run: DesiredRun::Stopped,
            ..running(spec)
        };
        let desired = [stop(&db), stop(&web)];
        let (dbi, wi) = (db.instances(), web.instances());
        for (web_state, db_deferred) in [
            (InstanceState::Running, true),
            (InstanceState::Stopping, true),
            (InstanceState::Stopped, false),
        ] {
            let o = [
                observed_with(&dbi[0], &db, InstanceState::Running, true, None),
                observed_with(&wi[0], &web, web_state, true, None),
            ];
            let p = plan(&desired, &o);
            let s = p.steps.iter().find(|s| s.instance == "db").unwrap();
            assert_eq!(s.action, Action::Stop);
            assert_eq!(s.deferred, db_deferred, "web {web_state:?}");
            if db_deferred {
                assert_eq!(s.waiting_for, ["web (stopped): still running"]);
            }
        }
        // db stopped on its own while web keeps running: nothing holds it.
        let desired = [stop(&db), running(&web)];
        let o = [
            observed_with(&dbi[0], &db, InstanceState::Running, true, None),
            observed_with(&wi[0], &web, InstanceState::Running, true, None),
        ];
        let p = plan(&desired, &o);
        assert_eq!(p.steps[0].instance, "db");
        assert!(!p.steps[0].deferred);
    }

    #[test]
    fn a_cron_job_starts_only_when_a_run_is_requested_and_waits_for_no_level() {
        let mut job = spec("job", 5);
        job.cron = Some(Box::new(crate::config::CronSpec {
            schedule: "@hourly".parse().unwrap(),
            time_zone: None,
            concurrency: crate::config::Concurrency::Forbid,
            suspend: false,
            starting_deadline: None,
            history_limit: 10,
            timeout: None,
            retries: 0,
        }));
        let early = spec("early", 0);
        let ids = job.instances();
        let (ji, ei) = (job.instances(), early.instances());
        // Never asked: scheduled, nothing to do, even with nothing running.
        let p = plan(&[running(&job)], &[]);
        assert_eq!(actions(&p), [("job".into(), Action::Unchanged, false)]);
        assert_eq!(p.steps[0].reason, "scheduled");
        let run = |start, restart| Desired {
            seq: RunSeq { start, restart },
            ..running(&job)
        };
        // A run asked for starts at once, while an earlier level is still starting.
        let o = [observed_with(
            &ei[0],
            &early,
            InstanceState::Starting,
            false,
            None,
        )];
        let p = plan(&[running(&early), run(1, 0)], &o);
        let s = p.steps.iter().find(|s| s.instance == "job").unwrap();
        assert_eq!((s.action, s.deferred), (Action::Start, false));
        // Once carried out, a stopped or exited job is not started again.
        for state in [InstanceState::Stopped, InstanceState::Exited] {
            let mut o = observed_with(&ji[0], &job, state, false, Some(0));
            o.seq = RunSeq {
                start: 1,
                restart: 0,
            };
            assert_eq!(plan(&[run(1, 0)], &[o]).steps[0].action, Action::Unchanged);
            assert_eq!(plan(&[run(2, 0)], &[o]).steps[0].action, Action::Start);
        }
        // A run under way: `replace` restarts it; a changed command waits for the next run.
        let mut o = observed_with(&ids[0], &job, InstanceState::Running, true, None);
        o.seq = RunSeq {
            start: 1,
            restart: 0,
        };
        assert_eq!(plan(&[run(1, 1)], &[o]).steps[0].action, Action::Restart);
        assert_eq!(plan(&[run(2, 0)], &[o]).steps[0].action, Action::Unchanged);
        let mut changed = job.clone();
        changed.exec = crate::config::Exec::Command("sleep 1".into());
        let d = Desired {
            seq: RunSeq {
                start: 1,
                restart: 0,
            },
            ..running(&changed)
        };
        assert_eq!(plan(&[d], &[o]).steps[0].action, Action::Update);
    }

    #[test]
    fn stop_ranks_put_dependents_first() {
        let db = spec("db", 0);
        let mut migrate = spec("migrate", 0);
        migrate.depends_on.insert("db".into(), Condition::Healthy);
        let mut web = spec("web", 0);
        web.depends_on.insert("db".into(), Condition::Healthy);
        web.depends_on
            .insert("migrate".into(), Condition::Completed);
        let alone = spec("alone", 0);
        let ranks = stop_ranks([&db, &migrate, &web, &alone].into_iter());
        assert_eq!(
            ranks,
            BTreeMap::from([
                ("alone".to_string(), 0),
                ("db".to_string(), 2),
                ("migrate".to_string(), 1),
                ("web".to_string(), 0),
            ])
        );
    }

    #[test]
    fn natural_order_of_instances() {
        let mut s = spec("w", 0);
        s.instances = 11;
        let p = plan(&[running(&s)], &[]);
        assert_eq!(p.steps[1].instance, "w-2");
        assert_eq!(p.steps[10].instance, "w-11");
    }
}
