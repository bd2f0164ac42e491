//! One program tree (a file, an inline `[[processes]]` entry, an API body) → [`ProgramSpec`],
//! in the flat or the wrapped form (`type` + `spec`), by the rules and defaults of
//! `docs/configuration.md`. Every error of the tree is reported, not only the first.

use std::path::Path;
use std::str::FromStr;

use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::Value;

use super::document::{did_you_mean, k, Document, KeyPath, Seg};
use super::env::EnvLayers;
use super::error::ConfigError;
use super::identity::{self, RawAccount, RawLimits};
use super::lifecycle_keys::{self, RawDepends, RawHooks, RawProbe};
use super::raw::{known_keys, set, Check, RawEnv, RawLog, Val};
use super::{check_name, Concurrency, DetectorKind, DetectorSpec, Dur, Exec, LogSpec, ProgramSpec};

/// The most instances one program may run: each is a process, pipes, an actor and records.
pub const MAX_INSTANCES: u32 = 10_000;

/// A program: the flat form, or the `spec` table of the wrapped form. Counts are `i64` so that
/// `instances = 0` or `-1` reach validation and get a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub struct RawProgram {
    #[serde(rename = "type")]
    kind: Val<String>,
    name: Val<String>,
    command: Val<String>,
    args: Val<Vec<String>>,
    work_dir: Val<String>,
    env: Val<RawEnv>,
    priority: Val<i64>,
    autostart: Val<bool>,
    pub(super) instances: Val<i64>,
    start_duration: Val<String>,
    retry_count: Val<i64>,
    retry_interval: Val<String>,
    pub(super) auto_restart: Val<bool>,
    autorestart: Val<bool>,
    restart_interval: Val<String>,
    restart_max_interval: Val<String>,
    stop_signal: Val<RawSignal>,
    stop_timeout: Val<String>,
    log: Val<RawLog>,
    detectors: Val<Vec<RawDetector>>,
    pub(super) user: Val<RawAccount>,
    pub(super) group: Val<RawAccount>,
    pub(super) supplementary_groups: Val<Vec<RawAccount>>,
    pub(super) umask: Val<String>,
    pub(super) nice: Val<i64>,
    pub(super) oom_score_adj: Val<i64>,
    pub(super) limits: Val<RawLimits>,
    pub(super) depends_on: Val<RawDepends>,
    pub(super) readiness: Val<RawProbe>,
    pub(super) liveness: Val<RawProbe>,
    pub(super) hooks: Val<RawHooks>,
    pub(super) pid_file: Val<String>,
    pub(super) schedule: Val<String>,
    pub(super) time_zone: Val<String>,
    pub(super) concurrency: Val<Concurrency>,
    pub(super) suspend: Val<bool>,
    pub(super) starting_deadline: Val<String>,
    pub(super) history_limit: Val<i64>,
    pub(super) timeout: Val<String>,
    pub(super) retries: Val<i64>,
    pub(super) placement: Val<super::placement_keys::RawPlacement>,
    pub(super) spread: Val<i64>,
    pub(super) movable: Val<bool>,
}

/// The top level of the wrapped form.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawWrapped {
    #[serde(rename = "type")]
    kind: Val<String>,
    spec: Val<RawProgram>,
}

/// One entry of `detectors`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawDetector {
    #[serde(rename = "type")]
    kind: Val<String>,
    path: Val<String>,
    command: Val<String>,
    timeout: Val<String>,
    interval: Val<String>,
    failure_threshold: Val<i64>,
}

/// `stop_signal` as written: a name (`"TERM"`, `"SIGTERM"`, `"term"`, `"15"`) or a number (`15`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a signal name like \"TERM\" or a signal number")]
pub enum RawSignal {
    Name(String),
    Number(i64),
}

/// What a program takes from its surroundings.
pub struct ProgramContext<'a> {
    /// The main config's `[log]`, paths already resolved.
    pub log_defaults: &'a LogSpec,
    pub use_os_env: bool,
    /// The environment after `env_files` and the global `env`.
    pub env: &'a EnvLayers,
    /// Relative paths resolve against this; `None` means they must be absolute (API requests).
    pub base_dir: Option<&'a Path>,
    /// The name when the tree has none (a file's stem); `None` makes `name` required.
    pub fallback_name: Option<String>,
}

