//! The dashboard at `/ui` in a real browser (docs/ui.md): the real daemon on 127.0.0.1 port 0,
//! real children, and the distribution's headless Chromium driven over the DevTools protocol
//! (`browser.rs`). Without `/usr/bin/chromium` the browser tests print a notice and pass; the
//! HTTP checks of the assets run everywhere.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::browser::{self, screenshot_path, Chromium, Page, RunAs};
use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

const WAIT: Duration = Duration::from_secs(30);

/// A daemon serving a programs directory, and the pids of every child it reported (killed
/// by process group if the test fails before the daemon stops them).
struct Dashboard {
    daemon: TestDaemon,
    guard: GroupGuard,
    /// The pids already in `guard` (a status is read many times while waiting).
    guarded: std::collections::HashSet<i64>,
    /// `http://127.0.0.1:PORT/api`
    api: String,
    /// `http://127.0.0.1:PORT/ui`
    ui: String,
    dir: tempfile::TempDir,
}

impl Dashboard {
    /// Writes `programs` (file name, text) and a config with `extra` appended, and starts the
    /// daemon.
    fn start(programs: &[(&str, &str)], extra: &str) -> Dashboard {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg.toml");
        std::fs::create_dir_all(dir.path().join("programs")).unwrap();
        for (name, text) in programs {
            write(&dir.path().join("programs").join(name), text);
        }
        write(&cfg, &format!("programs_directory = \"programs\"\n{extra}"));
        let daemon = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
        let api = daemon.url.clone();
        let ui = format!("{}/ui", api.trim_end_matches("/api"));
        Dashboard {
            daemon,
            guard: GroupGuard::default(),
            guarded: Default::default(),
            api,
            ui,
            dir,
        }
    }

    /// `GET /status` as root, remembering every pid for the guard.
    fn statuses(&mut self) -> Vec<Value> {
        let list: Vec<Value> = ureq::get(&format!("{}/status", self.api))
            .call()
            .expect("GET /status")
            .body_mut()
            .read_json()
            .expect("status JSON");
        for pid in list.iter().filter_map(|s| s["pid"].as_i64()) {
            if self.guarded.insert(pid) {
                self.guard.add(pid as i32);
            }
        }
        list
    }

    fn status(&mut self, name: &str) -> Value {
        self.statuses()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
    }

    /// Waits until every instance named is in `state`; returns their statuses.
    fn wait_states(&mut self, names: &[&str], state: &str) -> Vec<Value> {
        wait_for(WAIT, &format!("{names:?} {state}"), || {
            let all = self.statuses();
            let picked: Vec<Value> = names
                .iter()
                .filter_map(|n| all.iter().find(|s| s["name"] == *n).cloned())
                .collect();
            (picked.len() == names.len() && picked.iter().all(|s| s["state"] == state))
                .then_some(picked)
        })
    }

    fn post(&self, path: &str) {
        ureq::post(&format!("{}{path}", self.api))
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    }
}

/// The names of the rows the page shows (not hidden by a filter), in order.
const SHOWN: &str = "[...document.querySelectorAll('#rows tr')].filter(r => getComputedStyle(r).display !== 'none').map(r => r.dataset.name).join()";

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The row of instance `name`, as a selector.
fn row(name: &str) -> String {
    format!("#rows tr[data-name=\"{name}\"]")
}

/// What the row shows: `[state, pid, restarts]`.
fn row_cells(page: &mut Page, name: &str) -> Value {
    page.eval(&format!(
        "(() => {{ const r = document.querySelector({}); if (!r) return null; \
         const c = r.children; return [c[1].textContent, c[2].textContent, c[4].textContent]; }})()",
        js(&row(name))
    ))
}

/// Waits until the row of `name` shows `state` and, if given, `pid`.
fn wait_row(page: &mut Page, name: &str, state: &str, pid: Option<i64>) {
    let pid = pid.map_or(String::new(), |p| p.to_string());
    let want = format!("{state}/{pid}");
    page.wait(
        WAIT,
        &format!("the row of {name} to show {want}"),
        &format!(
            "(() => {{ const r = document.querySelector({}); if (!r) return false; \
             const c = r.children; const got = c[1].textContent + '/' + ({p} ? c[2].textContent : ''); \
             return got === {w}; }})()",
            js(&row(name)),
            p = !pid.is_empty(),
            w = js(&want),
        ),
    );
}

