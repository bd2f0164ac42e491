//! The composition root: `provisr serve`.
//!
//! Opens the store, loads the config into it, and wires the parts together: the reconcile loop,
//! the config [`Reloader`] with its watcher, the API (over [`AppState`]), systemd notifications.
//! It owns the listeners and the shutdown order: stop accepting requests, stop watching, stop
//! every child in reverse priority, flush the store, exit. Only failing to load the main config,
//! open the store or bind the listener stops the daemon; everything else is logged and reported
//! in status. Nothing imports this module but `cli::serve`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, Notify};

use crate::api::peer::Caller;
use crate::api::security::{
    check_listen, parse_listen, Access, AccessPolicy, Guard, ListenError, ListenGuards, Token,
};
use crate::api::tls::{self, ReloadingCert, TlsError};
use crate::api::AppState;
use crate::api::MetricsOn;
use crate::config::TokenScope;
use crate::config::{self, ConfigError, ServerSettings, Settings, SocketSetting};
use crate::desired::{self, DesiredState};
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::reconcile;
use crate::reload::{self, ConfigSource, Reloader, SettingsHook};
use crate::store::{DesiredStore, StoreError};
use crate::supervisor::Event;
use crate::watch::WatchTargets;

/// What `provisr serve` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The main config; `None` is the embedded default (`./programs`, defaults for the rest).
    pub config: Option<PathBuf>,
    /// Overrides `[server] listen`.
    pub api_listen: Option<String>,
    /// Overrides `[daemon] state_dir`.
    pub state_dir: Option<PathBuf>,
    /// The store, already opened by [`open_store_first`]; used if it is the resolved state
    /// directory's, else dropped and the right one opened.
    pub store: Option<DesiredStore>,
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
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the token file {path} is empty; put the token in it, or remove it from the config")]
    EmptyTokenFile { path: PathBuf },
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
    #[error("{0}")]
    Fleet(String),
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

/// The address the API actually listens on, reported once bound (port 0 picks a free port).
pub type Bound = tokio::sync::oneshot::Sender<SocketAddr>;

/// A daemon with its store open, its config loaded and its reconcile loop running, not yet
/// listening: [`run`] adds the listeners and signals; tests can drive [`Daemon::router`] without
/// a socket.
pub struct Daemon {
    pub state: Arc<AppState>,
    guard: Guard,
    addr: SocketAddr,
    base_path: String,
    metrics_on: MetricsOn,
    metrics_listen: Option<SocketAddr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    socket: SocketPlan,
    rescan: Arc<Notify>,
}

/// Where the unix socket goes, and whether failing to bind it stops the daemon.
#[derive(Debug, Clone)]
enum SocketPlan {
    /// The default socket in the state directory: a failure is a warning (TCP still serves).
    Default(Option<PathBuf>),
    /// `[server] socket` set: a failure stops the daemon; `None` when set to `""` (off).
    Required(Option<PathBuf>),
}

impl Daemon {
    /// The whole API, as served on the listener.
    pub fn router(&self) -> axum::Router {
        crate::api::router(
            self.state.clone(),
            self.guard.clone(),
            &self.base_path,
            self.metrics_on,
        )
    }

    /// Stops every child in reverse priority order and flushes the store.
    pub async fn shutdown(&self) -> Result<(), DaemonError> {
        if let Some(w) = self.state.reloader.take_watcher() {
            w.stop().await;
        }
        self.state.reconciler.shutdown().await;
        self.state.desired.store().flush()?;
        Ok(())
    }
}

