//! What a user may write, before validation, and [`Check`], which validates it.
//!
//! The raw shapes are serde structs whose fields are all [`Val`]: a key of the wrong type is
//! kept as an error and the other keys are still read, so one pass finds every error.
//! [`Check::read`] deserializes a tree into such a struct and reports every key the struct does
//! not know (`serde_ignored`), suggesting the closest key the struct knows at that place.
//! Adding a key is adding a field to a struct and its rule where the struct is validated; its
//! unknown-key errors, suggestions, type errors and lines follow.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::de::value::{Error as ProbeError, MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;

use super::document::{did_you_mean, Document, KeyPath, Seg};
use super::env::{parse_entry, var_name, EnvLayers};
use super::error::ConfigError;
use super::{Dur, LogSpec};

/// One key as written: absent (or null), a value of the right type, or why it is not.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Val<T> {
    #[default]
    Absent,
    Ok(T),
    Bad(String),
}

impl<T> Val<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Val::Absent)
    }
}

impl<T: Clone> Val<T> {
    /// The key as written, or `default` when it is absent.
    pub fn or(&self, default: T) -> Val<T> {
        match self {
            Val::Absent => Val::Ok(default),
            v => v.clone(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Val<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Trees are deserialized from an in-memory value, so a failed key leaves nothing half
        // read: the other keys go on.
        Ok(match Option::<T>::deserialize(d) {
            Ok(None) => Val::Absent,
            Ok(Some(v)) => Val::Ok(v),
            Err(e) => Val::Bad(e.to_string()),
        })
    }
}

/// `env`: a list of `"KEY=VALUE"` strings, or a table `{ KEY = "VALUE" }` in written order.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(
    untagged,
    expecting = "a list of \"KEY=VALUE\" strings or a table of KEY = \"VALUE\""
)]
pub enum RawEnv {
    List(Vec<String>),
    Table(serde_json::Map<String, Value>),
}

/// One env entry: where it is written, and its key and value or why it has none.
pub type EnvEntry = (KeyPath, Result<(String, String), String>);

impl RawEnv {
    /// The entries in written order; table values may be numbers and booleans, taken as their
    /// text (`PORT = 8080`).
    pub fn entries(&self, at: &KeyPath) -> Vec<EnvEntry> {
        let table_entry = |k: &String, v: &Value| {
            let k = var_name(k)
                .map_err(|why| format!("env key {why}"))?
                .to_string();
            match v {
                Value::String(s) => Ok((k, s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                _ => Err(format!(
                    "env value of {k} must be a string, number or boolean"
                )),
            }
        };
        match self {
            RawEnv::List(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| (at.index(i), parse_entry(s)))
                .collect(),
            RawEnv::Table(table) => table
                .iter()
                .map(|(k, v)| (at.key(k), table_entry(k, v)))
                .collect(),
        }
    }
}

/// `log` of a program, or the main config's `[log]` defaults.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub struct RawLog {
    pub stdout: Val<String>,
    pub stderr: Val<String>,
    pub dir: Val<String>,
    pub max_size_mb: Val<i64>,
    pub max_backups: Val<i64>,
    pub max_age_days: Val<i64>,
    pub compress: Val<bool>,
}

/// Validates one tree (a file, a request body, an inline process) into errors that name the
/// document, the key (`at` joined with the key's own path) and its line.
pub struct Check<'d> {
    pub doc: &'d Document,
    /// Where the tree being checked sits in the document, e.g. `processes[2].spec`.
    pub at: KeyPath,
    pub errors: Vec<ConfigError>,
}

/// For each key, when the rule `$c.$rule` passes the key's value in `$raw`, sets the field of
/// the same name in `$out`: `set!(c.dur(raw => spec): stop_timeout)`.
macro_rules! set {
    ($c:ident.$rule:ident($raw:ident => $out:ident): $($key:ident),+) => {
        $(if let Some(v) = $c.$rule(&$raw.$key, stringify!($key)) {
            $out.$key = v.into();
        })+
    };
}
pub(crate) use set;

