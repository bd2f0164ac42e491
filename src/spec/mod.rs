//! The validated program spec the rest of provisr works on: `config` builds it from files and
//! request bodies, the store keeps it, the plan compares it, the supervisor runs it.
//!
//! A value of these types has passed validation: names match the name rule, `command`/`args` are
//! exclusive, durations parsed, `${VAR}` expanded. They serialize to JSON for the store and the API.

pub mod cron;
pub mod duration;
pub mod lifecycle;
pub mod placement;
pub mod rare;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use cron::{Concurrency, CronSpec, Schedule, TimeZone};
pub use duration::Dur;
pub use lifecycle::{
    Condition, HookPhase, HookSpec, Hooks, OnFailure, ProbeCheck, ProbeSpec, StatusCodes,
};
pub use placement::Placement;
pub use rare::{Rare, Usual};

/// Longest program or group name (`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, `docs/configuration.md`).
pub const MAX_NAME_LEN: usize = 64;

/// Checks a program, instance or group name against the name rule of `docs/configuration.md`.
///
/// The rule keeps every name safe to use as a file name and a URL segment: no `/`, no leading `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("the name is empty".to_string());
    };
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "the name {name:?} must start with a letter or digit"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name {name:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the name {name:?} contains {bad:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// How the child is executed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exec {
    /// `command`: through `/bin/sh -c` when it has shell syntax, else split into argv.
    Command(String),
    /// `args`: exec'd directly, no shell.
    Args(Vec<String>),
}

/// Characters that make a `command` a shell line rather than a plain argv.
const SHELL_SYNTAX: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '{', '}', '\n',
];

impl Exec {
    /// The argv to exec: `command` through `/bin/sh -c` when it has shell syntax (quotes,
    /// redirections, variables, globs, …), else split on whitespace; `args` as given.
    ///
    /// Splitting plain commands avoids an extra shell process, so the pid the daemon watches is
    /// the program itself and signals reach it directly.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Exec::Command(s) if s.contains(SHELL_SYNTAX) => {
                vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()]
            }
            Exec::Command(s) => s.split_whitespace().map(str::to_string).collect(),
            Exec::Args(v) => v.clone(),
        }
    }
}

/// Where a program's desired state came from (`docs/store.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Source {
    /// A file in the programs directory.
    File(PathBuf),
    /// An inline `[[processes]]` entry of the main config.
    Config,
    /// Registered through the API (`start --cmd`, `register`).
    Api,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::Config => f.write_str("config"),
            Source::Api => f.write_str("api"),
        }
    }
}

/// Log settings of one program after `[log]` defaults were applied (`docs/logs.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub max_size_mb: u64,
    pub max_backups: u32,
    pub max_age_days: u32,
    pub compress: bool,
}

impl LogSpec {
    const DEFAULT: LogSpec = LogSpec {
        stdout: None,
        stderr: None,
        dir: None,
        max_size_mb: 10,
        max_backups: 3,
        max_age_days: 7,
        compress: false,
    };
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec::DEFAULT
    }
}

impl Usual for LogSpec {
    fn usual() -> &'static LogSpec {
        static USUAL: LogSpec = LogSpec::DEFAULT;
        &USUAL
    }
}

/// What a health detector checks (`docs/configuration.md`, "Detectors").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum DetectorKind {
    /// The spawned process is alive. Always on; may be listed explicitly as `exec:pid`.
    #[serde(rename = "exec:pid")]
    ExecPid,
    /// A PID file names the process; alive if that pid exists.
    Pidfile { path: PathBuf },
    /// A command run through `/bin/sh -c`; exit 0 means alive.
    Command { command: String, timeout: Dur },
}

/// One health detector with its schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorSpec {
    #[serde(flatten)]
    pub kind: DetectorKind,
    pub interval: Dur,
    pub failure_threshold: u32,
}

impl DetectorSpec {
    /// The name shown in status `detected_by`: `exec:pid`, `pidfile:<path>`, `command:<command>`.
    pub fn label(&self) -> String {
        match &self.kind {
            DetectorKind::ExecPid => "exec:pid".to_string(),
            DetectorKind::Pidfile { path } => format!("pidfile:{}", path.display()),
            DetectorKind::Command { command, .. } => format!("command:{command}"),
        }
    }
}