/// Starts recording every state the row of `name` shows, in `window.__states[name]`.
fn record_states(page: &mut Page, name: &str) {
    page.eval(&format!(
        "(() => {{ window.__states = window.__states || {{}}; const n = {n}; \
         const cell = document.querySelector({sel}).children[1]; \
         window.__states[n] = [cell.textContent]; \
         new MutationObserver(() => {{ const s = window.__states[n]; \
           if (s[s.length - 1] !== cell.textContent) s.push(cell.textContent); }}) \
           .observe(cell, {{childList: true, subtree: true, characterData: true}}); }})()",
        n = js(name),
        sel = js(&row(name)),
    ));
}

fn states_seen(page: &mut Page, name: &str) -> Vec<String> {
    serde_json::from_value(page.eval(&format!("window.__states[{}]", js(name)))).unwrap()
}

fn wait_activity(page: &mut Page, needle: &str) {
    page.wait(
        WAIT,
        &format!("the transitions pane to show {needle:?}"),
        &format!(
            "[...document.querySelectorAll('#activity li')].some(li => li.textContent.includes({}))",
            js(needle)
        ),
    );
}

const GROUPS: &str = r#"
[[groups]]
name = "web"
members = ["web"]

[[groups]]
name = "data"
members = ["db", "cache"]

[[groups]]
name = "jobs"
members = ["worker", "report"]
"#;

fn demo_programs() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "web.toml",
            "command = \"sh -c 'echo web instance $PROVISR_INSTANCE listening on :$((8000 + PROVISR_INSTANCE)); exec sleep 3600'\"\n\
             instances = 2\npriority = 10\nauto_restart = true\nrestart_interval = \"1s\"\n",
        ),
        (
            "db.yaml",
            "command: \"sh -c 'echo database ready; exec sleep 3600'\"\npriority: 1\nauto_restart: true\n",
        ),
        (
            "cache.json",
            r#"{"command": "sh -c 'echo cache warm; exec sleep 3600'", "priority": 2, "auto_restart": true}"#,
        ),
        (
            "worker.toml",
            "command = \"sh -c 'echo worker $PROVISR_INSTANCE polling the queue; exec sleep 3600'\"\n\
             instances = 3\npriority = 15\nauto_restart = true\n",
        ),
        (
            "report.toml",
            "command = \"sh -c 'echo nightly report written'\"\npriority = 20\n",
        ),
    ]
}

/// Acceptance 1: the page lists the programs with their states; killing a child turns its row
/// to `backoff` and back to `running` with a new pid, with no reload of the page. Saves the
/// screenshot shown in the README (`PROVISR_UI_SCREENSHOTS=docs` to write it there).
#[test]
fn a_killed_child_goes_to_backoff_and_back_to_running_with_a_new_pid() {
    if !browser::available("a_killed_child_goes_to_backoff_and_back_to_running_with_a_new_pid") {
        return;
    }
    let mut dash = Dashboard::start(&demo_programs(), GROUPS);
    let names = [
        "cache", "db", "web-1", "web-2", "worker-1", "worker-2", "worker-3",
    ];
    dash.wait_states(&names, "running");
    dash.wait_states(&["report"], "exited");

    // Declared after the daemon, so dropped before it even when the test fails.
    let browser = Chromium::launch(RunAs::Me);
    let mut page = browser.new_page(1280, 800);
    page.navigate(&dash.ui);
    page.wait(
        WAIT,
        "the connection to go live",
        "document.getElementById('conn').dataset.state === 'live'",
    );
    // Every program of programs/, with the state and pid the API reports.
    for s in dash.statuses() {
        let name = s["name"].as_str().unwrap();
        wait_row(
            &mut page,
            name,
            s["state"].as_str().unwrap(),
            s["pid"].as_i64(),
        );
    }
    assert_eq!(page.eval("document.querySelectorAll('#rows tr').length"), 8);
    assert_eq!(
        page.eval("document.querySelector('#rows tr[data-name=\"db\"]').children[7].textContent"),
        "data"
    );

    // Follow web-1's output, so the picture shows it too.
    page.click(&format!("{} td.name button", row("web-1")));
    page.wait(
        WAIT,
        "web-1's output",
        "document.getElementById('log-lines').textContent.includes('web instance 1 listening')",
    );

    page.eval("window.__sameDocument = 'yes'");
    record_states(&mut page, "web-1");
    let old = dash.status("web-1")["pid"].as_i64().unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();

    let new = wait_for(WAIT, "web-1 to run again with a new pid", || {
        let s = dash.status("web-1");
        let pid = s["pid"].as_i64()?;
        (s["state"] == "running" && pid != old).then_some(pid)
    });
    wait_row(&mut page, "web-1", "running", Some(new));
    let seen = states_seen(&mut page, "web-1");
    let backoff = seen.iter().position(|s| s == "backoff");
    let running = seen.iter().rposition(|s| s == "running");
    assert!(
        matches!((backoff, running), (Some(b), Some(r)) if b < r && b > 0),
        "the row showed {seen:?}"
    );
    assert_eq!(
        row_cells(&mut page, "web-1")[2],
        "1",
        "one automatic restart"
    );
    wait_activity(&mut page, "web-1 running → backoff");
    wait_activity(&mut page, "web-1 backoff → starting");
    // The same document all along: no reload.
    assert_eq!(page.eval("window.__sameDocument"), "yes");
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation').length"),
        1
    );
    // The restart shows in the figures, and the restarted process's output in the pane.
    page.wait(
        WAIT,
        "restarts per minute to count it",
        "document.getElementById('rpm').textContent === '1'",
    );
    page.wait(WAIT, "the new process's output", "document.getElementById('log-lines').textContent.split('web instance 1 listening').length === 3");
    // The other rows did not move.
    for s in dash.statuses().iter().filter(|s| s["name"] != "web-1") {
        wait_row(
            &mut page,
            s["name"].as_str().unwrap(),
            s["state"].as_str().unwrap(),
            s["pid"].as_i64(),
        );
    }
    page.assert_no_problems();

    let shot = screenshot_path("ui.png");
    page.screenshot(&shot);
    println!("screenshot: {}", shot.display());
}

