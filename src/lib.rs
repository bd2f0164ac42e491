//! provisr: a declarative process supervisor.
//!
//! The library holds everything; `main.rs` only parses the command line and dispatches.
//! See `docs/architecture.md` for the map of modules and how data flows between them.

pub mod cli;
pub mod config;
pub mod logs;
pub mod metrics;
pub mod supervisor;