/// The result of validating one program tree.
pub struct ProgramOutcome {
    /// The name as far as it could be read, even from an invalid tree, so a broken file still
    /// claims its name (duplicates, group members, keeping a last good spec).
    pub name: Option<String>,
    /// An error about the name, without its message yet: where `name` is written (`name`,
    /// `spec.name`), or the file itself when the name is its stem.
    pub name_site: ConfigError,
    pub result: Result<ProgramSpec, Vec<ConfigError>>,
}

/// Validates the program `tree`, which sits at `at` in `doc`.
pub fn validate(doc: &Document, tree: &Value, at: KeyPath, pc: &ProgramContext) -> ProgramOutcome {
    let (wrapped, flat) = (tree.pointer("/spec/name"), tree.get("name"));
    let name_path = match (wrapped, tree.get("spec"), flat) {
        (Some(_), _, _) => k("spec").key("name"),
        (None, None, Some(_)) => k("name"),
        _ => KeyPath::default(),
    };
    let name_site = doc.error(&at.join(&name_path), "");
    let mut c = Check::new(doc, at);
    let name = wrapped.or(flat).and_then(Value::as_str).map(str::to_string);
    let spec = match tree.get("spec") {
        _ if !tree.is_object() => {
            c.err(
                "",
                format!("a program must be a table of keys, found {}", kind_of(tree)),
            );
            None
        }
        Some(spec) => wrapped_form(&mut c, tree, spec, pc),
        None => {
            let raw: RawProgram = c.read(tree, |_| None);
            let kind = check_type(&mut c, &raw.kind);
            build(&mut c, &raw, pc, kind.as_deref())
        }
    };
    ProgramOutcome {
        name: name.or_else(|| pc.fallback_name.clone()),
        name_site,
        result: spec.filter(|_| c.errors.is_empty()).ok_or(c.errors),
    }
}

