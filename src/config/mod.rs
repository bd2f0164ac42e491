//! Configuration: raw file formats → validated program specs.
//!
//! Nothing outside this module sees a raw file: the rest of provisr works on [`ProgramSpec`].
//! [`load`] reads the main config and the programs directory, [`scan_programs`] rescans the
//! directory for the hot-reload watcher, [`program_from_json`] validates an API request body.
//! Every entry point reports all errors at once, each naming file, line and key
//! ([`ConfigError`]). `docs/configuration.md` is the user-facing reference.
//!
//! The path of a file: `document` parses it into a generic tree with the format's own parser;
//! `raw` deserializes the tree into serde structs that keep every key's type error and find
//! every unknown key; `settings` (the main config) and `program` (a program) apply the rules;
//! `scan` runs them over the programs and checks across programs. Lines come from the parsers.

mod cronjob;
mod document;
pub mod env;
pub mod error;
mod fleet_settings;
mod identity;
mod lifecycle_keys;
mod placement_keys;
mod program;
mod raw;
mod scan;
mod settings;

pub use error::{render_errors, ConfigError};
pub use fleet_settings::{
    NodeSettings, StoreBackend, StoreSettings, DEFAULT_LEASE_TTL_SECS, DEFAULT_PREFIX,
};
pub use lifecycle_keys::request_dependency_errors;
pub use scan::{
    is_program_file_name, load, program_from_json, read_settings, scan_programs, FileOutcome,
    LoadedConfig, ProgramsScan,
};
pub use settings::{
    DaemonSettings, MetricsSettings, ServerSettings, Settings, SocketSetting, TlsSettings,
    TokenScope, TokenSpec, DEFAULT_BASE_PATH, DEFAULT_SOCKET_NAME,
};
// The validated types are the rest of provisr's vocabulary; they live in `crate::spec`.
pub use crate::spec::*;
