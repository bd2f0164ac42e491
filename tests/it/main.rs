//! provisr's integration tests: one crate, real processes, real files, real HTTP on 127.0.0.1.
//!
//! Every module waits on conditions (`util::wait_for`), never on fixed sleeps, and cleans up the
//! processes it started even when an assertion fails.

// Test helpers outside #[test] functions unwrap too: a failed helper is a failed test.
#![allow(clippy::unwrap_used)]
mod api;
mod badinput;
mod config;
mod crash;
mod daemon;
mod hotreload;
mod logs;
mod metrics;
mod observe;
mod store;
mod supervisor;
mod torture;
mod util;
mod watch;
