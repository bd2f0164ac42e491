//! A real browser for the dashboard's tests: the distribution's headless Chromium, driven over
//! the Chrome DevTools Protocol (JSON messages on a websocket).
//!
//! Chromium runs in a process group of its own with a fresh profile and `HOME` in a temporary
//! directory; dropping [`Chromium`] kills the group and waits until every process it started
//! is gone — including the crash handlers, which leave the group (they start their own session)
//! and are recognised by that unique directory on their command line.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::util::wait_for;

/// Where Debian's `chromium` package puts its launcher.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether Chromium is installed; if not, prints a notice saying the calling test checks
/// nothing (`.ci/run` installs it; a bare Rust toolchain skips the browser tests).
pub fn available(test: &str) -> bool {
    let there = Path::new(CHROMIUM).exists();
    if !there {
        // Straight to stderr: the test harness hides what `eprintln!` prints from passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: {CHROMIUM} is not installed, so the browser test {test} checks nothing; \
             install it (apt-get install chromium, as .ci/run does) to run it"
        );
    }
    there
}

/// A headless Chromium, killed with everything it started when dropped.
pub struct Chromium {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// What Chromium printed, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Who the browser runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// The test's own user (root here).
    Me,
    /// `nobody`, through `setpriv`: a local user the daemon does not let in by uid.
    Nobody,
}

impl Chromium {
    /// Starts Chromium (check [`available`] first).
    pub fn launch(who: RunAs) -> Chromium {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("profile dir");
        let mut cmd = match who {
            RunAs::Me => Command::new(CHROMIUM),
            RunAs::Nobody => {
                for p in [dir.path(), profile.as_path()] {
                    std::os::unix::fs::chown(p, Some(65534), Some(65534)).expect("chown");
                }
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    "--",
                    CHROMIUM,
                ]);
                c
            }
        };
        cmd.args([
            "--headless",
            // Root cannot use Chromium's sandbox; the pages loaded are the test's own.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            // The machine has no network: nothing may try to reach one.
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--mute-audio",
            "--remote-debugging-port=0",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_CACHE_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd.spawn().expect("spawn chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("DevTools listening on ws://") {
                    let _ = tx.send(line[at + "DevTools listening on ".len()..].to_string());
                }
                // The machine has no D-Bus: those complaints are noise.
                if !line.contains("dbus") {
                    log2.lock().unwrap().push(line);
                }
            }
        });
        let mut browser = Chromium {
            child,
            dir,
            port: 0,
            log,
        };
        let ws = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => panic!(
                "chromium did not start its DevTools server: {:?}",
                browser.log.lock().unwrap()
            ),
        };
        // ws://127.0.0.1:PORT/devtools/browser/ID
        let port = ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {ws}"));
        browser.port = port;
        browser
    }

    /// A new tab showing `about:blank`, `width`×`height` CSS pixels, with the protocol domains
    /// the tests use enabled.
    pub fn new_page(&self, width: u32, height: u32) -> Page {
        let targets: Value = ureq::put(&format!(
            "http://127.0.0.1:{}/json/new?about:blank",
            self.port
        ))
        .send_empty()
        .expect("open a tab")
        .body_mut()
        .read_json()
        .expect("target JSON");
        let url = targets["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no websocket in {targets}"))
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to chromium");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("open the tab's websocket");
        let mut page = Page {
            ws,
            next_id: 0,
            problems: Vec::new(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({}));
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        page.call(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        );
        page
    }

    /// The temporary directory Chromium runs in (its profile and `HOME`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pids of live processes started by this browser outside its process group.
    fn strays(&self) -> Vec<i32> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        crate::util::proc_stats()
            .filter(|s| s.state != 'Z')
            .filter(|s| {
                std::fs::read(format!("/proc/{}/cmdline", s.pid))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            })
            .map(|s| s.pid)
            .collect()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left: Vec<i32> = crate::util::group_members(pgid)
                .into_iter()
                .chain(self.strays())
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                // Ours beyond doubt: in our group, or carrying our unique directory.
                for pid in left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One tab, over its own DevTools websocket.
