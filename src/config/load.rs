//! Reading the files: the main config, the programs directory, program files in four formats.
//!
//! [`load`] reads the main config into [`Settings`] and scans the programs directory;
//! [`scan_programs`] rescans with settings already loaded (the hot-reload watcher);
//! [`program_from_json`] validates one API request body by the same rules. Every file is parsed
//! into a generic JSON tree first, so the four formats share one validation path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::env::{base_environment, parse_dotenv, EnvLayers};
use super::error::ConfigError;
use super::locate::{did_you_mean, Format, KeyPath, LineTable};
use super::raw::{strip_unknown_keys, RawEnv, RawEnvEntry, RawMain, MAIN_SHAPE};
use super::validate::{
    apply_env, build_log, deserialize_collect, resolve_path, validate_program_tree, Ctx,
    ProgramContext, SourceInfo,
};
use super::{GroupSpec, LogSpec, Program, ProgramSpec, Source};

/// Default `[server].listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `[server].base_path`.
pub const DEFAULT_BASE_PATH: &str = "/api";
/// Default `programs_directory`, relative to the config file's directory (or the cwd).
pub const DEFAULT_PROGRAMS_DIRECTORY: &str = "programs";
/// Default `[daemon].state_dir`, relative to the config file's directory (or the cwd).
pub const DEFAULT_STATE_DIR: &str = ".provisr";
/// The file name shown for errors in an API request body.
pub const REQUEST_FILE: &str = "<request>";

/// `[server]`: the HTTP API (SPEC §10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerSettings {
    pub listen: String,
    /// Starts with `/`, no trailing `/` (except `/` itself).
    pub base_path: String,
    /// Never serialized: settings may be shown, the token must not be.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub socket: SocketSetting,
    /// Local users besides root and the daemon's own user who may use the API, as uids
    /// (`allow_users` names them by name or number; `docs/security.md`).
    pub allow_users: Vec<u32>,
    /// Local groups whose members may use the API, as gids.
    pub allow_groups: Vec<u32>,
    /// `[server.tls]`: serve the API over TLS.
    pub tls: Option<TlsSettings>,
    /// Listen on a non-loopback address without TLS anyway (a trusted proxy or network
    /// encrypts the traffic).
    pub allow_plaintext: bool,
    /// `[[server.tokens]]`: named bearer tokens, each limited to a scope.
    pub tokens: Vec<TokenSpec>,
}

/// `[server.tls]`: PEM files, absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a token lets its bearer do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Status, logs, events, plans.
    Read,
    /// Also start, stop, restart and reload.
    Operate,
    /// Also register, update and unregister programs.
    Admin,
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenScope::Read => "read",
            TokenScope::Operate => "operate",
            TokenScope::Admin => "admin",
        })
    }
}

/// One `[[server.tokens]]` entry; the token itself is read from `file` when the daemon
/// starts and on every reload, never kept in the settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenSpec {
    pub name: String,
    pub file: PathBuf,
    pub scope: TokenScope,
}

/// `[server] socket`: where the API's unix socket is, if anywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketSetting {
    /// `provisr.sock` in the state directory.
    #[default]
    InStateDir,
    /// `socket = ""`: no unix socket.
    Off,
    /// An explicit path, absolute.
    At(PathBuf),
}

/// The socket's file name inside the state directory when `[server] socket` is not set.
pub const DEFAULT_SOCKET_NAME: &str = "provisr.sock";

impl SocketSetting {
    /// The socket's path for a daemon whose state directory is `state_dir`; `None` when off.
    pub fn path(&self, state_dir: &Path) -> Option<PathBuf> {
        match self {
            SocketSetting::InStateDir => Some(state_dir.join(DEFAULT_SOCKET_NAME)),
            SocketSetting::Off => None,
            SocketSetting::At(p) => Some(p.clone()),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: DEFAULT_LISTEN.to_string(),
            base_path: DEFAULT_BASE_PATH.to_string(),
            token: None,
            token_file: None,
            socket: SocketSetting::InStateDir,
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            tls: None,
            allow_plaintext: false,
            tokens: Vec::new(),
        }
    }
}

