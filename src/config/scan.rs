//! Loading: the main config, then every program (inline `[[processes]]` and the programs
//! directory) against it, and the checks across programs (unique names, groups' members).
//!
//! [`load`] reads the main config and scans; [`scan_programs`] rescans with settings already
//! loaded (the hot-reload watcher); [`program_from_json`] validates one API request body by the
//! same rules.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::document::{did_you_mean, k, Document, FileFormat, KeyPath};
use super::env::{base_environment, parse_dotenv, EnvLayers};
use super::error::ConfigError;
use super::program::{self, ProgramContext, ProgramOutcome};
use super::raw::{Check, RawEnv};
use super::settings::{read_main, Settings};
use super::{GroupSpec, Program, ProgramSpec, Source};

mod cache;

/// The file name shown for errors in an API request body.
pub const REQUEST_FILE: &str = "<request>";

/// One program file's result, so a hot reload can keep a broken file's last good spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileOutcome {
    pub path: PathBuf,
    /// The program name the file claims (its `name`, else its stem), even when it is invalid.
    pub name: Option<String>,
    pub result: Result<Arc<ProgramSpec>, Vec<ConfigError>>,
}

/// What a scan of the programs found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramsScan {
    /// Every valid program, inline `[[processes]]` and files, sorted by (priority, name).
    pub programs: Vec<Program>,
    /// One entry per program file, sorted by path.
    pub files: Vec<FileOutcome>,
    /// Groups with their members that exist (unknown members are errors).
    pub groups: Vec<GroupSpec>,
    /// Every error: main config and env files first, then program files by path and line.
    pub errors: Vec<ConfigError>,
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize)]
pub struct LoadedConfig {
    pub settings: Settings,
    /// Valid programs, sorted by (priority, name).
    pub programs: Vec<Program>,
    pub groups: Vec<GroupSpec>,
    /// All errors of all program files (the main config had none, or `load` returned `Err`).
    pub errors: Vec<ConfigError>,
    pub files: Vec<FileOutcome>,
}

/// The main config's settings and errors, or the embedded default's (relative to `cwd`) when
/// there is no config file; `Err` when the file cannot be read or parsed.
pub fn read_settings(
    config_file: Option<&Path>,
    cwd: &Path,
) -> Result<(Settings, Vec<ConfigError>), Vec<ConfigError>> {
    match config_file {
        None => Ok((Settings::embedded_default(cwd), Vec::new())),
        Some(path) => read_main(path, cwd),
    }
}

/// Loads the main config (or the embedded default when `None`) and the programs.
///
/// `base_env` is the daemon's environment (`std::env::vars()`), the base layer of the child
/// environment (`docs/configuration.md`). `Err` only when the main config, its env files or its
/// inline processes are invalid; it then carries every error found, program files' included.
/// Errors of program files alone go in [`LoadedConfig::errors`] and [`LoadedConfig::files`].
pub fn load(
    config_file: Option<&Path>,
    base_env: &BTreeMap<String, String>,
) -> Result<LoadedConfig, Vec<ConfigError>> {
    let cwd = std::env::current_dir().map_err(|e| {
        vec![ConfigError::new(
            ".",
            format!("cannot read the current directory: {e}"),
        )]
    })?;
    let (settings, mut errors) = read_settings(config_file, &cwd)?;
    let scan = scan_programs(&settings, base_env);
    if !errors.is_empty() || scan.errors.iter().any(|e| settings.is_main_error(e)) {
        errors.extend(scan.errors);
        sort_errors(&mut errors, &settings);
        return Err(errors);
    }
    Ok(LoadedConfig {
        settings,
        programs: scan.programs,
        groups: scan.groups,
        errors: scan.errors,
        files: scan.files,
    })
}

/// One program of a scan, valid or not, and where its name is written.
struct Scanned {
    /// Where the name is written, for errors about it; the document is dropped once validated.
    /// Shared with the scan cache, which keeps it for the next scan of an unchanged file.
    name_site: Arc<ConfigError>,
    /// Kept only for a valid program with dependencies, which the check across programs names
    /// the lines of: the document, and where the program's keys are in it (`spec` in the
    /// wrapped form).
    deps_doc: Option<(Document, KeyPath)>,
    /// How errors about another program refer to an inline process: `processes[2]` (a file is
    /// referred to by its path, see [`Scanned::label`]).
    inline_label: String,
    /// `None` for an inline process.
    file: Option<PathBuf>,
    name: Option<String>,
    result: Result<Arc<ProgramSpec>, Vec<ConfigError>>,
}

