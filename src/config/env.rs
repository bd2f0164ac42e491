//! Child environments (`docs/configuration.md`): dotenv files, `KEY=VALUE` entries, layering and `${VAR}` expansion.
//!
//! Layers, later wins: base (the daemon's environment, or only `PATH` and `HOME` without
//! `use_os_env`) → `env_files` in order → global `env` → program `env`. Each value is expanded
//! after parsing, against everything set before it, so `PATH=${PATH}:/opt/bin` extends the base.
//! The functions here are pure; the loader turns their errors into [`super::ConfigError`]s with
//! file, line and key.

use std::collections::BTreeMap;

/// `PATH` of the minimal base environment (`use_os_env = false`).
pub const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The base layer: all of the daemon's environment, or only `PATH` and the daemon's `HOME`.
pub fn base_environment(
    use_os_env: bool,
    daemon_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    if use_os_env {
        return daemon_env.clone();
    }
    let home = daemon_env.get_key_value("HOME");
    let home = home.map(|(k, v)| (k.clone(), v.clone()));
    let path = ("PATH".to_string(), MINIMAL_PATH.to_string());
    [path].into_iter().chain(home).collect()
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell accepts as a variable name.
pub fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `key` when it is a variable name, else why not.
pub fn var_name(key: &str) -> Result<&str, String> {
    match is_var_name(key) {
        true => Ok(key),
        false => Err(format!(
            "{key:?} is not a variable name (letters, digits, `_`, not starting with a digit)"
        )),
    }
}

/// Why a value could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${NAME}` names nothing set earlier.
    #[error("unknown variable `${{{0}}}`")]
    Unknown(String),
    /// `${` without a closing `}`.
    #[error("`${{` is not closed by `}}`")]
    Unclosed,
    /// `${…}` holds something that is not a variable name.
    #[error("`${{{0}}}` does not hold a variable name")]
    BadName(String),
}

impl ExpandError {
    /// How to fix it.
    pub fn hint(&self) -> String {
        match self {
            ExpandError::Unknown(_) => {
                "define it earlier (base environment, env_files, global `env`, \
                 or an earlier entry of this list), or write `$$` for a literal `$`"
                    .to_string()
            }
            ExpandError::Unclosed | ExpandError::BadName(_) => {
                "write `${NAME}` with NAME of letters, digits and `_`, or `$$` for a literal `$`"
                    .to_string()
            }
        }
    }
}

/// Expands `${NAME}` from `vars` and `$$` to `$`; any other `$` stays as it is.
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').ok_or(ExpandError::Unclosed)?;
            let name = &inner[..close];
            if !is_var_name(name) {
                return Err(ExpandError::BadName(name.to_string()));
            }
            let v = vars
                .get(name)
                .ok_or_else(|| ExpandError::Unknown(name.to_string()))?;
            out.push_str(v);
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits a `KEY=VALUE` entry; the value may be empty and may contain `=`.
pub fn parse_entry(entry: &str) -> Result<(String, String), String> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(format!("env entry {entry:?} is not of the form KEY=VALUE"));
    };
    let key = var_name(key.trim()).map_err(|why| format!("env entry {entry:?}: {why}"))?;
    Ok((key.to_string(), value.to_string()))
}

/// One assignment of a dotenv file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotenvEntry {
    pub key: String,
    pub value: String,
    /// Single-quoted: taken as written, no `${VAR}` expansion (as in shells and other dotenv tools).
    pub literal: bool,
    /// 1-based.
    pub line: usize,
}

/// Parses dotenv text: `KEY=VALUE` lines, `#` comments, blank lines, optional `export `,
/// optional single or double quotes. Returns the good entries and every bad line as
/// (line, message), so one bad line does not hide the errors of the others.
pub fn parse_dotenv(text: &str) -> (Vec<DotenvEntry>, Vec<(usize, String)>) {
    let (mut entries, mut errors) = (Vec::new(), Vec::new());
    for (n, raw) in text.lines().enumerate() {
        match parse_dotenv_line(raw, n + 1) {
            Ok(entry) => entries.extend(entry),
            Err(message) => errors.push((n + 1, message)),
        }
    }
    (entries, errors)
}

/// Line `line_number` of a dotenv file: an entry, nothing (blank or a comment), or why not.
fn parse_dotenv_line(raw: &str, line_number: usize) -> Result<Option<DotenvEntry>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line
        .strip_prefix("export")
        .filter(|rest| rest.starts_with([' ', '\t']))
        .map_or(line, str::trim_start);
    let Some((key, value)) = line.split_once('=') else {
        return Err(format!("{line:?} is not a KEY=VALUE line"));
    };
    let key = var_name(key.trim())?;
    let value = value.trim_start();
    let (value, literal, trailing) = if let Some(inner) = value.strip_prefix('\'') {
        let close = inner
            .find('\'')
            .ok_or_else(|| format!("the value of {key} opens a ' quote that is not closed"))?;
        (inner[..close].to_string(), true, &inner[close + 1..])
    } else if let Some(inner) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => out.push(e),
                    None => {}
                },
                c => out.push(c),
            }
        }
        let end =
            end.ok_or_else(|| format!("the value of {key} opens a \" quote that is not closed"))?;
        (out, false, &inner[end..])
    } else {
        // Unquoted: a `#` after whitespace starts a comment.
        let cut = value
            .char_indices()
            .find(|&(i, c)| c == '#' && i > 0 && value[..i].ends_with([' ', '\t']))
            .map_or(value.len(), |(i, _)| i);
        (value[..cut].trim_end().to_string(), false, "")
    };
    let trailing = trailing.trim();
    if !(trailing.is_empty() || trailing.starts_with('#')) {
        return Err(format!(
            "unexpected text {trailing:?} after the quoted value of {key}"
        ));
    }
    Ok(Some(DotenvEntry {
        key: key.to_string(),
        value,
        literal,
        line: line_number,
    }))
}