/// Loads the config, opens the store, writes the config into it and starts the reconcile loop
/// and the watcher. Fails on an invalid main config, a refused listen address or a store that
/// cannot be opened (e.g. another daemon holds it).
pub async fn open(opts: &ServeOptions) -> Result<Daemon, DaemonError> {
    // The service manager's variables are for the daemon alone (docs/systemd.md).
    let base_env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !crate::supervisor::DAEMON_ONLY_ENV.contains(&k.as_str()))
        .collect();
    // Watch before the load that goes into the store, so no change slips in between the two.
    // What to watch is in the main config alone: the programs are read once, after.
    let rescan = Arc::new(Notify::new());
    let first = std::env::current_dir()
        .ok()
        .and_then(|cwd| config::read_settings(opts.config.as_deref(), &cwd).ok());
    let watcher = first
        .as_ref()
        .map(|(settings, _)| reload::start_watcher(settings, rescan.clone()));
    let loaded = config::load(opts.config.as_deref(), &base_env).map_err(DaemonError::Config)?;
    let watcher = match watcher {
        Some(Some(w)) => {
            if let Err(e) = w.set_targets(WatchTargets::from_settings(&loaded.settings)) {
                tracing::warn!(
                    "{e}; that directory's changes are picked up by the periodic rescan"
                );
            }
            Some(w)
        }
        // The watcher could not start (it said why).
        Some(None) => None,
        // The main config could not be read a moment ago and now loads: watch what it says.
        None => reload::start_watcher(&loaded.settings, rescan.clone()),
    };
    for e in &loaded.errors {
        tracing::error!("config: {e}");
    }
    let server = &loaded.settings.server;
    let tokens = read_tokens(server)?;
    let tls = match &server.tls {
        Some(t) => Some(tls::acceptor(Arc::new(ReloadingCert::open(
            &t.cert, &t.key,
        )?))?),
        None => None,
    };
    let guards = ListenGuards {
        has_token: !tokens.is_empty(),
        tls: tls.is_some(),
        allow_plaintext: server.allow_plaintext,
    };
    let listen = opts
        .api_listen
        .clone()
        .unwrap_or_else(|| server.listen.clone());
    let addr = parse_listen(&listen)?;
    check_listen(addr, guards)?;
    let base_path = normalize_base(&server.base_path);
    let metrics = &loaded.settings.metrics;
    let (metrics_on, metrics_listen) = match (metrics.enabled, &metrics.listen) {
        (false, _) => (MetricsOn::Off, None),
        (true, None) => (MetricsOn::Api, None),
        (true, Some(l)) => {
            let maddr = parse_listen(l)?;
            check_listen(maddr, guards)?;
            (MetricsOn::OwnListener, Some(maddr))
        }
    };
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| loaded.settings.daemon.state_dir.clone());
    let socket = match &server.socket {
        SocketSetting::InStateDir => SocketPlan::Default(server.socket.path(&state_dir)),
        explicit => SocketPlan::Required(explicit.path(&state_dir)),
    };

    match crate::supervisor::raise_fd_limit() {
        Ok(l) => tracing::debug!(soft = l.soft, "open-file limit raised"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let store = match opts.store.clone() {
        Some(store) if store.state_dir() == state_dir => store,
        _ => DesiredStore::open(&state_dir)?,
    };
    let wake = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::new());
    let desired = Arc::new(DesiredState::new(store, wake.clone(), metrics.clone())?);
    // In a fleet, the node's share is taken from etcd before the loop starts, so a node that
    // comes back never starts what moved away while it was gone (`docs/fleet.md`).
    let fleet = join_fleet(&loaded.settings, &listen, &desired, &rescan).await?;
    match &fleet {
        None => {
            let before = desired.snapshot();
            let writes =
                desired::sync_writes(&before, &loaded.programs, &loaded.files, &loaded.errors);
            // Programs whose file went away while no daemon ran are deleted here; their
            // instance records stay as tombstones, so the loop stops what still runs of them.
            desired.apply(writes).await?;
            // The unchanged ones were read from the store: the scan's specs replace those copies.
            desired.share_specs(&loaded.programs).await;
        }
        Some(_) => {
            let before = desired.all_programs();
            let writes = desired::additive(desired::sync_writes(
                &before,
                &loaded.programs,
                &loaded.files,
                &loaded.errors,
            ));
            // Degraded: the files are written when etcd is back (the fleet pokes a rescan).
            if let Err(e) = desired.apply(writes).await {
                tracing::warn!("fleet: the programs directory is not written yet: {e}");
            }
        }
    }

    let (events, _) = broadcast::channel(event_capacity(&desired.snapshot()));
    tokio::spawn(count_events(events.subscribe(), metrics.clone()));
    let reconciler = reconcile::start(desired.clone(), events.clone(), wake, metrics.clone());
    // Loopback names always pass; besides them, the listen address and `[server] allowed_hosts`.
    let mut allowed_hosts = loaded.settings.server.allowed_hosts.clone();
    if !addr.ip().is_unspecified() {
        allowed_hosts.push(addr.ip().to_string());
    }
    let access = Access::new(access_policy(&loaded.settings.server, tokens, &opts.config));
    let guard = Guard {
        base: base_path.clone(),
        access: access.clone(),
        allowed_hosts,
    };
    let policy_access = access.clone();
    let config_file = opts.config.clone();
    let follow_access: SettingsHook = Box::new(move |settings: &Settings| {
        // A token file that cannot be read keeps the tokens in force, so a botched edit never
        // opens the API.
        let tokens = match read_tokens(&settings.server) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("{e}; the previous tokens stay in force");
                policy_access.current().tokens.clone()
            }
        };
        policy_access.replace(access_policy(&settings.server, tokens, &config_file));
    });
    let source = ConfigSource {
        file: opts.config.clone(),
        base_env,
    };
    let reloader = Arc::new(Reloader::new(
        source,
        desired.clone(),
        reconciler.clone(),
        metrics.clone(),
        watcher,
        loaded,
        vec![follow_access],
    ));
    let state = Arc::new(AppState {
        desired,
        reconciler,
        reloader,
        events,
        metrics,
        closing: tokio::sync::watch::channel(false).0,
        fleet: fleet.as_ref().map(Joined::status),
    });
    if let Some(f) = &fleet {
        f.publish_observed(&state);
    }
    Ok(Daemon {
        state,
        guard,
        addr,
        base_path,
        metrics_on,
        metrics_listen,
        tls,
        socket,
        rescan,
    })
}