pub struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Console errors, uncaught exceptions and browser log errors (CSP violations among them).
    pub problems: Vec<String>,
}

impl Page {
    /// Sends one protocol command and returns its result; panics on a protocol error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let v = self.read(deadline, method);
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn read(&mut self, deadline: Instant, what: &str) -> Value {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: no answer within {CALL_TIMEOUT:?}");
            self.ws
                .get_mut()
                .set_read_timeout(Some(left))
                .expect("read timeout");
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).expect("protocol JSON")
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => panic!("{what}: the DevTools connection failed: {e}"),
            }
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                self.problems.push(format!(
                    "uncaught: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a.get("value")
                            .or_else(|| a.get("description"))
                            .map(Value::to_string)
                            .unwrap_or_default()
                    })
                    .collect();
                self.problems
                    .push(format!("console.error: {}", args.join(" ")));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                let e = &p["entry"];
                // A refused request is the page's business (it shows the sentence); anything
                // else the browser logs as an error (a CSP violation, a failed asset) is a bug.
                let refused = e["source"] == "network"
                    && e["text"].as_str().is_some_and(|t| {
                        t.contains("status of 401") || t.contains("status of 403")
                    });
                if !refused {
                    self.problems
                        .push(format!("{}: {} {}", e["source"], e["text"], e["url"]));
                }
            }
            _ => {}
        }
    }

    /// Reads and records whatever events arrived, without waiting.
    pub fn drain(&mut self) {
        // A no-op command: its answer comes after every event queued before it.
        self.call("Runtime.evaluate", json!({"expression": "0"}));
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value as JSON.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(d) = r.get("exceptionDetails") {
            panic!(
                "evaluating {js}: {} {}",
                d["text"], d["exception"]["description"]
            );
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `js` until it returns something other than `null`, `false`, `0` or `""`.
    pub fn wait(&mut self, timeout: Duration, what: &str, js: &str) -> Value {
        wait_for(timeout, what, || {
            let v = self.eval(js);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            truthy.then_some(v)
        })
    }

    /// Loads `url` and waits for its `load` event.
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        if let Some(e) = r.get("errorText") {
            panic!("cannot load {url}: {e}");
        }
        self.wait(
            Duration::from_secs(30),
            "the page to load",
            "document.readyState === 'complete'",
        );
    }

    /// Clicks the middle of the element `selector` names with the mouse, as a person would:
    /// it must be visible and not covered.
    pub fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             const x = r.left + r.width / 2, y = r.top + r.height / 2; \
             const top = document.elementFromPoint(x, y); \
             return {{x, y, hit: top === e || e.contains(top), disabled: !!e.disabled}}; }})()",
            sel = serde_json::to_string(selector).unwrap()
        );
        let at = self.wait(Duration::from_secs(10), selector, &js);
        assert_eq!(at["hit"], true, "{selector} is covered by another element");
        assert_eq!(at["disabled"], false, "{selector} is disabled");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": at["x"], "y": at["y"], "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Focuses `selector` and types `text` into it.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.eval(&format!(
            "document.querySelector({}).focus()",
            serde_json::to_string(selector).unwrap()
        ));
        self.call("Input.insertText", json!({"text": text}));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = data_encoding::BASE64
            .decode(r["data"].as_str().expect("image data").as_bytes())
            .expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Fails with every problem the page reported so far.
    pub fn assert_no_problems(&mut self) {
        self.drain();
        assert!(
            self.problems.is_empty(),
            "the page reported problems: {:#?}",
            self.problems
        );
    }
}

/// Where a test's screenshots go: `PROVISR_UI_SCREENSHOTS` if set (e.g. `docs`), else the
/// test target's temporary directory.
pub fn screenshot_path(name: &str) -> PathBuf {
    match std::env::var_os("PROVISR_UI_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name),
    }
}