/// `[metrics]`: Prometheus `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Its own listener; `None` serves `/metrics` on the API server.
    pub listen: Option<String>,
}

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonSettings {
    /// Where the sled store lives.
    pub state_dir: PathBuf,
}

/// Everything the main config says, with defaults applied and paths resolved (absolute).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The main config file, absolute; `None` for the embedded default.
    pub config_file: Option<PathBuf>,
    pub programs_directory: PathBuf,
    pub use_os_env: bool,
    /// The global `env` entries as written (`KEY=VALUE`), expanded per scan.
    pub env: Vec<String>,
    /// Read again on every scan, so an edited env file reaches the programs on the next rescan.
    pub env_files: Vec<PathBuf>,
    /// `[log]`: the defaults every program's `log` starts from.
    pub log: LogSpec,
    pub server: ServerSettings,
    pub metrics: MetricsSettings,
    pub daemon: DaemonSettings,
    pub groups: Vec<GroupSpec>,
    /// `[[processes]]` entries as written, validated by every scan.
    pub processes: Vec<Value>,
    /// Lines of the main config's keys, for errors found later (group members, env entries).
    #[serde(skip)]
    pub config_lines: Option<Arc<LineTable>>,
}

impl Settings {
    /// The embedded default: no config file, `<dir>/programs`, `<dir>/.provisr`.
    pub fn embedded_default(dir: &Path) -> Settings {
        Settings {
            config_file: None,
            programs_directory: dir.join(DEFAULT_PROGRAMS_DIRECTORY),
            use_os_env: true,
            env: Vec::new(),
            env_files: Vec::new(),
            log: LogSpec::default(),
            server: ServerSettings::default(),
            metrics: MetricsSettings::default(),
            daemon: DaemonSettings {
                state_dir: dir.join(DEFAULT_STATE_DIR),
            },
            groups: Vec::new(),
            processes: Vec::new(),
            config_lines: None,
        }
    }

