//! The composition root: `provisr serve`.
//!
//! Opens the store, loads the config into it, starts the reconcile loop, the API server and the
//! config reloader, and owns the shutdown order: stop accepting requests, stop watching, stop
//! every child in reverse priority, flush the store, exit. Only failing to load the main config,
//! open the store or bind the listener stops the daemon; everything else is logged and reported
//! in status.
//!
//! Hot reload (issue 5, `docs/hot-reload.md`): one reloader task rescans the configuration when
//! the programs-directory watcher ([`crate::watch`]) reports a change, on SIGHUP and on a slow
//! periodic resync; `POST /reload` calls [`Daemon::reload`] directly. Every path is the same
//! [`Daemon::reload`]: full rescan, validate, write only what changed, keep a broken file's last
//! good spec.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, Notify};

use crate::api::security::{check_listen, parse_listen, Guard, ListenError};
use crate::api::MetricsOn;
use crate::config::{self, ConfigError, GroupSpec, LoadedConfig, Settings};
use crate::desired::{self, DesiredState};
use crate::metrics::Metrics;
use crate::plan::Action;
use crate::reconcile::{self, Reconciler};
use crate::store::{DesiredStore, StoreError};
use crate::supervisor::Event;
use crate::watch::{self, Debounce, WatchHandle, WatchTargets};

/// How often the configuration is rescanned with nothing else asking: the backstop for changes
/// no file event reports (network file systems, symlink targets, lost events).
pub const CONFIG_RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// What `provisr serve` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The main config; `None` is the embedded default (`./programs`, defaults for the rest).
    pub config: Option<PathBuf>,
    /// Overrides `[server] listen`.
    pub api_listen: Option<String>,
    /// Overrides `[daemon] state_dir`.
    pub state_dir: Option<PathBuf>,
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{}", config::render_errors(.0))]
    Config(Vec<ConfigError>),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the unix socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

impl DaemonError {
    /// The exit code: 2 for an invalid configuration, 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) | DaemonError::Listen(ListenError::Invalid(_)) => 2,
            _ => 1,
        }
    }
}

/// Everything the API handlers need: desired state, the loop, events, the loaded config.
pub struct Daemon {
    pub desired: Arc<DesiredState>,
    pub metrics: Arc<Metrics>,
    pub reconciler: Reconciler,
    pub events: broadcast::Sender<Event>,
    config_file: Option<PathBuf>,
    base_env: BTreeMap<String, String>,
    // A std lock: replaced whole on reload, read by cloning; never held across an `.await`.
    loaded: RwLock<Arc<Loaded>>,
    // Serializes reloads (watcher, SIGHUP and API may ask at once).
    reload_lock: tokio::sync::Mutex<()>,
    // The programs-directory watcher, moved to new targets after a reload changes them; taken
    // out and stopped at shutdown. A std lock: only held to call the synchronous `set_targets`.
    watcher: Mutex<Option<WatchHandle>>,
}

/// What the last successful load of the config said besides programs.
#[derive(Debug, Default)]
pub struct Loaded {
    pub settings: Option<Settings>,
    pub groups: Vec<GroupSpec>,
    /// Errors of the last load or reload (file, line, key, hint), shown until fixed.
    pub errors: Vec<ConfigError>,
}

/// What a reload did (or, with `dry_run`, would do).
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    pub dry_run: bool,
    /// How many writes changed the store (specs, errors, deletions).
    pub changed: usize,
    /// Every configuration error (file, line, key, message, hint). A broken program file keeps
    /// its program's last good spec; a broken main config or env file changes nothing at all.
    pub errors: Vec<ConfigError>,
    /// Why nothing could be written, when the store refused the writes.
    pub failed: Option<String>,
    /// What the reconcile loop does (or, with `dry_run`, would do) about it, per instance.
    pub steps: Vec<crate::plan::Step>,
}

impl Daemon {
    /// The groups of the loaded config.
    pub fn groups(&self) -> Vec<GroupSpec> {
        self.loaded().groups.clone()
    }

