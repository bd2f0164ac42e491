//! The endpoint handlers: parse and validate, write desired state, wait, answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::security::Granted;
use super::status::{check_selector_name, statuses, LoopView, Picked, Selector};
use super::AppState;
use crate::config::{self, Dur, GroupSpec, ProgramSpec, Source, TokenScope};
use crate::desired;
use crate::logs::Stream;
use crate::reconcile::{LiveTable, Waiting};
use crate::store::{Owner, RunRequest, StoreError, StoreWrite};
use crate::supervisor::{InstanceState, InstanceStatus};

type Shared = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// How long `/start`, `/stop` and `/restart` wait for convergence unless told otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(600);

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::bad_request(format!("the query string is invalid: {}", e.body_text()))
    })
}

/// The most a refused oversized body is read (and thrown away) so the client, still sending,
/// gets the 413 instead of a broken connection; past this the connection is simply closed.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads an optional JSON body of at most [`super::BODY_LIMIT`] bytes; an empty body is `None`.
pub(super) async fn json_body(body: Body) -> Result<Option<Value>, ApiError> {
    let mut data = body.into_data_stream();
    let mut bytes: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = data.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        seen += chunk.len();
        if seen <= super::BODY_LIMIT {
            bytes.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > super::BODY_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {seen} bytes or more, over the limit of {} bytes; send less",
                super::BODY_LIMIT
            ),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON (line {}, column {}: {e}); send a JSON object",
            e.line(),
            e.column()
        ))
    })
}

fn parse_wait(wait: Option<&str>) -> Result<Duration, ApiError> {
    match wait {
        None => Ok(DEFAULT_WAIT),
        Some(w) => w
            .parse::<Dur>()
            .map(|d| d.get().min(MAX_WAIT))
            .map_err(|e| ApiError::bad_request(format!("wait: {e}"))),
    }
}