/// Opens the store of the state directory `opts` names, for a process that has not started
/// its threads yet: sled then flushes only the store's files before it recovers, not the whole
/// machine's (`docs/store.md`, "Opening"). `None` when the main config cannot be read or the
/// store cannot be opened: [`open`] reads them again and reports why.
pub fn open_store_first(opts: &ServeOptions) -> Option<DesiredStore> {
    let cwd = std::env::current_dir().ok()?;
    let state_dir = match &opts.state_dir {
        Some(dir) => dir.clone(),
        None => {
            let (settings, _) = config::read_settings(opts.config.as_deref(), &cwd).ok()?;
            settings.daemon.state_dir
        }
    };
    DesiredStore::open(&state_dir).ok()
}

/// Runs the daemon until SIGTERM/SIGINT (or `shutdown` resolves), then stops every child in
/// reverse priority order and returns. `bound` receives the listening address.
pub async fn run(
    mut opts: ServeOptions,
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
    // The daemon holds its store now; it closes when the daemon does.
    opts.store = None;
    let addr = opened.addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let state = opened.state.clone();
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
            crate::api::metrics_router(state.clone()).layer(axum::middleware::from_fn_with_state(
                Arc::new(opened.guard.clone()),
                crate::api::security::guard,
            ));
        let scheme = if opened.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("metrics on {scheme}://{maddr}/metrics");
        let stop = graceful(stop_rx.clone());
        servers.spawn(serve_tcp(
            mlistener,
            mapp,
            opened.tls.clone(),
            stop,
            "metrics",
        ));
    }
    let socket = match &opened.socket {
        SocketPlan::Required(Some(path)) => Some((path, bind_socket(path)?)),
        SocketPlan::Default(Some(path)) => match bind_socket(path) {
            Ok(unix) => Some((path, unix)),
            Err(e) => {
                tracing::warn!("{e}; the API is served on TCP only (set [server] socket to choose another path)");
                None
            }
        },
        SocketPlan::Required(None) | SocketPlan::Default(None) => None,
    };
    let socket_path = socket.as_ref().map(|(p, _)| (*p).clone());
    if let Some((path, unix)) = socket {
        tracing::info!("provisr API also on unix socket {}", path.display());
        let app = opened
            .router()
            .into_make_service_with_connect_info::<Caller>();
        let stop = graceful(stop_rx.clone());
        servers.spawn(async move {
            if let Err(e) = axum::serve(unix, app).with_graceful_shutdown(stop).await {
                tracing::error!("API socket server: {e}");
            }
        });
    }
    // Said once every listener is bound: whoever waits for this line can use any of them.
    let scheme = if opened.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "provisr API listening on {scheme}://{local}{}",
        opened.base_path
    );
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    let stop = graceful(stop_rx.clone());
    servers.spawn(serve_tcp(
        listener,
        opened.router(),
        opened.tls.clone(),
        stop,
        "API",
    ));

    let notifier = Notifier::from_env();
    let (stop_reloader, reloader_stopped) = tokio::sync::oneshot::channel::<()>();
    let reconciler = state.reconciler.clone();
    let reload_task = tokio::spawn(reload::reload_worker(
        state.reloader.clone(),
        opened.rescan.clone(),
        hup,
        reloader_stopped,
        move |trigger, done| {
            // systemd hears about the reloads it asked for (SIGHUP, `systemctl reload`).
            if trigger == reload::Trigger::Hangup {
                if done {
                    notifier.ready(&notify::status_line(&reconciler));
                } else {
                    notifier.reloading();
                }
            }
        },
    ));
    // Ready for systemd once every listener is bound and the first pass ran (docs/systemd.md).
    let mut passes = state.reconciler.passes();
    let _ = passes.wait_for(|n| *n >= 1).await;
    let api_url = format!("{scheme}://{local}{}", opened.base_path);
    notifier.ready_at(&api_url, &notify::status_line(&state.reconciler));
    let status_updates = tokio::spawn(notify::status_worker(
        notifier,
        state.reconciler.clone(),
        state.events.subscribe(),
    ));
    let watchdog = tokio::spawn(notify::watchdog_worker(notifier, state.reconciler.clone()));

    tokio::pin!(shutdown);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        () = &mut shutdown => tracing::info!("shutdown requested: stopping"),
    }
    notifier.stopping();
    watchdog.abort();
    status_updates.abort();
    let _ = stop_tx.send(true);
    // No reload may start children while they are being stopped: the watcher and the reloader
    // end first (a reload in progress finishes).
    if let Some(w) = state.reloader.take_watcher() {
        w.stop().await;
    }
    let _ = stop_reloader.send(());
    let _ = reload_task.await;
    // A second signal skips waiting for the children's stop timeouts.
    tokio::select! {
        () = state.reconciler.shutdown() => {}
        _ = term.recv() => state.reconciler.kill_all(),
        _ = int.recv() => state.reconciler.kill_all(),
    }
    // The endless streams (`/events`, `/logs?follow`) have shown the children stop; they end
    // now, or the listeners' graceful shutdown would wait for them forever.
    state.closing.send_replace(true);
    while servers.join_next().await.is_some() {}
    if let Some(path) = &socket_path {
        let _ = std::fs::remove_file(path);
    }
    state.desired.store().flush()?;
    tracing::info!("provisr stopped");
    Ok(())
}