    pub fn loaded(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn base_env(&self) -> &BTreeMap<String, String> {
        &self.base_env
    }

    /// Re-reads the config and programs directory and writes what changed into the store; with
    /// `dry_run`, only reports what it would do. A broken file keeps its program's last good
    /// spec and the error is recorded on the program (status, `/programs`) and logged, on every
    /// reload, until the file is fixed.
    pub async fn reload(&self, dry_run: bool) -> ReloadReport {
        let _one_at_a_time = self.reload_lock.lock().await;
        let report = |errors, failed, steps| ReloadReport {
            dry_run,
            changed: 0,
            errors,
            failed,
            steps,
        };
        let loaded = match config::load(self.config_file.as_deref(), &self.base_env) {
            Ok(l) => l,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("config: {e} (nothing reloaded)");
                }
                if !dry_run {
                    self.metrics.observe_reload(false, errors.len());
                }
                return report(errors, None, Vec::new());
            }
        };
        for e in &loaded.errors {
            tracing::error!("config: {e} (the program keeps its last good spec)");
        }
        let current = self.desired.snapshot();
        let writes =
            desired::sync_writes(&current, &loaded.programs, &loaded.files, &loaded.errors);
        let preview = desired::simulate(&current, &writes);
        let steps =
            crate::api::plan_against_live(&preview, &current, &self.reconciler.live()).steps;
        if dry_run {
            return report(loaded.errors, None, steps);
        }
        let changed = match self.desired.apply(writes).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reload: {e}");
                return report(loaded.errors, Some(e.to_string()), steps);
            }
        };
        self.metrics
            .observe_reload(loaded.errors.is_empty(), loaded.errors.len());
        self.follow_targets(&loaded.settings);
        if changed > 0 {
            tracing::info!(changed, "reloaded the configuration");
            for s in steps.iter().filter(|s| s.action != Action::Unchanged) {
                tracing::info!(instance = %s.instance, action = ?s.action, reason = %s.reason, "reload");
            }
        }
        let errors = loaded.errors.clone();
        self.set_loaded(loaded);
        ReloadReport {
            dry_run,
            changed,
            errors,
            failed: None,
            steps,
        }
    }

    /// Moves the watches when a reload changed the programs directory or the env files
    /// (a no-op otherwise).
    fn follow_targets(&self, settings: &Settings) {
        let guard = match self.watcher.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(w) = guard.as_ref() {
            if let Err(e) = w.set_targets(WatchTargets::from_settings(settings)) {
                tracing::warn!(
                    "{e}; that directory's changes are picked up by the periodic rescan"
                );
            }
        }
    }

    /// Takes the watcher out, for shutdown.
    fn take_watcher(&self) -> Option<WatchHandle> {
        match self.watcher.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }
    }

    fn set_loaded(&self, loaded: LoadedConfig) {
        let next = Arc::new(Loaded {
            groups: loaded.groups,
            errors: loaded.errors,
            settings: Some(loaded.settings),
        });
        match self.loaded.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }
}

/// The address the API actually listens on, reported once bound (port 0 picks a free port).
pub type Bound = tokio::sync::oneshot::Sender<SocketAddr>;

/// A daemon with its store open, its config loaded and its reconcile loop running, not yet
/// listening: [`run`] adds the listeners and signals; tests can drive [`Opened::router`] without
/// a socket.
pub struct Opened {
    pub daemon: Arc<Daemon>,
    guard: Guard,
    addr: SocketAddr,
    base_path: String,
    metrics_on: MetricsOn,
    metrics_listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    rescan: Arc<Notify>,
}

impl Opened {
    /// The whole API, as served on the listener.
    pub fn router(&self) -> axum::Router {
        crate::api::router(
            self.daemon.clone(),
            self.guard.clone(),
            &self.base_path,
            self.metrics_on,
        )
    }

    /// Stops every child in reverse priority order and flushes the store.
    pub async fn shutdown(&self) -> Result<(), DaemonError> {
        if let Some(w) = self.daemon.take_watcher() {
            w.stop().await;
        }
        self.daemon.reconciler.shutdown().await;
        self.daemon.desired.store().flush()?;
        Ok(())
    }
}