/// A validated program: every field of `docs/configuration.md` with defaults applied and values expanded.
///
/// The parts most programs leave unset are behind a pointer ([`Rare`], `Option<Box<_>>`), which
/// serializes as the value itself: a daemon holds one spec per program, thousands of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramSpec {
    pub name: String,
    pub exec: Exec,
    /// Absolute, or `None` for the daemon's cwd.
    pub work_dir: Option<PathBuf>,
    /// When false, children start from a minimal base (`PATH`, `HOME`) instead of the daemon's env.
    pub use_os_env: bool,
    /// The expanded overlay on top of the base environment: env_files → global env → program env.
    /// `PROVISR_NAME`/`PROVISR_INSTANCE` are added per instance at spawn time.
    pub env: BTreeMap<String, String>,
    pub priority: i32,
    pub autostart: bool,
    pub instances: u32,
    pub start_duration: Dur,
    pub retry_count: u32,
    pub retry_interval: Dur,
    pub auto_restart: bool,
    pub restart_interval: Dur,
    pub restart_max_interval: Dur,
    /// Signal name without `SIG`, e.g. `TERM`, validated against the platform's signals.
    pub stop_signal: String,
    pub stop_timeout: Dur,
    pub log: Rare<LogSpec>,
    pub detectors: Vec<DetectorSpec>,
    /// The user the process runs as, by name or uid as written; resolved at each spawn.
    /// `None`: the daemon's own (`docs/configuration.md`, "Privileges and limits").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The primary group, by name or gid; `None`: the user's primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `None`: the user's groups from the group database, as `initgroups` gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplementary_groups: Option<Vec<String>>,
    /// Four octal digits, e.g. `0077`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Rare<Limits>,
    /// Programs that must meet a condition before this one starts (`docs/configuration.md`,
    /// "Dependencies"), by program name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Condition>,
    /// Sets `ready`; a `healthy` dependency waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Box<ProbeSpec>>,
    /// Failing, restarts the instance under its restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Box<ProbeSpec>>,
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Rare<Hooks>,
    /// A file the daemon writes the process's pid into at each start (mode 0644) and removes
    /// when it has stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Present for a cron job: run on this schedule instead of kept running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<Box<CronSpec>>,
    /// Where it runs in a fleet (`docs/fleet.md`); a single daemon ignores it. Absent: anywhere.
    #[serde(default, skip_serializing_if = "Placement::is_anywhere")]
    pub placement: Rare<Placement>,
}

/// `[limits]`: resource limits of the process, each setting the soft and the hard limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock: Option<Limit>,
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub address_space: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Limit>,
}

impl Usual for Limits {
    fn usual() -> &'static Limits {
        static USUAL: Limits = Limits {
            nofile: None,
            nproc: None,
            core: None,
            memlock: None,
            address_space: None,
            cpu: None,
        };
        &USUAL
    }
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Each limit that is set, by its key (`nofile`, `as`, …).
    pub fn set(&self) -> impl Iterator<Item = (&'static str, Limit)> + '_ {
        [
            ("nofile", self.nofile),
            ("nproc", self.nproc),
            ("core", self.core),
            ("memlock", self.memlock),
            ("as", self.address_space),
            ("cpu", self.cpu),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }
}

/// One resource limit: a number (files, processes, bytes or CPU seconds) or `"unlimited"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a whole number or \"unlimited\"")]
pub enum Limit {
    Value(u64),
    #[serde(with = "unlimited")]
    Unlimited,
}

/// `Limit::Unlimited` as the word `"unlimited"`.
mod unlimited {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("unlimited")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        match String::deserialize(d)?.as_str() {
            "unlimited" => Ok(()),
            other => Err(de::Error::custom(format!(
                "{other:?} is not a limit; write a number or \"unlimited\""
            ))),
        }
    }
}