    /// The directory relative paths of the main config resolve against.
    pub fn base_dir(&self) -> PathBuf {
        match self.config_file.as_deref().and_then(Path::parent) {
            Some(dir) => dir.to_path_buf(),
            None => self
                .programs_directory
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// The name errors about the main config carry.
    fn config_display(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("<default config>"))
    }

    fn config_ctx(&self) -> Ctx {
        Ctx::new(Arc::new(SourceInfo {
            file: self.config_display(),
            lines: self.config_lines.clone(),
        }))
    }

    /// True when `e` is about the main config or one of its env files rather than a program file.
    pub fn is_main_error(&self, e: &ConfigError) -> bool {
        e.file == self.config_display() || self.env_files.contains(&e.file)
    }
}

/// One program file's result, so a hot reload can keep a broken file's last good spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileOutcome {
    pub path: PathBuf,
    /// The program name the file claims (its `name`, else its stem), even when it is invalid.
    pub name: Option<String>,
    pub result: Result<ProgramSpec, Vec<ConfigError>>,
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

/// Loads the main config (or the embedded default when `None`) and the programs directory.
///
/// `base_env` is the daemon's environment (`std::env::vars()`), the base layer of SPEC §5.
/// `Err` only when the main config, its env files or its inline processes are invalid; it then
/// carries every error found, program files' included. Errors of program files alone go in
/// [`LoadedConfig::errors`] and [`LoadedConfig::files`].
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
    let (settings, mut errors) = match config_file {
        None => (Settings::embedded_default(&cwd), Vec::new()),
        Some(path) => read_main(path, &cwd)?,
    };
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

/// Rescans the programs directory (and env files and inline processes) with loaded settings.
pub fn scan_programs(settings: &Settings, base_env: &BTreeMap<String, String>) -> ProgramsScan {
    let config_ctx = settings.config_ctx();
    let (env, mut errors) = shared_env(settings, base_env, &config_ctx);
    let env_errors = errors.clone();
    let env_broken = !env_errors.is_empty();
    let base_dir = settings.base_dir();

    // Claimed names, for duplicates and group members: (name, where).
    let mut claims: Vec<(String, Claim)> = Vec::new();

    let mut inline: Vec<InlineWork> = Vec::new();
    for (i, tree) in settings.processes.iter().enumerate() {
        let ctx = config_ctx.within(&KeyPath::root().key("processes").index(i));
        let pc = ProgramContext {
            log_defaults: &settings.log,
            use_os_env: settings.use_os_env,
            env: &env,
            base_dir: Some(&base_dir),
            fallback_name: None,
        };
        let outcome = validate_program_tree(tree.clone(), &ctx, &pc);
        if let Some(name) = &outcome.name {
            claims.push((name.clone(), Claim::Inline(inline.len())));
        }
        let spec = match outcome.result {
            Ok(spec) => Some(spec),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        inline.push((ctx, outcome.name_path, spec));
    }

    let mut files: Vec<FileWork> = Vec::new();
    match program_files(&settings.programs_directory) {
        Ok(paths) => {
            for path in paths {
                let (ctx, name_path, outcome) = load_program_file(&path, settings, &env);
                if let Some(name) = &outcome.name {
                    claims.push((name.clone(), Claim::File(files.len())));
                }
                files.push((ctx, name_path, outcome));
            }
        }
        Err(e) => errors.push(e),
    }

    // Two claims of one name: an error for every claimant.
    let mut by_name: BTreeMap<&str, Vec<&Claim>> = BTreeMap::new();
    for (name, claim) in &claims {
        by_name.entry(name).or_default().push(claim);
    }
    let mut duplicate_errors: Vec<(Claim, ConfigError)> = Vec::new();
    for (name, claimants) in by_name.iter().filter(|(_, c)| c.len() > 1) {
        for claim in claimants {
            let others: Vec<String> = claimants
                .iter()
                .filter(|c| c != &claim)
                .map(|c| match c {
                    Claim::Inline(i) => inline[*i].0.prefix.to_string(),
                    Claim::File(i) => files[*i].2.path.display().to_string(),
                })
                .collect();
            let (ctx, name_path) = claim.site(&inline, &files);
            let e = ctx
                .err(
                    name_path,
                    format!(
                        "program name `{name}`{} is also used by {}",
                        if name_path.is_root() {
                            " (from the file name)"
                        } else {
                            ""
                        },
                        others.join(", ")
                    ),
                )
                .with_hint("program names must be unique: rename one of them");
            duplicate_errors.push(((*claim).clone(), e));
        }
    }
    for (claim, e) in duplicate_errors {
        fail_claim(&claim, e, &mut inline, &mut files, &mut errors);
    }

    // Instance names must be unique too: `web` with two instances runs `web-1`, which a program
    // named `web-1` would also claim.
    let mut instance_owners: BTreeMap<String, Vec<(Claim, String)>> = BTreeMap::new();
    let valid = inline
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, spec))| spec.as_ref().map(|s| (Claim::Inline(i), s)))
        .chain(files.iter().enumerate().filter_map(|(i, (_, _, outcome))| {
            outcome.result.as_ref().ok().map(|s| (Claim::File(i), s))
        }));
    for (claim, spec) in valid {
        for id in spec.instances() {
            instance_owners
                .entry(id.name)
                .or_default()
                .push((claim.clone(), spec.name.clone()));
        }
    }
    let mut clash_errors: Vec<(Claim, ConfigError)> = Vec::new();
    for (instance, owners) in instance_owners.iter().filter(|(_, o)| o.len() > 1) {
        for (claim, name) in owners {
            let others: Vec<String> = owners
                .iter()
                .filter(|(c, _)| c != claim)
                .map(|(_, n)| format!("`{n}`"))
                .collect();
            let (ctx, name_path) = claim.site(&inline, &files);
            let e = ctx
                .err(
                    name_path,
                    format!(
                        "instance name `{instance}` of program `{name}` is also an instance of {}",
                        others.join(", ")
                    ),
                )
                .with_hint(
                    "rename one of the programs: `name` with instances = N runs name-1 … name-N",
                );
            clash_errors.push((claim.clone(), e));
        }
    }
    for (claim, e) in clash_errors {
        fail_claim(&claim, e, &mut inline, &mut files, &mut errors);
    }

    let mut programs: Vec<Program> = inline
        .into_iter()
        .filter_map(|(_, _, spec)| spec)
        .map(|spec| Program {
            spec,
            source: Source::Config,
        })
        .collect();
    let mut outcomes = Vec::with_capacity(files.len());
    for (_, _, mut outcome) in files {
        match &mut outcome.result {
            Ok(spec) if !env_broken => programs.push(Program {
                spec: spec.clone(),
                source: Source::File(outcome.path.clone()),
            }),
            Ok(_) => {
                // Its env cannot be computed: keep the last good spec, like any broken file.
                outcome.result = Err(env_errors.clone());
            }
            Err(list) => errors.extend(list.iter().cloned()),
        }
        outcomes.push(outcome);
    }
    programs.sort_by(|a, b| (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name)));

    let known: BTreeSet<&str> = claims.iter().map(|(n, _)| n.as_str()).collect();
    let groups = check_groups(&settings.groups, &known, &config_ctx, &mut errors);

    sort_errors(&mut errors, settings);
    ProgramsScan {
        programs,
        files: outcomes,
        groups,
        errors,
    }
}

