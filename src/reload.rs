//! Reloading the configuration into desired state (`docs/hot-reload.md`).
//!
//! One path for every reason to look again — a watcher poke, SIGHUP, the slow periodic resync
//! and `POST /reload`: load the main config and the programs directory, validate, write only what
//! changed (a broken file keeps its program's last good spec), move the watches if the directories
//! moved, and tell whoever registered for it about the new settings (the API's access rules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{self, ConfigError, GroupSpec, LoadedConfig, Settings};
use crate::desired::{self, Backend, DesiredState};
use crate::metrics::Metrics;
use crate::plan::{Action, Step};
use crate::reconcile::Reconciler;
use crate::store::StoreWrite;
use crate::watch::{self, Debounce, WatchHandle, WatchTargets};

/// How often the configuration is rescanned with nothing else asking: the backstop for changes
/// no file event reports (network file systems, symlink targets, lost events).
pub const CONFIG_RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// What the last successful load of the config said besides programs.
#[derive(Debug, Default)]
pub struct ActiveConfig {
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
    pub steps: Vec<Step>,
}

/// Called with the settings of every successful load.
pub type SettingsHook = Box<dyn Fn(&Settings) + Send + Sync>;

/// Where the configuration comes from: the main config file (`None` for the embedded default)
/// and the environment `${VAR}` is expanded against.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub base_env: BTreeMap<String, String>,
}

/// The loaded configuration and the one way to load it again.
pub struct Reloader {
    source: ConfigSource,
    desired: Arc<DesiredState>,
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
    // A std lock: replaced whole on reload, read by cloning; never held across an `.await`.
    loaded: RwLock<Arc<ActiveConfig>>,
    // Serializes reloads (watcher, SIGHUP and API may ask at once).
    reload_lock: tokio::sync::Mutex<()>,
    // The programs-directory watcher, moved to new targets after a reload changes them; taken
    // out and stopped at shutdown. A std lock: only held to call the synchronous `set_targets`.
    watcher: Mutex<Option<WatchHandle>>,
    on_settings: Vec<SettingsHook>,
}

impl Reloader {
    /// A reloader for the config that produced `loaded` (already written into `desired`).
    pub fn new(
        source: ConfigSource,
        desired: Arc<DesiredState>,
        reconciler: Reconciler,
        metrics: Arc<Metrics>,
        watcher: Option<WatchHandle>,
        loaded: LoadedConfig,
        on_settings: Vec<SettingsHook>,
    ) -> Reloader {
        let r = Reloader {
            source,
            desired,
            reconciler,
            metrics,
            loaded: RwLock::new(Arc::default()),
            reload_lock: tokio::sync::Mutex::new(()),
            watcher: Mutex::new(watcher),
            on_settings,
        };
        r.set_loaded(loaded);
        r
    }

    /// The groups of the loaded config.
    pub fn groups(&self) -> Vec<GroupSpec> {
        self.loaded().groups.clone()
    }

    pub fn loaded(&self) -> Arc<ActiveConfig> {
        match self.loaded.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The daemon's environment, which `${VAR}` in program files is expanded against.
    pub fn base_env(&self) -> &BTreeMap<String, String> {
        &self.source.base_env
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
        // Reading and validating thousands of files takes tens of milliseconds: off the runtime's
        // workers, so actors and the API go on meanwhile.
        let source = self.source.clone();
        let loading = tokio::task::spawn_blocking(move || {
            config::load(source.file.as_deref(), &source.base_env)
        });
        let loaded = match loading
            .await
            .unwrap_or_else(|e| Err(vec![load_panicked(e)]))
        {
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
        let (writes, preview) = match self.desired.backend() {
            Backend::Sled => {
                let current = self.desired.snapshot();
                let writes =
                    desired::sync_writes(&current, &loaded.programs, &loaded.files, &loaded.errors);
                let preview = desired::simulate(&current, &writes);
                (writes, preview)
            }
            // In a fleet this node's files add and change programs of the whole fleet; the
            // preview is of the programs this node runs (`docs/fleet.md`).
            Backend::Shared(_) => {
                let current = self.desired.all_programs();
                let writes = desired::additive(desired::sync_writes(
                    &current,
                    &loaded.programs,
                    &loaded.files,
                    &loaded.errors,
                ));
                let share = self.desired.snapshot();
                let local: Vec<StoreWrite> = (writes.iter())
                    .filter(|w| w.program().is_some_and(|n| share.contains_key(n)))
                    .cloned()
                    .collect();
                (writes, desired::simulate(&share, &local))
            }
        };
        // The loop's own plan for the preview: what it shows is what the next passes do.
        let steps = match self.reconciler.preview(preview).await {
            Some(plan) => plan.steps,
            None => Vec::new(),
        };
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
        // A file parsed again to the same spec writes nothing; its new copy replaces the old.
        self.desired.share_specs(&loaded.programs).await;
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
        // A reload of thousands of programs allocates tens of MiB it frees at once.
        crate::memory::release_freed();
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

    /// Takes the watcher out, for shutdown: no reload may start children while they stop.
    pub fn take_watcher(&self) -> Option<WatchHandle> {
        match self.watcher.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }
    }

    fn set_loaded(&self, loaded: LoadedConfig) {
        for hook in &self.on_settings {
            hook(&loaded.settings);
        }
        let next = Arc::new(ActiveConfig {
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

/// Starts the programs-directory watcher; each burst of changes pokes `rescan`. Without a watcher
/// (inotify unavailable, a directory that cannot be watched) the daemon still reloads on SIGHUP,
/// `POST /reload` and the periodic resync, and says so.
pub fn start_watcher(settings: &Settings, rescan: Arc<Notify>) -> Option<WatchHandle> {
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

/// Why [`reload_worker`] reloaded: systemd wants to hear about SIGHUP reloads only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Watcher,
    Hangup,
    Resync,
}

/// The one task that reloads on a watcher poke, on SIGHUP and every
/// [`CONFIG_RESYNC_INTERVAL`] without either, until `stop`. `around` is told before
/// (`false`) and after (`true`) each reload, with its trigger.
pub async fn reload_worker(
    reloader: Arc<Reloader>,
    rescan: Arc<Notify>,
    mut hup: tokio::signal::unix::Signal,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    around: impl Fn(Trigger, bool) + Send,
) {
    let start = tokio::time::Instant::now() + CONFIG_RESYNC_INTERVAL;
    let mut resync = tokio::time::interval_at(start, CONFIG_RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            biased;
            _ = &mut stop => return,
            () = rescan.notified() => {
                tracing::debug!("the configuration changed on disk; rescanning");
                Trigger::Watcher
            }
            Some(()) = hup.recv() => {
                tracing::info!("SIGHUP: rescanning the programs directory");
                Trigger::Hangup
            }
            _ = resync.tick() => {
                tracing::debug!("periodic configuration resync");
                Trigger::Resync
            }
        };
        around(trigger, false);
        reloader.reload(false).await;
        around(trigger, true);
        // The periodic rescan counts from the last rescan, whatever caused it.
        resync.reset();
    }
}

/// A load whose thread panicked, as the error the reload reports.
fn load_panicked(e: tokio::task::JoinError) -> config::ConfigError {
    config::ConfigError::new("<reload>", format!("reading the configuration failed: {e}"))
        .with_hint("this is a bug in provisr: the daemon log has the panic")
}