impl ProgramSpec {
    /// A digest of what a process of this spec runs and runs as — command, directory,
    /// environment, account and limits: the fields whose change restarts it — which a child
    /// carries in its tag (`PROVISR_SPEC`), so a daemon taking over a process tells which of the
    /// specs its record names the process runs. Changes applied in place (`instances`, logs,
    /// restart policy) leave it alone. Stable for one build of provisr (the standard hasher over
    /// those fields' JSON): after an upgrade, a process found only by its tag (never recorded)
    /// may match nothing and is started again.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let launch = (
            &self.exec,
            &self.work_dir,
            self.use_os_env,
            &self.env,
            (&self.user, &self.group, &self.supplementary_groups),
            (&self.umask, self.nice, self.oom_score_adj, &self.limits),
        );
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_vec(&launch).unwrap_or_default().hash(&mut h);
        h.finish()
    }

    /// A spec with every default of `docs/configuration.md`, for `exec`.
    pub fn new(name: impl Into<String>, exec: Exec) -> ProgramSpec {
        ProgramSpec {
            name: name.into(),
            exec,
            work_dir: None,
            use_os_env: true,
            env: BTreeMap::new(),
            priority: 0,
            autostart: true,
            instances: 1,
            start_duration: Dur::ZERO,
            retry_count: 3,
            retry_interval: Dur::from_secs(1),
            auto_restart: false,
            restart_interval: Dur::from_secs(1),
            restart_max_interval: Dur::from_secs(60),
            stop_signal: "TERM".to_string(),
            stop_timeout: Dur::from_secs(10),
            log: Rare::default(),
            detectors: Vec::new(),
            user: None,
            group: None,
            supplementary_groups: None,
            umask: None,
            nice: None,
            oom_score_adj: None,
            limits: Rare::default(),
            depends_on: BTreeMap::new(),
            readiness: None,
            liveness: None,
            hooks: Rare::default(),
            pid_file: None,
            cron: None,
            placement: Rare::default(),
        }
    }

    /// A cron job: run on its schedule, not kept running.
    pub fn is_cron(&self) -> bool {
        self.cron.is_some()
    }

    /// The instances this program runs, in order: `name` for one, `name-1..N` for more.
    pub fn instances(&self) -> Vec<InstanceId> {
        (1..=self.instances.max(1))
            .map(|index| InstanceId::new(&self.name, index, self.instances))
            .collect()
    }

    /// The stdout and stderr files of one instance (`docs/logs.md`), or `None` for memory-only capture.
    ///
    /// Explicit files get the instance number before the extension when there are several
    /// instances, so two instances never share a file.
    pub fn log_paths(&self, id: &InstanceId) -> LogPaths {
        let numbered = |p: &Path| -> PathBuf {
            if self.instances > 1 {
                insert_before_extension(p, id.index)
            } else {
                p.to_path_buf()
            }
        };
        let in_dir = |stream: &str| {
            self.log
                .dir
                .as_ref()
                .map(|d| d.join(format!("{}.{stream}.log", id.name)))
        };
        LogPaths {
            stdout: self
                .log
                .stdout
                .as_deref()
                .map(numbered)
                .or_else(|| in_dir("stdout")),
            stderr: self
                .log
                .stderr
                .as_deref()
                .map(numbered)
                .or_else(|| in_dir("stderr")),
        }
    }
}

/// `app.log` + 2 → `app.2.log`; `app` + 2 → `app.2`.
fn insert_before_extension(path: &Path, index: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = match path.extension() {
        Some(ext) => format!("{stem}.{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{index}"),
    };
    path.with_file_name(file)
}

/// The files one instance's output goes to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPaths {
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

/// One instance of a program: `name` when the program has one instance, else `name-INDEX`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    /// The instance name (`web-2`), unique across the daemon.
    pub name: String,
    /// The program it belongs to (`web`).
    pub program: String,
    /// 1-based.
    pub index: u32,
}

impl InstanceId {
    pub fn new(program: &str, index: u32, of: u32) -> InstanceId {
        let name = if of > 1 {
            format!("{program}-{index}")
        } else {
            program.to_string()
        };
        InstanceId {
            name,
            program: program.to_string(),
            index,
        }
    }
}

