//! The fleet endpoints (`docs/api.md`, `docs/fleet.md`): `GET /nodes` — every node with its
//! labels, whether it is alive, the programs assigned to it and its observed instances — and
//! `POST /apply`, which makes a programs directory the file-defined programs of the daemon's
//! store (the fleet's, on a fleet node) with the same per-field plan as `diff`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::handlers::{json_body, query, write_error};
use super::status::check_selector_name;
use super::AppState;
use crate::config::{self, ProgramSpec, Source};
use crate::desired;

type Shared = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// `GET /nodes`.
pub async fn nodes(State(d): Shared) -> ApiResult {
    let Some(fleet) = &d.fleet else {
        // One host: this daemon is the only node.
        let settings = d.reloader.loaded().settings.clone();
        let node = settings.map(|s| s.node).unwrap_or_default();
        let programs: Vec<String> = d.desired.snapshot().keys().cloned().collect();
        let me = json!({
            "name": node.name,
            "alive": true,
            "labels": node.labels,
            "programs": programs,
            "instances": observed(&d),
        });
        return Ok(Json(
            json!({ "fleet": false, "me": node.name, "connected": true, "nodes": [me] }),
        )
        .into_response());
    };
    let view = fleet.view();
    let mut names: std::collections::BTreeSet<String> = view.nodes.keys().cloned().collect();
    for slots in view.assignments.values() {
        names.extend(slots.values().map(|a| a.node.clone()));
    }
    let list: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let info = view.nodes.get(&name);
            let programs: Vec<&String> = view
                .assignments
                .iter()
                .filter(|(_, slots)| slots.values().any(|a| a.node == name))
                .map(|(p, _)| p)
                .collect();
            json!({
                "name": name,
                "alive": info.is_some(),
                "labels": info.map(|i| json!(i.labels)).unwrap_or(json!({})),
                "api": info.map(|i| i.api.clone()),
                "since": info.map(|i| i.since.clone()),
                "programs": programs,
                "instances": view.observed.get(&name).cloned().unwrap_or(json!([])),
            })
        })
        .collect();
    Ok(Json(json!({
        "fleet": true,
        "me": fleet.me(),
        "connected": fleet.connected(),
        "nodes": list,
    }))
    .into_response())
}

/// This node's instances as the fleet shows them: name, program, state, pid, restarts.
pub fn observed(d: &AppState) -> Value {
    let live = d.reconciler.live();
    let list: Vec<Value> = live
        .values()
        .map(|l| {
            let s = l.status.borrow();
            json!({
                "name": s.name,
                "program": s.program,
                "state": s.state,
                "pid": s.pid,
                "restarts": s.restarts,
            })
        })
        .collect();
    Value::Array(list)
}

#[derive(Debug, Default, Deserialize)]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// One program of an `apply` body: its spec and the file it was read from.
#[derive(Debug, Deserialize)]
pub struct ApplyProgram {
    spec: ProgramSpec,
    path: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
pub struct ApplyRequest {
    programs: Vec<ApplyProgram>,
}

/// `POST /apply[?dry_run=true]`: the given programs become the file-defined programs — put when
/// new or changed, file-defined ones not among them deleted, API-registered ones left alone —
/// as a reload of a programs directory does. Answers the plan (the fleet's, on a fleet node)
/// and, unless a dry run, how many programs changed.
pub async fn apply(
    State(d): Shared,
    q: Result<Query<ApplyQuery>, QueryRejection>,
    body: Body,
) -> ApiResult {
    let q = query(q)?;
    let body = json_body(body).await?.ok_or_else(|| {
        ApiError::bad_request("send {\"programs\": [{\"spec\": …, \"path\": …}]} as the JSON body")
    })?;
    let req: ApplyRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the apply request is invalid: {e}")))?;
    for p in &req.programs {
        check_selector_name(&p.spec.name)?;
        if !p.path.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "the path of {:?} must be absolute, got {}",
                p.spec.name,
                p.path.display()
            )));
        }
    }
    let programs: Vec<config::Program> = req
        .programs
        .into_iter()
        .map(|p| config::Program {
            spec: Arc::new(p.spec),
            source: Source::File(p.path),
        })
        .collect();
    let current = d.desired.all_programs();
    let writes = desired::sync_writes(&current, &programs, &[], &[]);
    let next = desired::simulate(&current, &writes);
    let (against, steps) = match &d.fleet {
        Some(f) => (
            "fleet",
            crate::fleet::plan(&f.view(), &current, &next).steps,
        ),
        None => {
            let plan = d
                .reconciler
                .preview(next)
                .await
                .ok_or_else(|| ApiError::internal("the reconcile loop has stopped"))?;
            ("daemon", plan.steps)
        }
    };
    if q.dry_run {
        return Ok(
            Json(json!({ "against": against, "dry_run": true, "steps": steps })).into_response(),
        );
    }
    let changed = d
        .desired
        .apply(writes)
        .await
        .map_err(|e| write_error(e, "cannot apply the programs"))?;
    Ok(
        Json(json!({ "against": against, "dry_run": false, "changed": changed, "steps": steps }))
            .into_response(),
    )
}