impl<'d> Check<'d> {
    pub fn new(doc: &'d Document, at: KeyPath) -> Check<'d> {
        let errors = Vec::new();
        Check { doc, at, errors }
    }

    /// Runs `f` with `at` moved to `rel`, e.g. into one entry of a list.
    pub fn within<R>(&mut self, rel: &KeyPath, f: impl FnOnce(&mut Self) -> R) -> R {
        let inner = self.at.join(rel);
        let outer = std::mem::replace(&mut self.at, inner);
        let r = f(self);
        self.at = outer;
        r
    }

    /// Runs `f` on the table at `key` when it is there, with `at` moved into it.
    pub fn table<T, R>(
        &mut self,
        v: &Val<T>,
        key: &str,
        f: impl FnOnce(&mut Self, &T) -> R,
    ) -> Option<R> {
        let table = self.get(v, key)?;
        Some(self.within(&key.into(), |c| f(c, table)))
    }

    /// Runs `f` on each entry of the list at `key`, with `at` moved to the entry.
    pub fn each<T, R>(
        &mut self,
        v: &Val<Vec<T>>,
        key: &str,
        mut f: impl FnMut(&mut Self, &T) -> R,
    ) -> Vec<R> {
        let list = self.get(v, key).map_or(&[][..], Vec::as_slice);
        let at = |i| KeyPath::from(key).index(i);
        let each = list.iter().enumerate();
        each.map(|(i, x)| self.within(&at(i), |c| f(c, x)))
            .collect()
    }

    /// Records an error about the key at `rel`; the caller may add a hint.
    pub fn err(&mut self, rel: impl Into<KeyPath>, message: impl Into<String>) -> &mut ConfigError {
        let e = self.doc.error(&self.at.join(&rel.into()), message);
        self.errors.push(e);
        self.errors.last_mut().expect("just pushed")
    }

    /// An error whose message starts with the key's whole path: "`log.dir` is empty".
    pub fn bad(&mut self, rel: impl Into<KeyPath>, what: impl Display) -> &mut ConfigError {
        let rel = rel.into();
        let shown = self.at.join(&rel);
        self.err(&rel, format!("`{shown}` {what}"))
    }

    /// Deserializes `tree` into `T`, reporting every key `T` does not know; `hint` may know a
    /// better hint for one than the closest known key.
    pub fn read<'de, T>(&mut self, tree: &'de Value, hint: impl Fn(&KeyPath) -> Option<String>) -> T
    where
        T: Deserialize<'de> + Default,
    {
        let mut unknown = Vec::new();
        let raw = serde_ignored::deserialize(tree, |p| unknown.push(key_path(&p)));
        for path in unknown {
            let Some((Seg::Key(key), parent)) = path.0.split_last() else {
                continue;
            };
            let hint = hint(&path).or_else(|| did_you_mean(key, known_keys::<T>(parent)));
            let shown = self.at.join(&path);
            self.err(&path, format!("unknown key `{shown}`")).hint = hint;
        }
        raw.unwrap_or_default()
    }