/// Acceptance 2: the stop and start buttons work and show the transitions; the output pane
/// shows a line the program prints after the pane opened, and pauses and searches.
#[test]
fn buttons_stop_and_start_and_the_output_pane_follows_new_lines() {
    if !browser::available("buttons_stop_and_start_and_the_output_pane_follows_new_lines") {
        return;
    }
    // Prints a line each time it gets SIGUSR1, and nothing else after its greeting (which comes
    // after the trap is set, so a signal sent once the greeting is seen is never fatal).
    let echo = r#"args = ["sh", "-c", 'trap "echo usr1 received" USR1; echo hello from echo; while :; do sleep 3600 & s=$!; wait $s; kill $s 2>/dev/null; done']
"#;
    let sleeper = "command = \"sleep 3600\"\n";
    let mut dash = Dashboard::start(
        &[
            ("echo.toml", echo),
            ("a.toml", sleeper),
            ("b.toml", sleeper),
        ],
        "[[groups]]\nname = \"pair\"\nmembers = [\"a\", \"b\"]\n",
    );
    let first = dash.wait_states(&["echo", "a", "b"], "running");
    let echo_pid = first[0]["pid"].as_i64().unwrap();

    let browser = Chromium::launch(RunAs::Me);
    let mut page = browser.new_page(1280, 800);
    page.navigate(&dash.ui);
    wait_row(&mut page, "echo", "running", Some(echo_pid));

    // The output pane: open it, then make the program print.
    page.click(&format!("{} td.name button", row("echo")));
    page.wait(
        WAIT,
        "the pane to follow echo's stdout",
        "document.getElementById('log-lines').dataset.following === 'echo/stdout'",
    );
    page.wait(
        WAIT,
        "the greeting from the backlog",
        "document.getElementById('log-lines').textContent.includes('hello from echo')",
    );
    let usr1_lines = "[...document.querySelectorAll('#log-lines div')].filter(d => d.dataset.text === 'usr1 received' && !d.hidden).length";
    assert_eq!(page.eval(usr1_lines), 0);
    kill(Pid::from_raw(echo_pid as i32), Signal::SIGUSR1).unwrap();
    page.wait(
        WAIT,
        "the line printed after the pane opened",
        &format!("{usr1_lines} === 1"),
    );

    // Search hides other lines and marks the match.
    page.type_into("#log-search", "USR1");
    page.wait(WAIT, "the search to apply", "(() => { const ds = [...document.querySelectorAll('#log-lines div')]; \
        const hello = ds.find(d => d.dataset.text === 'hello from echo'); \
        const hit = ds.find(d => d.dataset.text === 'usr1 received'); \
        return hello.hidden && !hit.hidden && hit.querySelector('mark')?.textContent === 'usr1'; })()");

    // Paused, a new line is held back; resumed, it shows.
    page.click("#log-pause");
    page.wait(
        WAIT,
        "the pane to pause",
        "document.getElementById('log-status').textContent === 'paused'",
    );
    kill(Pid::from_raw(echo_pid as i32), Signal::SIGUSR1).unwrap();
    page.wait(
        WAIT,
        "the held line to be counted",
        "document.getElementById('log-status').textContent.includes('1 new line held')",
    );
    assert_eq!(page.eval(usr1_lines), 1, "nothing is added while paused");
    page.click("#log-pause");
    page.wait(
        WAIT,
        "the held line after resuming",
        &format!("{usr1_lines} === 2"),
    );

    // Stop: the row goes through stopping to stopped, and the pane shows each transition.
    record_states(&mut page, "echo");
    page.click(&format!("{} button[data-act=stop]", row("echo")));
    dash.wait_states(&["echo"], "stopped");
    wait_row(&mut page, "echo", "stopped", None);
    wait_activity(&mut page, "echo running → stopping");
    wait_activity(&mut page, "echo stopping → stopped");
    assert_eq!(row_cells(&mut page, "echo")[1], "", "no pid once stopped");
    let buttons = format!(
        "[...document.querySelectorAll({})].map(b => b.disabled)",
        js(&format!("{} td.actions button", row("echo")))
    );
    page.wait(
        WAIT,
        "start on, stop off",
        &format!("JSON.stringify({buttons}) === '[false,true,false]'"),
    );

    // Start: back to running, with the new process's pid.
    page.click(&format!("{} button[data-act=start]", row("echo")));
    let again = dash.wait_states(&["echo"], "running")[0]["pid"]
        .as_i64()
        .unwrap();
    assert_ne!(again, echo_pid);
    wait_row(&mut page, "echo", "running", Some(again));
    wait_activity(&mut page, "echo stopped → starting");
    let seen = states_seen(&mut page, "echo");
    assert_eq!(seen.first().map(String::as_str), Some("running"));
    assert_eq!(seen.last().map(String::as_str), Some("running"));
    assert!(seen.iter().any(|s| s == "stopped"), "{seen:?}");
    // The pane follows the instance across the restart.
    page.wait(
        WAIT,
        "the new process's greeting",
        "document.getElementById('log-lines').textContent.split('hello from echo').length === 3",
    );

    // A group's buttons act on its members.
    page.click(".group[data-group=\"pair\"] button[data-path^=\"/group/stop\"]");
    dash.wait_states(&["a", "b"], "stopped");
    wait_row(&mut page, "a", "stopped", None);
    wait_row(&mut page, "b", "stopped", None);
    wait_row(&mut page, "echo", "running", Some(again));
    // The state chips count and filter.
    page.wait(
        WAIT,
        "two stopped",
        "document.querySelector('.chip[data-state=stopped] b').textContent === '2'",
    );
    page.click(".chip[data-state=stopped]");
    page.wait(WAIT, "only the stopped rows", &format!("{SHOWN} === 'a,b'"));
    page.click(".chip[data-state=stopped]");
    page.wait(WAIT, "every row again", &format!("{SHOWN} === 'a,b,echo'"));
    page.click(".group[data-group=\"pair\"] button[data-path^=\"/group/start\"]");
    for s in dash.wait_states(&["a", "b"], "running") {
        wait_row(
            &mut page,
            s["name"].as_str().unwrap(),
            "running",
            s["pid"].as_i64(),
        );
    }
    // Sorting by a column and filtering by text.
    page.click("#instances th[data-key=name]");
    page.wait(
        WAIT,
        "names in descending order",
        "[...document.querySelectorAll('#rows tr')].map(r => r.dataset.name).join() === 'echo,b,a'",
    );
    page.type_into("#filter", "ech");
    page.wait(
        WAIT,
        "the filter to leave one row",
        &format!("{SHOWN} === 'echo'"),
    );
    assert_eq!(
        page.eval("document.getElementById('count').textContent"),
        "1 of 3 instances"
    );
    page.assert_no_problems();
}

