//! The raw shapes of the files: what a user may write, before any validation.
//!
//! Every field is optional here; defaults and rules live in `validate`. Unknown keys are found
//! by walking the generic tree against [`Shape`]s (so every unknown key of a file is reported,
//! not only the first), then stripped; the typed structs keep `deny_unknown_fields` as a guard
//! that the shapes and the structs agree.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::locate::KeyPath;

/// The keys a map may hold and the shape of each value.
#[derive(Debug)]
pub enum Shape {
    /// A map with exactly these keys.
    Map(&'static [(&'static str, Shape)]),
    /// A list whose elements have this shape.
    ListOf(&'static Shape),
    /// Anything: checked by the typed structs or by `validate`.
    Any,
}

impl Shape {
    /// The key names of a map shape.
    pub fn keys(&self) -> Vec<&'static str> {
        match self {
            Shape::Map(fields) => fields.iter().map(|(k, _)| *k).collect(),
            _ => Vec::new(),
        }
    }
}

pub const LOG_SHAPE: Shape = Shape::Map(&[
    ("stdout", Shape::Any),
    ("stderr", Shape::Any),
    ("dir", Shape::Any),
    ("max_size_mb", Shape::Any),
    ("max_backups", Shape::Any),
    ("max_age_days", Shape::Any),
    ("compress", Shape::Any),
]);

pub const DETECTOR_SHAPE: Shape = Shape::Map(&[
    ("type", Shape::Any),
    ("path", Shape::Any),
    ("command", Shape::Any),
    ("timeout", Shape::Any),
    ("interval", Shape::Any),
    ("failure_threshold", Shape::Any),
]);

/// A program: the flat form, or the `spec` table of the wrapped form.
pub const PROGRAM_SHAPE: Shape = Shape::Map(&[
    ("name", Shape::Any),
    ("command", Shape::Any),
    ("args", Shape::Any),
    ("work_dir", Shape::Any),
    ("env", Shape::Any),
    ("priority", Shape::Any),
    ("autostart", Shape::Any),
    ("instances", Shape::Any),
    ("start_duration", Shape::Any),
    ("retry_count", Shape::Any),
    ("retry_interval", Shape::Any),
    ("auto_restart", Shape::Any),
    ("autorestart", Shape::Any),
    ("restart_interval", Shape::Any),
    ("restart_max_interval", Shape::Any),
    ("stop_signal", Shape::Any),
    ("stop_timeout", Shape::Any),
    ("log", LOG_SHAPE),
    ("detectors", Shape::ListOf(&DETECTOR_SHAPE)),
]);

/// The top level of the wrapped form.
pub const WRAPPED_KEYS: &[&str] = &["type", "spec"];

pub const MAIN_SHAPE: Shape = Shape::Map(&[
    ("programs_directory", Shape::Any),
    ("env", Shape::Any),
    ("env_files", Shape::Any),
    ("use_os_env", Shape::Any),
    ("log", LOG_SHAPE),
    (
        "groups",
        Shape::ListOf(&Shape::Map(&[
            ("name", Shape::Any),
            ("members", Shape::Any),
        ])),
    ),
    (
        "server",
        Shape::Map(&[
            ("listen", Shape::Any),
            ("base_path", Shape::Any),
            ("token", Shape::Any),
            ("token_file", Shape::Any),
            ("socket", Shape::Any),
            ("allow_users", Shape::Any),
            ("allow_groups", Shape::Any),
            ("allow_plaintext", Shape::Any),
            (
                "tls",
                Shape::Map(&[("cert", Shape::Any), ("key", Shape::Any)]),
            ),
            (
                "tokens",
                Shape::ListOf(&Shape::Map(&[
                    ("name", Shape::Any),
                    ("file", Shape::Any),
                    ("scope", Shape::Any),
                ])),
            ),
        ]),
    ),
    (
        "metrics",
        Shape::Map(&[("enabled", Shape::Any), ("listen", Shape::Any)]),
    ),
    ("daemon", Shape::Map(&[("state_dir", Shape::Any)])),
    // Checked as programs, one by one.
    ("processes", Shape::Any),
]);