    /// The value of a key, reporting a value of the wrong type.
    pub fn get<'v, T>(&mut self, v: &'v Val<T>, rel: impl Into<KeyPath>) -> Option<&'v T> {
        let why = match v {
            Val::Absent => return None,
            Val::Ok(v) => return Some(v),
            Val::Bad(why) => why,
        };
        // An enum's unknown value is a value error, not a type error.
        let what = if why.starts_with("unknown variant") {
            "has an unknown value"
        } else {
            "has the wrong type"
        };
        let e = self.bad(rel, format_args!("{what}: {why}"));
        if why.contains("expected i64") {
            e.help("write a whole number");
        } else if why.contains("expected a boolean") {
            e.help("write true or false");
        }
        None
    }

    /// Reports a key that must be there and is not, at its table: "`detectors[0].type` is
    /// required", followed by `why` (" for a cron job").
    pub fn required<T>(&mut self, v: &Val<T>, key: &str, why: &str, hint: &str) {
        if v.is_absent() {
            let shown = self.at.key(key);
            self.err("", format!("`{shown}` is required{why}"))
                .help(hint);
        }
    }

    /// The `type` of a table that comes in `kinds` (of a `what`: detector, probe): required,
    /// and one of them.
    pub fn kind(&mut self, v: &Val<String>, kinds: &[&str], what: &str) -> Option<String> {
        let list = match kinds.split_last() {
            Some((last, rest)) => {
                let rest: Vec<String> = rest.iter().map(|k| format!("{k:?}")).collect();
                format!("{} or {last:?}", rest.join(", "))
            }
            None => String::new(),
        };
        self.required(v, "type", "", &format!("type = {list}"));
        let kind = self.get(v, "type")?;
        if !kinds.contains(&kind.as_str()) {
            let hint = did_you_mean(kind, kinds).unwrap_or_else(|| format!("use {list}"));
            let what = format_args!("{kind:?} is not a {what} type");
            self.bad("type", what).help(hint);
            return None;
        }
        Some(kind.clone())
    }

    /// The keys of a table that apply to some of its types only: each `given` key its `kind`
    /// does not take is an error, and the first key the kind `takes` is required (`takes` pairs
    /// each key with an example).
    pub fn applies(
        &mut self,
        kind: &str,
        what: &str,
        given: &[(&str, bool)],
        takes: &[(&str, &str)],
    ) {
        for &(key, given) in given {
            if given && !takes.iter().any(|(k, _)| *k == key) {
                self.bad(key, format_args!("does not apply to a `{kind}` {what}"));
            }
        }
        let Some(&(first, example)) = takes.first() else {
            return;
        };
        if given.iter().any(|&(key, given)| key == first && !given) {
            let shown = self.at.key(first);
            let message = format!("`{shown}` is required for a {kind} {what}");
            self.err("", message).help(example);
        }
    }

    /// A string key that must not be blank.
    pub fn non_empty<'v>(
        &mut self,
        v: &'v Val<String>,
        key: &str,
        hint: Option<&str>,
    ) -> Option<&'v String> {
        let s = self.get(v, key)?;
        if s.trim().is_empty() {
            self.bad(key, "is empty").hint = hint.map(str::to_string);
            return None;
        }
        Some(s)
    }

    /// [`Check::get`], by value.
    pub fn value<T: Clone>(&mut self, v: &Val<T>, rel: &str) -> Option<T> {
        self.get(v, rel).cloned()
    }

    /// A duration (`"1.5s"`).
    pub fn dur(&mut self, v: &Val<String>, rel: &str) -> Option<Dur> {
        if let Val::Bad(_) = v {
            self.get(v, rel);
            let e = self.errors.last_mut()?;
            e.help("write a number and a unit in quotes, e.g. \"1.5s\"");
            return None;
        }
        let e = match self.get(v, rel)?.parse::<Dur>() {
            Ok(d) => return Some(d),
            Err(e) => e,
        };
        let message = format!(
            "`{}`: invalid duration {:?}: {}",
            self.at.key(rel),
            e.input,
            e.why
        );
        let example = "write a number and a unit, e.g. \"500ms\", \"1.5s\", \"2m\", \"1h\"";
        self.err(rel, message).help(example);
        None
    }

    /// A duration of more than zero.
    pub fn positive_dur(&mut self, v: &Val<String>, rel: &str) -> Option<Dur> {
        let d = self.dur(v, rel)?;
        if d == Dur::ZERO {
            self.bad(rel, "must be more than 0s");
            return None;
        }
        Some(d)
    }

    /// A whole number, never negative.
    pub fn count(&mut self, v: &Val<i64>, rel: &str) -> Option<u32> {
        self.at_least(v, rel, 0)
    }

    /// A whole number of at least 1.
    pub fn positive(&mut self, v: &Val<i64>, rel: &str) -> Option<u32> {
        self.at_least(v, rel, 1)
    }

    fn at_least(&mut self, v: &Val<i64>, rel: &str, min: u32) -> Option<u32> {
        let &n = self.get(v, rel)?;
        let count = u32::try_from(n).ok().filter(|&n| n >= min);
        if count.is_none() {
            let what = format!("must be a whole number of at least {min}, got {n}");
            self.bad(rel, what);
        }
        count
    }

    /// A path key: absolute as written, or relative to `base`; without a base (an API request)
    /// a relative path is an error.
    pub fn path(&mut self, v: &Val<String>, rel: &str, base: Option<&Path>) -> Option<PathBuf> {
        let s = self.get(v, rel)?;
        self.path_of(s, rel, base)
    }

    /// A path written as `s` at `rel`, as [`Check::path`].
    pub fn path_of(
        &mut self,
        s: &str,
        rel: impl Into<KeyPath>,
        base: Option<&Path>,
    ) -> Option<PathBuf> {
        let why = match base {
            _ if s.trim().is_empty() => "is empty".to_string(),
            _ if Path::new(s).is_absolute() => return Some(s.into()),
            Some(base) => return Some(base.join(s)),
            None => format!("is the relative path {s:?}"),
        };
        let e = self.bad(rel, why);
        if base.is_none() {
            e.help("give an absolute path: a request has no directory to resolve it against");
        }
        None
    }

    /// Applies `env` entries onto `layers` in order, reporting each bad or unexpandable entry.
    pub fn env(&mut self, layers: &mut EnvLayers, env: &RawEnv, rel: &KeyPath) {
        let shown = self.at.join(rel);
        for (at, entry) in env.entries(rel) {
            match entry.map(|(key, value)| (layers.set(&key, &value, false), key)) {
                Err(message) => {
                    let e = self.err(&at, message);
                    if let Some(Seg::Index(_)) = at.0.last() {
                        e.help("write \"KEY=VALUE\"");
                    }
                }
                Ok((Err(e), key)) => {
                    let message = format!("{e} in `{shown}` entry {key}");
                    self.err(&at, message).help(e.hint());
                }
                Ok((Ok(()), _)) => {}
            }
        }
    }

    /// `log` of a program (or the main config's `[log]`) over `log`, the defaults.
    pub fn log(&mut self, raw: &Val<RawLog>, mut log: LogSpec, base: Option<&Path>) -> LogSpec {
        self.table(raw, "log", |c, raw| {
            for (v, key, file) in [
                (&raw.stdout, "stdout", &mut log.stdout),
                (&raw.stderr, "stderr", &mut log.stderr),
                (&raw.dir, "dir", &mut log.dir),
            ] {
                *file = c.path(v, key, base).or(file.take());
            }
            set!(c.positive(raw => log): max_size_mb);
            set!(c.count(raw => log): max_backups, max_age_days);
            set!(c.value(raw => log): compress);
        });
        log
    }
}