/// Acceptance 3: a thousand instances, first render and two bursts of 2000 transitions each
/// (a stop and a start of all of them), measured in the page with the Performance API. The
/// figures are printed (`-- --nocapture`) and recorded in docs/benchmarks.md; they are not
/// asserted, but everything the page shows after each burst is.
#[test]
fn a_thousand_instances_render_and_survive_bursts_of_transitions() {
    if !browser::available("a_thousand_instances_render_and_survive_bursts_of_transitions") {
        return;
    }
    const N: usize = 1000;
    let mut dash = Dashboard::start(
        &[(
            "many.toml",
            &format!("command = \"sleep 3600\"\ninstances = {N}\nstop_timeout = \"10s\"\n"),
        )],
        "",
    );
    wait_for(Duration::from_secs(180), "1000 instances running", || {
        let all = dash.statuses();
        (all.iter().filter(|s| s["state"] == "running").count() == N).then_some(())
    });

    let browser = Chromium::launch(RunAs::Me);
    let mut page = browser.new_page(1280, 800);
    // Observers installed before the page's own script runs: long tasks, frames, and the
    // page's own measure of each batched DOM update.
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({"source": PERF_PROBE}),
    );
    page.navigate(&dash.ui);
    page.wait(
        Duration::from_secs(60),
        "the first render",
        "performance.getEntriesByName('provisr:first-render').length > 0",
    );
    let load = page.eval(
        "(() => { const m = n => performance.getEntriesByName(n)[0].startTime; \
         const st = performance.getEntriesByType('resource').find(e => e.name.endsWith('/api/status')); \
         const first = m('provisr:first-render'); \
         return { status_received: m('provisr:status-received'), rows_built: m('provisr:rows-built'), \
           first_render: first, status_fetch: st.duration, status_bytes: st.encodedBodySize, \
           rows: document.querySelectorAll('#rows tr').length, \
           longest_task: Math.max(0, ...__perf.longtasks.filter(t => t[0] < first).map(t => t[1])) }; })()",
    );
    assert_eq!(load["rows"], N);
    check_rows_match(&mut page, &dash.statuses());

    let stop = burst(&mut page, &dash, "/stop?name=many&wait=0s", "stopped", N);
    check_rows_match(&mut page, &dash.statuses());
    let start = burst(&mut page, &dash, "/start?name=many&wait=0s", "running", N);
    let all = dash.statuses();
    assert!(all.iter().all(|s| s["state"] == "running"));
    check_rows_match(&mut page, &all);
    page.assert_no_problems();

    let f = |v: &Value| v.as_f64().map_or("?".into(), |x| format!("{x:.0}"));
    println!("dashboard with {N} instances (headless Chromium, debug daemon):");
    println!(
        "  first render {} ms after navigation start (GET /status {} ms, {} bytes; status parsed at {} ms, rows built at {} ms); longest task before it {} ms",
        f(&load["first_render"]),
        f(&load["status_fetch"]),
        f(&load["status_bytes"]),
        f(&load["status_received"]),
        f(&load["rows_built"]),
        f(&load["longest_task"]),
    );
    for (what, b) in [("stop", &stop), ("start", &start)] {
        let longest_frame = if b["longest_frame"].as_f64().unwrap_or(0.0) > 0.0 {
            format!(
                "longest frame {} ms ({} ms of it style, layout and paint)",
                f(&b["longest_frame"]),
                f(&b["longest_frame_render"])
            )
        } else {
            "no frame over 50 ms".to_string()
        };
        println!(
            "  {what} burst: {} transitions received, all rows {} after {} ms; {} frames, longest gap \
             between frames {} ms, {longest_frame}; {} long tasks (longest {} ms, {} ms blocking in all); \
             {} batched updates (longest {} ms)",
            b["transitions"],
            b["state"].as_str().unwrap_or("?"),
            f(&b["settled_ms"]),
            b["frames"],
            f(&b["max_gap"]),
            b["long_tasks"],
            f(&b["longest_task"]),
            f(&b["blocking"]),
            b["flushes"],
            f(&b["longest_flush"]),
        );
    }
}

