//! The client-side commands: resolve the API URL, make the request, print the answer.

use std::path::Path;

use serde_json::{json, Value};

use super::plan_view;
use super::{
    config_path, exit, os_env, print_json_or_table, AdhocArgs, ApplyArgs, DiffArgs, GlobalArgs,
    GroupArgs, LogsArgs, NameArgs, OutputFormat, RegisterArgs, StartArgs, StatusArgs, StopArgs,
    Table,
};
use crate::client::{ApiClient, ClientError};
use crate::config::{self, LoadedConfig};

/// The default API URL when nothing else says (`docs/cli.md`).
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080/api";

/// `--socket`/`PROVISR_SOCKET` when given; else `--api-url`/`PROVISR_API_URL` (clap reads each
/// env var into its flag); else the daemon's unix socket when it is there and answers (the
/// socket of `--config`, or of the embedded default in this directory); else the `[server]` URL
/// of `--config`, else the default URL. The token from `--token`/`PROVISR_TOKEN` or the config.
fn client(g: &GlobalArgs, config: Option<&Path>) -> Result<ApiClient, i32> {
    let settings = match config {
        Some(path) if g.api_url.is_none() || g.token.is_none() || g.socket.is_none() => {
            match config::load(Some(path), &os_env()) {
                Ok(loaded) => Some(loaded.settings),
                Err(errors) => return Err(plan_view::print_config_errors(&errors)),
            }
        }
        _ => None,
    };
    let url = g.api_url.clone().unwrap_or_else(|| match &settings {
        Some(s) => api_url_of(&s.server.listen, &s.server.base_path),
        None => DEFAULT_API_URL.to_string(),
    });
    let token = g.token.clone().or_else(|| {
        let server = &settings.as_ref()?.server;
        server.token.clone().or_else(|| {
            let path = server.token_file.as_ref()?;
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
        })
    });
    let base_path = settings
        .as_ref()
        .map_or(config::DEFAULT_BASE_PATH, |s| s.server.base_path.as_str());
    if let Some(socket) = &g.socket {
        return Ok(ApiClient::over_socket(socket, base_path, token));
    }
    if g.api_url.is_none() {
        let socket = match &settings {
            Some(s) => s.server.socket.path(&s.daemon.state_dir),
            None => std::env::current_dir().ok().and_then(|cwd| {
                let d = config::Settings::embedded_default(&cwd);
                d.server.socket.path(&d.daemon.state_dir)
            }),
        };
        if let Some(socket) = socket.filter(|p| socket_usable(p)) {
            return Ok(ApiClient::over_socket(&socket, base_path, token));
        }
    }
    match &g.cacert {
        None => Ok(ApiClient::new(&url, token)),
        Some(ca) => ApiClient::trusting(&url, token, ca).map_err(|e| {
            eprintln!("provisr: {e}");
            exit::USAGE
        }),
    }
}

/// Whether a socket found by convention (not named by the user) may be used: it answers, and it
/// belongs to root or to this user — never send a token, or trust answers, to a socket another
/// user could have put there (`docs/security.md`).
fn socket_usable(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let me = nix::unistd::geteuid().as_raw();
    meta.file_type().is_socket()
        && (meta.uid() == 0 || meta.uid() == me)
        && std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The URL a client uses for a daemon listening on `listen`: wildcard and bare `:PORT` listens
/// are reached on loopback.
pub fn api_url_of(listen: &str, base_path: &str) -> String {
    let listen = listen.trim();
    let hostport = if let Some(port) = listen.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    };
    let base = base_path.trim().trim_matches('/');
    if base.is_empty() {
        format!("http://{hostport}")
    } else {
        format!("http://{hostport}/{base}")
    }
}

/// Prints a client error as one sentence and returns its exit code.
fn fail(e: &ClientError) -> i32 {
    eprintln!("provisr: {e}");
    match e {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Api { status: 400, .. } => exit::USAGE,
        _ => exit::FAILED,
    }
}

fn load_config(path: Option<&Path>) -> Result<LoadedConfig, i32> {
    let loaded = config::load(path, &os_env()).map_err(|e| plan_view::print_config_errors(&e))?;
    if !loaded.errors.is_empty() {
        return Err(plan_view::print_config_errors(&loaded.errors));
    }
    Ok(loaded)
}

fn wait_query(wait: &Option<String>) -> Vec<(&'static str, String)> {
    wait.iter().map(|w| ("wait", w.clone())).collect()
}

