//! The keys around a program's command (`docs/configuration.md`, "Dependencies", "Probes",
//! "Hooks"): `depends_on`, `[readiness]`, `[liveness]`, `[[hooks.*]]` and `pid_file`, and the
//! check across programs that dependencies name programs, go no later priority level and form
//! no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::document::{did_you_mean, k, Document, KeyPath};
use super::error::ConfigError;
use super::program::RawProgram;
use super::raw::{Check, Val};
use super::{check_name, Condition, Dur, HookPhase, HookSpec, Hooks, OnFailure, ProbeCheck};
use super::{ProbeSpec, ProgramSpec, StatusCodes};

/// `depends_on`: names (each `running`), or a table of name → condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "a list of program names or a table of name = \"condition\""
)]
pub enum RawDepends {
    List(Vec<String>),
    Table(serde_json::Map<String, Value>),
}

/// `[readiness]`, `[liveness]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub struct RawProbe {
    #[serde(rename = "type")]
    kind: Val<String>,
    url: Val<String>,
    expect_status: Val<StatusCodes>,
    address: Val<String>,
    command: Val<String>,
    pattern: Val<String>,
    initial_delay: Val<String>,
    interval: Val<String>,
    timeout: Val<String>,
    success_threshold: Val<i64>,
    failure_threshold: Val<i64>,
}

/// `[hooks]`: a list of hooks per phase.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub struct RawHooks {
    pre_start: Val<Vec<RawHook>>,
    post_start: Val<Vec<RawHook>>,
    pre_stop: Val<Vec<RawHook>>,
    post_stop: Val<Vec<RawHook>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawHook {
    name: Val<String>,
    command: Val<String>,
    timeout: Val<String>,
    on_failure: Val<OnFailure>,
}

/// Applies the keys to `spec`; relative paths resolve against `base`.
pub fn apply(c: &mut Check, raw: &RawProgram, spec: &mut ProgramSpec, base: Option<&Path>) {
    if let Some(d) = c.get(&raw.depends_on, "depends_on") {
        spec.depends_on = depends(c, d, &spec.name);
    }
    spec.readiness = (c.table(&raw.readiness, "readiness", probe).flatten()).map(Box::new);
    spec.liveness = (c.table(&raw.liveness, "liveness", probe).flatten()).map(Box::new);
    spec.hooks = c
        .table(&raw.hooks, "hooks", hooks)
        .unwrap_or_default()
        .into();
    spec.pid_file = c.path(&raw.pid_file, "pid_file", base);
}

fn depends(c: &mut Check, d: &RawDepends, own: &str) -> BTreeMap<String, Condition> {
    let entries: Vec<(KeyPath, String, Option<&Value>)> = match d {
        RawDepends::List(names) => names
            .iter()
            .enumerate()
            .map(|(i, n)| (k("depends_on").index(i), n.clone(), None))
            .collect(),
        RawDepends::Table(t) => t
            .iter()
            .map(|(n, v)| (k("depends_on").key(n), n.clone(), Some(v)))
            .collect(),
    };
    let mut out = BTreeMap::new();
    for (at, name, condition) in entries {
        if let Err(why) = check_name(&name) {
            c.err(&at, format!("`depends_on`: {why}"));
            continue;
        }
        if name == own {
            c.err(&at, "a program cannot depend on itself")
                .help("remove it from `depends_on`");
            continue;
        }
        let condition = match condition {
            None => Condition::Running,
            Some(Value::String(s)) => match s.parse() {
                Ok(cond) => cond,
                Err(why) => {
                    let hint = did_you_mean(s, &Condition::ALL)
                        .unwrap_or_else(|| format!("use one of {}", Condition::ALL.join(", ")));
                    c.err(&at, format!("`{}`: {why}", c.at.join(&at)))
                        .help(hint);
                    continue;
                }
            },
            Some(_) => {
                let message = format!("`{}` must be a condition in quotes", c.at.join(&at));
                c.err(&at, message)
                    .help(format!("use one of {}", Condition::ALL.join(", ")));
                continue;
            }
        };
        out.insert(name, condition);
    }
    out
}

