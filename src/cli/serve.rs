//! `provisr serve`: logging set-up and the tokio runtime around [`crate::daemon::run`].

use std::io::{self, IsTerminal, Write};

use super::daemon_log::{LogWriter, Queue};
use super::{exit, ServeArgs};
use crate::daemon::{self, ServeOptions};

pub fn run(args: &ServeArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROVISR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        // It would report a failed write with `eprintln!` to the same broken stderr, which
        // panics; `LogWriter` never fails (`daemon_log`), and this stays off should that change.
        .log_internal_errors(false)
        .init();
    let config = args
        .config
        .clone()
        .or_else(|| args.config_pos.clone())
        .filter(|p| !p.as_os_str().is_empty());
    let mut opts = ServeOptions {
        config,
        api_listen: args.api_listen.clone(),
        state_dir: args.state_dir.clone(),
        store: None,
    };
    crate::memory::limit_arenas();
    // While this process has one thread: room for the descriptors of a thousand instances, so
    // the table never grows under the runtime's threads (`docs/runtime.md`, "Descriptors"). The
    // limit is raised first, as the table cannot hold more than it allows; `daemon::open`
    // raises it too, for a runtime started elsewhere, and reports the result.
    let _ = crate::supervisor::raise_fd_limit();
    if let Err(e) = crate::supervisor::presize_fd_table(crate::supervisor::FD_TABLE_AT_START) {
        tracing::debug!("cannot make room for descriptors at start: {e}");
    }
    // First, while this process has one thread (docs/store.md, "Opening").
    opts.store = daemon::open_store_first(&opts);
    // The spawner starts now, while this process is small and has few descriptors: every child
    // is started by it (docs/runtime.md, "Spawning").
    if let Err(e) = crate::supervisor::spawner::install("/proc/self/exe") {
        tracing::warn!(
            "cannot start the spawner process: {e}; children are started by the daemon itself"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(io::stderr(), "provisr: cannot start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    // From here on the daemon's lines go through a queue, so a stalled reader never stops it
    // (docs/reliability.md).
    let log_queue = Queue::start();
    let result = runtime.block_on(daemon::run(opts, None, std::future::pending()));
    crate::supervisor::spawner::shutdown();
    // Every queued line is written before the last one below.
    drop(log_queue);
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(io::stderr(), "provisr: {e}");
            e.exit_code()
        }
    }
}