impl Scanned {
    fn new(
        doc: &Document,
        at: &KeyPath,
        inline_label: String,
        file: Option<PathBuf>,
        o: ProgramOutcome,
    ) -> Scanned {
        let deps = o.result.as_ref().is_ok_and(|s| !s.depends_on.is_empty());
        let deps_doc = deps.then(|| (doc.clone(), super::lifecycle_keys::spec_at(doc, at)));
        let (name_site, name, result) = (Arc::new(o.name_site), o.name, o.result.map(Arc::new));
        Scanned {
            name_site,
            deps_doc,
            inline_label,
            file,
            name,
            result,
        }
    }

    /// How errors about another program refer to this one: its file, or `processes[2]`.
    fn label(&self) -> String {
        match &self.file {
            Some(path) => path.display().to_string(),
            None => self.inline_label.clone(),
        }
    }

    /// A program file whose document is not kept: unchanged since the last scan, or broken.
    fn of_file(
        path: PathBuf,
        name_site: Arc<ConfigError>,
        name: Option<String>,
        result: Result<Arc<ProgramSpec>, Vec<ConfigError>>,
    ) -> Scanned {
        Scanned {
            name_site,
            deps_doc: None,
            inline_label: String::new(),
            file: Some(path),
            name,
            result,
        }
    }

    /// A program file that could not be read or parsed: it claims the name of its stem.
    fn broken(path: PathBuf, name: Option<String>, e: ConfigError) -> Scanned {
        let name_site = Arc::new(ConfigError::new(&path, ""));
        Scanned::of_file(path, name_site, name, Err(vec![e]))
    }

    /// Marks the program invalid with an error about its name.
    fn fail(&mut self, message: String, hint: &str) {
        let e = ConfigError {
            message,
            ..(*self.name_site).clone()
        }
        .with_hint(hint);
        match &mut self.result {
            Ok(_) => self.result = Err(vec![e]),
            Err(list) => list.push(e),
        }
    }
}

/// Rescans the programs directory (and env files and inline processes) with loaded settings.
pub fn scan_programs(settings: &Settings, base_env: &BTreeMap<String, String>) -> ProgramsScan {
    let main = settings.document();
    let mut c = Check::new(&main, KeyPath::default());
    let env = shared_env(&mut c, settings, base_env);
    let env_errors = c.errors.clone();
    let base_dir = settings.base_dir();
    let inline = ProgramContext {
        log_defaults: &settings.log,
        use_os_env: settings.use_os_env,
        env: &env,
        base_dir: Some(&base_dir),
        fallback_name: None,
    };
    let paths = program_files(&settings.programs_directory).unwrap_or_else(|e| {
        c.errors.push(e);
        Vec::new()
    });
    // Sized once: grown step by step, thousands of entries were copied a dozen times, leaving
    // holes in the heap.
    let mut scanned = Vec::with_capacity(settings.processes.len() + paths.len());
    for (i, tree) in settings.processes.iter().enumerate() {
        let at = k("processes").index(i);
        let o = program::validate(&main, tree, at.clone(), &inline);
        scanned.push(Scanned::new(&main, &at, at.to_string(), None, o));
    }
    // Files unchanged since the last scan of this directory are not parsed again.
    let context = cache::Context {
        log_defaults: settings.log.clone(),
        use_os_env: settings.use_os_env,
        env: env.clone(),
    };
    let mut session = cache::Session::open(&settings.programs_directory, context);
    for path in paths {
        scanned.push(scan_file(&mut session, path, &inline));
    }
    session.close();
    check_unique_names(&mut scanned);
    check_dependencies(&mut scanned);

    let n = scanned.len();
    let (mut programs, mut files) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut claimed = Vec::with_capacity(n);
    for s in scanned {
        claimed.extend(s.name.clone());
        if let Err(list) = &s.result {
            c.errors.extend(list.iter().cloned());
        }
        let Some(path) = s.file else {
            let source = Source::Config;
            programs.extend(s.result.ok().map(|spec| Program { spec, source }));
            continue;
        };
        let result = match s.result {
            // Its env cannot be computed: it keeps its last good spec, like any broken file.
            Ok(_) if !env_errors.is_empty() => Err(env_errors.clone()),
            result => result,
        };
        if let Ok(spec) = &result {
            let source = Source::File(path.clone());
            programs.push(Program {
                spec: Arc::clone(spec),
                source,
            });
        }
        let name = s.name;
        files.push(FileOutcome { path, name, result });
    }
    programs.sort_by(|a, b| (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name)));
    let groups = check_groups(&mut c, &settings.groups, &claimed);
    let mut errors = c.errors;
    sort_errors(&mut errors, settings);
    ProgramsScan {
        programs,
        files,
        groups,
        errors,
    }
}

