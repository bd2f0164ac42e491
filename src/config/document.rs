//! A parsed config file, and where a key is written in it.
//!
//! Each format's own parser turns the text into one generic tree (syntax errors carry the
//! parser's line), so the four formats share every later step. Later errors name a key path;
//! [`Document::line_of`] asks the same parser for its line: the format's deserializer walks to
//! the key and fails there, and every parser stamps a failure with its position. Errors are rare,
//! so the text is read again only per error, and nothing here knows a format's syntax.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::error::ConfigError;

/// Which format a text is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Toml,
    Yaml,
    Json,
}

impl FileFormat {
    /// The format of a file by its extension (`toml`, `yaml`, `yml`, `json`).
    pub fn of(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()? {
            "toml" => Some(FileFormat::Toml),
            "yaml" | "yml" => Some(FileFormat::Yaml),
            "json" => Some(FileFormat::Json),
            _ => None,
        }
    }
}

/// One step of a key path: a map key or a list index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a document, shown as `detectors[1].interval`; `""` is the root, `"name"` a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

/// The path of one key at the top of a document.
pub fn k(key: &str) -> KeyPath {
    key.into()
}

impl KeyPath {
    pub fn key(&self, k: &str) -> KeyPath {
        self.join(&KeyPath(vec![Seg::Key(k.into())]))
    }

    pub fn index(&self, i: usize) -> KeyPath {
        self.join(&KeyPath(vec![Seg::Index(i)]))
    }

    pub fn join(&self, rest: &KeyPath) -> KeyPath {
        KeyPath(self.0.iter().chain(&rest.0).cloned().collect())
    }
}

impl From<&str> for KeyPath {
    fn from(key: &str) -> KeyPath {
        match key {
            "" => KeyPath::default(),
            key => KeyPath::default().key(key),
        }
    }
}

impl From<&KeyPath> for KeyPath {
    fn from(path: &KeyPath) -> KeyPath {
        path.clone()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A file (or an API request body): its name for errors, its tree, and the text lines come from.
#[derive(Clone)]
pub struct Document {
    pub file: PathBuf,
    pub tree: Value,
    /// `None` when there is no text to point into (a request body): errors then have no line.
    text: Option<(String, FileFormat)>,
}

impl Document {
    /// Parses `text`; a syntax error carries the parser's line.
    pub fn parse(file: PathBuf, text: String, format: FileFormat) -> Result<Document, ConfigError> {
        let error = |kind: &str, message: String, line: Option<usize>| {
            ConfigError::new(&file, format!("{kind} syntax error: {message}")).at_line(line)
        };
        let tree = match format {
            FileFormat::Toml => toml::from_str(&text).map(plain_datetimes).map_err(|e| {
                let line = e.span().map(|s| line_at(&text, s.start));
                error("TOML", e.message().trim().replace('\n', "; "), line)
            }),
            // An empty YAML document is null; say so plainly rather than "EOF".
            FileFormat::Yaml if text.trim().is_empty() => Ok(Value::Null),
            FileFormat::Yaml => serde_yaml::from_str(&text)
                .map_err(|e| error("YAML", e.to_string(), e.location().map(|l| l.line()))),
            FileFormat::Json => serde_json::from_str(&text)
                .map_err(|e| error("JSON", e.to_string(), Some(e.line()).filter(|&l| l > 0))),
        }?;
        let text = Some((text, format));
        Ok(Document { file, tree, text })
    }

    /// A tree without text, e.g. an API request body.
    pub fn without_text(file: impl Into<PathBuf>, tree: Value) -> Document {
        let file = file.into();
        Document {
            file,
            tree,
            text: None,
        }
    }

    /// An error about the key at `at`, with its line when the text shows one.
    pub fn error(&self, at: &KeyPath, message: impl Into<String>) -> ConfigError {
        let e = ConfigError::new(&self.file, message).at_line(self.line_of(at));
        match at.0.is_empty() {
            true => e,
            false => e.with_key(at.to_string()),
        }
    }

    /// The line of the key at `path`, else of the nearest enclosing key that is written (a
    /// missing key is shown at its table). The root has no line.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let (text, format) = self.text.as_ref()?;
        let mut node = Some(&self.tree);
        let written = path.0.iter().take_while(|seg| {
            node = match (seg, node) {
                (Seg::Key(k), Some(Value::Object(m))) => m.get(k),
                (Seg::Index(i), Some(Value::Array(a))) => a.get(*i),
                _ => None,
            };
            node.is_some()
        });
        let seek = Seek(&path.0[..written.count()]);
        if seek.0.is_empty() {
            return None;
        }
        match format {
            FileFormat::Toml => {
                let e = seek.deserialize(toml::Deserializer::new(text)).err()?;
                e.span().map(|s| line_at(text, s.start))
            }
            FileFormat::Yaml => {
                let e = seek
                    .deserialize(serde_yaml::Deserializer::from_str(text))
                    .err()?;
                e.location().map(|l| l.line())
            }
            FileFormat::Json => {
                let e = seek
                    .deserialize(&mut serde_json::Deserializer::from_str(text))
                    .err()?;
                Some(e.line()).filter(|&l| l > 0)
            }
        }
    }
}

impl fmt::Debug for Document {
    /// The file only: the text may hold a secret (`[server] token`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// TOML datetimes arrive as `{"$__toml_private_datetime": "…"}`; no key takes one, so they become
/// plain strings and validation reports the type.
fn plain_datetimes(v: Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("$__toml_private_datetime") => {
            m.into_iter().map(|(_, v)| v).next().unwrap_or_default()
        }
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| (k, plain_datetimes(v)))
            .collect(),
        Value::Array(a) => a.into_iter().map(plain_datetimes).collect(),
        v => v,
    }
}

