//! Raw trees → validated [`ProgramSpec`]s and groups, collecting every error instead of stopping
//! at the first.
//!
//! A program tree goes through: form detection (wrapped `type`+`spec` or flat), the unknown-key
//! walk, typed deserialization (type errors; the offending key is dropped and deserialization
//! retried so later type errors are found too), then the semantic rules of SPEC §2 and §7.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::env::{parse_entry, EnvLayers};
use super::error::ConfigError;
use super::locate::{did_you_mean, KeyPath, LineTable, Seg};
use super::raw::{
    strip_unknown_keys, RawDetector, RawDur, RawEnv, RawEnvEntry, RawLog, RawProgram, RawSignal,
    UnknownKey, PROGRAM_SHAPE, WRAPPED_KEYS,
};
use super::{check_name, DetectorKind, DetectorSpec, Dur, Exec, LogSpec, ProgramSpec};

/// A file (or request) being validated: its name for errors and the lines of its keys.
#[derive(Debug)]
pub struct SourceInfo {
    pub file: PathBuf,
    pub lines: Option<Arc<LineTable>>,
}

/// Where in a source a tree sits: the source and the key path of the tree within it (e.g.
/// `processes[2].spec` for a wrapped inline process).
#[derive(Clone, Debug)]
pub struct Ctx {
    pub src: Arc<SourceInfo>,
    pub prefix: KeyPath,
}

impl Ctx {
    pub fn new(src: Arc<SourceInfo>) -> Ctx {
        Ctx {
            src,
            prefix: KeyPath::root(),
        }
    }

    /// The context of a sub-tree.
    pub fn within(&self, rel: &KeyPath) -> Ctx {
        Ctx {
            src: self.src.clone(),
            prefix: self.prefix.join(rel),
        }
    }

    /// An error about the key at `rel`, with its line when the text gives one.
    pub fn err(&self, rel: &KeyPath, message: impl Into<String>) -> ConfigError {
        let full = self.prefix.join(rel);
        let line = self.src.lines.as_ref().and_then(|t| t.line_of(&full));
        let e = ConfigError::new(self.src.file.clone(), message).at_line(line);
        if full.is_root() {
            e
        } else {
            e.with_key(full.to_string())
        }
    }

    /// The error for an unknown key, with a "did you mean" hint.
    pub fn unknown_key(&self, u: &UnknownKey) -> ConfigError {
        let full = self.prefix.join(&u.path);
        self.err(&u.path, format!("unknown key `{full}`"))
            .with_hint_opt(did_you_mean(&u.key, &u.known))
    }
}

/// Deserializes `tree` into `T`, reporting every type error: after each one the offending key is
/// dropped from the tree and deserialization retried.
pub fn deserialize_collect<T: DeserializeOwned + Default>(
    mut tree: Value,
    ctx: &Ctx,
) -> (T, Vec<ConfigError>) {
    let mut errors = Vec::new();
    // Each pass removes one key, so this ends; the bound only guards against a pathological tree.
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, T>(&tree) {
            Ok(v) => return (v, errors),
            Err(e) => {
                let path = serde_path(e.path());
                let inner = e.into_inner().to_string();
                let shown = ctx.prefix.join(&path);
                let message = if path.is_root() {
                    format!("wrong type: {inner}")
                } else {
                    format!("`{shown}` has the wrong type: {inner}")
                };
                errors.push(ctx.err(&path, message).with_hint_opt(type_hint(&inner)));
                if !remove_deepest_key(&mut tree, &path) {
                    return (T::default(), errors);
                }
            }
        }
    }
    (T::default(), errors)
}

fn type_hint(serde_message: &str) -> Option<String> {
    if serde_message.contains("duration") {
        Some("write a number and a unit in quotes, e.g. \"1.5s\"".to_string())
    } else if serde_message.contains("expected i64") {
        Some("write a whole number".to_string())
    } else if serde_message.contains("expected a boolean") {
        Some("write true or false".to_string())
    } else {
        None
    }
}