/// Validates one program given as JSON (API `register`/`start` bodies): same rules as a file,
/// errors name `<request>`, `name` is required and paths must be absolute.
pub fn program_from_json(
    value: &Value,
    settings: &Settings,
    base_env: &BTreeMap<String, String>,
) -> Result<ProgramSpec, Vec<ConfigError>> {
    let (env, errors) = shared_env(settings, base_env, &settings.config_ctx());
    if !errors.is_empty() {
        return Err(errors);
    }
    let ctx = Ctx::new(Arc::new(SourceInfo {
        file: PathBuf::from(REQUEST_FILE),
        lines: None,
    }));
    let pc = ProgramContext {
        log_defaults: &settings.log,
        use_os_env: settings.use_os_env,
        env: &env,
        base_dir: None,
        fallback_name: None,
    };
    validate_program_tree(value.clone(), &ctx, &pc).result
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Claim {
    Inline(usize),
    File(usize),
}

impl Claim {
    /// Where the claimed name is written: the entry's context and the path of its name key.
    fn site<'a>(&self, inline: &'a [InlineWork], files: &'a [FileWork]) -> (&'a Ctx, &'a KeyPath) {
        match self {
            Claim::Inline(i) => (&inline[*i].0, &inline[*i].1),
            Claim::File(i) => (&files[*i].0, &files[*i].1),
        }
    }
}

type InlineWork = (Ctx, KeyPath, Option<ProgramSpec>);
type FileWork = (Ctx, KeyPath, FileOutcome);

/// Marks a claimant invalid with `e`: an inline process is dropped (its error is a main-config
/// error), a file's outcome becomes (or stays) an error.
fn fail_claim(
    claim: &Claim,
    e: ConfigError,
    inline: &mut [InlineWork],
    files: &mut [FileWork],
    errors: &mut Vec<ConfigError>,
) {
    match claim {
        Claim::Inline(i) => {
            inline[*i].2 = None;
            errors.push(e);
        }
        Claim::File(i) => {
            let outcome = &mut files[*i].2;
            match &mut outcome.result {
                Ok(_) => outcome.result = Err(vec![e]),
                Err(list) => list.push(e),
            }
        }
    }
}

/// Main config and env-file errors first (in line order), then program files by path and line.
fn sort_errors(errors: &mut [ConfigError], settings: &Settings) {
    let config = settings.config_display();
    errors.sort_by(|a, b| {
        let rank = |e: &ConfigError| {
            if e.file == config {
                0
            } else if settings.env_files.contains(&e.file) {
                1
            } else {
                2
            }
        };
        let file_key = |e: &ConfigError| {
            let env_index = settings.env_files.iter().position(|f| f == &e.file);
            (rank(e), env_index, e.file.clone())
        };
        file_key(a).cmp(&file_key(b)).then(
            a.line
                .unwrap_or(usize::MAX)
                .cmp(&b.line.unwrap_or(usize::MAX)),
        )
    });
}