/// A named set of programs (`[[groups]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub members: Vec<String>,
}

/// A validated program together with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Shared: a rescan hands an unchanged file's spec from its cache to the reload, and the
    /// reload to the comparison with desired state, without copying it.
    pub spec: Arc<ProgramSpec>,
    pub source: Source,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "web", "api-server", "w.1_x", "9lives", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".hidden",
            "../x",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argv_uses_a_shell_only_for_shell_syntax() {
        let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        let split = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("sleep 300", split(&["sleep", "300"])),
            (
                "  /usr/bin/env   python3\t-u app.py ",
                split(&["/usr/bin/env", "python3", "-u", "app.py"]),
            ),
            (
                "server --port 8080 -v",
                split(&["server", "--port", "8080", "-v"]),
            ),
            ("echo a | cat", sh("echo a | cat")),
            ("a && b", sh("a && b")),
            ("a; b", sh("a; b")),
            ("cat < in", sh("cat < in")),
            ("echo > out", sh("echo > out")),
            ("(sleep 1)", sh("(sleep 1)")),
            ("echo $HOME", sh("echo $HOME")),
            ("echo `date`", sh("echo `date`")),
            ("echo a\\ b", sh("echo a\\ b")),
            ("echo \"a b\"", sh("echo \"a b\"")),
            ("pgrep -f 'sleep 300'", sh("pgrep -f 'sleep 300'")),
            ("ls *.log", sh("ls *.log")),
            ("ls ?.log", sh("ls ?.log")),
            ("ls [ab]", sh("ls [ab]")),
            ("run # comment", sh("run # comment")),
            ("ls ~", sh("ls ~")),
            ("FOO=1 run", sh("FOO=1 run")),
            ("date +%s", sh("date +%s")),
            ("echo {a,b}", sh("echo {a,b}")),
            ("a\nb", sh("a\nb")),
        ];
        for (input, want) in cases {
            assert_eq!(Exec::Command(input.to_string()).argv(), want, "{input:?}");
        }
        let args = split(&["echo", "a | b", "$HOME"]);
        assert_eq!(Exec::Args(args.clone()).argv(), args);
    }

    #[test]
    fn a_spec_keeps_its_rarely_used_parts_out_of_line() {
        // A daemon holds a spec per program; docs/benchmarks.md ("RSS at 10 000 stopped").
        let size = std::mem::size_of::<ProgramSpec>();
        println!("size_of::<ProgramSpec>() = {size}");
        assert!(size <= 512, "ProgramSpec is {size} bytes inline");
    }

    #[test]
    fn instances_are_named_from_one() {
        let mut spec = ProgramSpec::new("web", Exec::Command("sleep 1".into()));
        assert_eq!(spec.instances()[0].name, "web");
        spec.instances = 3;
        let names: Vec<_> = spec.instances().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["web-1", "web-2", "web-3"]);
    }

    #[test]
    fn log_paths_never_collide_between_instances() {
        let mut spec = ProgramSpec::new("web", Exec::Command("sleep 1".into()));
        spec.log.stdout = Some("/var/log/web.log".into());
        spec.log.dir = Some("/logs".into());
        let one = spec.instances().remove(0);
        assert_eq!(
            spec.log_paths(&one).stdout.unwrap(),
            PathBuf::from("/var/log/web.log")
        );
        assert_eq!(
            spec.log_paths(&one).stderr.unwrap(),
            PathBuf::from("/logs/web.stderr.log")
        );
        spec.instances = 2;
        let ids = spec.instances();
        assert_eq!(
            spec.log_paths(&ids[1]).stdout.unwrap(),
            PathBuf::from("/var/log/web.2.log")
        );
        assert_eq!(
            spec.log_paths(&ids[1]).stderr.unwrap(),
            PathBuf::from("/logs/web-2.stderr.log")
        );
        spec.log = Rare::default();
        assert_eq!(spec.log_paths(&ids[0]), LogPaths::default());
    }
}
