//! The main config file → [`Settings`]: defaults, resolved paths, and its own rules
//! (`docs/configuration.md`, "Main config"). Its `[[processes]]` and groups' members are checked
//! by each scan of the programs (`scan`), since they depend on the programs found.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::document::{k, Document, FileFormat, KeyPath};
use super::error::ConfigError;
use super::fleet_settings::{
    read_node, read_store, NodeSettings, RawNode, RawStore, StoreSettings,
};
use super::raw::{set, Check, RawEnv, RawLog, Val};
use super::{check_name, GroupSpec, LogSpec};

/// Default `[server].listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `[server].base_path`.
pub const DEFAULT_BASE_PATH: &str = "/api";
/// Default `programs_directory`, relative to the config file's directory (or the cwd).
pub const DEFAULT_PROGRAMS_DIRECTORY: &str = "programs";
/// Default `[daemon].state_dir`, relative to the config file's directory (or the cwd).
pub const DEFAULT_STATE_DIR: &str = ".provisr";
/// The socket's file name inside the state directory when `[server] socket` is not set.
pub const DEFAULT_SOCKET_NAME: &str = "provisr.sock";

/// `[server]`: the HTTP API (`docs/api.md`).
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
    /// `[server] tokens`: named bearer tokens, each limited to a scope.
    pub tokens: Vec<TokenSpec>,
    /// Names a client may use in `Host` besides loopback ones and the listen address, e.g. the
    /// host's DNS name for a remote browser.
    pub allowed_hosts: Vec<String>,
}

/// `[server.tls]`: PEM files, absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a token lets its bearer do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// The name a config file writes, by serde's own spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.serialize(f)
    }
}

/// One `[server] tokens` entry; the token itself is read from `file` when the daemon starts
/// and on every reload, never kept in the settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenSpec {
    pub name: String,
    pub file: PathBuf,
    pub scope: TokenScope,
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
            allowed_hosts: Vec::new(),
        }
    }
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
    /// `[store]`: sled, or a fleet's etcd (`docs/fleet.md`).
    pub store: StoreSettings,
    /// `[node]`: this daemon in a fleet.
    pub node: NodeSettings,
    pub groups: Vec<GroupSpec>,
    /// `[[processes]]` entries as written, validated by every scan.
    pub processes: Vec<Value>,
    /// The parsed main config, for the lines of errors found later (group members, env entries).
    #[serde(skip)]
    pub(crate) document: Option<Arc<Document>>,
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
            store: StoreSettings::default(),
            node: NodeSettings::default(),
            groups: Vec::new(),
            processes: Vec::new(),
            document: None,
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
    pub(crate) fn config_display(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("<default config>"))
    }

    /// The main config's document: the parsed file, or an empty one for settings made in code.
    pub(crate) fn document(&self) -> Arc<Document> {
        self.document
            .clone()
            .unwrap_or_else(|| Arc::new(Document::without_text(self.config_display(), Value::Null)))
    }

    /// True when `e` is about the main config or one of its env files rather than a program file.
    pub fn is_main_error(&self, e: &ConfigError) -> bool {
        e.file == self.config_display() || self.env_files.contains(&e.file)
    }
}