/// The environment after `env_files` and the global `env`, shared by every program.
fn shared_env(
    settings: &Settings,
    base_env: &BTreeMap<String, String>,
    config_ctx: &Ctx,
) -> (EnvLayers, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut layers = EnvLayers::new(base_environment(settings.use_os_env, base_env));
    for (i, file) in settings.env_files.iter().enumerate() {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(config_ctx.err(
                    &KeyPath::root().key("env_files").index(i),
                    format!("cannot read env file {}: {e}", file.display()),
                ));
                continue;
            }
        };
        let (entries, bad) = parse_dotenv(&text);
        for (line, message) in bad {
            errors.push(
                ConfigError::new(file.clone(), message)
                    .at_line(Some(line))
                    .with_hint("write KEY=VALUE, optionally quoted; # starts a comment"),
            );
        }
        for entry in entries {
            if let Err(e) = layers.set(&entry.key, &entry.value, entry.literal) {
                errors.push(
                    ConfigError::new(file.clone(), format!("{e} in the value of {}", entry.key))
                        .at_line(Some(entry.line))
                        .with_key(entry.key.clone())
                        .with_hint(e.hint()),
                );
            }
        }
    }
    let global = RawEnv(
        settings
            .env
            .iter()
            .map(|e| RawEnvEntry::Entry(e.clone()))
            .collect(),
    );
    apply_env(
        &mut layers,
        &global,
        &KeyPath::root().key("env"),
        config_ctx,
        &mut errors,
    );
    (layers, errors)
}

/// Drops unknown members (each an error) and returns the groups.
fn check_groups(
    groups: &[GroupSpec],
    known: &BTreeSet<&str>,
    ctx: &Ctx,
    errors: &mut Vec<ConfigError>,
) -> Vec<GroupSpec> {
    let candidates: Vec<&str> = known.iter().copied().collect();
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let members = g
                .members
                .iter()
                .enumerate()
                .filter(|(j, m)| {
                    if known.contains(m.as_str()) {
                        return true;
                    }
                    let hint = did_you_mean(m, &candidates).unwrap_or_else(|| {
                        format!("add a program named `{m}` or remove it from the group")
                    });
                    errors.push(
                        ctx.err(
                            &KeyPath::root()
                                .key("groups")
                                .index(i)
                                .key("members")
                                .index(*j),
                            format!("group `{}`: member `{m}` is not a program", g.name),
                        )
                        .with_hint(hint),
                    );
                    false
                })
                .map(|(_, m)| m.clone())
                .collect();
            GroupSpec {
                name: g.name.clone(),
                members,
            }
        })
        .collect()
}

/// The program files of `dir`, sorted; a missing directory has none.
fn program_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError::new(
                dir,
                format!("cannot read the programs directory: {e}"),
            ))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_program_file_name(path) && path.is_file())
        .collect();
    files.sort();
    Ok(files)
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
    !temp
        && path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_extension)
            .is_some()
}

/// Reads, parses and validates one program file.
fn load_program_file(
    path: &Path,
    settings: &Settings,
    env: &EnvLayers,
) -> (Ctx, KeyPath, FileOutcome) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string);
    let fail = |ctx: Ctx, e: ConfigError| {
        (
            ctx,
            KeyPath::root(),
            FileOutcome {
                path: path.to_path_buf(),
                name: stem.clone(),
                result: Err(vec![e]),
            },
        )
    };
    let bare = Ctx::new(Arc::new(SourceInfo {
        file: path.to_path_buf(),
        lines: None,
    }));
    let format = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_extension)
        .unwrap_or(Format::Toml);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                bare,
                ConfigError::new(path, format!("cannot read the program file: {e}")),
            )
        }
    };
    let tree = match parse_tree(&text, format, path) {
        Ok(t) => t,
        Err(e) => return fail(bare, e),
    };
    let ctx = Ctx::new(Arc::new(SourceInfo {
        file: path.to_path_buf(),
        lines: Some(Arc::new(LineTable::scan(&text, format))),
    }));
    let base_dir = path.parent().unwrap_or(Path::new("/"));
    let pc = ProgramContext {
        log_defaults: &settings.log,
        use_os_env: settings.use_os_env,
        env,
        base_dir: Some(base_dir),
        fallback_name: stem.clone(),
    };
    let outcome = validate_program_tree(tree, &ctx, &pc);
    (
        ctx,
        outcome.name_path,
        FileOutcome {
            path: path.to_path_buf(),
            name: outcome.name,
            result: outcome.result,
        },
    )
}

