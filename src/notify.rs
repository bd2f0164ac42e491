//! systemd's notify protocol (`docs/systemd.md`): readiness, status, reload, stop and watchdog
//! messages to the socket named by `NOTIFY_SOCKET`, when the daemon runs as a `Type=notify`
//! service. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! The status line is rewritten when instances change state, at most once a second, and the
//! watchdog is fed only while the reconcile loop answers: an idle daemon outside systemd (or with
//! no watchdog) arms no timer here.

use std::collections::BTreeMap;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::broadcast;

use crate::reconcile::Reconciler;
use crate::supervisor::Event;

/// How long the status line waits for more transitions before it is rewritten.
const STATUS_COALESCE: Duration = Duration::from_secs(1);

/// The daemon's messages to systemd.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier for the service manager named by this process's `NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }

    /// Every listener is bound and the first reconcile pass ran.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The first [`Notifier::ready`], which also says where the API listens
    /// (`PROVISR_API_URL=`, a field systemd ignores): whoever started the daemon on port 0 —
    /// a test, a wrapper — learns the port without reading the log.
    pub fn ready_at(&self, api_url: &str, status: &str) {
        let url = format!("PROVISR_API_URL={api_url}");
        self.send(&[
            NotifyState::Ready,
            NotifyState::Status(status),
            NotifyState::Custom(&url),
        ]);
    }

    /// A reload (SIGHUP) began; [`Notifier::ready`] says it ended.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// The daemon is stopping its children and will exit.
    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping every program"),
        ]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The status line: instances by state, e.g. `5 instances: 4 running, 1 backoff`.
pub fn status_line(reconciler: &Reconciler) -> String {
    let live = reconciler.live();
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for l in live.values() {
        *by_state
            .entry(l.status.borrow().state.to_string())
            .or_default() += 1;
    }
    let counts: Vec<String> = by_state
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    match live.len() {
        0 => "no programs".to_string(),
        n => format!("{n} instances: {}", counts.join(", ")),
    }
}

/// Rewrites the status line after transitions, at most once per [`STATUS_COALESCE`]; ends with
/// the event channel.
pub async fn status_worker(
    notifier: Notifier,
    reconciler: Reconciler,
    mut events: broadcast::Receiver<Event>,
) {
    if !notifier.enabled {
        return;
    }
    loop {
        match events.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        tokio::time::sleep(STATUS_COALESCE).await;
        // What arrived while waiting is covered by the line about to be written.
        events = events.resubscribe();
        notifier.status(&status_line(&reconciler));
    }
}

/// Feeds systemd's watchdog (`WATCHDOG_USEC`) at half its interval, each time only once the
/// reconcile loop has answered a pass: a hung loop stops the pings and systemd restarts the
/// service. Returns at once when no watchdog is asked for.
pub async fn watchdog_worker(notifier: Notifier, reconciler: Reconciler) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|_| notifier.enabled) else {
        return;
    };
    let every = interval / 2;
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(every, reconciler.pass_now()).await {
            Ok(Some(_)) => notifier.watchdog(),
            Ok(None) => return,
            Err(_) => tracing::error!(
                "the reconcile loop did not answer within {every:?}; not feeding systemd's watchdog"
            ),
        }
    }
}
