//! Finding the line of a key in a file's text, and "did you mean" suggestions.
//!
//! The parsers give lines for syntax errors only; unknown keys and semantic errors are found
//! after parsing, on a generic tree that has no positions. So each file's text is scanned once
//! into a table of (key path → line): exactly for JSON (a small scanner), and by the block
//! structure for TOML (table headers, dotted keys, array-of-tables counts) and YAML (indentation
//! and `- ` items). The table is best effort: an error without a line is still reported.

use std::collections::HashMap;
use std::fmt;

/// Which file format a text is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// The format of a file by its extension (`toml`, `yaml`, `yml`, `json`).
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// One step of a key path: a map key or a list index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a document, e.g. `detectors[1].interval`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    /// This path with a key appended.
    pub fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    /// This path with a list index appended.
    pub fn index(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// This path followed by `rest`.
    pub fn join(&self, rest: &KeyPath) -> KeyPath {
        let mut v = self.0.clone();
        v.extend(rest.0.iter().cloned());
        KeyPath(v)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
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

/// The line of every key and list item of one file's text.
#[derive(Clone, Debug, Default)]
pub struct LineTable {
    lines: HashMap<Vec<Seg>, usize>,
}

impl LineTable {
    /// Scans `text` of `format`. Never fails: text it does not understand yields fewer entries.
    pub fn scan(text: &str, format: Format) -> LineTable {
        let entries = match format {
            Format::Json => json_lines(text),
            Format::Toml => toml_lines(text),
            Format::Yaml => yaml_lines(text),
        };
        let mut lines = HashMap::new();
        for (path, line) in entries {
            // The first occurrence wins: a duplicated key is a parse error anyway.
            lines.entry(path).or_insert(line);
        }
        LineTable { lines }
    }

    /// The line of `path`, else of its longest ancestor that has one (e.g. the line of an
    /// inline table that holds the key).
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        (1..=path.0.len())
            .rev()
            .find_map(|len| self.lines.get(&path.0[..len]).copied())
    }
}

/// Edit distance with adjacent transpositions (optimal string alignment): `wbe` is one edit
/// from `web`, as a typo feels. Keys are short, so a full matrix is fine.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, c), *c))
        .filter(|(d, c)| {
            let limit = if c.len() <= 4 { 1 } else { 2 };
            // A one-letter word is one edit from every one-letter name: no suggestion then.
            (*d <= limit && *d < lower.len() && *d < c.len())
                || (c.contains(&lower) && lower.len() >= 3)
                || (lower.contains(*c) && c.len() >= 3)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" for the closest candidate.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    suggest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

// ---------------------------------------------------------------------------------------------
// JSON: an exact scanner over the (already valid) text.

fn json_lines(text: &str) -> Vec<(Vec<Seg>, usize)> {
    let mut scanner = JsonScanner {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    let mut path = Vec::new();
    scanner.value(&mut path, 0);
    scanner.out
}

struct JsonScanner {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    out: Vec<(Vec<Seg>, usize)>,
}

impl JsonScanner {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) {
        if self.peek() == Some('\n') {
            self.line += 1;
        }
        self.pos += 1;
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn value(&mut self, path: &mut Vec<Seg>, depth: usize) {
        // Depth bound: the text parsed already, but a scanner must never recurse without limit.
        if depth > 128 {
            return;
        }
        self.skip_ws();
        match self.peek() {
            Some('{') => self.object(path, depth),
            Some('[') => self.array(path, depth),
            Some('"') => {
                self.string();
            }
            Some(_) => {
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, ',' | '}' | ']') && !c.is_whitespace())
                {
                    self.bump();
                }
            }
            None => {}
        }
    }

    fn string(&mut self) -> String {
        let mut s = String::new();
        self.bump(); // opening quote
        while let Some(c) = self.peek() {
            self.bump();
            match c {
                '"' => break,
                '\\' => {
                    if let Some(e) = self.peek() {
                        s.push(e);
                        self.bump();
                    }
                }
                c => s.push(c),
            }
        }
        s
    }

    fn object(&mut self, path: &mut Vec<Seg>, depth: usize) {
        self.bump();
        loop {
            self.skip_ws();
            match self.peek() {
                Some('}') => {
                    self.bump();
                    return;
                }
                Some(',') => self.bump(),
                Some('"') => {
                    let line = self.line;
                    let key = self.string();
                    path.push(Seg::Key(key));
                    self.out.push((path.clone(), line));
                    self.skip_ws();
                    if self.peek() == Some(':') {
                        self.bump();
                    }
                    self.value(path, depth + 1);
                    path.pop();
                }
                _ => return,
            }
        }
    }

    fn array(&mut self, path: &mut Vec<Seg>, depth: usize) {
        self.bump();
        let mut index = 0;
        loop {
            self.skip_ws();
            match self.peek() {
                Some(']') => {
                    self.bump();
                    return;
                }
                Some(',') => self.bump(),
                Some(_) => {
                    let before = self.pos;
                    path.push(Seg::Index(index));
                    self.out.push((path.clone(), self.line));
                    self.value(path, depth + 1);
                    path.pop();
                    index += 1;
                    if self.pos == before {
                        return;
                    }
                }
                None => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TOML: headers, dotted keys, arrays of tables, one-element-per-line multi-line arrays.

/// Splits a dotted TOML key (`a."b.c".d`) into its parts, unquoted.
fn toml_key_parts(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '.') => parts.push(std::mem::take(&mut cur).trim().to_string()),
            (None, c) => cur.push(c),
        }
    }
    parts.push(cur.trim().to_string());
    parts
}

/// Position of the first `ch` outside quotes.
fn find_unquoted(s: &str, ch: char) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ch => return Some(i),
            None => {}
        }
    }
    None
}