/// Parses text of `format` into a generic tree; a syntax error names the line.
pub fn parse_tree(text: &str, format: Format, file: &Path) -> Result<Value, ConfigError> {
    match format {
        Format::Toml => match toml::from_str::<Value>(text) {
            Ok(mut v) => {
                flatten_toml_datetimes(&mut v);
                Ok(v)
            }
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                Err(ConfigError::new(
                    file,
                    format!(
                        "TOML syntax error: {}",
                        e.message().trim().replace('\n', "; ")
                    ),
                )
                .at_line(line))
            }
        },
        Format::Yaml => {
            if text.trim().is_empty() {
                // An empty YAML document is null; say so plainly rather than "EOF".
                return Ok(Value::Null);
            }
            serde_yaml::from_str::<Value>(text).map_err(|e| {
                let line = e.location().map(|l| l.line());
                ConfigError::new(file, format!("YAML syntax error: {e}")).at_line(line)
            })
        }
        Format::Json => serde_json::from_str::<Value>(text).map_err(|e| {
            let line = (e.line() > 0).then_some(e.line());
            ConfigError::new(file, format!("JSON syntax error: {e}")).at_line(line)
        }),
    }
}

/// TOML datetimes arrive as `{"$__toml_private_datetime": "…"}`; no key takes one, so make them
/// plain strings and let the typed structs report the type.
fn flatten_toml_datetimes(v: &mut Value) {
    const MARKER: &str = "$__toml_private_datetime";
    match v {
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some(Value::String(s)) = map.get(MARKER) {
                    *v = Value::String(s.clone());
                    return;
                }
            }
            map.values_mut().for_each(flatten_toml_datetimes);
        }
        Value::Array(items) => items.iter_mut().for_each(flatten_toml_datetimes),
        _ => {}
    }
}