/// An unknown key found by [`strip_unknown_keys`], with the keys that were allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub path: KeyPath,
    pub key: String,
    pub known: Vec<&'static str>,
}

/// Removes every key `shape` does not allow from `value`, returning each one found, in file order.
pub fn strip_unknown_keys(value: &mut Value, shape: &Shape, at: &KeyPath) -> Vec<UnknownKey> {
    let mut found = Vec::new();
    walk(value, shape, at, &mut found);
    found
}

fn walk(value: &mut Value, shape: &Shape, at: &KeyPath, found: &mut Vec<UnknownKey>) {
    match (shape, value) {
        (Shape::Map(fields), Value::Object(map)) => {
            let unknown: Vec<String> = map
                .keys()
                .filter(|k| !fields.iter().any(|(name, _)| name == k))
                .cloned()
                .collect();
            for key in unknown {
                map.shift_remove(&key);
                found.push(UnknownKey {
                    path: at.key(&key),
                    key,
                    known: shape.keys(),
                });
            }
            for (name, sub) in fields.iter() {
                if let Some(v) = map.get_mut(*name) {
                    walk(v, sub, &at.key(name), found);
                }
            }
        }
        (Shape::ListOf(item), Value::Array(items)) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, item, &at.index(i), found);
            }
        }
        // A value of the wrong kind is left for the typed structs to report.
        _ => {}
    }
}

/// A duration as written; parsed in `validate` so every bad duration of a file is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDur(pub String);