fn toml_lines(text: &str) -> Vec<(Vec<Seg>, usize)> {
    let mut out = Vec::new();
    let mut table: Vec<Seg> = Vec::new();
    // How many `[[x]]` tables were seen, by the rendered path of x.
    let mut aot_counts: HashMap<Vec<Seg>, usize> = HashMap::new();
    let mut multiline_string: Option<&str> = None;
    let mut open_array: Option<(Vec<Seg>, usize)> = None;

    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        if let Some(delim) = multiline_string {
            if trimmed.contains(delim) {
                multiline_string = None;
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some((path, index)) = open_array.as_mut() {
            if trimmed.starts_with(']') {
                open_array = None;
                continue;
            }
            let mut p = path.clone();
            p.push(Seg::Index(*index));
            out.push((p, line));
            *index += 1;
            continue;
        }
        if let Some(inner) = trimmed.strip_prefix("[[") {
            let name = inner.split("]]").next().unwrap_or_default();
            table = header_path(&toml_key_parts(name), &mut aot_counts, true);
            out.push((table.clone(), line));
            continue;
        }
        if let Some(inner) = trimmed.strip_prefix('[') {
            let name = inner.split(']').next().unwrap_or_default();
            table = header_path(&toml_key_parts(name), &mut aot_counts, false);
            out.push((table.clone(), line));
            continue;
        }
        let Some(eq) = find_unquoted(trimmed, '=') else {
            continue;
        };
        let mut path = table.clone();
        path.extend(toml_key_parts(&trimmed[..eq]).into_iter().map(Seg::Key));
        out.push((path.clone(), line));
        let value = trimmed[eq + 1..].trim();
        for delim in ["\"\"\"", "'''"] {
            if let Some(rest) = value.strip_prefix(delim) {
                if !rest.contains(delim) {
                    multiline_string = Some(delim);
                }
            }
        }
        if value.starts_with('[') && find_unquoted(value, ']').is_none() {
            // Elements follow, one per line; a first element on the key line is counted too.
            let first = value[1..].trim();
            let start = if first.is_empty() || first.starts_with('#') {
                0
            } else {
                out.push((
                    {
                        let mut p = path.clone();
                        p.push(Seg::Index(0));
                        p
                    },
                    line,
                ));
                1
            };
            open_array = Some((path, start));
        }
    }
    out
}

/// The key path of a table header; `[[x]]` counts a new element of x.
fn header_path(
    parts: &[String],
    aot_counts: &mut HashMap<Vec<Seg>, usize>,
    array: bool,
) -> Vec<Seg> {
    let mut path = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        path.push(Seg::Key(part.clone()));
        let last = i + 1 == parts.len();
        if last && array {
            let count = aot_counts.entry(path.clone()).or_insert(0);
            *count += 1;
            let index = *count - 1;
            // A new element resets the counts of arrays nested in the previous one.
            let prefix = path.clone();
            aot_counts.retain(|k, _| k.len() <= prefix.len() || !k.starts_with(&prefix));
            path.push(Seg::Index(index));
        } else if let Some(count) = aot_counts.get(&path) {
            path.push(Seg::Index(count.saturating_sub(1)));
        }
    }
    path
}