/// Loads the config, opens the store, writes the config into it and starts the reconcile loop
/// and the watcher. Fails on an invalid main config, a refused listen address or a store that
/// cannot be opened (e.g. another daemon holds it).
pub async fn open(opts: &ServeOptions) -> Result<Opened, DaemonError> {
    let base_env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded = config::load(opts.config.as_deref(), &base_env).map_err(DaemonError::Config)?;
    // Watch before the load that goes into the store, so no change slips in between the two.
    let rescan = Arc::new(Notify::new());
    let watcher = start_watcher(&loaded.settings, rescan.clone());
    let loaded = match &watcher {
        Some(w) => {
            let again =
                config::load(opts.config.as_deref(), &base_env).map_err(DaemonError::Config)?;
            if let Err(e) = w.set_targets(WatchTargets::from_settings(&again.settings)) {
                tracing::warn!(
                    "{e}; that directory's changes are picked up by the periodic rescan"
                );
            }
            again
        }
        None => loaded,
    };
    for e in &loaded.errors {
        tracing::error!("config: {e}");
    }
    let server = &loaded.settings.server;
    let token = match (&server.token, &server.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| DaemonError::TokenFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let listen = opts
        .api_listen
        .clone()
        .unwrap_or_else(|| server.listen.clone());
    let addr = parse_listen(&listen)?;
    check_listen(addr, token.is_some())?;
    let base_path = normalize_base(&server.base_path);
    let socket = server.socket.clone();
    let metrics = &loaded.settings.metrics;
    let (metrics_on, metrics_listen) = match (metrics.enabled, &metrics.listen) {
        (false, _) => (MetricsOn::Off, None),
        (true, None) => (MetricsOn::Api, None),
        (true, Some(l)) => {
            let maddr = parse_listen(l)?;
            check_listen(maddr, token.is_some())?;
            (MetricsOn::OwnListener, Some(maddr))
        }
    };
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| loaded.settings.daemon.state_dir.clone());

    match crate::supervisor::raise_fd_limit() {
        Ok(l) => tracing::debug!(soft = l.soft, "open-file limit raised"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let store = DesiredStore::open(&state_dir)?;
    let wake = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::new());
    let desired = Arc::new(DesiredState::new(store, wake.clone(), metrics.clone())?);
    let before = desired.snapshot();
    let writes = desired::sync_writes(&before, &loaded.programs, &loaded.files, &loaded.errors);
    // Programs whose file went away while no daemon ran are deleted here; their instance
    // records stay as tombstones, so the loop stops what still runs of them.
    desired.apply(writes).await?;

    let (events, _) = broadcast::channel(1024);
    tokio::spawn(count_events(events.subscribe(), metrics.clone()));
    let reconciler = reconcile::start(desired.clone(), events.clone(), wake, metrics.clone());
    let allowed_hosts = match addr.ip() {
        ip if ip.is_unspecified() => Vec::new(),
        ip => vec![ip.to_string()],
    };
    let guard = Guard {
        token,
        allowed_hosts,
    };
    let daemon = Arc::new(Daemon {
        desired,
        metrics,
        reconciler,
        events,
        config_file: opts.config.clone(),
        base_env,
        loaded: RwLock::new(Arc::default()),
        reload_lock: tokio::sync::Mutex::new(()),
        watcher: Mutex::new(watcher),
    });
    daemon.set_loaded(loaded);
    Ok(Opened {
        daemon,
        guard,
        addr,
        base_path,
        metrics_on,
        metrics_listen,
        socket,
        rescan,
    })
}

/// Runs the daemon until SIGTERM/SIGINT (or `shutdown` resolves), then stops every child in
/// reverse priority order and returns. `bound` receives the listening address.
pub async fn run(
    opts: ServeOptions,
    bound: Option<Bound>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // Handlers first: a signal that arrives while the daemon starts is handled, not fatal.
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    // Before anything is spawned: what our children leave behind is re-parented to us, not to
    // init, and reaped here (`docs/runtime.md`, subreaper). Only `run` does this: it is for the
    // whole process, which is the daemon's alone here, not a test's that opens one inside it.
    let sigchld = signal(SignalKind::child()).map_err(DaemonError::Signals)?;
    if let Err(e) = crate::supervisor::reaper::become_subreaper() {
        tracing::warn!("cannot become the child subreaper: {e}; orphans of children go to init");
    }
    tokio::spawn(crate::supervisor::reaper::reap_orphans_forever(sigchld));
    let opened = open(&opts).await?;
    let addr = opened.addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let daemon = opened.daemon.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let graceful = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    if let Some(maddr) = opened.metrics_listen {
        let mlistener = TcpListener::bind(maddr)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: maddr,
                source,
            })?;
        let mapp =
            crate::api::metrics_router(daemon.clone()).layer(axum::middleware::from_fn_with_state(
                Arc::new(opened.guard.clone()),
                crate::api::security::guard,
            ));
        tracing::info!("metrics on http://{maddr}/metrics");
        let stop = graceful(stop_rx.clone());
        servers.spawn(async move {
            if let Err(e) = axum::serve(mlistener, mapp)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!("metrics server: {e}");
            }
        });
    }
    if let Some(path) = &opened.socket {
        let unix = bind_socket(path)?;
        tracing::info!("provisr API also on unix socket {}", path.display());
        let (app, stop) = (opened.router(), graceful(stop_rx.clone()));
        servers.spawn(async move {
            if let Err(e) = axum::serve(unix, app).with_graceful_shutdown(stop).await {
                tracing::error!("API socket server: {e}");
            }
        });
    }
    // Said once every listener is bound: whoever waits for this line can use any of them.
    tracing::info!(
        "provisr API listening on http://{local}{}",
        opened.base_path
    );
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    let (app, stop) = (opened.router(), graceful(stop_rx.clone()));
    servers.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("API server: {e}");
        }
    });

    let (stop_reloader, reloader_stopped) = tokio::sync::oneshot::channel::<()>();
    let reloader = tokio::spawn(reload_worker(
        daemon.clone(),
        opened.rescan.clone(),
        hup,
        reloader_stopped,
    ));

    tokio::pin!(shutdown);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        () = &mut shutdown => tracing::info!("shutdown requested: stopping"),
    }
    let _ = stop_tx.send(true);
    // No reload may start children while they are being stopped: the watcher and the reloader
    // end first (a reload in progress finishes).
    if let Some(w) = daemon.take_watcher() {
        w.stop().await;
    }
    let _ = stop_reloader.send(());
    let _ = reloader.await;
    // A second signal skips waiting for the children's stop timeouts.
    tokio::select! {
        () = daemon.reconciler.shutdown() => {}
        _ = term.recv() => force_kill(&daemon.reconciler),
        _ = int.recv() => force_kill(&daemon.reconciler),
    }
    while servers.join_next().await.is_some() {}
    if let Some(path) = &opened.socket {
        let _ = std::fs::remove_file(path);
    }
    daemon.desired.store().flush()?;
    tracing::info!("provisr stopped");
    Ok(())
}