/// The names of every program of a loaded config, comma-separated for the `name` selector.
fn program_names(loaded: &LoadedConfig) -> String {
    loaded
        .programs
        .iter()
        .map(|p| p.spec.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints statuses (an array or one object) and returns 0: a `failed` instance is a state to
/// report, not a failure of the command.
fn print_statuses(value: &Value, format: OutputFormat) -> i32 {
    print_json_or_table(format, value, || {
        let list: Vec<&Value> = match value {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        let mut t = Table::new(&[
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "DESIRED", "PRIORITY", "MESSAGE",
        ]);
        let now = std::time::SystemTime::now();
        for s in list {
            let field = |k: &str| match s.get(k) {
                Some(Value::String(v)) => v.clone(),
                Some(Value::Null) | None => "-".to_string(),
                Some(v) => v.to_string(),
            };
            let up = s["started_at"]
                .as_str()
                .filter(|_| !s["pid"].is_null())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|started| now.duration_since(started).ok())
                .map_or_else(|| "-".to_string(), uptime);
            t.row(vec![
                field("name"),
                field("state"),
                field("pid"),
                up,
                field("restarts"),
                field("desired"),
                field("priority"),
                field("message"),
            ]);
        }
        t.render()
    });
    exit::OK
}

/// An uptime the way `supervisorctl status` writes it: `0:01:23`, `2 days, 3:04:05`.
fn uptime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match days {
        0 => format!("{h}:{m:02}:{sec:02}"),
        1 => format!("1 day, {h}:{m:02}:{sec:02}"),
        n => format!("{n} days, {h}:{m:02}:{sec:02}"),
    }
}

pub fn start(g: &GlobalArgs, a: &StartArgs, format: OutputFormat) -> i32 {
    let cfg = config_path(&a.config);
    if a.dry_run {
        return start_dry_run(g, cfg, format);
    }
    let api = match client(g, cfg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut query = wait_query(&a.wait);
    let result = if let Some(cmd) = &a.cmd {
        let Some(name) = &a.name else {
            eprintln!("provisr: --cmd needs --name to name the program");
            return exit::USAGE;
        };
        let body = adhoc_spec(name, cmd, &a.adhoc);
        api.post("/start", &query, Some(&body))
    } else if let Some(name) = &a.name {
        query.push(("name", name.clone()));
        api.post::<Value>("/start", &query, None)
    } else if cfg.is_some() {
        let loaded = match load_config(cfg) {
            Ok(l) => l,
            Err(code) => return code,
        };
        query.push(("name", program_names(&loaded)));
        api.post::<Value>("/start", &query, None)
    } else {
        eprintln!(
            "provisr: say what to start: --name NAME, --config FILE, or --name NAME --cmd CMD"
        );
        return exit::USAGE;
    };
    match result {
        Ok(v) => print_statuses(&v, format),
        Err(e) => fail(&e),
    }
}

/// The JSON spec of an ad-hoc program (`start --cmd`, `register`).
fn adhoc_spec(name: &str, cmd: &str, a: &AdhocArgs) -> Value {
    let mut spec = json!({ "name": name, "command": cmd });
    if let Some(b) = a.auto_restart {
        spec["auto_restart"] = json!(b);
    }
    if let Some(n) = a.instances {
        spec["instances"] = json!(n);
    }
    if let Some(p) = a.priority {
        spec["priority"] = json!(p);
    }
    spec
}

/// `start --config F --dry-run`: the plan against the daemon when one answers, else against an
/// empty state, said so either way.
fn start_dry_run(g: &GlobalArgs, cfg: Option<&Path>, format: OutputFormat) -> i32 {
    let loaded = match load_config(cfg) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let api = match client(g, cfg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let specs: Vec<_> = loaded.programs.iter().map(|p| &p.spec).collect();
    let body = json!({ "programs": specs, "mode": "start" });
    match api.post("/plan", &[], Some(&body)) {
        Ok(v) => {
            let Some(plan) = plan_view::plan_of(&v) else {
                return exit::FAILED;
            };
            plan_view::print_plan(&plan, &format!("the daemon at {}", api.location()), format);
            exit::OK
        }
        Err(ClientError::Unreachable { .. }) => {
            plan_view::print_offline_plan(&loaded, &api.location(), format)
        }
        Err(e) => fail(&e),
    }
}

pub fn stop(g: &GlobalArgs, a: &StopArgs, format: OutputFormat) -> i32 {
    let cfg = config_path(&a.config);
    let api = match client(g, cfg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut query = wait_query(&a.wait);
    if let Some(name) = &a.name {
        query.push(("name", name.clone()));
    } else if cfg.is_some() {
        match load_config(cfg) {
            Ok(l) => query.push(("name", program_names(&l))),
            Err(code) => return code,
        }
    } else {
        eprintln!("provisr: say what to stop: --name NAME or --config FILE");
        return exit::USAGE;
    }
    match api.post::<Value>("/stop", &query, None) {
        Ok(v) => print_statuses(&v, format),
        Err(e) => fail(&e),
    }
}

pub fn restart(g: &GlobalArgs, a: &NameArgs, format: OutputFormat) -> i32 {
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut query = wait_query(&a.wait);
    query.push(("name", a.name.clone()));
    match api.post::<Value>("/restart", &query, None) {
        Ok(v) => print_statuses(&v, format),
        Err(e) => fail(&e),
    }
}

pub fn status(g: &GlobalArgs, a: &StatusArgs, format: OutputFormat) -> i32 {
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if a.all_nodes {
        return match api.get("/nodes", &[]) {
            Ok(v) => print_nodes(&v, format),
            Err(e) => fail(&e),
        };
    }
    let query: Vec<(&str, String)> = a.name.iter().map(|n| ("name", n.clone())).collect();
    match api.get("/status", &query) {
        Ok(v) => print_statuses(&v, format),
        Err(e) => fail(&e),
    }
}

pub fn group(g: &GlobalArgs, a: &GroupArgs, path: &str, format: OutputFormat) -> i32 {
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut query = wait_query(&a.wait);
    query.push(("group", a.group.clone()));
    let result = if path.ends_with("status") {
        api.get(path, &query)
    } else {
        api.post::<Value>(path, &query, None)
    };
    match result {
        Ok(v) => print_statuses(&v, format),
        Err(e) => fail(&e),
    }
}

pub fn logs(g: &GlobalArgs, a: &LogsArgs) -> i32 {
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stream = if a.stderr { "stderr" } else { "stdout" };
    let query = vec![
        ("name", a.name.clone()),
        ("stream", stream.to_string()),
        ("tail", a.lines.to_string()),
    ];
    if a.follow {
        let mut query = query;
        query.push(("follow", "true".to_string()));
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        return match api.stream("/logs", &query, |kind, data| {
            use std::io::Write;
            if kind == "skipped" {
                eprintln!("provisr: {data} bytes of output went by too fast to show; the log file has them");
                return true;
            }
            // One event carries a batch of lines; a closed stdout (e.g. `| head`) ends following.
            writeln!(out, "{data}").and_then(|()| out.flush()).is_ok()
        }) {
            Ok(()) => exit::OK,
            Err(e) => fail(&e),
        };
    }
    match api.get("/logs", &query) {
        Ok(v) => {
            for line in v["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// `diff --config F`: the plan of applying F against the daemon. Exit 0 no change, 1 changes,
/// 2 an error (invalid config, a refused request), 3 no daemon (kubectl's convention, plus ours).
pub fn diff(g: &GlobalArgs, a: &DiffArgs, format: OutputFormat) -> i32 {
    let loaded = match load_config(Some(&a.config)) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let api = match client(g, Some(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let specs: Vec<_> = loaded.programs.iter().map(|p| &p.spec).collect();
    let body = json!({ "programs": specs, "groups": loaded.groups, "mode": "apply" });
    match api.post("/plan", &[], Some(&body)) {
        Ok(v) => {
            let Some(plan) = plan_view::print_answer(&v, &api.location(), format) else {
                return exit::USAGE;
            };
            if plan.is_empty() {
                exit::OK
            } else {
                exit::FAILED
            }
        }
        // 1 means "changes" here, so a failure must not exit 1.
        Err(e) => match fail(&e) {
            exit::UNREACHABLE => exit::UNREACHABLE,
            _ => exit::USAGE,
        },
    }
}

/// `status --all-nodes`: one row per instance of every node (a node with none shows one row).
fn print_nodes(value: &Value, format: OutputFormat) -> i32 {
    print_json_or_table(format, value, || {
        let mut t = Table::new(&["NODE", "ALIVE", "NAME", "STATE", "PID", "RESTARTS"]);
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_string(),
            v => v.to_string(),
        };
        for n in value["nodes"].as_array().into_iter().flatten() {
            let alive = if n["alive"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            };
            let instances: Vec<&Value> = n["instances"].as_array().into_iter().flatten().collect();
            if instances.is_empty() {
                let row = [text(&n["name"]), alive.into(), "-".into(), "-".into()];
                t.row(row.into_iter().chain(["-".into(), "-".into()]).collect());
            }
            for i in instances {
                t.row(vec![
                    text(&n["name"]),
                    alive.to_string(),
                    text(&i["name"]),
                    text(&i["state"]),
                    text(&i["pid"]),
                    text(&i["restarts"]),
                ]);
            }
        }
        let mut out = String::new();
        if value["connected"].as_bool() == Some(false) {
            out.push_str("this node cannot reach the fleet's store: the view may be stale\n");
        }
        out.push_str(&t.render());
        out
    });
    exit::OK
}

/// `apply DIR`: the directory's programs sent to `POST /apply`; the plan printed. With
/// `--dry-run` exit 0 no change, 1 changes (as `diff`); else 0 once applied.
pub fn apply(g: &GlobalArgs, a: &ApplyArgs, format: OutputFormat) -> i32 {
    let dir = match std::fs::canonicalize(&a.dir) {
        Ok(d) if d.is_dir() => d,
        Ok(d) => {
            eprintln!("provisr: {} is not a directory", d.display());
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("provisr: cannot read {}: {e}", a.dir.display());
            return exit::USAGE;
        }
    };
    let mut settings = config::Settings::embedded_default(&dir);
    settings.programs_directory = dir.clone();
    let scan = config::scan_programs(&settings, &os_env());
    if !scan.errors.is_empty() {
        return plan_view::print_config_errors(&scan.errors);
    }
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let programs: Vec<Value> = scan
        .programs
        .iter()
        .map(|p| {
            let path = match &p.source {
                config::Source::File(path) => path.clone(),
                _ => dir.join(format!("{}.toml", p.spec.name)),
            };
            json!({ "spec": p.spec, "path": path })
        })
        .collect();
    let query = if a.dry_run {
        vec![("dry_run", "true".to_string())]
    } else {
        Vec::new()
    };
    match api.post("/apply", &query, Some(&json!({ "programs": programs }))) {
        Ok(v) => {
            let Some(plan) = plan_view::print_answer(&v, &api.location(), format) else {
                return exit::USAGE;
            };
            match (a.dry_run, plan.is_empty()) {
                (true, false) => exit::FAILED,
                _ => exit::OK,
            }
        }
        Err(e) => match fail(&e) {
            exit::UNREACHABLE => exit::UNREACHABLE,
            code if a.dry_run => code.max(exit::USAGE),
            code => code,
        },
    }
}

pub fn register(g: &GlobalArgs, a: &RegisterArgs, format: OutputFormat) -> i32 {
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = adhoc_spec(&a.name, &a.cmd, &a.adhoc);
    match api.post("/register", &[], Some(&body)) {
        Ok(v) => {
            print_json_or_table(format, &v, || {
                format!(
                    "registered {} (desired {})\n",
                    a.name,
                    v["desired"].as_str().unwrap_or("?")
                )
            });
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

pub fn unregister(g: &GlobalArgs, a: &NameArgs, format: OutputFormat) -> i32 {
    let api = match client(g, config_path(&a.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match api.post::<Value>("/unregister", &[("name", a.name.clone())], None) {
        Ok(v) => {
            print_json_or_table(format, &v, || format!("unregistered {}\n", a.name));
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// `provisr events`: every state transition as it happens, until interrupted.
pub fn events(g: &GlobalArgs, format: OutputFormat) -> i32 {
    let api = match client(g, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = api.stream("/events", &[], |kind, data| {
        match (kind, format) {
            ("transition", OutputFormat::Table) => match serde_json::from_str::<Value>(data) {
                Ok(e) => println!(
                    "{}  {}  {} → {}  {}",
                    e["time"].as_str().unwrap_or("-"),
                    e["name"].as_str().unwrap_or("-"),
                    e["from"].as_str().unwrap_or("-"),
                    e["to"].as_str().unwrap_or("-"),
                    e["reason"].as_str().unwrap_or("")
                ),
                Err(_) => println!("{data}"),
            },
            ("transition", OutputFormat::Json) => println!("{data}"),
            ("lagged", _) => eprintln!("provisr: missed {data} events (the client was too slow)"),
            _ => {}
        }
        use std::io::Write;
        std::io::stdout().flush().is_ok()
    });
    match result {
        Ok(()) => exit::OK,
        Err(e) => fail(&e),
    }
}

/// `provisr cron list|trigger|suspend|resume|history`.
pub fn cron(g: &GlobalArgs, c: &super::CronCommand, format: OutputFormat) -> i32 {
    use super::CronCommand as C;
    let config = match c {
        C::List(a) => &a.config,
        C::Trigger(a) | C::Suspend(a) | C::Resume(a) | C::History(a) => &a.config,
    };
    let api = match client(g, config_path(config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = |name: &str, what: &str| format!("/cronjobs/{name}/{what}");
    let result = match c {
        C::List(_) => api.get("/cronjobs", &[]),
        C::Trigger(a) => api.post::<Value>(&path(&a.name, "trigger"), &[], None),
        C::Suspend(a) => api.post::<Value>(&path(&a.name, "suspend"), &[], None),
        C::Resume(a) => api.post::<Value>(&path(&a.name, "resume"), &[], None),
        C::History(a) => api.get(&path(&a.name, "history"), &[]),
    };
    let value = match result {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        v => v.to_string(),
    };
    print_json_or_table(format, &value, || match c {
        C::List(_) | C::Suspend(_) | C::Resume(_) => {
            let list: Vec<&Value> = match &value {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            let mut t = Table::new(&[
                "NAME",
                "SCHEDULE",
                "SUSPENDED",
                "ACTIVE",
                "LAST SCHEDULE",
                "NEXT",
                "LAST RESULT",
            ]);
            for j in list {
                let active = j["active"].as_array().map_or(0, Vec::len);
                t.row(vec![
                    text(&j["name"]),
                    text(&j["schedule"]),
                    text(&j["suspended"]),
                    active.to_string(),
                    text(&j["last_schedule_time"]),
                    text(&j["next_schedule_time"]),
                    text(&j["last_result"]),
                ]);
            }
            t.render()
        }
        C::Trigger(a) => {
            let run = &value["run"];
            format!(
                "triggered {}: run {} in {}\n",
                a.name,
                text(&run["id"]),
                text(&run["instance"])
            )
        }
        C::History(_) => {
            let mut t = Table::new(&[
                "RUN", "INSTANCE", "CAUSE", "STARTED", "DURATION", "RESULT", "EXIT", "TRIES",
                "STDOUT",
            ]);
            for r in value.as_array().into_iter().flatten() {
                let time = |k: &str| {
                    r[k].as_str()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                };
                let duration = match (time("started_at"), time("finished_at")) {
                    (Some(a), Some(b)) => b
                        .duration_since(a)
                        .map(|d| {
                            crate::config::Dur(std::time::Duration::from_millis(
                                d.as_millis() as u64
                            ))
                            .to_string()
                        })
                        .unwrap_or_else(|_| "-".to_string()),
                    _ => "-".to_string(),
                };
                let exit = match (&r["exit_code"], &r["exit_signal"]) {
                    (Value::Number(c), _) => c.to_string(),
                    (_, Value::Number(s)) => format!("signal {s}"),
                    _ => "-".to_string(),
                };
                t.row(vec![
                    text(&r["id"]),
                    text(&r["instance"]),
                    text(&r["cause"]),
                    text(&r["started_at"]),
                    duration,
                    text(&r["result"]),
                    exit,
                    text(&r["attempts"]),
                    text(&r["log"]["stdout"]),
                ]);
            }
            t.render()
        }
    });
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::{api_url_of, uptime};
    use std::time::Duration;

    #[test]
    fn uptimes_read_like_supervisorctl() {
        assert_eq!(uptime(Duration::from_secs(83)), "0:01:23");
        assert_eq!(
            uptime(Duration::from_secs(3 * 3600 + 4 * 60 + 5)),
            "3:04:05"
        );
        assert_eq!(uptime(Duration::from_secs(86_400 + 7)), "1 day, 0:00:07");
        assert_eq!(
            uptime(Duration::from_secs(2 * 86_400 + 3 * 3600 + 4 * 60 + 5)),
            "2 days, 3:04:05"
        );
    }

    #[test]
    fn api_urls_from_listen_addresses() {
        assert_eq!(api_url_of(":8080", "/api"), "http://127.0.0.1:8080/api");
        assert_eq!(api_url_of("0.0.0.0:9", "api/"), "http://127.0.0.1:9/api");
        assert_eq!(api_url_of("127.0.0.1:1", ""), "http://127.0.0.1:1");
        assert_eq!(api_url_of("[::]:7", "/x"), "http://[::1]:7/x");
    }
}