/// Installed before the page's scripts: records long tasks, long animation frames (with the
/// part spent on style, layout and paint), frame times and the page's `provisr:flush` measures
/// in `window.__perf`.
const PERF_PROBE: &str = "window.__perf = { longtasks: [], frames: [], flushes: [], loaf: [] };
new PerformanceObserver(l => { for (const e of l.getEntries()) __perf.longtasks.push([e.startTime, e.duration]); }).observe({ type: 'longtask' });
new PerformanceObserver(l => { for (const e of l.getEntries()) if (e.name === 'provisr:flush') __perf.flushes.push([e.startTime, e.duration]); }).observe({ type: 'measure' });
new PerformanceObserver(l => { for (const e of l.getEntries()) __perf.loaf.push([e.startTime, e.duration, e.renderStart ? e.startTime + e.duration - e.renderStart : 0]); }).observe({ type: 'long-animation-frame' });
const frame = t => { __perf.frames.push(t); requestAnimationFrame(frame); };
requestAnimationFrame(frame);";

/// Asks the daemon (through its API, as another client would) to act on every instance, waits
/// until the page shows all `n` in `state`, and returns what the page measured meanwhile.
fn burst(page: &mut Page, dash: &Dashboard, path: &str, state: &str, n: usize) -> Value {
    let seen_before =
        page.eval("Number.parseInt(document.getElementById('activity-count').textContent)");
    page.eval(&format!(
        "(() => {{ __perf.t0 = performance.now(); __perf.settled = null; \
         const chip = document.querySelector('.chip[data-state={state}] b'); \
         const watch = () => {{ if (chip.textContent === '{n}') __perf.settled = performance.now(); \
           else requestAnimationFrame(watch); }}; requestAnimationFrame(watch); }})()"
    ));
    dash.post(path);
    page.wait(
        Duration::from_secs(120),
        &format!("all rows {state}"),
        "__perf.settled !== null",
    );
    let figures = page.eval(&format!(
        "(() => {{ const {{ t0, settled }} = __perf; const inside = ([t]) => t >= t0 && t <= settled; \
         const frames = __perf.frames.filter(t => t >= t0 && t <= settled); \
         let gap = 0; for (let i = 1; i < frames.length; i++) gap = Math.max(gap, frames[i] - frames[i - 1]); \
         const lt = __perf.longtasks.filter(inside); const fl = __perf.flushes.filter(inside); \
         const lf = __perf.loaf.filter(inside).sort((a, b) => b[1] - a[1])[0] || [0, 0, 0]; \
         return {{ state: '{state}', settled_ms: settled - t0, frames: frames.length, max_gap: gap, \
           longest_frame: lf[1], longest_frame_render: lf[2], \
           long_tasks: lt.length, longest_task: Math.max(0, ...lt.map(t => t[1])), \
           blocking: lt.reduce((s, t) => s + t[1] - 50, 0), \
           flushes: fl.length, longest_flush: Math.max(0, ...fl.map(t => t[1])), \
           transitions: Number.parseInt(document.getElementById('activity-count').textContent) - {seen_before} }}; }})()"
    ));
    // Every row shows the state: the chip's count is not taken on trust.
    page.wait(
        WAIT,
        &format!("every row {state}"),
        &format!("[...document.querySelectorAll('#rows tr')].filter(r => r.children[1].textContent === '{state}').length === {n}"),
    );
    figures
}