/// Serves `app` on a TCP listener, behind TLS when `tls` is set, each connection attributed to
/// its caller ([`Caller`]), until `stop`.
async fn serve_tcp(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    what: &'static str,
) {
    let result = match tls {
        None => {
            let app = app.into_make_service_with_connect_info::<Caller>();
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(acceptor) => {
            let app = app.into_make_service_with_connect_info::<Caller>();
            axum::serve(tls::listen(listener, acceptor), app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!("{what} server: {e}");
    }
}

/// Listens on a unix socket with mode 0660 from the moment it can be reached: it is bound inside
/// a fresh directory only this user can enter, given its mode there, then renamed into place
/// (`docs/security.md`). A stale socket file from a daemon that died is replaced; the state-dir
/// lock already proved no daemon runs there.
fn bind_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let bind_err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(bind_err)?;
    let private = dir.join(format!(".provisr-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(bind_err)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(bind_err)
}

/// The tokens of `[server]`: `token` or `token_file` (the admin scope, named `token`) and
/// every `[[server.tokens]]` entry's file.
fn read_tokens(server: &ServerSettings) -> Result<Vec<Token>, DaemonError> {
    let read = |path: &std::path::Path| -> Result<String, DaemonError> {
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read_to_string(path).map_err(|source| DaemonError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(
                "the token file {} can be read by other users; chmod 600 it",
                path.display()
            );
        }
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(DaemonError::EmptyTokenFile {
                path: path.to_path_buf(),
            });
        }
        Ok(token)
    };
    let mut tokens = Vec::new();
    let legacy = match (&server.token, &server.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(read(path)?),
        (None, None) => None,
    };
    if let Some(secret) = legacy {
        tokens.push(Token {
            name: "token".into(),
            secret,
            scope: TokenScope::Admin,
        });
    }
    for t in &server.tokens {
        tokens.push(Token {
            name: t.name.clone(),
            secret: read(&t.file)?,
            scope: t.scope,
        });
    }
    Ok(tokens)
}

/// The access policy `[server]` describes.
fn access_policy(
    server: &ServerSettings,
    tokens: Vec<Token>,
    config_file: &Option<PathBuf>,
) -> AccessPolicy {
    AccessPolicy::new(
        tokens,
        server.allow_users.clone(),
        server.allow_groups.clone(),
        config_file.clone(),
    )
}

/// The capacity of the transition channel. Starting every instance at once (the daemon's boot,
/// a start of everything) sends two transitions per instance in a burst, while the daemon is
/// busy spawning and a subscriber may not be scheduled until it ends; a subscriber that keeps up
/// must still see every one (`GET /events`, the metrics). So the channel holds the burst of the
/// instances that run at start, twice over, and at least 1024; each slot costs about 150 bytes.
fn event_capacity(programs: &desired::Programs) -> usize {
    let running: usize = programs
        .values()
        .filter(|r| r.desired == crate::store::DesiredRun::Running)
        .map(|r| r.spec.instances as usize)
        .sum();
    (4 * running).clamp(1024, 1 << 16).next_power_of_two()
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

/// `/api`, `api/` and `/api/` all mean `/api`; an empty base means the root.
fn normalize_base(base: &str) -> String {
    let trimmed = base.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// This daemon's membership of a fleet.
#[cfg(feature = "etcd")]
struct Joined(Arc<crate::fleet::etcd::EtcdFleet>);
/// Without the `etcd` feature there is no fleet to join.
#[cfg(not(feature = "etcd"))]
enum Joined {}

impl Joined {
    fn status(&self) -> Arc<dyn crate::fleet::FleetStatus> {
        #[cfg(feature = "etcd")]
        return self.0.clone();
        #[cfg(not(feature = "etcd"))]
        match *self {}
    }

    /// Publishes this node's instances under its node key whenever one changes.
    fn publish_observed(&self, state: &Arc<AppState>) {
        #[cfg(feature = "etcd")]
        {
            let weak = Arc::downgrade(state);
            self.0.set_observe(Box::new(move || match weak.upgrade() {
                Some(d) => crate::api::fleet::observed(&d),
                None => serde_json::Value::Null,
            }));
            let fleet = self.0.clone();
            let mut events = state.events.subscribe();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            fleet.observed_changed()
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        #[cfg(not(feature = "etcd"))]
        {
            let _ = state;
            match *self {}
        }
    }
}

/// Joins the fleet when `[store] backend = "etcd"`; `None` for the sled store.
async fn join_fleet(
    settings: &Settings,
    listen: &str,
    desired: &Arc<DesiredState>,
    rescan: &Arc<Notify>,
) -> Result<Option<Joined>, DaemonError> {
    use crate::config::StoreBackend;
    if settings.store.backend == StoreBackend::Sled {
        return Ok(None);
    }
    #[cfg(feature = "etcd")]
    {
        let fleet = crate::fleet::etcd::EtcdFleet::join(
            &settings.store,
            &settings.node,
            listen.to_string(),
            desired,
            rescan.clone(),
        )
        .await
        .map_err(|e| DaemonError::Fleet(e.to_string()))?;
        desired.use_shared(fleet.clone());
        Ok(Some(Joined(fleet)))
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (listen, desired, rescan);
        Err(DaemonError::Fleet(
            "[store] backend = \"etcd\" needs provisr built with the `etcd` feature (cargo build --release --features etcd); this build has only the sled store".into(),
        ))
    }
}