fn serde_path(path: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment;
    KeyPath(
        path.iter()
            .filter_map(|seg| match seg {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect(),
    )
}

/// Removes the deepest map key on `path` from `tree`; false when there is none.
fn remove_deepest_key(tree: &mut Value, path: &KeyPath) -> bool {
    let Some(last_key) = path.0.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
        return false;
    };
    let mut node = tree;
    for seg in &path.0[..last_key] {
        node = match (seg, node) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (&path.0[last_key], node) {
        (Seg::Key(k), Value::Object(m)) => m.shift_remove(k).is_some(),
        _ => false,
    }
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
    /// The program's name as far as it could be read, even when the tree is invalid, so a
    /// broken file still claims its name (duplicates, group members, keeping a last good spec).
    pub name: Option<String>,
    /// Where `name` sits in the tree (`name`, or `spec.name` in the wrapped form).
    pub name_path: KeyPath,
    pub result: Result<ProgramSpec, Vec<ConfigError>>,
}

/// Validates one program tree in either form.
pub fn validate_program_tree(tree: Value, ctx: &Ctx, pc: &ProgramContext) -> ProgramOutcome {
    let mut errors = Vec::new();
    let best_name = tree
        .get("spec")
        .and_then(|s| s.get("name"))
        .or_else(|| tree.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| pc.fallback_name.clone());
    let Value::Object(mut top) = tree else {
        errors.push(ctx.err(
            &KeyPath::root(),
            format!(
                "a program must be a table of keys, found {}",
                kind_of(&tree)
            ),
        ));
        return ProgramOutcome {
            name: best_name,
            name_path: KeyPath::root(),
            result: Err(errors),
        };
    };

    if let Some(kind) = top.shift_remove("type") {
        match kind.as_str() {
            Some("process") => {}
            Some(other) => errors.push(
                ctx.err(
                    &KeyPath::root().key("type"),
                    format!("`type` is {other:?}, but only \"process\" is supported"),
                )
                .with_hint("write type = \"process\""),
            ),
            None => errors.push(ctx.err(
                &KeyPath::root().key("type"),
                format!(
                    "`type` must be the string \"process\", found {}",
                    kind_of(&kind)
                ),
            )),
        }
    }

    // Where the name was written; the root when it comes from the file name.
    let name_path = match top.get("spec") {
        Some(spec) if spec.get("name").is_some() => KeyPath::root().key("spec").key("name"),
        None if top.contains_key("name") => key("name"),
        _ => KeyPath::root(),
    };
    let (program_tree, pctx) = if let Some(spec) = top.shift_remove("spec") {
        // Wrapped form: only `type` and `spec` at the top.
        for key in top.keys() {
            let hint = if PROGRAM_SHAPE.keys().contains(&key.as_str()) {
                Some(format!("move `{key}` into the `spec` table"))
            } else {
                did_you_mean(key, WRAPPED_KEYS)
            };
            errors.push(
                ctx.err(&KeyPath::root().key(key), format!("unknown key `{key}`"))
                    .with_hint_opt(hint),
            );
        }
        let pctx = ctx.within(&KeyPath::root().key("spec"));
        if !spec.is_object() {
            errors.push(pctx.err(
                &KeyPath::root(),
                format!("`spec` must be a table of keys, found {}", kind_of(&spec)),
            ));
            return ProgramOutcome {
                name: best_name,
                name_path: KeyPath::root(),
                result: Err(errors),
            };
        }
        (spec, pctx)
    } else {
        (Value::Object(top), ctx.clone())
    };

    let mut tree = program_tree;
    for u in strip_unknown_keys(&mut tree, &PROGRAM_SHAPE, &KeyPath::root()) {
        errors.push(pctx.unknown_key(&u));
    }
    // Which keys were written at all, before type errors dropped any: `command = 5` must not
    // also be reported as "neither command nor args".
    let present: BTreeSet<String> = tree
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let (raw, type_errors) = deserialize_collect::<RawProgram>(tree, &pctx);
    errors.extend(type_errors);

    let result = build_program(raw, &present, &pctx, pc, &mut errors);
    ProgramOutcome {
        name: best_name,
        name_path,
        result: match result {
            Some(spec) if errors.is_empty() => Ok(spec),
            _ => Err(errors),
        },
    }
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

fn key(k: &str) -> KeyPath {
    KeyPath::root().key(k)
}

/// Applies SPEC §2 rules and defaults. Returns `None` when something required is missing.
fn build_program(
    raw: RawProgram,
    present: &BTreeSet<String>,
    ctx: &Ctx,
    pc: &ProgramContext,
    errors: &mut Vec<ConfigError>,
) -> Option<ProgramSpec> {
    let name = match (&raw.name, &pc.fallback_name) {
        (Some(name), _) => match check_name(name) {
            Ok(()) => Some(name.clone()),
            Err(why) => {
                errors.push(
                    ctx.err(&key("name"), format!("`name` is not valid: {why}"))
                        .with_hint("names match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
                );
                None
            }
        },
        (None, Some(stem)) => match check_name(stem) {
            Ok(()) => Some(stem.clone()),
            Err(why) => {
                errors.push(
                    ctx.err(
                        &KeyPath::root(),
                        format!("the program name taken from the file name is not valid: {why}"),
                    )
                    .with_hint("set `name`, or rename the file"),
                );
                None
            }
        },
        (None, None) if present.contains("name") => None,
        (None, None) => {
            errors.push(
                ctx.err(&key("name"), "`name` is required here")
                    .with_hint("add name = \"my-program\""),
            );
            None
        }
    };

    let exec = build_exec(&raw, present, ctx, errors);

    let mut spec = ProgramSpec::new(name.clone().unwrap_or_default(), Exec::Args(Vec::new()));
    spec.use_os_env = pc.use_os_env;
    spec.work_dir = raw
        .work_dir
        .as_deref()
        .and_then(|w| resolve_path(w, &key("work_dir"), ctx, pc.base_dir, errors));
    if let Some(env) = &raw.env {
        let mut layers = pc.env.clone();
        apply_env(&mut layers, env, &key("env"), ctx, errors);
        spec.env = layers.into_overlay();
    } else {
        spec.env = pc.env.overlay().clone();
    }
    if let Some(p) = raw.priority {
        match i32::try_from(p) {
            Ok(p) => spec.priority = p,
            Err(_) => errors.push(ctx.err(
                &key("priority"),
                format!(
                    "`priority` {p} is out of range ({} to {})",
                    i32::MIN,
                    i32::MAX
                ),
            )),
        }
    }
    if let Some(a) = raw.autostart {
        spec.autostart = a;
    }
    if let Some(n) = raw.instances {
        match u32::try_from(n) {
            Ok(n) if n >= 1 => spec.instances = n,
            _ => errors.push(
                ctx.err(
                    &key("instances"),
                    format!("`instances` must be at least 1, got {n}"),
                )
                .with_hint("to keep a program from running, set autostart = false or stop it"),
            ),
        }
    }
    spec.start_duration = duration(
        &raw.start_duration,
        "start_duration",
        spec.start_duration,
        ctx,
        errors,
    );
    if let Some(n) = raw.retry_count {
        spec.retry_count = count(n, "retry_count", 0, ctx, errors).unwrap_or(spec.retry_count);
    }
    spec.retry_interval = duration(
        &raw.retry_interval,
        "retry_interval",
        spec.retry_interval,
        ctx,
        errors,
    );
    match (raw.auto_restart, raw.autorestart) {
        (Some(_), Some(_)) => errors.push(
            ctx.err(
                &key("autorestart"),
                "`auto_restart` and its alias `autorestart` are both given",
            )
            .with_hint("keep only `auto_restart`"),
        ),
        (Some(v), None) | (None, Some(v)) => spec.auto_restart = v,
        (None, None) => {}
    }
    spec.restart_interval = duration(
        &raw.restart_interval,
        "restart_interval",
        spec.restart_interval,
        ctx,
        errors,
    );
    spec.restart_max_interval = duration(
        &raw.restart_max_interval,
        "restart_max_interval",
        spec.restart_max_interval,
        ctx,
        errors,
    );
    if let Some(sig) = &raw.stop_signal {
        match normalize_signal(sig) {
            Ok(name) => spec.stop_signal = name,
            Err(message) => errors.push(
                ctx.err(&key("stop_signal"), message)
                    .with_hint("use a name like \"TERM\", \"INT\", \"HUP\", \"QUIT\", \"KILL\", \"USR1\", or a number"),
            ),
        }
    }
    spec.stop_timeout = duration(
        &raw.stop_timeout,
        "stop_timeout",
        spec.stop_timeout,
        ctx,
        errors,
    );
    spec.log = build_log(
        raw.log.as_ref(),
        pc.log_defaults.clone(),
        &key("log"),
        ctx,
        pc.base_dir,
        errors,
    );
    if let Some(detectors) = &raw.detectors {
        spec.detectors = detectors
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                build_detector(d, &key("detectors").index(i), ctx, pc.base_dir, errors)
            })
            .collect();
    }

    spec.exec = exec?;
    name?;
    Some(spec)
}

fn build_exec(
    raw: &RawProgram,
    present: &BTreeSet<String>,
    ctx: &Ctx,
    errors: &mut Vec<ConfigError>,
) -> Option<Exec> {
    match (&raw.command, &raw.args) {
        (Some(_), Some(_)) => {
            errors.push(
                ctx.err(&key("args"), "`command` and `args` are both given")
                    .with_hint(
                        "use `command` for a shell line or `args` for an argv list, not both",
                    ),
            );
            None
        }
        (Some(c), None) if c.trim().is_empty() => {
            errors.push(ctx.err(&key("command"), "`command` is empty"));
            None
        }
        (Some(c), None) => Some(Exec::Command(c.clone())),
        (None, Some(a)) if a.is_empty() || a[0].trim().is_empty() => {
            errors.push(
                ctx.err(
                    &key("args"),
                    "`args` needs at least the program to run as its first element",
                )
                .with_hint("e.g. args = [\"sleep\", \"300\"]"),
            );
            None
        }
        (None, Some(a)) => Some(Exec::Args(a.clone())),
        (None, None) => {
            if !present.contains("command") && !present.contains("args") {
                errors.push(
                    ctx.err(&KeyPath::root(), "`command` or `args` is required")
                        .with_hint(
                            "add command = \"…\" (a shell line) or args = [\"prog\", \"arg\"]",
                        ),
                );
            }
            None
        }
    }
}

fn duration(
    raw: &Option<RawDur>,
    name: &str,
    default: Dur,
    ctx: &Ctx,
    errors: &mut Vec<ConfigError>,
) -> Dur {
    parse_duration(raw, &key(name), default, ctx, errors)
}

fn parse_duration(
    raw: &Option<RawDur>,
    at: &KeyPath,
    default: Dur,
    ctx: &Ctx,
    errors: &mut Vec<ConfigError>,
) -> Dur {
    let Some(RawDur(s)) = raw else {
        return default;
    };
    match Dur::from_str(s) {
        Ok(d) => d,
        Err(e) => {
            errors.push(
                ctx.err(
                    at,
                    format!(
                        "`{}`: invalid duration {:?}: {}",
                        ctx.prefix.join(at),
                        e.input,
                        e.why
                    ),
                )
                .with_hint("write a number and a unit, e.g. \"500ms\", \"1.5s\", \"2m\", \"1h\""),
            );
            default
        }
    }
}

/// A non-negative count with a minimum, as u32.
fn count(n: i64, name: &str, min: u32, ctx: &Ctx, errors: &mut Vec<ConfigError>) -> Option<u32> {
    count_at(n, &key(name), min, ctx, errors)
}

fn count_at(
    n: i64,
    at: &KeyPath,
    min: u32,
    ctx: &Ctx,
    errors: &mut Vec<ConfigError>,
) -> Option<u32> {
    match u32::try_from(n) {
        Ok(v) if v >= min => Some(v),
        _ => {
            errors.push(ctx.err(
                at,
                format!(
                    "`{}` must be a whole number of at least {min}, got {n}",
                    ctx.prefix.join(at)
                ),
            ));
            None
        }
    }
}

/// Resolves a path key: relative against `base_dir`, or an error when there is none.
pub fn resolve_path(
    s: &str,
    at: &KeyPath,
    ctx: &Ctx,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<PathBuf> {
    if s.trim().is_empty() {
        errors.push(ctx.err(at, format!("`{}` is empty", ctx.prefix.join(at))));
        return None;
    }
    let p = Path::new(s);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    match base_dir {
        Some(base) => Some(base.join(p)),
        None => {
            errors.push(
                ctx.err(
                    at,
                    format!("`{}` is the relative path {s:?}", ctx.prefix.join(at)),
                )
                .with_hint(
                    "give an absolute path: a request has no directory to resolve it against",
                ),
            );
            None
        }
    }
}

/// Normalizes a signal to its name without `SIG`: `"sigterm"`, `"TERM"` and `15` give `"TERM"`.
pub fn normalize_signal(raw: &RawSignal) -> Result<String, String> {
    let from_number = |n: i64| -> Result<String, String> {
        i32::try_from(n)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .map(|s| s.as_str().trim_start_matches("SIG").to_string())
            .ok_or_else(|| format!("`stop_signal` {n} is not a signal number"))
    };
    match raw {
        RawSignal::Number(n) => from_number(*n),
        RawSignal::Name(s) => {
            let upper = s.trim().to_ascii_uppercase();
            if let Ok(n) = upper.parse::<i64>() {
                return from_number(n);
            }
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
            Signal::from_str(&format!("SIG{bare}"))
                .map(|sig| sig.as_str().trim_start_matches("SIG").to_string())
                .map_err(|_| format!("`stop_signal` {s:?} is not a known signal"))
        }
    }
}

/// Applies `env` entries onto `layers`, reporting each bad or unexpandable entry.
pub fn apply_env(
    layers: &mut EnvLayers,
    env: &RawEnv,
    at: &KeyPath,
    ctx: &Ctx,
    errors: &mut Vec<ConfigError>,
) {
    for (i, entry) in env.0.iter().enumerate() {
        let (k, v, entry_at) = match entry {
            RawEnvEntry::Entry(s) => match parse_entry(s) {
                Ok((k, v)) => (k, v, at.index(i)),
                Err(message) => {
                    errors.push(
                        ctx.err(&at.index(i), message)
                            .with_hint("write \"KEY=VALUE\""),
                    );
                    continue;
                }
            },
            RawEnvEntry::Pair(k, v) => {
                if !super::env::is_var_name(k) {
                    errors.push(ctx.err(
                        &at.key(k),
                        format!("env key {k:?} is not a variable name (letters, digits, `_`, not starting with a digit)"),
                    ));
                    continue;
                }
                (k.clone(), v.clone(), at.key(k))
            }
        };
        if let Err(e) = layers.set(&k, &v, false) {
            errors.push(
                ctx.err(
                    &entry_at,
                    format!("{e} in `{}` entry {k}", ctx.prefix.join(at)),
                )
                .with_hint(e.hint()),
            );
        }
    }
}

/// `log` of a program (or the main config's `[log]`) over `defaults`.
pub fn build_log(
    raw: Option<&RawLog>,
    mut log: LogSpec,
    at: &KeyPath,
    ctx: &Ctx,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> LogSpec {
    let Some(raw) = raw else {
        return log;
    };
    let mut path = |v: &Option<String>, k: &str| -> Option<Option<PathBuf>> {
        v.as_deref()
            .map(|s| resolve_path(s, &at.key(k), ctx, base_dir, errors))
    };
    if let Some(p) = path(&raw.stdout, "stdout") {
        log.stdout = p;
    }
    if let Some(p) = path(&raw.stderr, "stderr") {
        log.stderr = p;
    }
    if let Some(p) = path(&raw.dir, "dir") {
        log.dir = p;
    }
    if let Some(n) = raw.max_size_mb {
        if let Some(v) = count_at(n, &at.key("max_size_mb"), 1, ctx, errors) {
            log.max_size_mb = u64::from(v);
        }
    }
    if let Some(n) = raw.max_backups {
        if let Some(v) = count_at(n, &at.key("max_backups"), 0, ctx, errors) {
            log.max_backups = v;
        }
    }
    if let Some(n) = raw.max_age_days {
        if let Some(v) = count_at(n, &at.key("max_age_days"), 0, ctx, errors) {
            log.max_age_days = v;
        }
    }
    if let Some(c) = raw.compress {
        log.compress = c;
    }
    log
}

const DETECTOR_TYPES: &[&str] = &["exec:pid", "pidfile", "command"];

fn build_detector(
    raw: &RawDetector,
    at: &KeyPath,
    ctx: &Ctx,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<DetectorSpec> {
    let before = errors.len();
    let shown = |k: &str| ctx.prefix.join(&at.key(k)).to_string();
    let mut not_for = |k: &str, given: bool, kind: &str| {
        if given {
            errors.push(ctx.err(
                &at.key(k),
                format!("`{}` does not apply to a `{kind}` detector", shown(k)),
            ));
        }
    };
    let kind = match raw.kind.as_deref() {
        None => {
            errors.push(
                ctx.err(at, format!("`{}` is required", shown("type")))
                    .with_hint("type = \"exec:pid\", \"pidfile\" or \"command\""),
            );
            None
        }
        Some("exec:pid") => {
            not_for("path", raw.path.is_some(), "exec:pid");
            not_for("command", raw.command.is_some(), "exec:pid");
            not_for("timeout", raw.timeout.is_some(), "exec:pid");
            Some(DetectorKind::ExecPid)
        }
        Some("pidfile") => {
            not_for("command", raw.command.is_some(), "pidfile");
            not_for("timeout", raw.timeout.is_some(), "pidfile");
            match raw.path.as_deref() {
                Some(p) => resolve_path(p, &at.key("path"), ctx, base_dir, errors)
                    .map(|path| DetectorKind::Pidfile { path }),
                None => {
                    errors.push(
                        ctx.err(
                            at,
                            format!("`{}` is required for a pidfile detector", shown("path")),
                        )
                        .with_hint("path = \"/run/app.pid\""),
                    );
                    None
                }
            }
        }
        Some("command") => {
            not_for("path", raw.path.is_some(), "command");
            let timeout = parse_duration(
                &raw.timeout,
                &at.key("timeout"),
                Dur::from_secs(5),
                ctx,
                errors,
            );
            if timeout == Dur::ZERO {
                errors.push(ctx.err(
                    &at.key("timeout"),
                    format!("`{}` must be more than 0s", shown("timeout")),
                ));
            }
            match raw.command.as_deref() {
                Some(c) if !c.trim().is_empty() => Some(DetectorKind::Command {
                    command: c.to_string(),
                    timeout,
                }),
                Some(_) => {
                    errors.push(ctx.err(
                        &at.key("command"),
                        format!("`{}` is empty", shown("command")),
                    ));
                    None
                }
                None => {
                    errors.push(
                        ctx.err(
                            at,
                            format!("`{}` is required for a command detector", shown("command")),
                        )
                        .with_hint("command = \"curl -fsS http://127.0.0.1:8000/health\""),
                    );
                    None
                }
            }
        }
        Some(other) => {
            let hint = did_you_mean(other, DETECTOR_TYPES)
                .unwrap_or_else(|| "use \"exec:pid\", \"pidfile\" or \"command\"".to_string());
            errors.push(
                ctx.err(
                    &at.key("type"),
                    format!("`{}` {other:?} is not a detector type", shown("type")),
                )
                .with_hint(hint),
            );
            None
        }
    };
    let interval = parse_duration(
        &raw.interval,
        &at.key("interval"),
        Dur::from_secs(10),
        ctx,
        errors,
    );
    if interval == Dur::ZERO {
        errors.push(ctx.err(
            &at.key("interval"),
            format!("`{}` must be more than 0s", shown("interval")),
        ));
    }
    let failure_threshold = raw.failure_threshold.map_or(Some(3), |n| {
        count_at(n, &at.key("failure_threshold"), 1, ctx, errors)
    });
    if errors.len() != before {
        return None;
    }
    Some(DetectorSpec {
        kind: kind?,
        interval,
        failure_threshold: failure_threshold?,
    })
}

#[cfg(test)]
mod tests;