/// One probe; `c.at` is its table (`readiness`).
fn probe(c: &mut Check, raw: &RawProbe) -> Option<ProbeSpec> {
    let before = c.errors.len();
    let kind = c.kind(&raw.kind, &["http", "tcp", "exec", "log"], "probe");
    let check = kind.and_then(|kind| probe_check(c, &kind, raw));
    let initial_delay = c.dur(&raw.initial_delay, "initial_delay");
    let interval = c.positive_dur(&raw.interval, "interval");
    let timeout = c.positive_dur(&raw.timeout, "timeout");
    let success_threshold = c.positive(&raw.success_threshold.or(1), "success_threshold");
    let failure_threshold = c.positive(&raw.failure_threshold.or(3), "failure_threshold");
    let spec = ProbeSpec {
        check: check?,
        initial_delay: initial_delay.unwrap_or(Dur::ZERO),
        interval: interval.unwrap_or(ProbeSpec::DEFAULT_INTERVAL),
        timeout: timeout.unwrap_or(ProbeSpec::DEFAULT_TIMEOUT),
        success_threshold: success_threshold?,
        failure_threshold: failure_threshold?,
    };
    Some(spec).filter(|_| c.errors.len() == before)
}

/// The check of a probe of a known `kind`.
fn probe_check(c: &mut Check, kind: &str, raw: &RawProbe) -> Option<ProbeCheck> {
    let takes: &[(&str, &str)] = match kind {
        "http" => &[
            ("url", "url = \"http://127.0.0.1:8000/health\""),
            ("expect_status", ""),
        ],
        "tcp" => &[("address", "address = \"127.0.0.1:5432\"")],
        "exec" => &[("command", "command = \"pg_isready\"")],
        _ => &[("pattern", "pattern = \"listening on\"")],
    };
    let given = [
        ("url", !raw.url.is_absent()),
        ("expect_status", !raw.expect_status.is_absent()),
        ("address", !raw.address.is_absent()),
        ("command", !raw.command.is_absent()),
        ("pattern", !raw.pattern.is_absent()),
    ];
    c.applies(kind, "probe", &given, takes);
    let first = takes[0].0;
    let text = |c: &mut Check, v| Some(c.non_empty(v, first, None)?.trim().to_string());
    match kind {
        "http" => {
            let url = text(c, &raw.url)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.bad(
                    "url",
                    format_args!("{url:?} is not an http:// or https:// URL"),
                );
                return None;
            }
            let expect_status = c
                .value(&raw.expect_status, "expect_status")
                .unwrap_or_default();
            Some(ProbeCheck::Http { url, expect_status })
        }
        "tcp" => {
            let address = text(c, &raw.address)?;
            let port = address.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p > 0) {
                c.bad("address", format_args!("{address:?} has no port"))
                    .help("write host:port, e.g. \"127.0.0.1:5432\"");
                return None;
            }
            Some(ProbeCheck::Tcp { address })
        }
        "exec" => text(c, &raw.command).map(|command| ProbeCheck::Exec { command }),
        _ => {
            let pattern = text(c, &raw.pattern)?;
            if let Err(e) = regex::Regex::new(&pattern) {
                c.bad("pattern", format_args!("is not a regular expression: {e}"));
                return None;
            }
            Some(ProbeCheck::Log { pattern })
        }
    }
}

