//! The one error type of configuration loading: which file, which line, which key, what is wrong,
//! and how to fix it.
//!
//! Loading never stops at the first problem: every function here collects a `Vec<ConfigError>`, so
//! a user fixes all of a file's mistakes in one edit. The type serializes to JSON because the API
//! returns these errors as they are.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One problem in one configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ConfigError {
    /// The file the problem is in (`<request>` for an API body).
    pub file: PathBuf,
    /// 1-based line, when the format or the file text gives one.
    pub line: Option<usize>,
    /// Dotted path of the key, e.g. `detectors[1].interval` or `spec.command`.
    pub key: Option<String>,
    /// What is wrong, as one sentence fragment naming the key.
    pub message: String,
    /// How to fix it, e.g. "did you mean `command`?".
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.into(),
            line: None,
            key: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn at_line(mut self, line: Option<usize>) -> ConfigError {
        self.line = line;
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> ConfigError {
        self.key = Some(key.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ConfigError {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the hint of an error already recorded.
    pub fn help(&mut self, hint: impl Into<String>) {
        self.hint = Some(hint.into());
    }

    /// True when this error is about `path`.
    pub fn is_in(&self, path: &Path) -> bool {
        self.file == path
    }
}

impl fmt::Display for ConfigError {
    /// `programs/web.toml:3: unknown key `comand` — did you mean `command`?`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " — {hint}")?;
        }
        Ok(())
    }
}

/// Renders a list of errors one per line, for logs and the CLI.
pub fn render_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_file_line_message_and_hint() {
        let e = ConfigError::new("programs/web.toml", "unknown key `comand`")
            .at_line(Some(3))
            .with_key("comand")
            .with_hint("did you mean `command`?");
        assert_eq!(
            e.to_string(),
            "programs/web.toml:3: unknown key `comand` — did you mean `command`?"
        );
        let bare = ConfigError::new("<request>", "`command` or `args` is required");
        assert_eq!(
            bare.to_string(),
            "<request>: `command` or `args` is required"
        );
    }

    #[test]
    fn serializes_every_field() {
        let e = ConfigError::new("a.toml", "bad")
            .at_line(Some(1))
            .with_key("k");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["file"], "a.toml");
        assert_eq!(v["line"], 1);
        assert_eq!(v["key"], "k");
        assert_eq!(v["message"], "bad");
        assert!(v["hint"].is_null());
    }
}