/// Walks a deserializer along a path that is written, and fails at its end: at the key itself
/// for a key, at the element for a list index.
struct Seek<'p>(&'p [Seg]);

const HERE: &str = "the key looked for";

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(HERE)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some((Seg::Key(key), rest)) = self.0.split_first() {
            while let Some(found) = map.next_key_seed(SeekKey(key, rest.is_empty()))? {
                if found {
                    return map.next_value_seed(Seek(rest));
                }
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(de::Error::custom(HERE))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some((Seg::Index(i), rest)) = self.0.split_first() {
            for _ in 0..*i {
                seq.next_element::<IgnoredAny>()?;
            }
            seq.next_element_seed(Seek(rest))?;
        }
        Err(de::Error::custom(HERE))
    }
}

/// A map key: true when it is the one looked for; an error there when the path ends at it.
struct SeekKey<'a>(&'a str, bool);

impl<'de> DeserializeSeed<'de> for SeekKey<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        // Failing inside the parser's own `deserialize_str` gives the key's position, not its map's.
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for SeekKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match key == self.0 {
            true if self.1 => Err(E::custom(HERE)),
            found => Ok(found),
        }
    }
}

/// "did you mean `x`?" for the candidate closest to `word`, when it is close enough to be a typo:
/// one edit for short names and two for longer ones (a swap of two letters is one edit), or one
/// name containing the other (`restart` → `auto_restart`).
pub fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    let word = word.to_ascii_lowercase();
    let close = |&(d, c): &(usize, &str)| {
        let limit = if c.len() <= 4 { 1 } else { 2 };
        // A one-letter word is one edit from every one-letter name: no suggestion then.
        (d <= limit && d < word.len() && d < c.len())
            || (word.len() >= 3 && c.contains(word.as_str()))
            || (c.len() >= 3 && word.contains(c))
    };
    let candidates = candidates
        .iter()
        .map(|c| (strsim::osa_distance(&word, c), *c));
    let (_, best) = candidates.filter(close).min_by_key(|&(d, _)| d)?;
    Some(format!("did you mean `{best}`?"))
}

#[cfg(test)]
mod tests;
