//! The HTTP API (`docs/api.md`): an axum router over [`AppState`], testable without a socket.
//!
//! Handlers only validate input, write desired state and read observed state; the reconcile
//! loop does the rest. Every error is an [`ApiError`]: a status code and one sentence.

pub mod error;
pub mod fleet;
mod handlers;
pub mod peer;
pub mod security;
pub mod status;
mod stream;
pub mod tls;
pub mod ui;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{middleware, Router};

use tokio::sync::broadcast;

use crate::desired::DesiredState;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::reload::Reloader;
use crate::supervisor::Event;

pub use error::ApiError;
pub use security::Guard;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 1 << 20;

/// Where `/metrics` is served (`[metrics]`, `docs/configuration.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsOn {
    /// Not served.
    Off,
    /// At `/metrics` on the API server.
    Api,
    /// On a listener of its own ([`metrics_router`]).
    OwnListener,
}

/// What the handlers work on: handles to the parts of the daemon, never the daemon itself.
pub struct AppState {
    pub desired: Arc<DesiredState>,
    pub reconciler: Reconciler,
    pub reloader: Arc<Reloader>,
    pub events: broadcast::Sender<Event>,
    pub metrics: Arc<Metrics>,
    /// Set to `true` when the daemon begins to stop: the endless streams (`/events`,
    /// `/logs?follow`) end then, so the listeners' graceful shutdown does not wait on them.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// The fleet this daemon is a node of (`docs/fleet.md`); `None` with the sled store.
    pub fleet: Option<Arc<dyn crate::fleet::FleetStatus>>,
}

/// The whole API under `base` (e.g. `/api`) and the dashboard at `/ui`, behind the security
/// guard and the body limit.
pub fn router(state: Arc<AppState>, guard: Guard, base: &str, metrics: MetricsOn) -> Router {
    let api = Router::new()
        .route("/health", get(handlers::health))
        .route("/status", get(handlers::status))
        .route("/start", post(handlers::start))
        .route("/stop", post(handlers::stop))
        .route("/restart", post(handlers::restart))
        .route("/register", post(handlers::register))
        .route("/update", post(handlers::update))
        .route("/unregister", post(handlers::unregister))
        .route("/programs", get(handlers::programs))
        .route("/plan", post(handlers::plan))
        .route("/nodes", get(fleet::nodes))
        .route("/apply", post(fleet::apply))
        .route("/reload", post(handlers::reload))
        .route("/debug/reconcile", post(handlers::debug_reconcile))
        .route("/groups", get(handlers::groups))
        .route("/group/status", get(handlers::group_status))
        .route("/group/start", post(handlers::group_start))
        .route("/group/stop", post(handlers::group_stop))
        .route("/logs", get(handlers::logs))
        .route("/events", get(handlers::events))
        .route("/stats", get(handlers::stats))
        .route("/cronjobs", get(handlers::cronjobs))
        .route("/cronjobs/{name}/trigger", post(handlers::cronjob_trigger))
        .route("/cronjobs/{name}/suspend", post(handlers::cronjob_suspend))
        .route("/cronjobs/{name}/resume", post(handlers::cronjob_resume))
        .route("/cronjobs/{name}/history", get(handlers::cronjob_history))
        .fallback(handlers::not_found)
        .with_state(state.clone());
    let mut app = if base.is_empty() {
        api
    } else {
        Router::new().nest(base, api).fallback(handlers::not_found)
    };
    if metrics == MetricsOn::Api {
        app = app.merge(metrics_router(state));
    }
    // The dashboard sits outside the base path: its assets are no part of the API.
    app = app.merge(ui::router(base));
    // Handlers read bodies themselves with the limit (`handlers::json_body`), so that an
    // oversized body gets its 413 as JSON even while the client is still sending.
    app.layer(middleware::from_fn_with_state(
        Arc::new(guard),
        security::guard,
    ))
}

/// `GET /metrics` alone, for the API server or a listener of its own.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .with_state(state)
}