/// Reads the main config into settings; `Err` when it cannot be read or parsed at all.
fn read_main(path: &Path, cwd: &Path) -> Result<(Settings, Vec<ConfigError>), Vec<ConfigError>> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        vec![ConfigError::new(
            &path,
            format!("cannot read the config file: {e}"),
        )]
    })?;
    // The main config is TOML unless its extension says otherwise.
    let format = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_extension)
        .unwrap_or(Format::Toml);
    let mut tree = parse_tree(&text, format, &path).map_err(|e| vec![e])?;
    if tree.is_null() {
        tree = Value::Object(serde_json::Map::new());
    }
    let lines = Arc::new(LineTable::scan(&text, format));
    let ctx = Ctx::new(Arc::new(SourceInfo {
        file: path.clone(),
        lines: Some(lines.clone()),
    }));
    if !tree.is_object() {
        return Err(vec![
            ctx.err(&KeyPath::root(), "the config file must be a table of keys")
        ]);
    }
    let mut errors: Vec<ConfigError> = strip_unknown_keys(&mut tree, &MAIN_SHAPE, &KeyPath::root())
        .iter()
        .map(|u| ctx.unknown_key(u))
        .collect();
    let (raw, type_errors) = deserialize_collect::<RawMain>(tree, &ctx);
    errors.extend(type_errors);

    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut settings = Settings::embedded_default(&dir);
    settings.config_file = Some(path.clone());
    settings.config_lines = Some(lines);
    let k = |name: &str| KeyPath::root().key(name);
    let resolve = |s: &str, at: &KeyPath, errors: &mut Vec<ConfigError>| {
        resolve_path(s, at, &ctx, Some(&dir), errors)
    };

    if let Some(p) = &raw.programs_directory {
        if let Some(p) = resolve(p, &k("programs_directory"), &mut errors) {
            if !p.is_dir() {
                errors.push(
                    ctx.err(
                        &k("programs_directory"),
                        format!("`programs_directory` {} is not a directory", p.display()),
                    )
                    .with_hint("create it, or fix the path (relative paths start at the config file's directory)"),
                );
            }
            settings.programs_directory = p;
        }
    }
    if let Some(v) = raw.use_os_env {
        settings.use_os_env = v;
    }
    if let Some(env) = &raw.env {
        settings.env = env
            .0
            .iter()
            .map(|e| match e {
                RawEnvEntry::Entry(s) => s.clone(),
                RawEnvEntry::Pair(k, v) => format!("{k}={v}"),
            })
            .collect();
    }
    for (i, f) in raw.env_files.iter().flatten().enumerate() {
        if let Some(p) = resolve(f, &k("env_files").index(i), &mut errors) {
            settings.env_files.push(p);
        }
    }
    settings.log = build_log(
        raw.log.as_ref(),
        LogSpec::default(),
        &k("log"),
        &ctx,
        Some(&dir),
        &mut errors,
    );

    let mut group_names = BTreeSet::new();
    for (i, g) in raw.groups.iter().flatten().enumerate() {
        let at = k("groups").index(i);
        let name = match &g.name {
            None => {
                errors.push(ctx.err(&at, format!("`{at}.name` is required")));
                continue;
            }
            Some(name) => name,
        };
        if let Err(why) = super::check_name(name) {
            errors.push(ctx.err(&at.key("name"), format!("group name is not valid: {why}")));
        } else if !group_names.insert(name.clone()) {
            errors.push(
                ctx.err(&at.key("name"), format!("group `{name}` is defined twice"))
                    .with_hint("merge the two groups' members"),
            );
        }
        let Some(members) = &g.members else {
            errors.push(
                ctx.err(&at, format!("`{at}.members` is required"))
                    .with_hint("members = [\"program-a\", \"program-b\"]"),
            );
            continue;
        };
        let mut unique: Vec<String> = Vec::new();
        for m in members {
            if !unique.contains(m) {
                unique.push(m.clone());
            }
        }
        settings.groups.push(GroupSpec {
            name: name.clone(),
            members: unique,
        });
    }

    if let Some(server) = &raw.server {
        if let Some(listen) = &server.listen {
            if listen.trim().is_empty() {
                errors.push(
                    ctx.err(&k("server").key("listen"), "`server.listen` is empty")
                        .with_hint("e.g. \"127.0.0.1:8080\""),
                );
            } else {
                settings.server.listen = listen.trim().to_string();
            }
        }
        if let Some(base) = &server.base_path {
            if base.starts_with('/') {
                let trimmed = base.trim_end_matches('/');
                settings.server.base_path = if trimmed.is_empty() {
                    "/".to_string()
                } else {
                    trimmed.to_string()
                };
            } else {
                errors.push(
                    ctx.err(
                        &k("server").key("base_path"),
                        format!("`server.base_path` {base:?} must start with /"),
                    )
                    .with_hint("e.g. \"/api\""),
                );
            }
        }
        if server.token.is_some() && server.token_file.is_some() {
            errors.push(
                ctx.err(
                    &k("server").key("token_file"),
                    "`server.token` and `server.token_file` are both given",
                )
                .with_hint("keep one of them"),
            );
        }
        if let Some(token) = &server.token {
            if token.trim().is_empty() {
                errors.push(ctx.err(&k("server").key("token"), "`server.token` is empty"));
            } else {
                settings.server.token = Some(token.clone());
            }
        }
        if let Some(f) = &server.token_file {
            settings.server.token_file = resolve(f, &k("server").key("token_file"), &mut errors);
        }
        if let Some(s) = &server.socket {
            settings.server.socket = if s.trim().is_empty() {
                SocketSetting::Off
            } else {
                match resolve(s, &k("server").key("socket"), &mut errors) {
                    Some(p) => SocketSetting::At(p),
                    None => SocketSetting::InStateDir,
                }
            };
        }
        for (i, user) in server.allow_users.iter().flatten().enumerate() {
            let at = k("server").key("allow_users").index(i);
            match crate::accounts::uid_of(user) {
                Ok(uid) => settings.server.allow_users.push(uid),
                Err(why) => errors.push(ctx.err(&at, format!("`{at}`: {why}")).with_hint(
                    "name an existing user (or a numeric uid); `getent passwd` lists them",
                )),
            }
        }
        settings.server.allow_plaintext = server.allow_plaintext.unwrap_or(false);
        if let Some(tls) = &server.tls {
            let at = k("server").key("tls");
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    let cert = resolve(cert, &at.key("cert"), &mut errors);
                    let key = resolve(key, &at.key("key"), &mut errors);
                    if let (Some(cert), Some(key)) = (cert, key) {
                        settings.server.tls = Some(TlsSettings { cert, key });
                    }
                }
                _ => errors.push(
                    ctx.err(&at, "`server.tls` needs both `cert` and `key`")
                        .with_hint("cert = \"/etc/provisr/cert.pem\", key = \"/etc/provisr/key.pem\" (PEM files)"),
                ),
            }
        }
        let mut token_names = BTreeSet::new();
        for (i, t) in server.tokens.iter().flatten().enumerate() {
            let at = k("server").key("tokens").index(i);
            let (Some(name), Some(file)) = (&t.name, &t.file) else {
                errors.push(
                    ctx.err(&at, format!("`{at}` needs `name` and `file`"))
                        .with_hint("{ name = \"ci\", file = \"ci.token\", scope = \"read\" }"),
                );
                continue;
            };
            if !token_names.insert(name.clone()) {
                errors.push(ctx.err(
                    &at.key("name"),
                    format!("the token name {name:?} is used twice"),
                ));
            }
            let scope = match t.scope.as_deref() {
                Some("read") => TokenScope::Read,
                Some("operate") => TokenScope::Operate,
                Some("admin") => TokenScope::Admin,
                other => {
                    let why = match other {
                        Some(s) => format!("`{at}.scope` {s:?} is not a scope"),
                        None => format!("`{at}.scope` is required"),
                    };
                    errors.push(
                        ctx.err(&at.key("scope"), why)
                            .with_hint("scope = \"read\", \"operate\" or \"admin\""),
                    );
                    continue;
                }
            };
            if let Some(file) = resolve(file, &at.key("file"), &mut errors) {
                settings.server.tokens.push(TokenSpec {
                    name: name.clone(),
                    file,
                    scope,
                });
            }
        }
        for (i, group) in server.allow_groups.iter().flatten().enumerate() {
            let at = k("server").key("allow_groups").index(i);
            match crate::accounts::gid_of(group) {
                Ok(gid) => settings.server.allow_groups.push(gid),
                Err(why) => errors.push(ctx.err(&at, format!("`{at}`: {why}")).with_hint(
                    "name an existing group (or a numeric gid); `getent group` lists them",
                )),
            }
        }
    }
    if let Some(metrics) = &raw.metrics {
        settings.metrics.enabled = metrics.enabled.unwrap_or(false);
        if let Some(listen) = &metrics.listen {
            if listen.trim().is_empty() {
                errors.push(ctx.err(&k("metrics").key("listen"), "`metrics.listen` is empty"));
            } else {
                settings.metrics.listen = Some(listen.trim().to_string());
            }
        }
    }
    if let Some(state_dir) = raw.daemon.as_ref().and_then(|d| d.state_dir.as_ref()) {
        if let Some(p) = resolve(state_dir, &k("daemon").key("state_dir"), &mut errors) {
            settings.daemon.state_dir = p;
        }
    }
    settings.processes = raw.processes.unwrap_or_default();
    Ok((settings, errors))
}

#[cfg(test)]
mod tests;