/// Every instance's row shows the state and pid the API reports.
fn check_rows_match(page: &mut Page, statuses: &[Value]) {
    let want: Vec<String> = statuses
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s["name"].as_str().unwrap(),
                s["state"].as_str().unwrap(),
                s["pid"].as_i64().map_or(String::new(), |p| p.to_string())
            )
        })
        .collect();
    let mut want = want;
    want.sort();
    let want = want.join("\n");
    page.wait(
        WAIT,
        "every row to match the API",
        &format!(
            "(() => {{ const got = [...document.querySelectorAll('#rows tr')].map(r => \
             `${{r.dataset.name}} ${{r.children[1].textContent}} ${{r.children[2].textContent}}`).sort().join('\\n'); \
             return got === {}; }})()",
            js(&want)
        ),
    );
}

/// A local user the daemon does not let in by uid types the token into the page: the assets load
/// without it, the API asks for it (with the daemon's sentence), a wrong one is refused, the
/// right one works, and it ends up nowhere but in the page's memory.
/// A read-only token sees everything and can stop nothing: the button's refusal is shown as the
/// daemon's sentence, and the program keeps running.
#[test]
fn a_read_only_token_sees_the_table_and_its_stop_is_refused_with_the_sentence() {
    if !browser::available(
        "a_read_only_token_sees_the_table_and_its_stop_is_refused_with_the_sentence",
    ) {
        return;
    }
    const TOKEN: &str = "read-only-t0ken";
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("viewer.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut dash = Dashboard::start(
        &[("svc.toml", "command = \"sleep 3600\"\n")],
        &format!(
            "[server]\ntokens = [{{ name = \"viewer\", file = \"{}\", scope = \"read\" }}]\n",
            token_file.display()
        ),
    );
    let pid = dash.wait_states(&["svc"], "running")[0]["pid"]
        .as_i64()
        .unwrap();

    let browser = Chromium::launch(RunAs::Nobody);
    let mut page = browser.new_page(1280, 800);
    page.navigate(&dash.ui);
    page.wait(
        WAIT,
        "the token dialog",
        "document.getElementById('token-dialog').open",
    );
    page.type_into("#token-input", TOKEN);
    page.click("#token-use");
    page.wait(
        WAIT,
        "the connection to go live",
        "document.getElementById('conn').dataset.state === 'live'",
    );
    wait_row(&mut page, "svc", "running", Some(pid));
    page.click(&format!("{} button[data-act=stop]", row("svc")));
    page.wait(
        WAIT,
        "the refusal in the banner",
        "!document.getElementById('banner').hidden && document.getElementById('banner-text').textContent.includes('\"viewer\" has the read scope')",
    );
    let text = page.eval("document.getElementById('banner-text').textContent");
    assert!(text.as_str().unwrap().contains("needs operate"), "{text}");
    // Nothing was stopped.
    assert_eq!(
        dash.wait_states(&["svc"], "running")[0]["pid"].as_i64(),
        Some(pid)
    );
}