fn hooks(c: &mut Check, raw: &RawHooks) -> Hooks {
    let mut out = Hooks::default();
    let mut names: BTreeMap<String, KeyPath> = BTreeMap::new();
    for (phase, list) in [
        (HookPhase::PreStart, &raw.pre_start),
        (HookPhase::PostStart, &raw.post_start),
        (HookPhase::PreStop, &raw.pre_stop),
        (HookPhase::PostStop, &raw.post_stop),
    ] {
        let key = phase.as_str();
        let slot = match phase {
            HookPhase::PreStart => &mut out.pre_start,
            HookPhase::PostStart => &mut out.post_start,
            HookPhase::PreStop => &mut out.pre_stop,
            HookPhase::PostStop => &mut out.post_stop,
        };
        for (i, h) in c.get(list, key).into_iter().flatten().enumerate() {
            let at = k(key).index(i);
            let Some(hook) = c.within(&at, |c| hook(c, h)) else {
                continue;
            };
            if let Some(first) = names.get(&hook.name) {
                let message = format!(
                    "hook name `{}` is also used by `{}`",
                    hook.name,
                    c.at.join(first)
                );
                c.err(at.key("name"), message)
                    .help("hook names are unique within a program: their output lines are prefixed with them");
                continue;
            }
            names.insert(hook.name.clone(), at);
            slot.push(hook);
        }
    }
    out
}

fn hook(c: &mut Check, raw: &RawHook) -> Option<HookSpec> {
    let before = c.errors.len();
    let hint = "name = \"migrate\": it prefixes the hook's output lines";
    c.required(&raw.name, "name", "", hint);
    let name = c.get(&raw.name, "name").and_then(|n| match check_name(n) {
        Ok(()) => Some(n.clone()),
        Err(why) => {
            c.bad("name", format_args!("is not valid: {why}"));
            None
        }
    });
    let hint = "command = \"./migrate.sh\" (run through /bin/sh -c)";
    c.required(&raw.command, "command", "", hint);
    let command = c.non_empty(&raw.command, "command", None).cloned();
    let timeout = c.positive_dur(&raw.timeout, "timeout");
    let on_failure = c.value(&raw.on_failure, "on_failure").unwrap_or_default();
    let spec = HookSpec {
        name: name?,
        command: command?,
        timeout: timeout.unwrap_or(HookSpec::DEFAULT_TIMEOUT),
        on_failure,
    };
    Some(spec).filter(|_| c.errors.len() == before)
}

/// One program as the cross-program check sees it: where errors about it go, and its spec
/// when it is valid.
pub struct Node<'a> {
    /// The program's document and where its spec's keys are in it (`spec` in the wrapped form);
    /// every node with dependencies has them.
    pub doc: Option<&'a (Document, KeyPath)>,
    pub name: Option<&'a str>,
    pub spec: Option<&'a ProgramSpec>,
}

/// Dependencies across programs: each names a program (of these), none on a later priority
/// level, no cycle. Returns the errors by node index; the programs in error do not run the new
/// definition, like any invalid program.
pub fn check_dependencies(nodes: &[Node<'_>]) -> Vec<(usize, ConfigError)> {
    let by_name: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((n.name?, i)))
        .collect();
    let candidates: Vec<&str> = by_name.keys().copied().collect();
    let mut errors = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (Some(spec), Some((doc, spec_at))) = (n.spec, n.doc) else {
            continue;
        };
        for dep in spec.depends_on.keys() {
            let at = spec_at.join(&dep_key(doc, spec_at, dep));
            let shown = at.to_string();
            match by_name.get(dep.as_str()).map(|&j| &nodes[j]) {
                None => {
                    let hint = did_you_mean(dep, &candidates).unwrap_or_else(|| {
                        format!("add a program named `{dep}` or remove it from `depends_on`")
                    });
                    let message = format!("`{shown}`: no program is named `{dep}`");
                    errors.push((i, doc.error(&at, message).with_hint(hint)));
                }
                Some(Node {
                    spec: Some(other), ..
                }) if other.priority > spec.priority => {
                    let message = format!(
                        "`{}` (priority {}) depends on `{dep}`, which has the later priority {}: it would wait for a level that starts after its own",
                        spec.name, spec.priority, other.priority
                    );
                    let hint = format!(
                        "give `{dep}` a priority of {} or lower, or `{}` one of {} or higher",
                        spec.priority, spec.name, other.priority
                    );
                    errors.push((i, doc.error(&at, message).with_hint(hint)));
                }
                Some(_) => {}
            }
        }
    }
    for cycle in cycles(nodes, &by_name) {
        let shown = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| nodes[i].name.unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" → ");
        for (pos, &i) in cycle.iter().enumerate() {
            let next = nodes[cycle[(pos + 1) % cycle.len()]].name.unwrap_or("?");
            let n = &nodes[i];
            // A node in a cycle has dependencies, so its document.
            let Some((doc, spec_at)) = n.doc else {
                continue;
            };
            let at = spec_at.join(&dep_key(doc, spec_at, next));
            let message = format!("dependency cycle: {shown}");
            let hint = "remove one of these dependencies";
            errors.push((i, doc.error(&at, message).with_hint(hint)));
        }
    }
    errors
}

