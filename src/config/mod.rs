//! Configuration: raw file formats → validated program specs.
//!
//! Nothing outside this module sees a raw file: the rest of provisr works on [`ProgramSpec`].
//! [`load`] reads the main config and the programs directory, [`scan_programs`] rescans the
//! directory for the hot-reload watcher, [`program_from_json`] validates an API request body.
//! Every entry point reports all errors at once, each naming file, line and key
//! ([`ConfigError`]). `docs/configuration.md` is the user-facing reference.

pub mod duration;
pub mod env;
pub mod error;
pub mod load;
pub mod locate;
mod raw;
pub mod spec;
mod validate;

pub use duration::Dur;
pub use error::{render_errors, ConfigError};
pub use load::{
    is_program_file_name, load, program_from_json, scan_programs, DaemonSettings, FileOutcome,
    LoadedConfig, MetricsSettings, ProgramsScan, ServerSettings, Settings, SocketSetting,
    TlsSettings, TokenScope, TokenSpec, DEFAULT_BASE_PATH, DEFAULT_SOCKET_NAME,
};
pub use spec::*;