/// Listens on a unix socket only this user can use (mode 0600, SPEC §10). A stale socket file
/// from a daemon that died is replaced; the state-dir lock already proved no daemon runs there.
fn bind_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let bind_err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Starts the programs-directory watcher; each burst of changes pokes `rescan`. Without a watcher
/// (inotify unavailable, a directory that cannot be watched) the daemon still reloads on SIGHUP,
/// `POST /reload` and the periodic resync, and says so.
fn start_watcher(settings: &Settings, rescan: Arc<Notify>) -> Option<WatchHandle> {
    let targets = WatchTargets::from_settings(settings);
    let on_change = move || {
        // A poke, not a call: the reloader coalesces pokes that arrive during a reload into
        // one more reload, and the watcher goes straight back to listening.
        rescan.notify_one();
        std::future::ready(())
    };
    match watch::spawn(targets, Debounce::default(), on_change) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("{e}; configuration changes are picked up by SIGHUP, POST /reload and the periodic rescan only");
            None
        }
    }
}

/// The one task that reloads on a watcher poke, on SIGHUP and every
/// [`CONFIG_RESYNC_INTERVAL`] without either, until `stop`.
async fn reload_worker(
    daemon: Arc<Daemon>,
    rescan: Arc<Notify>,
    mut hup: tokio::signal::unix::Signal,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let start = tokio::time::Instant::now() + CONFIG_RESYNC_INTERVAL;
    let mut resync = tokio::time::interval_at(start, CONFIG_RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            () = rescan.notified() => {
                tracing::debug!("the configuration changed on disk; rescanning");
            }
            Some(()) = hup.recv() => tracing::info!("SIGHUP: rescanning the programs directory"),
            _ = resync.tick() => tracing::debug!("periodic configuration resync"),
        }
        daemon.reload(false).await;
        // The periodic rescan counts from the last rescan, whatever caused it.
        resync.reset();
    }
}

/// Feeds every transition to the metrics; ends with the daemon.
async fn count_events(mut rx: broadcast::Receiver<Event>, metrics: Arc<Metrics>) {
    loop {
        match rx.recv().await {
            Ok(e) => metrics.observe_event(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("metrics missed {n} events under load");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// SIGKILL to every instance's process group: the second signal's "stop now". Each group only
/// while its leader is still the process the instance runs (see `signal_group_of`).
fn force_kill(reconciler: &Reconciler) {
    tracing::warn!("second signal: killing every child now");
    for live in reconciler.live().values() {
        let (pid, start_time) = {
            let s = live.status.borrow();
            (s.pid, s.pid_start_time)
        };
        if let (Some(pid), Some(start_time)) = (pid, start_time) {
            crate::supervisor::signal_group_of(pid, start_time, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `/api`, `api/` and `/api/` all mean `/api`; an empty base means the root.
fn normalize_base(base: &str) -> String {
    let trimmed = base.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}
