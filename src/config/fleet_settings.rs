//! The main config's `[store]` and `[node]` (`docs/configuration.md`, "Fleet"; `docs/fleet.md`):
//! which store holds desired state, and who this daemon is in a fleet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::document::k;
use super::raw::{Check, Val};
use super::{check_name, Dur};

/// The default `[node] lease_ttl`.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 10;
/// The default `[store] prefix`.
pub const DEFAULT_PREFIX: &str = "/provisr";
/// The default `[store] timeout`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 2;

/// `[store] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded sled store: one host.
    #[default]
    Sled,
    /// A fleet's desired state in etcd.
    Etcd,
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    /// etcd endpoints, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key provisr writes starts with it; several fleets can share one etcd.
    pub prefix: String,
    /// Each etcd request is given up after this long (the node then counts as disconnected).
    pub timeout: Dur,
    /// PEM files for `https://` endpoints: the CA that signed etcd's certificate, and this
    /// node's client certificate and key when etcd asks for one.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd's own authentication: the user, and a file holding the password.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: StoreBackend::Sled,
            endpoints: Vec::new(),
            prefix: DEFAULT_PREFIX.to_string(),
            timeout: Dur::from_secs(DEFAULT_TIMEOUT_SECS),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
        }
    }
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSettings {
    /// Unique in the fleet; the host name by default.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// How long the node stays registered after it last reached etcd.
    pub lease_ttl: Dur,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            name: host_name(),
            labels: BTreeMap::new(),
            lease_ttl: Dur::from_secs(DEFAULT_LEASE_TTL_SECS),
        }
    }
}

/// The host name as the kernel has it, made a valid node name; `node` if there is none.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if check_name(&name).is_ok() {
        name
    } else {
        "node".to_string()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub(super) struct RawStore {
    backend: Val<StoreBackend>,
    endpoints: Val<Vec<String>>,
    prefix: Val<String>,
    timeout: Val<String>,
    ca_file: Val<String>,
    cert_file: Val<String>,
    key_file: Val<String>,
    user: Val<String>,
    password_file: Val<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub(super) struct RawNode {
    name: Val<String>,
    labels: Val<BTreeMap<String, String>>,
    lease_ttl: Val<String>,
}

/// `[store]`; `c.at` is the root.
pub(super) fn read_store(c: &mut Check, raw: &Val<RawStore>, base: Option<&Path>) -> StoreSettings {
    let mut s = StoreSettings::default();
    c.table(raw, "store", |c, raw| {
        if let Some(b) = c.value(&raw.backend, "backend") {
            s.backend = b;
        }
        if let Some(e) = c.get(&raw.endpoints, "endpoints") {
            s.endpoints = e.iter().map(|e| e.trim().to_string()).collect();
        }
        if s.backend == StoreBackend::Etcd && s.endpoints.is_empty() {
            c.err(
                "endpoints",
                "backend = \"etcd\" needs at least one endpoint",
            )
            .help("endpoints = [\"http://127.0.0.1:2379\"]");
        }
        for (i, e) in s.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                c.err(
                    k("endpoints").index(i),
                    format!("endpoint {e:?} has no scheme"),
                )
                .help("write it as \"http://host:2379\" or \"https://host:2379\"");
            }
        }
        if let Some(p) = c.get(&raw.prefix, "prefix") {
            let p = p.trim_end_matches('/');
            if p.is_empty() || !p.starts_with('/') {
                c.bad(
                    "prefix",
                    "must start with `/` and name something, e.g. \"/provisr\"",
                );
            } else {
                s.prefix = p.to_string();
            }
        }
        if let Some(t) = c.dur(&raw.timeout, "timeout") {
            if t.0.is_zero() {
                c.bad("timeout", "must be more than zero");
            } else {
                s.timeout = t;
            }
        }
        s.ca_file = c.path(&raw.ca_file, "ca_file", base);
        s.cert_file = c.path(&raw.cert_file, "cert_file", base);
        s.key_file = c.path(&raw.key_file, "key_file", base);
        if s.cert_file.is_some() != s.key_file.is_some() {
            c.err("cert_file", "`cert_file` and `key_file` go together")
                .help("give both, or neither");
        }
        s.user = c.value(&raw.user, "user");
        s.password_file = c.path(&raw.password_file, "password_file", base);
        if s.user.is_some() != s.password_file.is_some() {
            c.err("user", "`user` and `password_file` go together")
                .help("give both, or neither");
        }
    });
    s
}

/// `[node]`; `c.at` is the root.
pub(super) fn read_node(c: &mut Check, raw: &Val<RawNode>) -> NodeSettings {
    let mut n = NodeSettings::default();
    c.table(raw, "node", |c, raw| {
        if let Some(name) = c.get(&raw.name, "name") {
            match check_name(name) {
                Ok(()) => n.name = name.clone(),
                Err(why) => {
                    c.bad("name", format_args!("is not a valid node name: {why}"));
                }
            }
        }
        if let Some(labels) = c.get(&raw.labels, "labels") {
            n.labels = labels.clone();
        }
        if let Some(t) = c.dur(&raw.lease_ttl, "lease_ttl") {
            if t.0.as_secs() < 1 {
                c.bad(
                    "lease_ttl",
                    "must be at least 1s (etcd counts leases in seconds)",
                );
            } else {
                n.lease_ttl = t;
            }
        }
    });
    n
}

#[cfg(test)]
mod tests {
    use super::super::settings::read_main;
    use super::*;

    fn read(text: &str) -> (crate::config::Settings, Vec<crate::config::ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("programs")).unwrap();
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        read_main(&dir.path().join("config.toml"), dir.path()).unwrap()
    }

    #[test]
    fn store_and_node_are_read_with_defaults() {
        let (s, errors) = read("");
        assert!(errors.is_empty());
        assert_eq!(s.store, StoreSettings::default());
        assert_eq!(s.store.backend, StoreBackend::Sled);
        assert_eq!(s.node.lease_ttl, Dur::from_secs(10));
        let (s, errors) = read(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/prod/\"\n\
             timeout = \"1s\"\nuser = \"u\"\npassword_file = \"pw\"\n\
             [node]\nname = \"web-1\"\nlabels = { role = \"web\" }\nlease_ttl = \"3s\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.store.backend, StoreBackend::Etcd);
        assert_eq!(s.store.prefix, "/prod");
        assert_eq!(s.store.timeout, Dur::from_secs(1));
        assert!(s.store.password_file.as_ref().unwrap().is_absolute());
        assert_eq!(s.node.name, "web-1");
        assert_eq!(s.node.labels["role"], "web");
        assert_eq!(s.node.lease_ttl, Dur::from_secs(3));
    }

    #[test]
    fn every_bad_key_is_named() {
        let (_, errors) = read(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"x\"\n\
             cert_file = \"c.pem\"\nuser = \"u\"\nbakend = 1\n\
             [node]\nname = \"bad name\"\nlease_ttl = \"500ms\"\n",
        );
        let keys: Vec<&str> = errors.iter().filter_map(|e| e.key.as_deref()).collect();
        for k in [
            "store.endpoints[0]",
            "store.prefix",
            "store.cert_file",
            "store.user",
            "store.bakend",
            "node.name",
            "node.lease_ttl",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        let (_, errors) = read("[store]\nbackend = \"etcd\"\n");
        assert!(
            errors[0].to_string().contains("at least one endpoint"),
            "{errors:?}"
        );
    }
}