// ---------------------------------------------------------------------------------------------
// YAML: block mappings and sequences by indentation; flow collections count as one line.

enum YamlEntry {
    /// A key at a column; `items` counts the `- ` items of its value.
    Key {
        col: usize,
        path: Vec<Seg>,
        items: usize,
    },
    /// A `- ` item at the column of its dash.
    Item { col: usize, path: Vec<Seg> },
}

impl YamlEntry {
    fn col(&self) -> usize {
        match self {
            YamlEntry::Key { col, .. } | YamlEntry::Item { col, .. } => *col,
        }
    }

    fn path(&self) -> &[Seg] {
        match self {
            YamlEntry::Key { path, .. } | YamlEntry::Item { path, .. } => path,
        }
    }
}

/// `key: value` → (`key`, `value`); `None` when the text is not a mapping entry.
fn yaml_key(s: &str) -> Option<(String, &str)> {
    let bytes = s.as_bytes();
    let (key, after) = if let Some(q @ (b'"' | b'\'')) = bytes.first().copied() {
        let close = s[1..].find(q as char)? + 1;
        (s[1..close].to_string(), &s[close + 1..])
    } else {
        let colon = s
            .char_indices()
            .find(|&(i, c)| c == ':' && s[i + 1..].chars().next().is_none_or(char::is_whitespace))?
            .0;
        let key = s[..colon].trim_end();
        if key.is_empty() || key.starts_with(['{', '[', '#']) {
            return None;
        }
        (key.to_string(), &s[colon..])
    };
    let rest = after.trim_start().strip_prefix(':')?;
    Some((key, rest.trim()))
}

