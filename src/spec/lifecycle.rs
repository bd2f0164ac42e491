//! What a program needs besides its command (`docs/configuration.md`, "Dependencies", "Probes",
//! "Hooks"): the programs it waits for, its readiness and liveness probes, and the hooks run
//! around its starts and stops. Validated by `config`; the plan reads dependencies, the
//! instance's actor runs probes and hooks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Dur;

/// What a dependency must have reached before its dependent starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Spawned: `starting` with a process, `running`, or `exited`.
    Started,
    /// `running` (the default of the list form).
    Running,
    /// `running`, and its readiness probe passes (its detectors too).
    Healthy,
    /// Ended on its own, whatever its exit: `exited` or `failed`.
    Completed,
    /// `exited` with code 0.
    CompletedSuccessfully,
}

impl Condition {
    pub const ALL: [&'static str; 5] = [
        "started",
        "running",
        "healthy",
        "completed",
        "completed_successfully",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Running => "running",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
            Condition::CompletedSuccessfully => "completed_successfully",
        }
    }
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Condition, String> {
        Ok(match s {
            "started" => Condition::Started,
            "running" => Condition::Running,
            "healthy" => Condition::Healthy,
            "completed" => Condition::Completed,
            "completed_successfully" => Condition::CompletedSuccessfully,
            _ => return Err(format!("{s:?} is not a dependency condition")),
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a probe checks the instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ProbeCheck {
    /// `GET url` answers with a status in `expect_status`.
    Http {
        url: String,
        expect_status: StatusCodes,
    },
    /// A TCP connection to `address` (`host:port`) opens.
    Tcp { address: String },
    /// `command`, run like a detector command, exits 0.
    Exec { command: String },
    /// A new output line of the instance matches the regular expression `pattern`.
    Log { pattern: String },
}

/// A readiness or liveness probe with its schedule and thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    #[serde(flatten)]
    pub check: ProbeCheck,
    pub initial_delay: Dur,
    pub interval: Dur,
    pub timeout: Dur,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeSpec {
    pub const DEFAULT_INTERVAL: Dur = Dur(std::time::Duration::from_secs(10));
    pub const DEFAULT_TIMEOUT: Dur = Dur(std::time::Duration::from_secs(5));

    /// `http:http://127.0.0.1:8000/`, `tcp:127.0.0.1:5432`, `exec:…`, `log:ready`.
    pub fn label(&self) -> String {
        match &self.check {
            ProbeCheck::Http { url, .. } => format!("http:{url}"),
            ProbeCheck::Tcp { address } => format!("tcp:{address}"),
            ProbeCheck::Exec { command } => format!("exec:{command}"),
            ProbeCheck::Log { pattern } => format!("log:{pattern}"),
        }
    }
}

/// HTTP status codes a probe accepts: single codes and inclusive ranges, written `200`,
/// `"200-299"` or a list of those; kept in the written form `200-299,404`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCodes(pub Vec<(u16, u16)>);

impl Default for StatusCodes {
    /// 200–399: success and redirects, as Kubernetes' HTTP probes count them.
    fn default() -> StatusCodes {
        StatusCodes(vec![(200, 399)])
    }
}

impl StatusCodes {
    pub fn accepts(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl FromStr for StatusCodes {
    type Err = String;

    /// `200`, `200-299`, `200-299,404`.
    fn from_str(s: &str) -> Result<StatusCodes, String> {
        let code = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("{:?} is not an HTTP status code (100 to 599)", t.trim()))
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => (code(part)?, code(part)?),
            };
            if lo > hi {
                return Err(format!("the range {:?} ends before it begins", part.trim()));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusCodes(ranges))
    }
}

impl fmt::Display for StatusCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            if lo == hi {
                write!(f, "{sep}{lo}")?;
            } else {
                write!(f, "{sep}{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for StatusCodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusCodes {
    /// A code (`200`), a string of codes and ranges (`"200-299,404"`), or a list of those.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a status code (200), a range (\"200-299\") or a list of them"
        )]
        enum Written {
            One(u16),
            Text(String),
            List(Vec<OneOf>),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOf {
            One(u16),
            Text(String),
        }
        let text = match Written::deserialize(d)? {
            Written::One(c) => c.to_string(),
            Written::Text(t) => t,
            Written::List(list) => list
                .into_iter()
                .map(|c| match c {
                    OneOf::One(c) => c.to_string(),
                    OneOf::Text(t) => t,
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The hooks of a program, by phase, each list run in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_start: Vec<HookSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_start: Vec<HookSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop: Vec<HookSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_stop: Vec<HookSpec>,
}

impl super::Usual for Hooks {
    /// None at all.
    fn usual() -> &'static Hooks {
        static NONE: Hooks = Hooks {
            pre_start: Vec::new(),
            post_start: Vec::new(),
            pre_stop: Vec::new(),
            post_stop: Vec::new(),
        };
        &NONE
    }
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        *self == Hooks::default()
    }

    pub fn of(&self, phase: HookPhase) -> &[HookSpec] {
        match phase {
            HookPhase::PreStart => &self.pre_start,
            HookPhase::PostStart => &self.post_start,
            HookPhase::PreStop => &self.pre_stop,
            HookPhase::PostStop => &self.post_stop,
        }
    }
}

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPhase {
    /// Before each spawn of the process; a failure keeps it from starting.
    PreStart,
    /// Once the process is `running`.
    PostStart,
    /// Before the stop signal.
    PreStop,
    /// After the process has exited, however it ended.
    PostStop,
}

impl HookPhase {
    pub const ALL: [HookPhase; 4] = [
        HookPhase::PreStart,
        HookPhase::PostStart,
        HookPhase::PreStop,
        HookPhase::PostStop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::PreStart => "pre_start",
            HookPhase::PostStart => "post_start",
            HookPhase::PreStop => "pre_stop",
            HookPhase::PostStop => "post_stop",
        }
    }
}

impl fmt::Display for HookPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook: a shell command run in the program's environment, directory and identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    pub name: String,
    pub command: String,
    pub timeout: Dur,
    pub on_failure: OnFailure,
}

impl HookSpec {
    pub const DEFAULT_TIMEOUT: Dur = Dur(std::time::Duration::from_secs(30));
}

/// What a failing hook does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// `pre_start`: the instance does not start (`failed`); `post_start`: it is stopped and
    /// `failed`; `pre_stop`, `post_stop`: reported, the stop goes on.
    #[default]
    Fail,
    /// Reported only.
    Ignore,
    /// Run once more after 1 s; a second failure counts as `fail`.
    Retry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_read_every_written_form() {
        let read = |v: serde_json::Value| serde_json::from_value::<StatusCodes>(v);
        let codes = read(serde_json::json!(204)).unwrap();
        assert!(codes.accepts(204) && !codes.accepts(200));
        let codes = read(serde_json::json!("200-299, 404")).unwrap();
        assert!(codes.accepts(250) && codes.accepts(404) && !codes.accepts(300));
        assert_eq!(codes.to_string(), "200-299,404");
        let codes = read(serde_json::json!([200, "300-302"])).unwrap();
        assert!(codes.accepts(301) && !codes.accepts(204));
        assert!(read(serde_json::json!("2000")).is_err());
        assert!(read(serde_json::json!("299-200")).is_err());
        assert!(StatusCodes::default().accepts(302) && !StatusCodes::default().accepts(404));
        let back: StatusCodes =
            serde_json::from_value(serde_json::to_value(&codes).unwrap()).unwrap();
        assert_eq!(back, codes);
    }
}