/// The main config file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawMain {
    programs_directory: Val<String>,
    env: Val<RawEnv>,
    env_files: Val<Vec<String>>,
    use_os_env: Val<bool>,
    log: Val<RawLog>,
    groups: Val<Vec<RawGroup>>,
    server: Val<RawServer>,
    metrics: Val<RawMetrics>,
    daemon: Val<RawDaemon>,
    store: Val<RawStore>,
    node: Val<RawNode>,
    /// Program trees, validated one by one like program files.
    processes: Val<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawGroup {
    name: Val<String>,
    members: Val<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawServer {
    listen: Val<String>,
    base_path: Val<String>,
    token: Val<String>,
    token_file: Val<String>,
    socket: Val<String>,
    allow_users: Val<Vec<String>>,
    allow_groups: Val<Vec<String>>,
    allow_plaintext: Val<bool>,
    allowed_hosts: Val<Vec<String>>,
    tls: Val<RawTls>,
    tokens: Val<Vec<RawToken>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawTls {
    cert: Val<String>,
    key: Val<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawToken {
    name: Val<String>,
    file: Val<String>,
    scope: Val<TokenScope>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawMetrics {
    enabled: Val<bool>,
    listen: Val<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
struct RawDaemon {
    state_dir: Val<String>,
}

/// Reads the main config into settings and its errors; `Err` when it cannot be read or parsed.
pub fn read_main(
    path: &Path,
    cwd: &Path,
) -> Result<(Settings, Vec<ConfigError>), Vec<ConfigError>> {
    let path = cwd.join(path);
    let fail = |message: String| vec![ConfigError::new(&path, message)];
    let text = std::fs::read_to_string(&path);
    let text = text.map_err(|e| fail(format!("cannot read the config file: {e}")))?;
    let format = FileFormat::of(&path).unwrap_or(FileFormat::Toml);
    let mut doc = Document::parse(path.clone(), text, format).map_err(|e| vec![e])?;
    if doc.tree.is_null() {
        doc.tree = Value::Object(Default::default());
    }
    if !doc.tree.is_object() {
        return Err(fail("the config file must be a table of keys".into()));
    }
    let doc = Arc::new(doc);
    let mut c = Check::new(&doc, KeyPath::default());
    let raw: RawMain = c.read(&doc.tree, |_| None);
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let base = Some(dir.as_path());
    let mut s = Settings::embedded_default(&dir);
    s.config_file = Some(path.clone());
    if let Some(p) = c.path(&raw.programs_directory, "programs_directory", base) {
        if !p.is_dir() {
            let what = format!("{} is not a directory", p.display());
            let hint =
                "create it, or fix the path (relative paths start at the config file's directory)";
            c.bad("programs_directory", what).help(hint);
        }
        s.programs_directory = p;
    }
    set!(c.value(raw => s): use_os_env);
    // A table's entries are checked here; a list's are "KEY=VALUE" already, and every scan
    // checks them with their expansion.
    s.env = match c.get(&raw.env, "env") {
        Some(RawEnv::List(list)) => list.clone(),
        Some(table) => (table.entries(&k("env")).into_iter())
            .filter_map(|(at, entry)| match entry {
                Ok((key, value)) => Some(format!("{key}={value}")),
                Err(why) => {
                    c.err(&at, why);
                    None
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let env_files = c.each(&raw.env_files, "env_files", |c, f| c.path_of(f, "", base));
    s.env_files = env_files.into_iter().flatten().collect();
    s.log = c.log(&raw.log, LogSpec::default(), base);
    c.each(&raw.groups, "groups", |c, g| group(c, g, &mut s.groups));
    c.table(&raw.server, "server", |c, raw| {
        read_server(c, raw, base, &mut s.server)
    });
    let metrics = c.table(&raw.metrics, "metrics", |c, m| MetricsSettings {
        enabled: c.value(&m.enabled, "enabled").unwrap_or(false),
        listen: (c.non_empty(&m.listen, "listen", None)).map(|l| l.trim().into()),
    });
    s.metrics = metrics.unwrap_or_default();
    let daemon = c.table(&raw.daemon, "daemon", |c, d| {
        c.path(&d.state_dir, "state_dir", base)
    });
    s.daemon.state_dir = daemon.flatten().unwrap_or(s.daemon.state_dir);
    s.store = read_store(&mut c, &raw.store, base);
    s.node = read_node(&mut c, &raw.node);
    s.processes = c.value(&raw.processes, "processes").unwrap_or_default();
    let errors = c.errors;
    s.document = Some(doc);
    Ok((s, errors))
}

/// One `[[groups]]` entry; its members are checked against the programs by each scan.
fn group(c: &mut Check, raw: &RawGroup, groups: &mut Vec<GroupSpec>) {
    let (name, members) = (c.get(&raw.name, "name"), c.get(&raw.members, "members"));
    if raw.name.is_absent() {
        c.bad("name", "is required");
    }
    match name.map(|name| (name, check_name(name))) {
        Some((_, Err(why))) => {
            c.err("name", format!("group name is not valid: {why}"));
        }
        Some((name, _)) if groups.iter().any(|g| &g.name == name) => c
            .err("name", format!("group `{name}` is defined twice"))
            .help("merge the two groups' members"),
        _ => {}
    }
    if raw.members.is_absent() && name.is_some() {
        let e = c.bad("members", "is required");
        e.help("members = [\"program-a\", \"program-b\"]");
    }
    if let (Some(name), Some(written)) = (name, members) {
        let (mut members, mut seen) = (written.clone(), BTreeSet::new());
        members.retain(|m| seen.insert(m.clone()));
        let name = name.clone();
        groups.push(GroupSpec { name, members });
    }
}

/// `[server]`; `c.at` is `server`.
fn read_server(c: &mut Check, raw: &RawServer, base: Option<&Path>, server: &mut ServerSettings) {
    let example = Some("e.g. \"127.0.0.1:8080\"");
    if let Some(listen) = c.non_empty(&raw.listen, "listen", example) {
        server.listen = listen.trim().to_string();
    }
    if let Some(base_path) = c.get(&raw.base_path, "base_path") {
        match base_path.trim_end_matches('/') {
            _ if !base_path.starts_with('/') => c
                .bad("base_path", format_args!("{base_path:?} must start with /"))
                .help("e.g. \"/api\""),
            "" => server.base_path = "/".into(),
            trimmed => server.base_path = trimmed.into(),
        }
    }
    if !raw.token.is_absent() && !raw.token_file.is_absent() {
        let message = "`server.token` and `server.token_file` are both given";
        c.err("token_file", message).help("keep one of them");
    }
    server.token = c.non_empty(&raw.token, "token", None).cloned();
    server.token_file = c.path(&raw.token_file, "token_file", base);
    if let Some(socket) = c.get(&raw.socket, "socket") {
        server.socket = match socket.trim() {
            "" => SocketSetting::Off,
            _ => (c.path_of(socket, "socket", base))
                .map_or(SocketSetting::InStateDir, SocketSetting::At),
        };
    }
    let user = "user (or a numeric uid); `getent passwd`";
    let uid_of = crate::accounts::uid_of;
    server.allow_users = accounts(c, &raw.allow_users, "allow_users", uid_of, user);
    let group = "group (or a numeric gid); `getent group`";
    let gid_of = crate::accounts::gid_of;
    server.allow_groups = accounts(c, &raw.allow_groups, "allow_groups", gid_of, group);
    set!(c.value(raw => server): allow_plaintext);
    let hosts = c.each(&raw.allowed_hosts, "allowed_hosts", |c, host| {
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ', ':']) && !host.starts_with('[') {
            c.bad("", format_args!("{host:?} is not a host name"))
                .help("a name or address without port or scheme, e.g. \"box.example.com\"");
            return None;
        }
        Some(host.trim_matches(['[', ']']).to_string())
    });
    server.allowed_hosts = hosts.into_iter().flatten().collect();
    let tls = c.table(&raw.tls, "tls", |c, tls| {
        let pair = (
            c.path(&tls.cert, "cert", base),
            c.path(&tls.key, "key", base),
        );
        if tls.cert.is_absent() || tls.key.is_absent() {
            let missing = if tls.cert.is_absent() { "cert" } else { "key" };
            c.bad(
                missing,
                "is required: TLS needs both a certificate and its key",
            )
            .help("cert = \"/etc/provisr/cert.pem\", key = \"/etc/provisr/key.pem\" (PEM files)");
        }
        Some(TlsSettings {
            cert: pair.0?,
            key: pair.1?,
        })
    });
    server.tls = tls.flatten();
    c.each(&raw.tokens, "tokens", |c, t| {
        token(c, t, base, &mut server.tokens)
    });
}

/// One `[server] tokens` entry; `c.at` is `server.tokens[i]`.
fn token(c: &mut Check, raw: &RawToken, base: Option<&Path>, tokens: &mut Vec<TokenSpec>) {
    let example = "{ name = \"ci\", file = \"ci.token\", scope = \"read\" }";
    for (key, absent) in [
        ("name", raw.name.is_absent()),
        ("file", raw.file.is_absent()),
        ("scope", raw.scope.is_absent()),
    ] {
        if absent {
            c.bad(key, "is required").help(example);
        }
    }
    let name = c.non_empty(&raw.name, "name", None).cloned();
    if let Some(name) = &name {
        if tokens.iter().any(|t| &t.name == name) {
            c.err("name", format!("the token name {name:?} is used twice"));
        }
    }
    let file = c.path(&raw.file, "file", base);
    let scope = c.value(&raw.scope, "scope");
    if let (Some(name), Some(file), Some(scope)) = (name, file, scope) {
        tokens.push(TokenSpec { name, file, scope });
    }
}

/// `allow_users` or `allow_groups`: names or numbers of local accounts, as ids.
fn accounts(
    c: &mut Check,
    names: &Val<Vec<String>>,
    key: &str,
    id_of: fn(&str) -> Result<u32, String>,
    what: &str,
) -> Vec<u32> {
    let ids = c.each(names, key, |c, name| match id_of(name) {
        Ok(id) => Some(id),
        Err(why) => {
            let hint = format!("name an existing {what} lists them");
            c.err("", format!("`{}`: {why}", c.at)).help(hint);
            None
        }
    });
    ids.into_iter().flatten().collect()
}
