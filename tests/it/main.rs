//! provisr's integration tests: one crate, real processes, real files, real HTTP on 127.0.0.1.
//!
//! Every module waits on conditions (`util::wait_for`), never on fixed sleeps, and cleans up the
//! processes it started even when an assertion fails.

// Test helpers outside #[test] functions unwrap too: a failed helper is a failed test.
#![allow(clippy::unwrap_used)]
mod api;
mod badinput;
mod browser;
mod config;
mod crash;
mod cron;
mod daemon;
#[cfg(feature = "etcd")]
mod fleet;
mod host;
mod hotreload;
mod lifecycle;
mod logs;
mod metrics;
mod observe;
mod security;
mod store;
mod supervisor;
mod systemd;
mod tls;
mod torture;
mod ui;
mod util;
mod watch;