/// One program file: what the last scan made of it when it is unchanged, else read, parsed and
/// validated (and remembered when valid).
fn scan_file(session: &mut cache::Session, path: PathBuf, inline: &ProgramContext) -> Scanned {
    let stem = |path: &Path| path.file_stem()?.to_str().map(str::to_string);
    let read = match session.lookup(&path) {
        Ok(cache::Lookup::Unchanged(valid)) => {
            return Scanned::of_file(path, valid.name_site, valid.name, Ok(valid.spec));
        }
        Ok(cache::Lookup::Read(read)) => read,
        Err(e) => {
            let message = format!("cannot read the program file: {e}");
            let e = ConfigError::new(&path, message);
            return Scanned::broken(path.clone(), stem(&path), e);
        }
    };
    let stem = stem(&path);
    let format = FileFormat::of(&path).unwrap_or(FileFormat::Toml);
    let doc = match Document::parse(path.clone(), read.text, format) {
        Ok(doc) => doc,
        Err(e) => return Scanned::broken(path, stem, e),
    };
    let pc = ProgramContext {
        base_dir: path.parent(),
        fallback_name: stem,
        ..*inline
    };
    let o = program::validate(&doc, &doc.tree, KeyPath::default(), &pc);
    let at = KeyPath::default();
    let s = Scanned::new(&doc, &at, String::new(), Some(path.clone()), o);
    if let Ok(spec) = &s.result {
        let (name, name_site) = (s.name.clone(), s.name_site.clone());
        let valid = cache::Valid {
            name,
            name_site,
            spec: spec.clone(),
        };
        session.remember(&path, read.key, &valid);
    }
    s
}

/// Program names must be unique, and so must instance names: `web` with two instances runs
/// `web-1` and `web-2`, which a program named `web-2` would also claim. Each claimant fails.
fn check_unique_names(scanned: &mut [Scanned]) {
    let names = scanned.iter().enumerate();
    let names = names.filter_map(|(i, s)| Some((Cow::Borrowed(s.name.as_deref()?), i)));
    for (name, claimants) in clashes(names) {
        for &i in &claimants {
            let others = claimants.iter().filter(|&&j| j != i);
            let others: Vec<String> = others.map(|&j| scanned[j].label()).collect();
            let stem = match scanned[i].name_site.key {
                None => " (from the file name)",
                Some(_) => "",
            };
            let message = format!(
                "program name `{name}`{stem} is also used by {}",
                others.join(", ")
            );
            scanned[i].fail(message, "program names must be unique: rename one of them");
        }
    }
    // A program of one instance runs it under its own name, checked above: only programs of
    // several instances claim further names.
    let instances = scanned.iter().enumerate().flat_map(|(i, s)| {
        let several = s.result.iter().filter(|spec| spec.instances > 1);
        let single = s.result.iter().filter(|spec| spec.instances <= 1);
        let ids = several.flat_map(|spec| spec.instances());
        let own = single.map(|spec| Cow::Borrowed(spec.name.as_str()));
        ids.map(|id| Cow::Owned(id.name))
            .chain(own)
            .map(move |n| (n, i))
    });
    let hint = "rename one of the programs: `name` with instances = N runs name-1 … name-N";
    let clashing = clashes(instances);
    if clashing.is_empty() {
        return;
    }
    let names: Vec<String> = scanned
        .iter()
        .map(|s| s.name.clone().unwrap_or_default())
        .collect();
    for (instance, owners) in clashing {
        for &i in &owners {
            let others = owners.iter().filter(|&&j| j != i);
            let others: Vec<String> = others.map(|&j| format!("`{}`", names[j])).collect();
            let message = format!(
                "instance name `{instance}` of program `{}` is also an instance of {}",
                names[i],
                others.join(", ")
            );
            scanned[i].fail(message, hint);
        }
    }
}

/// The names claimed more than once, in name order, with their claimants in order.
fn clashes<'a>(claims: impl Iterator<Item = (Cow<'a, str>, usize)>) -> Vec<(String, Vec<usize>)> {
    let mut by_name: HashMap<Cow<'a, str>, Vec<usize>> = HashMap::new();
    for (name, i) in claims {
        by_name.entry(name).or_default().push(i);
    }
    let mut clashing: Vec<(String, Vec<usize>)> = by_name
        .into_iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(name, c)| (name.into_owned(), c))
        .collect();
    clashing.sort();
    clashing
}

/// Dependencies name programs of the scan, on no later priority level, in no cycle: each
/// program in error fails (and keeps its last good spec).
fn check_dependencies(scanned: &mut [Scanned]) {
    use super::lifecycle_keys::{check_dependencies, Node};
    let nodes: Vec<Node<'_>> = scanned
        .iter()
        .map(|s| Node {
            doc: s.deps_doc.as_ref(),
            name: s.name.as_deref(),
            spec: s.result.as_deref().ok(),
        })
        .collect();
    let errors = check_dependencies(&nodes);
    drop(nodes);
    for (i, e) in errors {
        match &mut scanned[i].result {
            Ok(_) => scanned[i].result = Err(vec![e]),
            Err(list) => list.push(e),
        }
    }
}