pub async fn health() -> Json<Value> {
    Json(json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see docs/api.md for the list")
}

pub async fn status(State(d): Shared, q: Result<Query<Selector>, QueryRejection>) -> ApiResult {
    let sel = query(q)?;
    let programs = d.desired.snapshot();
    let picked = sel.pick(&programs, &d.reloader.groups())?;
    let list = statuses(
        &programs,
        &d.reconciler.live(),
        &LoopView::of(&d.reconciler),
        &picked,
    );
    Ok(one_or_many(&sel, list))
}

/// `name` naming one instance (or a single-instance program) answers one object.
fn one_or_many(sel: &Selector, list: Vec<super::status::StatusObject>) -> Response {
    let single_name = sel
        .name
        .as_deref()
        .is_some_and(|n| !n.contains(',') && !n.contains('*'))
        && sel.base.is_none()
        && sel.wildcard.is_none()
        && sel.group.is_none();
    if single_name && list.len() == 1 {
        Json(&list[0]).into_response()
    } else {
        large_json(&list)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ActionQuery {
    #[serde(flatten)]
    sel: Selector,
    wait: Option<String>,
}

pub async fn start(
    State(d): Shared,
    granted: Option<Extension<Granted>>,
    q: Result<Query<ActionQuery>, QueryRejection>,
    body: Body,
) -> ApiResult {
    let mut q = query(q)?;
    let wait = parse_wait(q.wait.as_deref())?;
    let mut pre = Vec::new();
    if let Some(body) = json_body(body).await? {
        // Starting is `operate`; registering the program the body describes is `admin`.
        match granted {
            Some(Extension(g)) => g.require(TokenScope::Admin, "registering a program")?,
            None => {
                return Err(ApiError::internal(
                    "the request was not checked by the guard",
                ))
            }
        }
        let spec = spec_from_body(&d, &body)?;
        ensure_api_owned(&d, &spec.name, true)?;
        q.sel = Selector {
            name: Some(spec.name.clone()),
            ..Selector::default()
        };
        pre.push(StoreWrite::Expect {
            name: spec.name.clone(),
            owner: Owner::NobodyOrApi,
        });
        pre.push(StoreWrite::PutProgram {
            spec: Arc::new(spec),
            source: Source::Api,
        });
    }
    if q.sel.is_empty() {
        return Err(ApiError::bad_request(
            "say what to start: name, base, wildcard or group (or a JSON spec body to register and start)",
        ));
    }
    act(&d, &q.sel, RunRequest::Start, pre, wait).await
}

pub async fn stop(State(d): Shared, q: Result<Query<ActionQuery>, QueryRejection>) -> ApiResult {
    let q = query(q)?;
    let wait = parse_wait(q.wait.as_deref())?;
    if q.sel.is_empty() {
        return Err(ApiError::bad_request(
            "say what to stop: name, base, wildcard or group",
        ));
    }
    act(&d, &q.sel, RunRequest::Stop, Vec::new(), wait).await
}

pub async fn restart(State(d): Shared, q: Result<Query<ActionQuery>, QueryRejection>) -> ApiResult {
    let q = query(q)?;
    let wait = parse_wait(q.wait.as_deref())?;
    if q.sel.is_empty() {
        return Err(ApiError::bad_request(
            "say what to restart: name, base, wildcard or group",
        ));
    }
    act(&d, &q.sel, RunRequest::Restart, Vec::new(), wait).await
}

/// Writes a start, stop or restart request for the selected instances, waits for them to
/// settle (or `wait` to pass) and answers their statuses.
async fn act(
    d: &AppState,
    sel: &Selector,
    request: RunRequest,
    pre: Vec<StoreWrite>,
    wait: Duration,
) -> ApiResult {
    // On a fleet node the selection is of the fleet's programs: a request for one that runs on
    // other nodes goes to the fleet's store like any write, and they carry it out.
    let programs = desired::simulate(&d.desired.all_programs(), &pre);
    let picked = sel.pick(&programs, &d.reloader.groups())?;
    let mut writes = pre;
    let mut whole_programs: Vec<&str> = picked
        .iter()
        .filter(|p| !p.by_instance)
        .map(|p| p.id.program.as_str())
        .collect();
    whole_programs.dedup();
    for program in whole_programs {
        writes.push(StoreWrite::Request {
            name: program.to_string(),
            instance: None,
            request,
        });
    }
    for p in picked.iter().filter(|p| p.by_instance) {
        writes.push(StoreWrite::Request {
            name: p.id.program.clone(),
            instance: Some(p.id.name.clone()),
            request,
        });
    }
    let before = d.reconciler.live();
    let needs_change: BTreeMap<String, bool> = picked
        .iter()
        .map(|p| {
            let state = before.get(&p.id.name).map(|l| l.status.borrow().state);
            let settled = match request {
                RunRequest::Start => state == Some(InstanceState::Running),
                RunRequest::Stop => matches!(
                    state,
                    None | Some(
                        InstanceState::Stopped | InstanceState::Exited | InstanceState::Failed
                    )
                ),
                RunRequest::Restart => false,
            };
            (p.id.name.clone(), !settled)
        })
        .collect();
    let t0 = SystemTime::now();
    d.desired
        .apply(writes)
        .await
        .map_err(|e| write_error(e, "cannot record the request"))?;
    // This node waits only for the instances it runs (on one host: all of them).
    let here = |picked: &[Picked]| -> Vec<Picked> {
        let local = d.desired.snapshot();
        (picked.iter())
            .filter(|p| d.fleet.is_none() || local.contains_key(&p.id.program))
            .cloned()
            .collect()
    };
    wait_settled(d, &here(&picked), &needs_change, request, t0, wait).await;
    let local = here(&picked);
    let mut list = statuses(
        &d.desired.snapshot(),
        &d.reconciler.live(),
        &LoopView::of(&d.reconciler),
        &local,
    );
    if let Some(fleet) = &d.fleet {
        let elsewhere: Vec<Picked> = picked.into_iter().filter(|p| !local.contains(p)).collect();
        list.extend(elsewhere_statuses(d, fleet.as_ref(), &elsewhere));
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(Json(list).into_response())
}

/// The statuses of instances other nodes run, as those nodes last published them, each saying
/// where it runs.
fn elsewhere_statuses(
    d: &AppState,
    fleet: &dyn crate::fleet::FleetStatus,
    picked: &[Picked],
) -> Vec<super::status::StatusObject> {
    let view = fleet.view();
    let programs = d.desired.all_programs();
    let none = LoopView::default();
    picked
        .iter()
        .filter_map(|p| {
            let record = programs.get(&p.id.program)?;
            let mut s = super::status::status_of(record, &p.id, None, &none);
            let nodes: Vec<String> = view
                .placement_of(&p.id.program)
                .into_iter()
                .map(|(_, n)| n)
                .collect();
            let seen = nodes.iter().find_map(|n| {
                let list = view.observed.get(n)?.as_array()?;
                list.iter().find(|i| i["name"] == p.id.name.as_str())
            });
            if let Some(o) = seen {
                if let Ok(state) = serde_json::from_value::<InstanceState>(o["state"].clone()) {
                    s.state = state;
                    s.running = state == InstanceState::Running;
                }
                s.pid = o["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                s.restarts = o["restarts"].as_u64().unwrap_or(0);
            }
            s.message = Some(match nodes.is_empty() {
                true => "no node runs it yet: none that matches its placement is alive".into(),
                false => format!(
                    "runs on node {} (as that node last published it)",
                    nodes.join(", ")
                ),
            });
            Some(s)
        })
        .collect()
}

/// Waits until every picked instance has reached the state the request asked for, after a
/// change that happened since `t0` where one was needed, or until `wait` passes. An instance
/// counts once it got there; the answer shows each one's status as it is when all have.
async fn wait_settled(
    d: &AppState,
    picked: &[Picked],
    needs_change: &BTreeMap<String, bool>,
    request: RunRequest,
    t0: SystemTime,
    wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + wait;
    // The instances' own statuses say when they have settled; a pass can change the set of
    // instances (and which starts wait for dependencies).
    let mut passes = d.reconciler.passes();
    let mut statuses = d.reconciler.statuses();
    // Each wake looks only at the instances not yet seen settled, through status receivers
    // looked up once per instance table: a stop of many wakes once per exit, and must look
    // neither at every instance nor up every name each time.
    let mut pending: Vec<Pending> = picked
        .iter()
        .map(|p| Pending {
            name: &p.id.name,
            needs_change: needs_change.get(&p.id.name).copied().unwrap_or(true),
            status: None,
            waiting: false,
        })
        .collect();
    let mut resolved: Option<(LiveTable, Waiting)> = None;
    loop {
        let live = d.reconciler.live();
        // A start waiting for its dependencies has settled for now: it says so in its status.
        let waiting = d.reconciler.waiting();
        let current = resolved
            .as_ref()
            .is_some_and(|(l, w)| Arc::ptr_eq(l, &live) && Arc::ptr_eq(w, &waiting));
        if !current {
            for p in &mut pending {
                p.status = live.get(p.name).map(|l| l.status.clone());
                p.waiting = request != RunRequest::Stop && waiting.contains_key(p.name);
            }
            resolved = Some((live, waiting));
        }
        pending.retain(|p| {
            if p.waiting {
                return false;
            }
            let Some(status) = &p.status else {
                return request != RunRequest::Stop;
            };
            let s = status.borrow();
            let changed_since = !p.needs_change
                || s.started_at.is_some_and(|t| t >= t0)
                || s.stopped_at.is_some_and(|t| t >= t0);
            let reached = match request {
                RunRequest::Stop => matches!(
                    s.state,
                    InstanceState::Stopped | InstanceState::Exited | InstanceState::Failed
                ),
                _ => matches!(
                    s.state,
                    InstanceState::Running | InstanceState::Exited | InstanceState::Failed
                ),
            };
            !(reached && changed_since)
        });
        if pending.is_empty() {
            return;
        }
        tokio::select! {
            r = passes.changed() => if r.is_err() { return },
            r = statuses.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// An instance [`wait_settled`] still waits for, with what it looked up for it in the instance
/// table and the dependency waits it last saw.
struct Pending<'a> {
    name: &'a str,
    /// Whether it only counts after a change since the request.
    needs_change: bool,
    /// Its status, while it is in the table.
    status: Option<tokio::sync::watch::Receiver<InstanceStatus>>,
    /// A start of it waits for its dependencies.
    waiting: bool,
}

fn spec_from_body(d: &AppState, body: &Value) -> Result<ProgramSpec, ApiError> {
    let loaded = d.reloader.loaded();
    let settings = loaded
        .settings
        .as_ref()
        .ok_or_else(|| ApiError::internal("the daemon has no loaded settings"))?;
    let spec =
        config::program_from_json(body, settings, d.reloader.base_env()).map_err(|errors| {
            ApiError::bad_request(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
    // Its dependencies must name programs that exist, on no later level, in no cycle.
    let programs = d.desired.snapshot();
    let others: Vec<&ProgramSpec> = programs.values().map(|r| &*r.spec).collect();
    let errors = config::request_dependency_errors(&spec, &others);
    if !errors.is_empty() {
        return Err(ApiError::bad_request(errors.join("; ")));
    }
    Ok(spec)
}

/// A refused write as the API answers it: an ownership the store found different from what
/// the request expected is a conflict (409) or an unknown name (404), as the early checks say
/// it; anything else is the daemon's failure (500).
pub(super) fn write_error(e: StoreError, doing: &str) -> ApiError {
    match e {
        StoreError::ProgramExists { name, owner } if owner == Source::Api.to_string() => {
            ApiError::conflict(format!(
                "{name:?} is already registered; use /update to change it"
            ))
        }
        StoreError::ProgramExists { name, owner } | StoreError::NotApiOwned { name, owner } => {
            ApiError::conflict(format!(
                "{name:?} is defined by {owner}; edit that instead of changing it through the API"
            ))
        }
        StoreError::ProgramNotFound { name } => {
            ApiError::not_found(format!("no program is named {name:?}; register it first"))
        }
        // Degraded fleet node (docs/fleet.md): a retry once etcd is back succeeds.
        e @ StoreError::Unavailable { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{doing}: {e}"))
        }
        e => ApiError::internal(format!("{doing}: {e}")),
    }
}

/// Only API-registered programs may be changed through the API: files own theirs. Checked here
/// for a quick answer, and again by the store in the same batch as the write (`Owner`), so a
/// writer racing this one cannot slip in between.
fn ensure_api_owned(d: &AppState, name: &str, may_be_new: bool) -> Result<(), ApiError> {
    match d.desired.get(name) {
        Some(r) if r.source != Source::Api => Err(ApiError::conflict(format!(
            "{name:?} is defined by {}; edit that instead of changing it through the API",
            r.source
        ))),
        None if !may_be_new => Err(ApiError::not_found(format!(
            "no program is named {name:?}; register it first"
        ))),
        _ => Ok(()),
    }
}

pub async fn register(State(d): Shared, body: Body) -> ApiResult {
    let body = json_body(body)
        .await?
        .ok_or_else(|| ApiError::bad_request("send the program spec as a JSON body"))?;
    let spec = spec_from_body(&d, &body)?;
    if let Some(r) = d.desired.get(&spec.name) {
        return Err(ApiError::conflict(if r.source == Source::Api {
            format!(
                "{:?} is already registered; use /update to change it",
                spec.name
            )
        } else {
            format!(
                "{:?} is defined by {}; edit that instead",
                spec.name, r.source
            )
        }));
    }
    write_spec(&d, spec, Owner::Nobody, StatusCode::CREATED).await
}

pub async fn update(State(d): Shared, body: Body) -> ApiResult {
    let body = json_body(body)
        .await?
        .ok_or_else(|| ApiError::bad_request("send the program spec as a JSON body"))?;
    let spec = spec_from_body(&d, &body)?;
    ensure_api_owned(&d, &spec.name, false)?;
    write_spec(&d, spec, Owner::Api, StatusCode::OK).await
}

async fn write_spec(d: &AppState, spec: ProgramSpec, owner: Owner, code: StatusCode) -> ApiResult {
    let name = spec.name.clone();
    d.desired
        .apply(vec![
            StoreWrite::Expect {
                name: name.clone(),
                owner,
            },
            StoreWrite::PutProgram {
                spec: Arc::new(spec),
                source: Source::Api,
            },
        ])
        .await
        .map_err(|e| write_error(e, "cannot record the program"))?;
    let record = d
        .desired
        .get(&name)
        .ok_or_else(|| ApiError::internal("the program vanished while it was written"))?;
    Ok((code, Json(ProgramView::of(&record))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct NameQuery {
    name: Option<String>,
}

pub async fn unregister(
    State(d): Shared,
    q: Result<Query<NameQuery>, QueryRejection>,
) -> ApiResult {
    let name = query(q)?
        .name
        .ok_or_else(|| ApiError::bad_request("say which program: ?name=NAME"))?;
    check_selector_name(&name)?;
    ensure_api_owned(&d, &name, false)?;
    d.desired
        .apply(vec![
            StoreWrite::Expect {
                name: name.clone(),
                owner: Owner::Api,
            },
            StoreWrite::DeleteProgram { name: name.clone() },
        ])
        .await
        .map_err(|e| write_error(e, "cannot remove the program"))?;
    Ok(Json(json!({ "unregistered": name })).into_response())
}

/// A program as `GET /programs` shows it, borrowed from the record and serialized straight into
/// the response: a `Value` tree per program cost kilobytes each, tens of MiB at 10 000 programs.
/// Keys in the order the API has always listed them.
#[derive(serde::Serialize)]
struct ProgramView<'a> {
    name: &'a str,
    spec: &'a ProgramSpec,
    source: String,
    desired: &'a crate::store::DesiredRun,
    generation: u64,
    error: &'a Option<Vec<String>>,
}

impl<'a> ProgramView<'a> {
    fn of(r: &'a crate::store::ProgramRecord) -> ProgramView<'a> {
        ProgramView {
            desired: &r.desired,
            error: &r.error,
            generation: r.generation,
            name: &r.spec.name,
            source: r.source.to_string(),
            spec: &r.spec,
        }
    }
}

pub async fn programs(State(d): Shared) -> Response {
    let snapshot = d.desired.snapshot();
    let views: Vec<ProgramView<'_>> = snapshot.values().map(|r| ProgramView::of(r)).collect();
    large_json(&views)
}

/// `value` as a JSON response, like [`Json`]; a body of a megabyte or more (a list of thousands
/// of programs) gives its memory back to the OS once it has been sent.
fn large_json<T: serde::Serialize>(value: &T) -> Response {
    use axum::body::Bytes;
    use axum::http::header::{HeaderValue, CONTENT_TYPE};
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let body = if bytes.len() >= crate::memory::ReleasedOnDrop::LARGE {
                Bytes::from_owner(crate::memory::ReleasedOnDrop::new(bytes))
            } else {
                Bytes::from(bytes)
            };
            let json = HeaderValue::from_static("application/json");
            ([(CONTENT_TYPE, json)], body).into_response()
        }
        // What `Json` answers when a value does not serialize.
        Err(e) => {
            let text = HeaderValue::from_static("text/plain; charset=utf-8");
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            (status, [(CONTENT_TYPE, text)], e.to_string()).into_response()
        }
    }
}

/// `POST /plan`: the plan for a set of validated specs against the current state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    programs: Vec<ProgramSpec>,
    /// Accepted so a whole config can be sent as is; groups do not change what a plan does.
    #[serde(default)]
    #[allow(dead_code)]
    groups: Vec<GroupSpec>,
    /// `start`: every given program desired running, others untouched (`start --dry-run`).
    /// `apply` (default): the given programs replace those from files and the config, as a
    /// reload of that config would (`diff`).
    #[serde(default)]
    mode: PlanMode,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum PlanMode {
    #[default]
    Apply,
    Start,
}

pub async fn plan(State(d): Shared, body: Body) -> ApiResult {
    let body = json_body(body)
        .await?
        .ok_or_else(|| ApiError::bad_request("send {\"programs\": [specs…]} as the JSON body"))?;
    let req: PlanRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the plan request is invalid: {e}")))?;
    for p in &req.programs {
        check_selector_name(&p.name)?;
    }
    if let Some(fleet) = &d.fleet {
        return fleet_plan(&d, fleet.as_ref(), req);
    }
    let current = d.desired.snapshot();
    let programs = with_sources(&current, req.programs);
    let mut writes = plan_writes(&current, &programs, req.mode);
    if req.mode == PlanMode::Start {
        writes.extend(programs.iter().map(|p| StoreWrite::Request {
            name: p.spec.name.clone(),
            instance: None,
            request: RunRequest::Start,
        }));
    }
    let preview = desired::simulate(&current, &writes);
    let plan = d
        .reconciler
        .preview(preview)
        .await
        .ok_or_else(|| ApiError::internal("the reconcile loop has stopped"))?;
    Ok(Json(json!({ "against": "daemon", "steps": plan.steps })).into_response())
}

/// `POST /plan` of a fleet node: the programs against the whole fleet, each step with the node
/// that would carry it out.
fn fleet_plan(d: &AppState, fleet: &dyn crate::fleet::FleetStatus, req: PlanRequest) -> ApiResult {
    let current = d.desired.all_programs();
    let programs = with_sources(&current, req.programs);
    let writes = plan_writes(&current, &programs, req.mode);
    let next = desired::simulate(&current, &writes);
    let plan = crate::fleet::plan(&fleet.view(), &current, &next);
    Ok(Json(json!({ "against": "fleet", "steps": plan.steps })).into_response())
}

/// The writes a plan request previews: `apply` syncs to exactly these programs, `start` puts
/// them beside the others.
fn plan_writes(
    current: &desired::Programs,
    programs: &[config::Program],
    mode: PlanMode,
) -> Vec<StoreWrite> {
    match mode {
        PlanMode::Apply => desired::sync_writes(current, programs, &[], &[]),
        PlanMode::Start => programs
            .iter()
            .map(|p| StoreWrite::PutProgram {
                spec: Arc::clone(&p.spec),
                source: p.source.clone(),
            })
            .collect(),
    }
}

/// The programs of a plan request, each keeping the source it has now (`config` when new).
fn with_sources(current: &desired::Programs, specs: Vec<ProgramSpec>) -> Vec<config::Program> {
    specs
        .into_iter()
        .map(|spec| {
            let source = current
                .get(&spec.name)
                .map(|r| r.source.clone())
                .unwrap_or(Source::Config);
            config::Program {
                spec: Arc::new(spec),
                source,
            }
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct ReloadQuery {
    #[serde(default)]
    dry_run: bool,
}

pub async fn reload(State(d): Shared, q: Result<Query<ReloadQuery>, QueryRejection>) -> ApiResult {
    let q = query(q)?;
    Ok(large_json(&d.reloader.reload(q.dry_run).await))
}

pub async fn debug_reconcile(State(d): Shared) -> ApiResult {
    let plan = d
        .reconciler
        .pass_now()
        .await
        .ok_or_else(|| ApiError::internal("the reconcile loop has stopped"))?;
    Ok(Json(json!({ "steps": plan.steps })).into_response())
}

pub async fn groups(State(d): Shared) -> Json<Vec<GroupSpec>> {
    Json(d.reloader.groups())
}

#[derive(Debug, Deserialize)]
pub struct GroupQuery {
    group: Option<String>,
    wait: Option<String>,
}

fn group_selector(q: &GroupQuery) -> Result<Selector, ApiError> {
    let group = q
        .group
        .clone()
        .ok_or_else(|| ApiError::bad_request("say which group: ?group=NAME"))?;
    check_selector_name(&group)?;
    Ok(Selector {
        group: Some(group),
        ..Selector::default()
    })
}

pub async fn group_status(
    State(d): Shared,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> ApiResult {
    let sel = group_selector(&query(q)?)?;
    let programs = d.desired.snapshot();
    let picked = sel.pick(&programs, &d.reloader.groups())?;
    Ok(Json(statuses(
        &programs,
        &d.reconciler.live(),
        &LoopView::of(&d.reconciler),
        &picked,
    ))
    .into_response())
}

pub async fn group_start(
    State(d): Shared,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let wait = parse_wait(q.wait.as_deref())?;
    act(
        &d,
        &group_selector(&q)?,
        RunRequest::Start,
        Vec::new(),
        wait,
    )
    .await
}

pub async fn group_stop(
    State(d): Shared,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let wait = parse_wait(q.wait.as_deref())?;
    act(&d, &group_selector(&q)?, RunRequest::Stop, Vec::new(), wait).await
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    name: Option<String>,
    #[serde(default)]
    stream: Option<Stream>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

pub async fn logs(State(d): Shared, q: Result<Query<LogsQuery>, QueryRejection>) -> ApiResult {
    let q = query(q)?;
    let name = q
        .name
        .ok_or_else(|| ApiError::bad_request("say which instance: ?name=NAME"))?;
    check_selector_name(&name)?;
    let stream = q.stream.unwrap_or(Stream::Stdout);
    let live = d.reconciler.live();
    let instance = live.get(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no running or remembered instance is named {name:?}; `provisr status` lists them"
        ))
    })?;
    let tail = q.tail.unwrap_or(100);
    if q.follow {
        return Ok(super::stream::follow_log(
            &instance.log,
            stream,
            tail,
            d.closing.subscribe(),
        ));
    }
    let lines = instance.log.tail(stream, tail);
    Ok(Json(json!({ "name": name, "stream": stream, "lines": lines })).into_response())
}

pub async fn events(State(d): Shared) -> Response {
    super::stream::events(d.events.subscribe(), d.closing.subscribe())
}

/// The daemon's own figures as JSON (`docs/api.md`): what the dashboard's header shows.
pub async fn stats(State(d): Shared) -> Json<crate::metrics::Summary> {
    Json(d.metrics.summary(SystemTime::now()))
}

/// Prometheus/OpenMetrics exposition of every instance and of the daemon itself.
pub async fn metrics(State(d): Shared) -> Response {
    let live = d.reconciler.live();
    let statuses: Vec<_> = live.values().map(|l| l.status.borrow().clone()).collect();
    let body = d.metrics.render(&statuses);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// One cron job as `GET /cronjobs` shows it.
fn cronjob_view(r: &crate::store::ProgramRecord, next: Option<SystemTime>) -> Option<Value> {
    let cron = r.spec.cron.as_ref()?;
    let state = r.cron.clone().unwrap_or_default();
    let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
    let active: Vec<&crate::store::CronRun> = state
        .history
        .iter()
        .filter(|run| run.result == crate::store::RunResult::Running)
        .collect();
    Some(json!({
        "name": r.spec.name,
        "schedule": cron.schedule,
        "time_zone": cron.time_zone,
        "concurrency": cron.concurrency,
        "suspended": r.cron_suspended(),
        "desired": r.desired,
        "last_schedule_time": time(state.last_schedule_time),
        "next_schedule_time": time(next),
        "last_result": state.last_result(),
        "active": active,
        "runs": state.runs,
        "history_limit": cron.history_limit,
    }))
}

/// The cron job `name`, or 404.
fn cronjob(d: &AppState, name: &str) -> Result<Arc<crate::store::ProgramRecord>, ApiError> {
    check_selector_name(name)?;
    d.desired
        .get(name)
        .filter(|r| r.spec.is_cron())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no cron job is named {name:?}; `provisr cron list` lists them"
            ))
        })
}

/// `GET /cronjobs`: every cron job, by name.
pub async fn cronjobs(State(d): Shared) -> Json<Vec<Value>> {
    let next = d.reconciler.cron_next();
    Json(
        d.desired
            .snapshot()
            .values()
            .filter_map(|r| cronjob_view(r, next.get(&r.spec.name).copied().flatten()))
            .collect(),
    )
}

/// `POST /cronjobs/{name}/trigger`: a run now, as the job's concurrency allows.
pub async fn cronjob_trigger(State(d): Shared, Path(name): Path<String>) -> ApiResult {
    cronjob(&d, &name)?;
    match d.reconciler.trigger(&name).await {
        Ok(run) => Ok((StatusCode::CREATED, Json(json!({ "run": run }))).into_response()),
        Err(crate::reconcile::TriggerError::NotFound(_)) => Err(ApiError::not_found(format!(
            "no cron job is named {name:?}; `provisr cron list` lists them"
        ))),
        Err(crate::reconcile::TriggerError::Busy(why)) => Err(ApiError::conflict(format!(
            "{name:?} was not triggered: {why}; wait for it, or use concurrency = \"replace\" or \"allow\""
        ))),
        Err(crate::reconcile::TriggerError::Store(why)) => Err(ApiError::internal(why)),
    }
}

/// `POST /cronjobs/{name}/suspend`: no scheduled runs until `resume`.
pub async fn cronjob_suspend(State(d): Shared, Path(name): Path<String>) -> ApiResult {
    set_suspended(&d, &name, true).await
}

/// `POST /cronjobs/{name}/resume`: scheduled runs again, from the next scheduled time on.
pub async fn cronjob_resume(State(d): Shared, Path(name): Path<String>) -> ApiResult {
    set_suspended(&d, &name, false).await
}

async fn set_suspended(d: &AppState, name: &str, suspend: bool) -> ApiResult {
    cronjob(d, name)?;
    use crate::store::CronChange;
    let mut writes = vec![StoreWrite::Cron {
        name: name.to_string(),
        change: CronChange::Suspend(suspend),
    }];
    if !suspend {
        // The times that passed while it was suspended are not run now.
        writes.push(StoreWrite::Cron {
            name: name.to_string(),
            change: CronChange::Scheduled(SystemTime::now()),
        });
    }
    d.desired
        .apply(writes)
        .await
        .map_err(|e| write_error(e, "cannot record the change"))?;
    let record = cronjob(d, name)?;
    let next = d.reconciler.cron_next().get(name).copied().flatten();
    let view = cronjob_view(&record, next.filter(|_| !suspend))
        .ok_or_else(|| ApiError::internal("the cron job vanished while it was written"))?;
    Ok(Json(view).into_response())
}

/// `GET /cronjobs/{name}/history`: its runs, newest first.
pub async fn cronjob_history(State(d): Shared, Path(name): Path<String>) -> ApiResult {
    let record = cronjob(&d, &name)?;
    let mut runs = record.cron.clone().unwrap_or_default().history;
    runs.reverse();
    Ok(Json(runs).into_response())
}