fn key_path(p: &serde_ignored::Path) -> KeyPath {
    use serde_ignored::Path as P;
    match p {
        P::Root => KeyPath::default(),
        P::Seq { parent, index } => key_path(parent).index(*index),
        P::Map { parent, key } => key_path(parent).key(key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

/// The keys of the struct at `path` inside `T`, as `T`'s own `Deserialize` impl declares them:
/// a probe deserializer feeds it one key per level down the path and records the field list of
/// the struct it ends in.
pub fn known_keys<'de, T: Deserialize<'de>>(path: &[Seg]) -> &'static [&'static str] {
    let found = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Probe(path, &found));
    found.get()
}

struct Probe<'a>(&'a [Seg], &'a std::cell::Cell<&'static [&'static str]>);

impl<'de> IntoDeserializer<'de, ProbeError> for Probe<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let Some((Seg::Key(key), rest)) = self.0.split_first() else {
            self.1.set(fields);
            return Err(de::Error::custom("found"));
        };
        let entry = (key.as_str(), Probe(rest, self.1));
        visitor.visit_map(MapDeserializer::new(std::iter::once(entry)))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        let Some((Seg::Index(_), rest)) = self.0.split_first() else {
            return Err(de::Error::custom("not a list"));
        };
        visitor.visit_seq(SeqDeserializer::new(std::iter::once(Probe(rest, self.1))))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests;