/// A tree with a `spec` table: only `type` and `spec` at the top.
fn wrapped_form(
    c: &mut Check,
    tree: &Value,
    spec: &Value,
    pc: &ProgramContext,
) -> Option<ProgramSpec> {
    let program_keys = known_keys::<RawProgram>(&[]);
    let raw: RawWrapped = c.read(tree, |p| match p.0.as_slice() {
        [Seg::Key(key)] if program_keys.contains(&key.as_str()) => {
            Some(format!("move `{key}` into the `spec` table"))
        }
        _ => None,
    });
    let kind = check_type(c, &raw.kind);
    c.at = c.at.key("spec");
    let (Val::Ok(raw), true) = (&raw.spec, spec.is_object()) else {
        c.err(
            "",
            format!("`spec` must be a table of keys, found {}", kind_of(spec)),
        );
        return None;
    };
    if !raw.kind.is_absent() {
        let message = format!("unknown key `{}`", c.at.key("type"));
        c.err("type", message)
            .help("`type` belongs next to `spec`, at the top of the file");
    }
    build(c, raw, pc, kind.as_deref())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// The file's `type`, when it is one provisr knows: `process` or `cronjob`.
fn check_type(c: &mut Check, kind: &Val<String>) -> Option<String> {
    let kind = c.get(kind, "type")?;
    if kind != "process" && kind != "cronjob" {
        let message =
            format!("`type` is {kind:?}, but only \"process\" and \"cronjob\" are supported");
        let hint = did_you_mean(kind, &["process", "cronjob"])
            .unwrap_or_else(|| "write type = \"process\" or type = \"cronjob\"".to_string());
        c.err("type", message).help(hint);
        return None;
    }
    Some(kind.clone())
}

/// Applies the rules and defaults; `None` when something required is missing or invalid.
fn build(
    c: &mut Check,
    raw: &RawProgram,
    pc: &ProgramContext,
    kind: Option<&str>,
) -> Option<ProgramSpec> {
    let name = match (c.get(&raw.name, "name"), &pc.fallback_name) {
        (Some(name), _) => match check_name(name) {
            Ok(()) => Some(name.clone()),
            Err(why) => {
                let e = c.bad("name", format_args!("is not valid: {why}"));
                e.help("names match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
                None
            }
        },
        (None, _) if !raw.name.is_absent() => None,
        (None, Some(stem)) => match check_name(stem) {
            Ok(()) => Some(stem.clone()),
            Err(why) => {
                let message =
                    format!("the program name taken from the file name is not valid: {why}");
                c.err("", message).help("set `name`, or rename the file");
                None
            }
        },
        (None, None) => {
            c.bad("name", "is required here")
                .help("add name = \"my-program\"");
            None
        }
    };
    let exec = exec(c, raw);
    let mut spec = ProgramSpec::new(name.clone().unwrap_or_default(), Exec::Args(Vec::new()));
    spec.use_os_env = pc.use_os_env;
    spec.work_dir = c.path(&raw.work_dir, "work_dir", pc.base_dir);
    spec.env = match c.get(&raw.env, "env") {
        Some(env) => {
            let mut layers = pc.env.clone();
            c.env(&mut layers, env, &k("env"));
            layers.into_overlay()
        }
        None => pc.env.overlay().clone(),
    };
    if let Some(&p) = c.get(&raw.priority, "priority") {
        match i32::try_from(p) {
            Ok(p) => spec.priority = p,
            Err(_) => {
                let (min, max) = (i32::MIN, i32::MAX);
                c.bad(
                    "priority",
                    format_args!("{p} is out of range ({min} to {max})"),
                );
            }
        }
    }
    if let Some(&n) = c.get(&raw.instances, "instances") {
        match u32::try_from(n) {
            Ok(n) if (1..=MAX_INSTANCES).contains(&n) => spec.instances = n,
            _ if n > i64::from(MAX_INSTANCES) => c
                .bad(
                    "instances",
                    format_args!("must be at most {MAX_INSTANCES}, got {n}"),
                )
                .help("split the work over several programs"),
            _ => c
                .bad("instances", format_args!("must be at least 1, got {n}"))
                .help("to keep a program from running, set autostart = false or stop it"),
        };
    }
    set!(c.dur(raw => spec): start_duration, retry_interval, restart_interval);
    set!(c.dur(raw => spec): restart_max_interval, stop_timeout);
    set!(c.count(raw => spec): retry_count);
    set!(c.value(raw => spec): autostart);
    let (auto_restart, alias) = (
        c.value(&raw.auto_restart, "auto_restart"),
        c.value(&raw.autorestart, "autorestart"),
    );
    if let (Some(_), Some(_)) = (auto_restart, alias) {
        let message = "`auto_restart` and its alias `autorestart` are both given";
        c.err("autorestart", message)
            .help("keep only `auto_restart`");
    }
    spec.auto_restart = auto_restart.or(alias).unwrap_or(spec.auto_restart);
    match c.get(&raw.stop_signal, "stop_signal").map(normalize_signal) {
        Some(Ok(name)) => spec.stop_signal = name,
        Some(Err(message)) => c.err("stop_signal", message).help(
            "use a name like \"TERM\", \"INT\", \"HUP\", \"QUIT\", \"KILL\", \"USR1\", or a number",
        ),
        None => {}
    }
    spec.log = c.log(&raw.log, pc.log_defaults.clone(), pc.base_dir).into();
    identity::apply(c, raw, &mut spec);
    lifecycle_keys::apply(c, raw, &mut spec, pc.base_dir);
    super::cronjob::apply(c, raw, &mut spec, kind);
    super::placement_keys::apply(c, raw, &mut spec);
    let detectors = c.each(&raw.detectors, "detectors", |c, d| {
        detector(c, d, pc.base_dir)
    });
    spec.detectors = detectors.into_iter().flatten().collect();
    spec.exec = exec?;
    name?;
    Some(spec)
}

/// `command` (a shell line) or `args` (an argv), exactly one of them.
fn exec(c: &mut Check, raw: &RawProgram) -> Option<Exec> {
    let both = "use `command` for a shell line or `args` for an argv list, not both";
    match (c.get(&raw.command, "command"), c.get(&raw.args, "args")) {
        (Some(_), Some(_)) => c
            .err("args", "`command` and `args` are both given")
            .help(both),
        (Some(command), None) if command.trim().is_empty() => {
            c.bad("command", "is empty");
        }
        (Some(command), None) => return Some(Exec::Command(command.clone())),
        (None, Some(args)) if args.first().is_none_or(|a| a.trim().is_empty()) => {
            let message = "needs at least the program to run as its first element";
            c.bad("args", message)
                .help("e.g. args = [\"sleep\", \"300\"]");
        }
        (None, Some(args)) => return Some(Exec::Args(args.clone())),
        // A `command` of the wrong type was reported already; it is not also missing.
        (None, None) if !(raw.command.is_absent() && raw.args.is_absent()) => {}
        (None, None) => c
            .err("", "`command` or `args` is required")
            .help("add command = \"…\" (a shell line) or args = [\"prog\", \"arg\"]"),
    }
    None
}

/// One detector; `c.at` is its place (`detectors[1]`).
fn detector(c: &mut Check, raw: &RawDetector, base: Option<&Path>) -> Option<DetectorSpec> {
    let before = c.errors.len();
    let kind = c.kind(&raw.kind, &["exec:pid", "pidfile", "command"], "detector");
    let kind = kind.and_then(|kind| detector_kind(c, &kind, raw, base));
    let interval = c.positive_dur(&raw.interval, "interval");
    let failure_threshold = c.positive(&raw.failure_threshold.or(3), "failure_threshold");
    let spec = DetectorSpec {
        kind: kind?,
        interval: interval.unwrap_or(Dur::from_secs(10)),
        failure_threshold: failure_threshold?,
    };
    Some(spec).filter(|_| c.errors.len() == before)
}

/// The keys of a detector of a known `kind`.
fn detector_kind(
    c: &mut Check,
    kind: &str,
    raw: &RawDetector,
    base: Option<&Path>,
) -> Option<DetectorKind> {
    let takes: &[(&str, &str)] = match kind {
        "pidfile" => &[("path", "path = \"/run/app.pid\"")],
        "command" => &[
            (
                "command",
                "command = \"curl -fsS http://127.0.0.1:8000/health\"",
            ),
            ("timeout", ""),
        ],
        _ => &[],
    };
    let given = [
        ("path", !raw.path.is_absent()),
        ("command", !raw.command.is_absent()),
        ("timeout", !raw.timeout.is_absent()),
    ];
    c.applies(kind, "detector", &given, takes);
    match kind {
        "exec:pid" => Some(DetectorKind::ExecPid),
        "pidfile" => c
            .path(&raw.path, "path", base)
            .map(|path| DetectorKind::Pidfile { path }),
        _ => {
            let timeout = c.positive_dur(&raw.timeout, "timeout");
            let command = c.non_empty(&raw.command, "command", None)?.clone();
            let timeout = timeout.unwrap_or(Dur::from_secs(5));
            Some(DetectorKind::Command { command, timeout })
        }
    }
}

/// Normalizes a signal to its name without `SIG`: `"sigterm"`, `"TERM"` and `15` give `"TERM"`.
pub fn normalize_signal(raw: &RawSignal) -> Result<String, String> {
    let name = |s: Signal| s.as_str().trim_start_matches("SIG").to_string();
    let from_number = |n: i64| {
        let signal = i32::try_from(n).ok().and_then(|n| Signal::try_from(n).ok());
        let why = || format!("`stop_signal` {n} is not a signal number");
        signal.map(name).ok_or_else(why)
    };
    match raw {
        RawSignal::Number(n) => from_number(*n),
        RawSignal::Name(s) => {
            let upper = s.trim().to_ascii_uppercase();
            if let Ok(n) = upper.parse::<i64>() {
                return from_number(n);
            }
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
            let why = |_| format!("`stop_signal` {s:?} is not a known signal");
            Signal::from_str(&format!("SIG{bare}"))
                .map(name)
                .map_err(why)
        }
    }
}

#[cfg(test)]
mod tests;
