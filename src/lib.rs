//! provisr: a declarative process supervisor.
//!
//! The library holds everything; `main.rs` only parses the command line and dispatches.
//! See `docs/architecture.md` for the map of modules and how data flows between them.
pub mod accounts;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod desired;
pub mod fleet;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod reconcile;
pub mod reload;
pub mod sibling_build;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod watch;