#[test]
fn a_browser_of_another_user_is_asked_for_the_token_and_keeps_it_in_memory() {
    if !browser::available(
        "a_browser_of_another_user_is_asked_for_the_token_and_keeps_it_in_memory",
    ) {
        return;
    }
    const TOKEN: &str = "t0ken-for-the-dashboard-test";
    let mut dash = Dashboard::start(
        &[("svc.toml", "command = \"sleep 3600\"\n")],
        &format!("[server]\ntoken = \"{TOKEN}\"\n"),
    );
    let pid = dash.wait_states(&["svc"], "running")[0]["pid"]
        .as_i64()
        .unwrap();

    let browser = Chromium::launch(RunAs::Nobody);
    let mut page = browser.new_page(1280, 800);
    page.navigate(&dash.ui);
    // The page itself loaded (its script runs), the API refused nobody and said why.
    page.wait(
        WAIT,
        "the token dialog",
        "document.getElementById('token-dialog').open",
    );
    page.wait(
        WAIT,
        "the daemon's sentence",
        "document.getElementById('token-reason').textContent.includes('nobody (uid 65534) may not use this provisr daemon')",
    );
    assert_eq!(page.eval("document.querySelectorAll('#rows tr').length"), 0);

    page.type_into("#token-input", "not-the-token");
    page.click("#token-use");
    page.wait(
        WAIT,
        "a wrong token to be refused",
        "document.getElementById('token-dialog').open && document.getElementById('token-reason').textContent.includes('the bearer token is wrong')",
    );

    page.type_into("#token-input", TOKEN);
    page.click("#token-use");
    page.wait(
        WAIT,
        "the connection to go live",
        "document.getElementById('conn').dataset.state === 'live'",
    );
    wait_row(&mut page, "svc", "running", Some(pid));
    assert_eq!(
        page.eval("document.getElementById('token-dialog').open"),
        false
    );

    // With the token, the buttons work too.
    page.click(&format!("{} button[data-act=stop]", row("svc")));
    dash.wait_states(&["svc"], "stopped");
    wait_row(&mut page, "svc", "stopped", None);

    // Nowhere but in memory: no cookie, no storage, no URL (the page's or any it requested).
    let leaks = page.eval(&format!(
        "(() => {{ const t = {t}; const urls = [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]; \
         return {{ cookie: document.cookie, local: localStorage.length, session: sessionStorage.length, \
           in_urls: urls.filter(u => u.includes(t)), input: document.getElementById('token-input').value, \
           requests: urls.length }}; }})()",
        t = js(TOKEN)
    ));
    assert_eq!(leaks["cookie"], "", "{leaks}");
    assert_eq!(leaks["local"], 0, "{leaks}");
    assert_eq!(leaks["session"], 0, "{leaks}");
    assert_eq!(leaks["in_urls"], serde_json::json!([]), "{leaks}");
    assert_eq!(
        leaks["input"], "",
        "the field is cleared once the token is taken"
    );
    let cookies = page.call("Network.getAllCookies", serde_json::json!({}));
    assert_eq!(cookies["cookies"], serde_json::json!([]), "{cookies}");
    // The profile on disk holds no copy either (Chromium may write its caches lazily, but a
    // token typed into a password field and sent as a header must never be among them).
    let mut stack = vec![browser.dir().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                    "{} holds the token",
                    path.display()
                );
            }
        }
    }
    page.assert_no_problems();
}

/// `curl` as `nobody`, without credentials: (status, headers and body).
fn curl_nobody(method: &str, url: &str) -> (u16, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-i",
            "--path-as-is",
            "-X",
            method,
            url,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run curl as nobody");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status from curl: {text:?}"));
    (code, text)
}