fn yaml_lines(text: &str) -> Vec<(Vec<Seg>, usize)> {
    let mut out = Vec::new();
    let mut stack: Vec<YamlEntry> = Vec::new();
    // Inside a `|`/`>` block scalar: lines indented deeper than this column are text.
    let mut block_scalar: Option<usize> = None;

    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        let indent = raw.len() - raw.trim_start().len();
        if let Some(col) = block_scalar {
            if trimmed.is_empty() || indent > col {
                continue;
            }
            block_scalar = None;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let mut col = indent;
        let mut rest = trimmed;
        // Dashes: each `- ` opens an item of the sequence owned by the key (or item) above.
        while rest == "-" || rest.starts_with("- ") {
            while stack.last().is_some_and(|e| {
                e.col() > col || (e.col() == col && matches!(e, YamlEntry::Item { .. }))
            }) {
                stack.pop();
            }
            let parent: Vec<Seg> = stack.last().map(|e| e.path().to_vec()).unwrap_or_default();
            let index = match stack.last_mut() {
                Some(YamlEntry::Key { items, .. }) => {
                    *items += 1;
                    *items - 1
                }
                _ => 0,
            };
            let mut path = parent;
            path.push(Seg::Index(index));
            out.push((path.clone(), line));
            stack.push(YamlEntry::Item { col, path });
            let after = rest[1..].trim_start();
            col += rest.len() - after.len();
            rest = after;
        }
        let Some((key, value)) = yaml_key(rest) else {
            continue;
        };
        while stack.last().is_some_and(|e| e.col() >= col) {
            stack.pop();
        }
        let mut path: Vec<Seg> = stack.last().map(|e| e.path().to_vec()).unwrap_or_default();
        path.push(Seg::Key(key));
        out.push((path.clone(), line));
        if value.starts_with('|') || value.starts_with('>') {
            block_scalar = Some(col);
        }
        stack.push(YamlEntry::Key {
            col,
            path,
            items: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &[&str]) -> KeyPath {
        KeyPath(
            s.iter()
                .map(|p| match p.parse::<usize>() {
                    Ok(i) => Seg::Index(i),
                    Err(_) => Seg::Key(p.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn key_paths_render_dotted_with_indices() {
        let p = KeyPath::root().key("detectors").index(1).key("interval");
        assert_eq!(p.to_string(), "detectors[1].interval");
        assert_eq!(KeyPath::root().key("spec").to_string(), "spec");
    }

    #[test]
    fn finds_toml_lines() {
        let text = r#"# comment
type = "process"
[spec]
name = "web"
comand = "x"
log = { dir = "logs" }
env = [
  "A=1",
  "B=${X}",
]

[[spec.detectors]]
type = "command"

[[spec.detectors]]
type = "pidfile"
intervall = "1s"
"#;
        let t = LineTable::scan(text, Format::Toml);
        let cases: &[(&[&str], Option<usize>)] = &[
            (&["type"], Some(2)),
            (&["spec"], Some(3)),
            (&["spec", "comand"], Some(5)),
            (&["spec", "log", "dir"], Some(6)),
            (&["spec", "env", "1"], Some(9)),
            (&["spec", "detectors", "0", "type"], Some(13)),
            (&["spec", "detectors", "1", "type"], Some(16)),
            (&["spec", "detectors", "1", "intervall"], Some(17)),
            (&["spec", "missing"], Some(3)),
            (&["nothing"], None),
        ];
        for (p, want) in cases {
            assert_eq!(t.line_of(&path(p)), *want, "{p:?}");
        }
    }

    #[test]
    fn finds_toml_lines_of_inline_processes() {
        let text = "[[processes]]\nname = \"a\"\n\n[[processes]]\nname = \"b\"\n[processes.log]\ndirr = \"x\"\n";
        let t = LineTable::scan(text, Format::Toml);
        assert_eq!(t.line_of(&path(&["processes", "1", "name"])), Some(5));
        assert_eq!(
            t.line_of(&path(&["processes", "1", "log", "dirr"])),
            Some(7)
        );
    }

    #[test]
    fn finds_yaml_lines() {
        let text = "name: web\ncommand: |\n  echo a: b\nenv:\n  - A=1\n  - B=2\ndetectors:\n- type: command\n  command: x\n- type: pidfile\n  path: /p\nlog:\n  dir: logs\n";
        let t = LineTable::scan(text, Format::Yaml);
        let cases: &[(&[&str], Option<usize>)] = &[
            (&["name"], Some(1)),
            (&["command"], Some(2)),
            (&["env", "1"], Some(6)),
            (&["detectors", "0", "type"], Some(8)),
            (&["detectors", "0", "command"], Some(9)),
            (&["detectors", "1", "type"], Some(10)),
            (&["detectors", "1", "path"], Some(11)),
            (&["log", "dir"], Some(13)),
        ];
        for (p, want) in cases {
            assert_eq!(t.line_of(&path(p)), *want, "{p:?}");
        }
        // The block scalar's text is not taken for keys.
        assert_eq!(t.line_of(&path(&["command", "echo a"])), Some(2));
    }

    #[test]
    fn finds_json_lines() {
        let text = "{\n  \"name\": \"web\",\n  \"args\": [\"a\",\n    \"b\"],\n  \"detectors\": [\n    {\"type\": \"command\"},\n    {\n      \"type\": \"pidfile\"\n    }\n  ]\n}\n";
        let t = LineTable::scan(text, Format::Json);
        assert_eq!(t.line_of(&path(&["name"])), Some(2));
        assert_eq!(t.line_of(&path(&["args", "1"])), Some(4));
        assert_eq!(t.line_of(&path(&["detectors", "0", "type"])), Some(6));
        assert_eq!(t.line_of(&path(&["detectors", "1", "type"])), Some(8));
    }

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["command", "args", "name", "stop_signal", "auto_restart"];
        assert_eq!(suggest("comand", &keys), Some("command"));
        assert_eq!(suggest("COMMAND", &keys), Some("command"));
        assert_eq!(suggest("stop_sigal", &keys), Some("stop_signal"));
        assert_eq!(suggest("restart", &keys), Some("auto_restart"));
        assert_eq!(suggest("zzz", &keys), None);
        assert_eq!(suggest("colour", &keys), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("wbe", "web"), 1);
        assert_eq!(suggest("wbe", &["web", "api"]), Some("web"));
        assert_eq!(suggest("x", &["t", "ab"]), None);
    }
}