/// The environment being layered: everything visible so far, and the overlay (what the layers
/// above the base set), which is what a [`super::ProgramSpec`] stores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvLayers {
    visible: BTreeMap<String, String>,
    overlay: BTreeMap<String, String>,
}

impl EnvLayers {
    /// Starts from a base environment, which is visible to `${VAR}` but not part of the overlay.
    pub fn new(base: BTreeMap<String, String>) -> EnvLayers {
        EnvLayers {
            visible: base,
            overlay: BTreeMap::new(),
        }
    }

    /// Sets `key` to `value`, expanding it first unless `literal`.
    pub fn set(&mut self, key: &str, value: &str, literal: bool) -> Result<(), ExpandError> {
        let value = if literal {
            value.to_string()
        } else {
            expand(value, &self.visible)?
        };
        self.visible.insert(key.to_string(), value.clone());
        self.overlay.insert(key.to_string(), value);
        Ok(())
    }

    pub fn overlay(&self) -> &BTreeMap<String, String> {
        &self.overlay
    }

    pub fn into_overlay(self) -> BTreeMap<String, String> {
        self.overlay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_rules() {
        let v = vars(&[("PATH", "/bin"), ("NAME", "provisr"), ("EMPTY", "")]);
        let ok: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("${PATH}:/opt/bin", "/bin:/opt/bin"),
            ("${NAME}-x", "provisr-x"),
            ("a${NAME}b${NAME}c", "aprovisrbprovisrc"),
            ("$$", "$"),
            ("$${NAME}", "${NAME}"),
            ("cost $$5", "cost $5"),
            ("$NAME", "$NAME"),
            ("trailing $", "trailing $"),
            ("[${EMPTY}]", "[]"),
            ("", ""),
        ];
        for (input, want) in ok {
            assert_eq!(expand(input, &v).as_deref(), Ok(*want), "{input}");
        }
        let bad: &[(&str, ExpandError)] = &[
            ("${NOPE}", ExpandError::Unknown("NOPE".into())),
            ("x ${PATH", ExpandError::Unclosed),
            ("${}", ExpandError::BadName(String::new())),
            ("${A-B}", ExpandError::BadName("A-B".into())),
            ("${X:-d}", ExpandError::BadName("X:-d".into())),
        ];
        for (input, want) in bad {
            assert_eq!(expand(input, &v).as_ref(), Err(want), "{input}");
        }
    }

    #[test]
    fn base_is_the_daemon_env_or_a_minimal_one() {
        let daemon = vars(&[("PATH", "/x"), ("HOME", "/home/u"), ("SECRET", "s")]);
        assert_eq!(base_environment(true, &daemon), daemon);
        assert_eq!(
            base_environment(false, &daemon),
            vars(&[("PATH", MINIMAL_PATH), ("HOME", "/home/u")])
        );
        assert_eq!(
            base_environment(false, &BTreeMap::new()),
            vars(&[("PATH", MINIMAL_PATH)])
        );
    }

    #[test]
    fn layers_resolve_against_everything_earlier() {
        let mut env = EnvLayers::new(vars(&[("PATH", "/bin")]));
        env.set("GLOBAL_NAME", "provisr", false).unwrap();
        env.set("CHAIN", "${GLOBAL_NAME}-x", false).unwrap();
        env.set("PATH", "${PATH}:/opt/bin", false).unwrap();
        env.set("LIT", "${NOT_EXPANDED}", true).unwrap();
        // Later entries win and see the earlier value of the same key.
        env.set("CHAIN", "${CHAIN}-y", false).unwrap();
        assert_eq!(
            env.overlay(),
            &vars(&[
                ("CHAIN", "provisr-x-y"),
                ("GLOBAL_NAME", "provisr"),
                ("LIT", "${NOT_EXPANDED}"),
                ("PATH", "/bin:/opt/bin"),
            ])
        );
        assert_eq!(
            env.set("X", "${LATER}", false),
            Err(ExpandError::Unknown("LATER".into()))
        );
        assert!(!env.overlay().contains_key("X"));
    }

    #[test]
    fn entries_are_key_equals_value() {
        assert_eq!(parse_entry("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(parse_entry("A="), Ok(("A".into(), String::new())));
        assert_eq!(parse_entry("A=b=c"), Ok(("A".into(), "b=c".into())));
        for bad in ["A", "=1", "1A=x", "A-B=x", ""] {
            assert!(parse_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dotenv_syntax() {
        let text = "# comment\n\nA=1\nexport B=two words\nC=\"quoted # not a comment\"\nD='${LIT}'\nE=\"esc\\\"aped\\n\"\nF=x # comment\nG=\nexported=3\n  H = spaced\n";
        let (entries, errors) = parse_dotenv(text);
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.literal, e.line))
            .collect();
        assert_eq!(
            got,
            [
                ("A", "1", false, 3),
                ("B", "two words", false, 4),
                ("C", "quoted # not a comment", false, 5),
                ("D", "${LIT}", true, 6),
                ("E", "esc\"aped\n", false, 7),
                ("F", "x", false, 8),
                ("G", "", false, 9),
                ("exported", "3", false, 10),
                ("H", "spaced", false, 11),
            ]
        );
    }

    #[test]
    fn dotenv_reports_every_bad_line() {
        let text = "OK=1\nno equals\n1BAD=x\nQ=\"open\nR='open\nS=\"a\" b\n";
        let (entries, errors) = parse_dotenv(text);
        assert_eq!(entries.len(), 1);
        let lines: Vec<_> = errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
    }
}