/// Validates one program given as JSON (API `register`/`start` bodies): same rules as a file,
/// errors name `<request>`, `name` is required and paths must be absolute.
pub fn program_from_json(
    value: &Value,
    settings: &Settings,
    base_env: &BTreeMap<String, String>,
) -> Result<ProgramSpec, Vec<ConfigError>> {
    let main = settings.document();
    let mut c = Check::new(&main, KeyPath::default());
    let env = shared_env(&mut c, settings, base_env);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let doc = Document::without_text(REQUEST_FILE, value.clone());
    let pc = ProgramContext {
        log_defaults: &settings.log,
        use_os_env: settings.use_os_env,
        env: &env,
        base_dir: None,
        fallback_name: None,
    };
    program::validate(&doc, &doc.tree, KeyPath::default(), &pc).result
}

/// Main config and env-file errors first (in line order), then program files by path and line.
fn sort_errors(errors: &mut [ConfigError], settings: &Settings) {
    let config = settings.config_display();
    errors.sort_by_cached_key(|e| {
        let env_file = settings.env_files.iter().position(|f| f == &e.file);
        let rank = if e.file == config {
            0
        } else if env_file.is_some() {
            1
        } else {
            2
        };
        (rank, env_file, e.file.clone(), e.line.unwrap_or(usize::MAX))
    });
}

/// The environment after `env_files` and the global `env`, shared by every program.
fn shared_env(
    c: &mut Check,
    settings: &Settings,
    base_env: &BTreeMap<String, String>,
) -> EnvLayers {
    let mut layers = EnvLayers::new(base_environment(settings.use_os_env, base_env));
    for (i, file) in settings.env_files.iter().enumerate() {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                let message = format!("cannot read env file {}: {e}", file.display());
                c.err(k("env_files").index(i), message);
                continue;
            }
        };
        let (entries, bad) = parse_dotenv(&text);
        for (line, message) in bad {
            let e = ConfigError::new(file, message).at_line(Some(line));
            c.errors
                .push(e.with_hint("write KEY=VALUE, optionally quoted; # starts a comment"));
        }
        for entry in entries {
            if let Err(e) = layers.set(&entry.key, &entry.value, entry.literal) {
                let message = format!("{e} in the value of {}", entry.key);
                let error = ConfigError::new(file, message).at_line(Some(entry.line));
                c.errors
                    .push(error.with_key(&entry.key).with_hint(e.hint()));
            }
        }
    }
    c.env(&mut layers, &RawEnv::List(settings.env.clone()), &k("env"));
    layers
}

/// Drops members that name no program (each an error) and returns the groups.
fn check_groups(c: &mut Check, groups: &[GroupSpec], programs: &[String]) -> Vec<GroupSpec> {
    let candidates: Vec<&str> = programs.iter().map(String::as_str).collect();
    // A set: groups of thousands of members over thousands of programs.
    let known: std::collections::HashSet<&str> = candidates.iter().copied().collect();
    let mut checked = groups.to_vec();
    for (i, g) in checked.iter_mut().enumerate() {
        for (j, m) in g.members.iter().enumerate() {
            if known.contains(m.as_str()) {
                continue;
            }
            let at = k("groups").index(i).key("members").index(j);
            let message = format!("group `{}`: member `{m}` is not a program", g.name);
            let hint = did_you_mean(m, &candidates).unwrap_or_else(|| {
                format!("add a program named `{m}` or remove it from the group")
            });
            c.err(&at, message).help(hint);
        }
        g.members.retain(|m| known.contains(m.as_str()));
    }
    checked
}

/// The program files of `dir`, sorted; a missing directory has none.
fn program_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            let message = format!("cannot read the programs directory: {e}");
            return Err(ConfigError::new(dir, message));
        }
    };
    // The entry's type comes with the directory listing: only a symlink needs a `stat`.
    let is_file = |entry: &std::fs::DirEntry| match entry.file_type() {
        Ok(t) if t.is_symlink() => entry.path().is_file(),
        Ok(t) => t.is_file(),
        Err(_) => false,
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            (is_program_file_name(&path) && is_file(&entry)).then_some(path)
        })
        .collect();
    // Sorted by name: all share the directory, so their bytes compare as their names do, without
    // comparing them component by component.
    paths.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(paths)
}

/// Program files by name: a known extension, and not hidden or an editor's temporary file.
pub fn is_program_file_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let temp = name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || (name.starts_with('#') && name.ends_with('#'))
        || [".swp", ".swo", ".swx", ".tmp", ".bak"]
            .iter()
            .any(|ext| name.ends_with(ext));
    !temp && FileFormat::of(path).is_some()
}

#[cfg(test)]
mod tests;