/// The assets are the only thing served without credentials, with the strict headers; the data
/// behind them is not. Runs without a browser.
#[test]
fn the_assets_are_open_and_the_data_is_not() {
    let dash = Dashboard::start(&[("svc.toml", "command = \"sleep 3600\"\n")], "");
    let root = dash.ui.trim_end_matches("/ui").to_string();
    for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
        let (code, text) = curl_nobody("GET", &format!("{root}{path}"));
        assert_eq!(code, 200, "{path}: {text}");
        let head = text.to_ascii_lowercase();
        for h in [
            "content-security-policy: default-src 'none'; script-src 'self';",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
        ] {
            assert!(head.contains(h), "{path} lacks {h}: {text}");
        }
    }
    let (_, page) = curl_nobody("GET", &dash.ui);
    assert!(
        page.contains("<meta name=\"provisr-api\" content=\"/api\">"),
        "{page}"
    );
    for (method, path) in [
        ("GET", "/api/status"),
        ("GET", "/api/stats"),
        ("GET", "/api/events"),
        ("GET", "/ui/../api/status"),
        ("GET", "/ui/nothing.js"),
        ("POST", "/api/stop?name=svc"),
    ] {
        let (code, text) = curl_nobody(method, &format!("{root}{path}"));
        assert_eq!(code, 403, "{method} {path}: {text}");
    }
    // The exemption is for reading the assets only: a POST is judged like any request.
    let (code, text) = curl_nobody("POST", &dash.ui);
    assert_eq!(code, 403, "{text}");
}

/// A dashboard (or `provisr logs -f`) left open does not hold up the daemon's shutdown: its
/// streams see the children stop, then end.
#[test]
fn open_streams_end_when_the_daemon_stops() {
    use std::io::{Read, Write};
    let mut dash = Dashboard::start(&[("svc.toml", "command = \"sleep 3600\"\n")], "");
    dash.wait_states(&["svc"], "running");
    let addr = dash
        .api
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let open = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\n\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "{path} closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        (s, seen)
    };
    let mut streams = [open("/api/events"), open("/api/logs?name=svc&follow=true")];
    // The guard and the directory stay until the end of the test.
    let Dashboard {
        daemon,
        guard: _guard,
        dir: _dir,
        ..
    } = dash;
    let code = daemon.terminate();
    assert_eq!(code, Some(0), "the daemon stopped on its own");
    for (s, seen) in &mut streams {
        // Everything up to the end of the stream: read_to_end returns once the daemon closed it.
        s.read_to_end(seen).expect("the stream ends");
    }
    let events = String::from_utf8_lossy(&streams[0].1);
    assert!(
        events.contains("\"to\":\"stopped\""),
        "the stop was streamed: {events}"
    );
}

/// `GET /stats` counts an automatic restart in the last minute's window and since the start, and
/// describes the daemon process itself. Runs without a browser.
#[test]
fn stats_count_a_restart_and_describe_the_daemon() {
    let mut dash = Dashboard::start(
        &[(
            "svc.toml",
            "command = \"sleep 3600\"\nauto_restart = true\nrestart_interval = \"100ms\"\n",
        )],
        "",
    );
    let old = dash.wait_states(&["svc"], "running")[0]["pid"]
        .as_i64()
        .unwrap();
    let stats = |dash: &Dashboard| -> Value {
        ureq::get(&format!("{}/stats", dash.api))
            .call()
            .expect("GET /stats")
            .body_mut()
            .read_json()
            .expect("stats JSON")
    };
    let before = stats(&dash);
    assert_eq!(before["restarts"]["last_minute"], 0, "{before}");
    assert_eq!(
        before["restarts"]["per_second"].as_array().unwrap().len(),
        60
    );
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    wait_for(WAIT, "a new process", || {
        let s = dash.status("svc");
        (s["state"] == "running" && s["pid"].as_i64() != Some(old)).then_some(())
    });
    let after = stats(&dash);
    assert_eq!(after["restarts"]["last_minute"], 1, "{after}");
    assert_eq!(after["restarts"]["since_start"], 1, "{after}");
    let per_second = after["restarts"]["per_second"].as_array().unwrap();
    assert_eq!(per_second.iter().filter_map(Value::as_u64).sum::<u64>(), 1);
    let daemon = &after["daemon"];
    assert!(
        daemon["resident_memory_bytes"].as_u64().unwrap() > 0,
        "{after}"
    );
    assert!(daemon["reconcile_passes"].as_u64().unwrap() > 0, "{after}");
    assert!(daemon["uptime_seconds"].as_f64().unwrap() > 0.0, "{after}");
}
