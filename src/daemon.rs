//! The composition root: `provisr serve`.
//!
//! Opens the store, loads the config into it, starts the reconcile loop and the API server, and
//! owns the shutdown order: stop accepting requests, stop every child in reverse priority, flush
//! the store, exit. Only failing to load the main config, open the store or bind the listener
//! stops the daemon; everything else is logged and reported in status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, Notify};

use crate::api::security::{check_listen, parse_listen, Guard, ListenError};
use crate::api::MetricsOn;
use crate::config::{self, ConfigError, GroupSpec, LoadedConfig, Settings};
use crate::desired::{self, DesiredState};
use crate::metrics::Metrics;
use crate::reconcile::{self, Reconciler};
use crate::store::{DesiredStore, StoreError};
use crate::supervisor::Event;

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
    /// How many programs' desired state changed.
    pub changed: usize,
    pub errors: Vec<String>,
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

    /// Re-reads the config and programs directory and writes what changed into the store.
    /// A broken file keeps its program's last good spec; its error is kept for status.
    pub async fn reload(&self, dry_run: bool) -> ReloadReport {
        let _one_at_a_time = self.reload_lock.lock().await;
        let loaded = match config::load(self.config_file.as_deref(), &self.base_env) {
            Ok(l) => l,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("config: {e}");
                }
                self.metrics.observe_reload(false, errors.len());
                return ReloadReport {
                    dry_run,
                    changed: 0,
                    errors: errors.iter().map(ToString::to_string).collect(),
                    steps: Vec::new(),
                };
            }
        };
        for e in &loaded.errors {
            tracing::error!("config: {e}");
        }
        let current = self.desired.snapshot();
        let writes =
            desired::sync_writes(&current, &loaded.programs, &loaded.files, &loaded.errors);
        let preview = desired::simulate(&current, &writes);
        let steps =
            crate::api::plan_against_live(&preview, &current, &self.reconciler.live()).steps;
        let errors = loaded.errors.iter().map(ToString::to_string).collect();
        if dry_run {
            return ReloadReport {
                dry_run,
                changed: 0,
                errors,
                steps,
            };
        }
        let changed = match self.desired.apply(writes).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reload: {e}");
                return ReloadReport {
                    dry_run,
                    changed: 0,
                    errors: vec![e.to_string()],
                    steps,
                };
            }
        };
        self.metrics
            .observe_reload(loaded.errors.is_empty(), loaded.errors.len());
        self.set_loaded(loaded);
        if changed > 0 {
            tracing::info!(changed, "reloaded the configuration");
        }
        ReloadReport {
            dry_run,
            changed,
            errors,
            steps,
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

/// Runs the daemon until SIGTERM/SIGINT (or `shutdown` resolves), then stops every child in
/// reverse priority order and returns. `bound` receives the listening address.
pub async fn run(
    opts: ServeOptions,
    bound: Option<Bound>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let base_env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded = config::load(opts.config.as_deref(), &base_env).map_err(DaemonError::Config)?;
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
    let writes = desired::sync_writes(
        &desired.snapshot(),
        &loaded.programs,
        &loaded.files,
        &loaded.errors,
    );
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
        desired: desired.clone(),
        metrics: metrics.clone(),
        reconciler: reconciler.clone(),
        events,
        config_file: opts.config.clone(),
        base_env,
        loaded: RwLock::new(Arc::default()),
        reload_lock: tokio::sync::Mutex::new(()),
    });
    daemon.set_loaded(loaded);

    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { addr, source })?;
    tracing::info!("provisr API listening on http://{local}{base_path}");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    let metrics_settings = daemon.loaded().settings.as_ref().map(|s| s.metrics.clone());
    let metrics_on = match &metrics_settings {
        Some(m) if m.enabled && m.listen.is_some() => MetricsOn::OwnListener,
        Some(m) if m.enabled => MetricsOn::Api,
        _ => MetricsOn::Off,
    };
    if let Some(listen) = metrics_settings
        .and_then(|m| m.listen)
        .filter(|_| metrics_on == MetricsOn::OwnListener)
    {
        let maddr = parse_listen(&listen)?;
        check_listen(maddr, guard.token.is_some())?;
        let mlistener = TcpListener::bind(maddr)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: maddr,
                source,
            })?;
        let mapp =
            crate::api::metrics_router(daemon.clone()).layer(axum::middleware::from_fn_with_state(
                Arc::new(guard.clone()),
                crate::api::security::guard,
            ));
        tracing::info!("metrics on http://{maddr}/metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(mlistener, mapp).await {
                tracing::error!("metrics server: {e}");
            }
        });
    }
    let app = crate::api::router(daemon.clone(), guard, &base_path, metrics_on);

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let graceful = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
        {
            tracing::error!("API server: {e}");
        }
    });

    let reloader = daemon.clone();
    let hup_task = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: rescanning the programs directory");
            reloader.reload(false).await;
        }
    });

    tokio::pin!(shutdown);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        () = &mut shutdown => tracing::info!("shutdown requested: stopping"),
    }
    hup_task.abort();
    let _ = stop_tx.send(());
    // A second signal skips waiting for the children's stop timeouts.
    tokio::select! {
        () = reconciler.shutdown() => {}
        _ = term.recv() => force_kill(&reconciler),
        _ = int.recv() => force_kill(&reconciler),
    }
    let _ = server.await;
    desired.store().flush()?;
    tracing::info!("provisr stopped");
    Ok(())
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

/// SIGKILL to every instance's process group: the second signal's "stop now".
fn force_kill(reconciler: &Reconciler) {
    tracing::warn!("second signal: killing every child now");
    for live in reconciler.live().values() {
        if let Some(pid) = live.status.borrow().pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
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