impl<'de> Deserialize<'de> for RawDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, e.g. \"1.5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDur, E> {
                Ok(RawDur(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `stop_signal` as written: a name (`"TERM"`, `"SIGTERM"`, `"term"`) or a number (`15`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSignal {
    Name(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSignal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name like \"TERM\" or a signal number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSignal, E> {
                Ok(RawSignal::Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSignal, E> {
                Ok(RawSignal::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSignal, E> {
                Ok(RawSignal::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// One environment entry as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnvEntry {
    /// `"KEY=VALUE"` in a list.
    Entry(String),
    /// `KEY = "VALUE"` in a table.
    Pair(String, String),
}

/// `env`: a list of `"KEY=VALUE"` strings, or a table `{ KEY = "VALUE" }` (in written order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEnv(pub Vec<RawEnvEntry>);

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEnv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of \"KEY=VALUE\" strings or a table of KEY = \"VALUE\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEnv, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = seq.next_element::<EnvString>()? {
                    out.push(RawEnvEntry::Entry(entry.0));
                }
                Ok(RawEnv(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, EnvScalar>()? {
                    out.push(RawEnvEntry::Pair(k, v.0));
                }
                Ok(RawEnv(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list entry of `env`: a string only, so a stray number is reported rather than guessed at.
struct EnvString(String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a \"KEY=VALUE\" string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvString, E> {
                Ok(EnvString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A table value of `env`: strings, and numbers and booleans as they read (`PORT = 8080`).
struct EnvScalar(String);

impl<'de> Deserialize<'de> for EnvScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvScalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvScalar, E> {
                Ok(EnvScalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvScalar, E> {
                Ok(EnvScalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvScalar, E> {
                Ok(EnvScalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvScalar, E> {
                Ok(EnvScalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvScalar, E> {
                Ok(EnvScalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `log` of a program, or the main config's `[log]` defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub dir: Option<String>,
    pub max_size_mb: Option<i64>,
    pub max_backups: Option<i64>,
    pub max_age_days: Option<i64>,
    pub compress: Option<bool>,
}

/// One entry of `detectors`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetector {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub command: Option<String>,
    pub timeout: Option<RawDur>,
    pub interval: Option<RawDur>,
    pub failure_threshold: Option<i64>,
}

/// A program (flat form, or the `spec` of the wrapped form).
///
/// Counts are `i64` so that `instances = 0` or `-1` reach validation and get a clear message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgram {
    pub name: Option<String>,
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub work_dir: Option<String>,
    pub env: Option<RawEnv>,
    pub priority: Option<i64>,
    pub autostart: Option<bool>,
    pub instances: Option<i64>,
    pub start_duration: Option<RawDur>,
    pub retry_count: Option<i64>,
    pub retry_interval: Option<RawDur>,
    pub auto_restart: Option<bool>,
    pub autorestart: Option<bool>,
    pub restart_interval: Option<RawDur>,
    pub restart_max_interval: Option<RawDur>,
    pub stop_signal: Option<RawSignal>,
    pub stop_timeout: Option<RawDur>,
    pub log: Option<RawLog>,
    pub detectors: Option<Vec<RawDetector>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: Option<String>,
    pub members: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub base_path: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub socket: Option<String>,
    pub allow_users: Option<Vec<String>>,
    pub allow_groups: Option<Vec<String>>,
    pub allow_plaintext: Option<bool>,
    pub tls: Option<RawTls>,
    pub tokens: Option<Vec<RawToken>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: Option<String>,
    pub file: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<String>,
}

/// The main config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMain {
    pub programs_directory: Option<String>,
    pub env: Option<RawEnv>,
    pub env_files: Option<Vec<String>>,
    pub use_os_env: Option<bool>,
    pub log: Option<RawLog>,
    pub groups: Option<Vec<RawGroup>>,
    pub server: Option<RawServer>,
    pub metrics: Option<RawMetrics>,
    pub daemon: Option<RawDaemon>,
    /// Program trees, validated one by one like program files.
    pub processes: Option<Vec<Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tree with every key of `shape` (recursively), to prove the typed struct knows them all.
    fn full(shape: &Shape) -> Value {
        match shape {
            Shape::Map(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, s)| (k.to_string(), full(s)))
                    .collect(),
            ),
            Shape::ListOf(item) => Value::Array(vec![full(item)]),
            Shape::Any => Value::Null,
        }
    }

    #[test]
    fn shapes_and_structs_agree() {
        serde_json::from_value::<RawProgram>(full(&PROGRAM_SHAPE)).unwrap();
        serde_json::from_value::<RawMain>(full(&MAIN_SHAPE)).unwrap();
        // And the structs reject what the shapes reject.
        assert!(serde_json::from_value::<RawProgram>(json!({"comand": "x"})).is_err());
    }

    #[test]
    fn strips_every_unknown_key_in_order() {
        let mut v = json!({
            "comand": "x",
            "name": "a",
            "log": {"dirr": "d", "dir": "e"},
            "detectors": [{"type": "command"}, {"type": "pidfile", "pth": "/p"}],
            "colour": 1,
        });
        let found = strip_unknown_keys(&mut v, &PROGRAM_SHAPE, &KeyPath::root());
        let paths: Vec<String> = found.iter().map(|u| u.path.to_string()).collect();
        assert_eq!(paths, ["comand", "colour", "log.dirr", "detectors[1].pth"]);
        assert_eq!(
            v,
            json!({"name": "a", "log": {"dir": "e"}, "detectors": [{"type": "command"}, {"type": "pidfile"}]})
        );
    }

    #[test]
    fn env_accepts_lists_and_tables_in_order() {
        let list: RawEnv = serde_json::from_value(json!(["B=1", "A=2"])).unwrap();
        assert_eq!(
            list.0,
            [
                RawEnvEntry::Entry("B=1".into()),
                RawEnvEntry::Entry("A=2".into())
            ]
        );
        let table: RawEnv =
            serde_json::from_value(json!({"Z": "1", "A": 8080, "B": true})).unwrap();
        assert_eq!(
            table.0,
            [
                RawEnvEntry::Pair("Z".into(), "1".into()),
                RawEnvEntry::Pair("A".into(), "8080".into()),
                RawEnvEntry::Pair("B".into(), "true".into()),
            ]
        );
        assert!(serde_json::from_value::<RawEnv>(json!([1])).is_err());
        assert!(serde_json::from_value::<RawEnv>(json!("A=1")).is_err());
    }

    #[test]
    fn signals_are_names_or_numbers() {
        assert_eq!(
            serde_json::from_value::<RawSignal>(json!("TERM")).unwrap(),
            RawSignal::Name("TERM".into())
        );
        assert_eq!(
            serde_json::from_value::<RawSignal>(json!(9)).unwrap(),
            RawSignal::Number(9)
        );
        assert!(serde_json::from_value::<RawSignal>(json!(true)).is_err());
    }
}