/// Where a program's keys are in `doc`, given where the program is: its `spec` table in the
/// wrapped form.
pub fn spec_at(doc: &Document, at: &KeyPath) -> KeyPath {
    let spec = at.key("spec");
    match doc.tree.pointer(&pointer(&spec)) {
        Some(Value::Object(_)) => spec,
        _ => at.clone(),
    }
}

/// Where the dependency `dep` is written: `depends_on.db` (table) or `depends_on[1]` (list).
fn dep_key(doc: &Document, spec_at: &KeyPath, dep: &str) -> KeyPath {
    let list = doc
        .tree
        .pointer(&pointer(&spec_at.join(&k("depends_on"))))
        .and_then(Value::as_array);
    match list.and_then(|l| l.iter().position(|v| v.as_str() == Some(dep))) {
        Some(i) => k("depends_on").index(i),
        None => k("depends_on").key(dep),
    }
}

fn pointer(path: &KeyPath) -> String {
    use super::document::Seg;
    path.0
        .iter()
        .map(|s| match s {
            Seg::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
            Seg::Index(i) => format!("/{i}"),
        })
        .collect()
}

/// Every elementary cycle's members, each cycle once (by its smallest node), in order.
fn cycles(nodes: &[Node<'_>], by_name: &BTreeMap<&str, usize>) -> Vec<Vec<usize>> {
    let edges = |i: usize| -> Vec<usize> {
        nodes[i]
            .spec
            .iter()
            .flat_map(|s| s.depends_on.keys())
            .filter_map(|d| by_name.get(d.as_str()).copied())
            .collect()
    };
    // Depth-first search with colours; a back edge closes the cycle on the current path.
    let mut state = vec![0u8; nodes.len()];
    let mut found: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..nodes.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<usize> = Vec::new();
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, edges(start))];
        state[start] = 1;
        path.push(start);
        while let Some((_, next)) = stack.last_mut() {
            match next.pop() {
                Some(j) if state[j] == 0 => {
                    state[j] = 1;
                    path.push(j);
                    stack.push((j, edges(j)));
                }
                Some(j) if state[j] == 1 => {
                    let from = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    let min = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, &v)| v)
                        .map(|(p, _)| p);
                    cycle.rotate_left(min.unwrap_or(0));
                    found.insert(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some((done, _)) = stack.pop() {
                        state[done] = 2;
                        path.pop();
                    }
                }
            }
        }
    }
    found.into_iter().collect()
}

/// [`check_dependencies`] for a program given through the API: its dependencies against the
/// programs that exist (`others`, itself left out), as sentences.
pub fn request_dependency_errors(spec: &ProgramSpec, others: &[&ProgramSpec]) -> Vec<String> {
    let doc = Document::without_text(super::scan::REQUEST_FILE, Value::Null);
    let doc = (doc, KeyPath::default());
    let others = others.iter().filter(|o| o.name != spec.name);
    let nodes: Vec<Node> = std::iter::once(spec)
        .chain(others.copied())
        .map(|spec| Node {
            doc: Some(&doc),
            name: Some(&spec.name),
            spec: Some(spec),
        })
        .collect();
    check_dependencies(&nodes)
        .into_iter()
        .filter(|(i, _)| *i == 0)
        .map(|(_, e)| match e.hint {
            Some(hint) => format!("{}; {hint}", e.message),
            None => e.message,
        })
        .collect()
}
