//! `provisr-bench`: the benchmark suite of issue 6 (see `docs/benchmarks.md`).
//!
//! Drives the real release `provisr` binary (the one next to this executable) as a separate
//! process on 127.0.0.1 port 0, in temporary directories, and reports every figure as a ratio to
//! a baseline measured in the same run: a minimal direct spawner, killer or wait-and-respawn
//! loop, an idle `sleep`, a producer writing straight to its file, a bare inotify watcher. It
//! ends every process it started, by process group, on success, on error and on SIGINT/SIGTERM.
//!
//! `cargo run --release --bin provisr-bench [-- --quick] [-- --only NAME[,NAME…]]`.
//! Exit status: 0 when every figure was measured (a missed target is a finding, not a failure),
//! 1 when the harness itself failed, 2 for bad usage.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Every figure `--only` accepts, in the order of the table.
const FIGURES: &[&str] = &[
    "spawn",
    "stop",
    "restart",
    "idle",
    "logs",
    "reconcile",
    "api",
    "rss",
    "saved",
];

/// 63 characters and a newline: the log writer prints 64-byte lines (as `benches/log_capture.rs`).
const LINE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";
/// supervisord's CPU time to capture 256 MiB of stdout, the reference of issue 6 (not measured).
const SUPERVISORD_CPU_PER_256MIB: f64 = 0.28;
/// How long any single wait of the harness may take before it counts as a harness error.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long a saved program file may take to run before the figure counts as missed.
const SAVED_GIVE_UP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Options

/// Repetitions and windows; the sizes of the figures (N, MiB, programs) never change.
struct Sizes {
    spawn_runs: usize,
    restart_samples: usize,
    saved_samples: usize,
    idle_window: Duration,
    log_mib: u64,
    log_runs: usize,
    passes: usize,
    reloads: usize,
    api_requests: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                spawn_runs: 1,
                restart_samples: 50,
                saved_samples: 10,
                idle_window: Duration::from_secs(5),
                log_mib: 256,
                log_runs: 1,
                passes: 5,
                reloads: 2,
                api_requests: 100,
            }
        } else {
            Sizes {
                spawn_runs: 3,
                restart_samples: 250,
                saved_samples: 20,
                idle_window: Duration::from_secs(20),
                log_mib: 256,
                log_runs: 3,
                passes: 20,
                reloads: 5,
                api_requests: 100,
            }
        }
    }
}

struct Opts {
    quick: bool,
    only: Option<BTreeSet<String>>,
}

impl Opts {
    fn want(&self, figure: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(figure))
    }

    fn want_any(&self, figures: &[&str]) -> bool {
        figures.iter().any(|f| self.want(f))
    }
}

const USAGE: &str = "usage: provisr-bench [--quick] [--only NAME[,NAME...]]
  --quick       fewer repetitions and a 5 s idle window (same sizes)
  --only NAMES  run only these figures: spawn, stop, restart, idle, logs, reconcile, api, rss, saved";

enum Mode {
    Bench(Opts),
    RespawnLoop,
    Help,
}

fn parse_args() -> Result<Mode, String> {
    let mut quick = false;
    let mut only: Option<BTreeSet<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let list = match arg.as_str() {
            "--quick" => {
                quick = true;
                continue;
            }
            "--respawn-loop" => return Ok(Mode::RespawnLoop),
            "-h" | "--help" => return Ok(Mode::Help),
            "--only" => args.next().ok_or("--only needs a figure name")?,
            a if a.starts_with("--only=") => a["--only=".len()..].to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !FIGURES.contains(&name) {
                return Err(format!(
                    "unknown figure {name:?}; the figures are {}",
                    FIGURES.join(", ")
                ));
            }
            only.get_or_insert_with(BTreeSet::new)
                .insert(name.to_string());
        }
    }
    Ok(Mode::Bench(Opts { quick, only }))
}

// ---------------------------------------------------------------------------------------------
// Cleanup: everything started is registered so that an interrupt can end it too.

/// Processes and directories to clean up if the run is interrupted; the guards below remove
/// their entries when they clean up themselves.
struct Registry {
    daemons: BTreeSet<i32>,
    groups: BTreeSet<i32>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    daemons: BTreeSet::new(),
    groups: BTreeSet::new(),
    dirs: BTreeSet::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives SIGINT, SIGTERM and SIGHUP to one thread that ends what is registered and exits.
/// Handlers, not a blocked mask plus `sigwait`: a blocked mask is inherited by every child (the
/// daemon would then never see its SIGTERM), handlers are reset by `exec`.
fn install_interrupt_cleanup() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the signal runtime")?;
    // Registered here, before any process starts, so no signal arrives unhandled.
    let (mut int, mut term, mut hup) = rt
        .block_on(async {
            Ok::<_, io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        })
        .context("installing the signal handlers")?;
    thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let sig = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                }
            });
            eprintln!("provisr-bench: {sig}, ending every process it started");
            let reg = {
                let mut r = registry();
                Registry {
                    daemons: std::mem::take(&mut r.daemons),
                    groups: std::mem::take(&mut r.groups),
                    dirs: std::mem::take(&mut r.dirs),
                }
            };
            for pid in reg.daemons {
                stop_daemon_tree(pid, Duration::from_secs(10));
            }
            for pg in reg.groups {
                let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
            }
            for dir in reg.dirs {
                let _ = fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        })
        .context("starting the interrupt thread")?;
    Ok(())
}

/// A fields view of `/proc/PID/stat` after the command name: index 0 is field 3 (state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// Live children of `parent`, each with its process group.
fn children_of(parent: i32) -> Vec<(i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            let ppid: i32 = f.get(1)?.parse().ok()?;
            let pgrp: i32 = f.get(2)?.parse().ok()?;
            (ppid == parent && f[0] != "Z").then_some((pid, pgrp))
        })
        .collect()
}

/// Waits until `pid` is gone or a zombie.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// SIGTERM to a daemon (which stops its children), SIGKILL if it does not exit within `grace`,
/// then SIGKILL to the process group of every child it had that is still alive. Returns how
/// many children outlived the daemon.
fn stop_daemon_tree(pid: i32, grace: Duration) -> usize {
    let mut kids: BTreeSet<(i32, i32)> = children_of(pid).into_iter().collect();
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if !wait_gone(pid, grace) {
        kids.extend(children_of(pid));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
    let mut left = 0;
    for (kid, pgrp) in kids {
        if alive(kid) {
            left += 1;
            // Each child leads its own group; a reused pid would not share it.
            let target = if pgrp == kid { pgrp } else { kid };
            let _ = killpg(Pid::from_raw(target), Signal::SIGKILL);
        }
    }
    left
}

/// A temporary directory, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(label: &str) -> Result<Scratch> {
        let path =
            std::env::temp_dir().join(format!("provisr-bench-{}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        registry().dirs.insert(path.clone());
        Ok(Scratch { path })
    }

    fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        registry().dirs.remove(&self.path);
    }
}

/// Children this process started directly, each in its own process group; killed by group
/// (SIGKILL) and reaped when dropped.
#[derive(Default)]
struct Kids {
    children: Vec<Child>,
}

impl Kids {
    fn adopt(&mut self, child: Child) -> i32 {
        let pid = child.id() as i32;
        registry().groups.insert(pid);
        self.children.push(child);
        pid
    }

    /// `cmd` in a process group of its own.
    fn spawn(&mut self, cmd: &mut Command) -> Result<i32> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(self.adopt(child))
    }

    /// `sig` to every group, then reap every child.
    fn signal_and_reap(&mut self, sig: Signal) {
        for c in &self.children {
            let _ = killpg(Pid::from_raw(c.id() as i32), sig);
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
            registry().groups.remove(&(c.id() as i32));
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.signal_and_reap(Signal::SIGKILL);
    }
}

fn sleep_cmd() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------------
// HTTP: a minimal HTTP/1.1 client over one keep-alive connection, and an SSE reader.

/// One `HTTP/1.1` keep-alive connection to the daemon; requests carry no body.
struct Http {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// Reads a status line and headers; `None` when the peer closed before sending anything.
fn read_head(r: &mut impl BufRead) -> Result<Option<Head>> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).context("reading the status line"),
        Ok(_) => {}
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP status line: {line:?}"))?;
    let mut head = Head {
        status,
        ..Head::default()
    };
    loop {
        line.clear();
        r.read_line(&mut line).context("reading a header")?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(Some(head));
        }
        let Some((k, v)) = l.split_once(':') else {
            bail!("malformed header {l:?}");
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => head.content_length = v.parse().ok(),
            "transfer-encoding" => head.chunked = v.contains("chunked"),
            "connection" => head.close = v.contains("close"),
            _ => {}
        }
    }
}

/// One chunk of a chunked body; `None` after the last one (and its trailers).
fn read_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line).context("reading a chunk size")? == 0 {
        bail!("the connection closed inside a chunked body");
    }
    let size_text = line.trim().split(';').next().unwrap_or("");
    let size =
        usize::from_str_radix(size_text, 16).with_context(|| format!("bad chunk size {line:?}"))?;
    if size == 0 {
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                return Ok(None);
            }
        }
    }
    let mut data = vec![0; size];
    r.read_exact(&mut data).context("reading a chunk")?;
    let mut crlf = [0; 2];
    r.read_exact(&mut crlf).context("reading a chunk end")?;
    Ok(Some(data))
}

impl Http {
    fn new(addr: &str) -> Http {
        Http {
            addr: addr.to_string(),
            conn: None,
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>> {
        let s = TcpStream::connect(&self.addr)
            .with_context(|| format!("connecting to {}", self.addr))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(PATIENCE))?;
        Ok(BufReader::with_capacity(256 << 10, s))
    }

    /// `METHOD path` (body-less); reconnects once if a kept-alive connection turned out closed.
    fn call(&mut self, method: &str, path: &str) -> Result<Reply> {
        for _ in 0..2 {
            let reused = self.conn.is_some();
            let mut conn = match self.conn.take() {
                Some(c) => c,
                None => self.connect()?,
            };
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                self.addr
            );
            let head = match conn.get_mut().write_all(req.as_bytes()) {
                Ok(()) => read_head(&mut conn)?,
                Err(_) => None,
            };
            let Some(head) = head else {
                if reused {
                    continue;
                }
                bail!("{method} {path}: the daemon closed the connection");
            };
            let body = if head.chunked {
                let mut body = Vec::new();
                while let Some(c) = read_chunk(&mut conn)? {
                    body.extend_from_slice(&c);
                }
                body
            } else if let Some(n) = head.content_length {
                let mut body = vec![0; n];
                conn.read_exact(&mut body)
                    .with_context(|| format!("{method} {path}: reading the body"))?;
                body
            } else {
                let mut body = Vec::new();
                conn.read_to_end(&mut body)?;
                body
            };
            if !head.close && (head.chunked || head.content_length.is_some()) {
                self.conn = Some(conn);
            }
            return Ok(Reply {
                status: head.status,
                body,
            });
        }
        bail!("{method} {path}: the daemon closed the connection twice")
    }

    /// A 2xx JSON answer, or an error quoting the daemon's.
    fn json(&mut self, method: &str, path: &str) -> Result<Value> {
        let r = self.call(method, path)?;
        ensure!(
            (200..300).contains(&r.status),
            "{method} {path}: HTTP {}: {}",
            r.status,
            r.text()
        );
        serde_json::from_slice(&r.body).with_context(|| format!("{method} {path}: not JSON"))
    }
}

/// A state transition as received on `/events`.
struct Transition {
    /// When this process read it off the socket.
    at: Instant,
    name: String,
    to: String,
}

enum Incoming {
    Transition(Transition),
    Lagged(u64),
    Ended(String),
}

/// Server-sent events: the event type and data lines of the event being read.
#[derive(Default)]
struct SseParser {
    pending: Vec<u8>,
    kind: String,
    data: String,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], at: Instant, out: &mut Vec<Incoming>) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.pending[start..start + nl]).into_owned();
            start += nl + 1;
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                let kind = std::mem::take(&mut self.kind);
                let data = std::mem::take(&mut self.data);
                match kind.as_str() {
                    "transition" => {
                        if let Ok(v) = serde_json::from_str::<Value>(&data) {
                            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                            out.push(Incoming::Transition(Transition {
                                at,
                                name: s("name"),
                                to: s("to"),
                            }));
                        }
                    }
                    "lagged" => out.push(Incoming::Lagged(data.trim().parse().unwrap_or(0))),
                    _ => {}
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                self.kind = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        self.pending.drain(..start);
    }
}

/// A subscription to `GET /events`; when `connect` returns, the daemon has subscribed (the
/// response head arrived), so no later transition is missed. Closed when dropped.
struct Events {
    rx: mpsc::Receiver<Incoming>,
    sock: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl Events {
    fn connect(addr: &str, base: &str) -> Result<Events> {
        let sock = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        sock.set_nodelay(true)?;
        let mut w = sock.try_clone()?;
        write!(
            w,
            "GET {base}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )?;
        let mut r = BufReader::with_capacity(256 << 10, sock.try_clone()?);
        sock.set_read_timeout(Some(PATIENCE))?;
        let head = read_head(&mut r)?.ok_or_else(|| anyhow!("/events: connection closed"))?;
        ensure!(head.status == 200, "/events: HTTP {}", head.status);
        sock.set_read_timeout(None)?;
        let (tx, rx) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("sse".into())
            .spawn(move || sse_reader(r, head.chunked, tx))?;
        Ok(Events {
            rx,
            sock,
            reader: Some(reader),
        })
    }

    fn next(&self, deadline: Instant, what: &str) -> Result<Incoming> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("timed out waiting on /events for {what}"))
    }

    /// The first transition matching `pred`, skipping others; `None` when `timeout` passes.
    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Transition) -> bool,
    ) -> Result<Option<Transition>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let item = match self.rx.recv_timeout(left) {
                Ok(item) => item,
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("/events reader ended"),
            };
            match item {
                Incoming::Transition(t) if pred(&t) => return Ok(Some(t)),
                Incoming::Transition(_) => {}
                Incoming::Lagged(n) => bail!("/events lagged by {n} waiting for {what}"),
                Incoming::Ended(why) => bail!("/events ended waiting for {what}: {why}"),
            }
        }
    }

    /// [`Events::wait_until`], a timeout being an error.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Transition) -> bool,
    ) -> Result<Transition> {
        self.wait_until(what, timeout, pred)?
            .ok_or_else(|| anyhow!("timed out after {timeout:?} waiting on /events for {what}"))
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn sse_reader(mut r: BufReader<TcpStream>, chunked: bool, tx: mpsc::Sender<Incoming>) {
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        let data = if chunked {
            match read_chunk(&mut r) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    let _ = tx.send(Incoming::Ended("end of stream".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Ended(format!("{e:#}")));
                    return;
                }
            }
        } else {
            match r.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Incoming::Ended("end of stream".into()));
                    return;
                }
                Ok(n) => buf[..n].to_vec(),
                Err(e) => {
                    let _ = tx.send(Incoming::Ended(e.to_string()));
                    return;
                }
            }
        };
        parser.feed(&data, Instant::now(), &mut out);
        for item in out.drain(..) {
            if tx.send(item).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test

/// `provisr serve` on 127.0.0.1 port 0 in its own process group. Dropping it stops it and every
/// child it had (see [`stop_daemon_tree`]).
struct DaemonProc {
    child: Child,
    pid: i32,
    addr: String,
    base: String,
    log: Arc<Mutex<VecDeque<String>>>,
    /// From spawning the process to reading its "listening" line.
    to_listen: Duration,
    done: bool,
}

impl DaemonProc {
    fn start(bin: &Path, dir: &Path, config: &Path) -> Result<DaemonProc> {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .current_dir(dir)
            .arg("serve")
            .args(["--api-listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {} serve", bin.display()))?;
        let pid = child.id() as i32;
        registry().daemons.insert(pid);
        let stderr = child.stderr.take();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = stderr {
            let log = log.clone();
            thread::Builder::new()
                .name("daemon-log".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        if let Some(at) = line.find("listening on http://") {
                            let _ = tx.send(line[at + "listening on http://".len()..].to_string());
                        }
                        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                        if l.len() >= 200 {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                })?;
        }
        let mut d = DaemonProc {
            child,
            pid,
            addr: String::new(),
            base: String::new(),
            log,
            to_listen: Duration::ZERO,
            done: false,
        };
        let url = rx.recv_timeout(PATIENCE).map_err(|_| {
            anyhow!(
                "the daemon did not report listening; its log:\n{}",
                d.log_tail()
            )
        })?;
        d.to_listen = t0.elapsed();
        let url = url.trim();
        let (addr, base) = url.split_at(url.find('/').unwrap_or(url.len()));
        d.addr = addr.to_string();
        d.base = base.to_string();
        Ok(d)
    }

    fn log_tail(&self) -> String {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.iter()
            .rev()
            .take(20)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn http(&self) -> Http {
        Http::new(&self.addr)
    }

    fn events(&self) -> Result<Events> {
        Events::connect(&self.addr, &self.base)
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM and wait for the daemon to exit (it stops its children first); the time it took.
    fn terminate(mut self) -> Result<Duration> {
        let kids = children_of(self.pid);
        let t0 = Instant::now();
        kill(Pid::from_raw(self.pid), Signal::SIGTERM).context("SIGTERM to the daemon")?;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if t0.elapsed() > PATIENCE {
                bail!(
                    "the daemon did not exit within {PATIENCE:?} of SIGTERM; its log:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(2));
        };
        let took = t0.elapsed();
        self.done = true;
        registry().daemons.remove(&self.pid);
        let left: Vec<i32> = kids.iter().map(|k| k.0).filter(|&k| alive(k)).collect();
        for &k in &left {
            let _ = killpg(Pid::from_raw(k), Signal::SIGKILL);
        }
        ensure!(
            status.success(),
            "the daemon exited with {status}; its log:\n{}",
            self.log_tail()
        );
        ensure!(
            left.is_empty(),
            "{} children outlived the daemon's shutdown",
            left.len()
        );
        Ok(took)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if !self.done {
            stop_daemon_tree(self.pid, Duration::from_secs(30));
            let _ = self.child.wait();
            registry().daemons.remove(&self.pid);
        }
    }
}

/// `config.toml` plus a `programs` directory in `scratch`.
fn project(scratch: &Scratch, metrics: bool) -> Result<(PathBuf, PathBuf)> {
    let programs = scratch.join("programs");
    fs::create_dir_all(&programs)?;
    let config = scratch.join("config.toml");
    let mut text = String::from("programs_directory = \"programs\"\n");
    if metrics {
        text.push_str("\n[metrics]\nenabled = true\n");
    }
    fs::write(&config, text)?;
    Ok((config, programs))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

// ---------------------------------------------------------------------------------------------
// /proc measurements

#[derive(Clone, Default)]
struct Usage {
    /// Field 14+15 of `/proc/PID/stat`: every thread, living or gone, in clock ticks.
    ticks: u64,
    /// Per thread: name, CPU time (`schedstat`, ns) and context switches (both kinds).
    threads: BTreeMap<i32, (String, u64, u64)>,
}

impl Usage {
    fn of(pid: i32) -> Result<Usage> {
        let f = stat_fields(pid).ok_or_else(|| anyhow!("no /proc/{pid}/stat"))?;
        let num = |i: usize| -> Result<u64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {}", i + 3))
        };
        let ticks = num(11)? + num(12)?;
        let mut threads = BTreeMap::new();
        for e in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            let dir = e.path();
            // A thread may end between listing and reading: skip it.
            let (Ok(comm), Ok(sched), Ok(status)) = (
                fs::read_to_string(dir.join("comm")),
                fs::read_to_string(dir.join("schedstat")),
                fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let ns = sched
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            threads.insert(tid, (comm.trim().to_string(), ns, switches));
        }
        Ok(Usage { ticks, threads })
    }

    /// CPU ns and switches from `self` to `later`, over threads present at both ends, plus a
    /// per-thread breakdown and how many threads came or went.
    fn delta(&self, later: &Usage) -> UsageDelta {
        let mut d = UsageDelta {
            ticks: later.ticks.saturating_sub(self.ticks),
            ..UsageDelta::default()
        };
        for (tid, (comm, ns, sw)) in &later.threads {
            match self.threads.get(tid) {
                Some((_, ns0, sw0)) => {
                    let (dn, ds) = (ns.saturating_sub(*ns0), sw.saturating_sub(*sw0));
                    d.cpu_ns += dn;
                    d.switches += ds;
                    if ds > 0 || dn > 0 {
                        d.by_thread.push((format!("{comm}/{tid}"), dn, ds));
                    }
                }
                None => d.threads_changed += 1,
            }
        }
        d.threads_changed += self
            .threads
            .keys()
            .filter(|t| !later.threads.contains_key(t))
            .count();
        d.by_thread.sort_by_key(|t| std::cmp::Reverse(t.2));
        d
    }
}

#[derive(Default)]
struct UsageDelta {
    ticks: u64,
    cpu_ns: u64,
    switches: u64,
    threads_changed: usize,
    by_thread: Vec<(String, u64, u64)>,
}

fn clock_tick() -> Duration {
    // CLK_TCK is 100 on every Linux this targets; sysconf would need libc for no gain.
    Duration::from_millis(10)
}

fn rss_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report

#[derive(Clone, Copy)]
struct Dist {
    p50: Duration,
    p99: Duration,
    n: usize,
}

impl Dist {
    fn of(mut v: Vec<Duration>) -> Result<Dist> {
        ensure!(!v.is_empty(), "no samples");
        v.sort();
        let n = v.len();
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let at = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Ok(Dist {
            p50: at(0.50),
            p99: at(0.99),
            n,
        })
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 1.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}×", value / base)
    } else {
        "— (baseline 0)".into()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Miss,
    /// No target: reported for reference.
    Info,
}

fn verdict(ok: bool) -> Verdict {
    if ok {
        Verdict::Pass
    } else {
        Verdict::Miss
    }
}

struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: Verdict,
}

#[derive(Clone, Copy)]
struct Pair {
    provisr: Duration,
    baseline: Duration,
}

struct Idle {
    window: Duration,
    daemon_cpu: Duration,
    daemon_switches: u64,
    sleep_cpu: Duration,
    sleep_switches: u64,
}

struct Logs {
    mib: u64,
    capture: Duration,
    direct: Duration,
    daemon_cpu: Duration,
}

struct Saved {
    /// `None`: a saved file never ran within [`SAVED_GIVE_UP`].
    ours: Option<Dist>,
    base: Dist,
}

struct PassCost {
    /// Mean pass duration from the daemon's own histogram.
    server_mean: Duration,
    rtt: Dist,
}

/// Everything measured; rows are built from it at the end.
#[derive(Default)]
struct Results {
    spawn: BTreeMap<usize, Pair>,
    stop: Option<Pair>,
    restart: Option<(Dist, Dist)>,
    idle: Option<Idle>,
    logs: Option<Logs>,
    pass0: Option<PassCost>,
    pass10k: Option<PassCost>,
    reload0: Option<Dist>,
    reload10k: Option<Dist>,
    api: Option<(Dist, Dist)>,
    rss_sleep: Option<u64>,
    rss0: Option<u64>,
    rss1000: Option<u64>,
    rss10k: Option<u64>,
    saved: Option<Saved>,
    notes: Vec<String>,
}

impl Results {
    fn note(&mut self, s: String) {
        eprintln!("  {s}");
        self.notes.push(s);
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let time_row = |figure: String, p: Pair, target: &str, ok: Option<bool>| Row {
            figure,
            value: secs(p.provisr),
            baseline: secs(p.baseline),
            ratio: ratio(p.provisr.as_secs_f64(), p.baseline.as_secs_f64()),
            target: target.into(),
            verdict: ok.map_or(Verdict::Info, verdict),
        };
        for (&n, &p) in &self.spawn {
            let r = p.provisr.as_secs_f64() / p.baseline.as_secs_f64();
            rows.push(time_row(
                format!("spawn {n} (daemon start → all running) vs direct spawner"),
                p,
                "≤ 1.5×",
                Some(r <= 1.5),
            ));
        }
        if let Some(p) = self.stop {
            rows.push(time_row(
                "stop 200 (POST /stop → all stopped) vs direct killpg".into(),
                p,
                "≤ 0.05 s",
                Some(p.provisr <= Duration::from_millis(50)),
            ));
        }
        let dist_rows = |rows: &mut Vec<Row>,
                         what: &str,
                         ours: Dist,
                         base: Dist,
                         targets: [(&str, Option<Duration>); 2]| {
            for (q, o, b, (target, limit)) in [
                ("p50", ours.p50, base.p50, targets[0]),
                ("p99", ours.p99, base.p99, targets[1]),
            ] {
                rows.push(Row {
                    figure: format!("{what} {q} (n = {})", ours.n),
                    value: ms(o),
                    baseline: ms(b),
                    ratio: ratio(o.as_secs_f64(), b.as_secs_f64()),
                    target: target.into(),
                    verdict: limit.map_or(Verdict::Info, |l| verdict(o <= l)),
                });
            }
        };
        if let Some((ours, base)) = self.restart {
            dist_rows(
                &mut rows,
                "restart after kill -9 vs wait-and-respawn loop,",
                ours,
                base,
                [
                    ("≤ 3 ms", Some(Duration::from_millis(3))),
                    ("≤ 5 ms", Some(Duration::from_millis(5))),
                ],
            );
        }
        if let Some(i) = &self.idle {
            let w = i.window.as_secs_f64();
            let pct = |d: Duration| d.as_secs_f64() / w * 100.0;
            rows.push(Row {
                figure: format!("idle CPU, 1000 children, {:.0} s (vs idle sleep)", w),
                value: format!("{:.4} % core", pct(i.daemon_cpu)),
                baseline: format!("{:.4} % core", pct(i.sleep_cpu)),
                ratio: ratio(pct(i.daemon_cpu), pct(i.sleep_cpu)),
                target: "≤ 0.02 %".into(),
                verdict: verdict(pct(i.daemon_cpu) <= 0.02),
            });
            let rate = |n: u64| n as f64 / w;
            rows.push(Row {
                figure: format!("idle wakeups, 1000 children, {:.0} s (vs idle sleep)", w),
                value: format!("{:.2} /s", rate(i.daemon_switches)),
                baseline: format!("{:.2} /s", rate(i.sleep_switches)),
                ratio: ratio(rate(i.daemon_switches), rate(i.sleep_switches)),
                target: "≤ 0.2 /s".into(),
                verdict: verdict(rate(i.daemon_switches) <= 0.2),
            });
        }
        if let Some(l) = &self.logs {
            let speed = |d: Duration| l.mib as f64 / d.as_secs_f64();
            rows.push(Row {
                figure: format!("log capture {} MiB vs straight to file (throughput)", l.mib),
                value: format!("{:.0} MiB/s", speed(l.capture)),
                baseline: format!("{:.0} MiB/s", speed(l.direct)),
                ratio: ratio(speed(l.capture), speed(l.direct)),
                target: "≥ 0.9×".into(),
                verdict: verdict(speed(l.capture) / speed(l.direct) >= 0.9),
            });
            let per256 = l.daemon_cpu.as_secs_f64() * 256.0 / l.mib as f64;
            rows.push(Row {
                figure: "log capture: daemon CPU per 256 MiB vs supervisord (reference)".into(),
                value: format!("{per256:.3} s"),
                baseline: format!("{SUPERVISORD_CPU_PER_256MIB} s (not measured)"),
                ratio: ratio(per256, SUPERVISORD_CPU_PER_256MIB),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let (Some(p), Some(b)) = (&self.pass10k, &self.pass0) {
            rows.push(Row {
                figure: "reconcile pass, 10 000 programs (daemon histogram mean) vs 0 programs"
                    .into(),
                value: ms(p.server_mean),
                baseline: ms(b.server_mean),
                ratio: ratio(p.server_mean.as_secs_f64(), b.server_mean.as_secs_f64()),
                target: "≤ 20 ms".into(),
                verdict: verdict(p.server_mean <= Duration::from_millis(20)),
            });
            rows.push(Row {
                figure: format!(
                    "POST /debug/reconcile round trip p50, 10 000 vs 0 programs (n = {})",
                    p.rtt.n
                ),
                value: ms(p.rtt.p50),
                baseline: ms(b.rtt.p50),
                ratio: ratio(p.rtt.p50.as_secs_f64(), b.rtt.p50.as_secs_f64()),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let (Some(r), Some(b)) = (self.reload10k, self.reload0) {
            rows.push(Row {
                figure: format!("POST /reload p50, 10 000 vs 0 programs (n = {})", r.n),
                value: ms(r.p50),
                baseline: ms(b.p50),
                ratio: ratio(r.p50.as_secs_f64(), b.p50.as_secs_f64()),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let Some((ours, base)) = self.api {
            dist_rows(
                &mut rows,
                "GET /status, 1000 instances, vs GET /health,",
                ours,
                base,
                [("—", None), ("—", None)],
            );
        }
        if let (Some(r), Some(s)) = (self.rss0, self.rss_sleep) {
            rows.push(Row {
                figure: "daemon RSS, 0 programs (vs an idle sleep)".into(),
                value: mib(r),
                baseline: mib(s),
                ratio: ratio(r as f64, s as f64),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let (Some(r), Some(b)) = (self.rss1000, self.rss0) {
            rows.push(Row {
                figure: "daemon RSS, 1000 running programs (vs 0 programs)".into(),
                value: mib(r),
                baseline: mib(b),
                ratio: ratio(r as f64, b as f64),
                target: "≤ 15 MiB".into(),
                verdict: verdict(r <= 15 * 1024),
            });
        }
        if let (Some(r), Some(b)) = (self.rss10k, self.rss0) {
            rows.push(Row {
                figure: "daemon RSS, 10 000 stopped programs (vs 0 programs)".into(),
                value: mib(r),
                baseline: mib(b),
                ratio: ratio(r as f64, b as f64),
                target: "—".into(),
                verdict: Verdict::Info,
            });
        }
        if let Some(sv) = &self.saved {
            let b = sv.base;
            rows.push(match sv.ours {
                Some(o) => Row {
                    figure: format!(
                        "saved file → running p50 vs bare inotify + spawn (n = {})",
                        o.n
                    ),
                    value: ms(o.p50),
                    baseline: ms(b.p50),
                    ratio: ratio(o.p50.as_secs_f64(), b.p50.as_secs_f64()),
                    target: "≤ 100 ms".into(),
                    verdict: verdict(o.p50 <= Duration::from_millis(100)),
                },
                None => Row {
                    figure: "saved file → running vs bare inotify + spawn".into(),
                    value: format!("not within {}", secs(SAVED_GIVE_UP)),
                    baseline: ms(b.p50),
                    ratio: "—".into(),
                    target: "≤ 100 ms".into(),
                    verdict: Verdict::Miss,
                },
            });
        }
        rows
    }
}

fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.value.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                r.target.clone(),
                match r.verdict {
                    Verdict::Pass => "pass".into(),
                    Verdict::Miss => "MISS".into(),
                    Verdict::Info => "—".into(),
                },
            ]
        })
        .collect();
    let header = ["figure", "value", "baseline", "ratio", "target", "result"];
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::from("|");
        for (w, v) in width.iter().zip(c) {
            let _ = write!(s, " {v}{} |", " ".repeat(w - v.chars().count()));
        }
        println!("{s}");
    };
    line(&header.map(String::from));
    line(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for c in &cells {
        line(c);
    }
}

// ---------------------------------------------------------------------------------------------
// The figures

struct Ctx {
    bin: PathBuf,
    opts: Opts,
    sizes: Sizes,
}

/// A daemon booted on a programs directory of `n` programs, all `running`.
struct Fleet {
    daemon: DaemonProc,
    names: Vec<String>,
    /// From spawning `provisr serve` to the last `running` transition.
    boot: Duration,
    /// Events `/events` dropped for this subscriber during the boot.
    lagged: u64,
    _scratch: Scratch,
}

impl Fleet {
    fn terminate(self) -> Result<Duration> {
        self.daemon.terminate()
    }
}

/// Writes `n` program files of `body`, named `<prefix>NNNNN`, into `programs`.
fn write_programs(programs: &Path, prefix: &str, n: usize, body: &str) -> Result<Vec<String>> {
    (1..=n)
        .map(|i| {
            let name = format!("{prefix}{i:05}");
            fs::write(programs.join(format!("{name}.toml")), body)
                .with_context(|| format!("writing program {name}"))?;
            Ok(name)
        })
        .collect()
}

/// Starts a daemon on `n` programs of `sleep 3600` and times it until every one is `running`,
/// from `/events` (subscribed as soon as the API listens; `GET /status` covers what became
/// running before the subscription).
fn boot_fleet(ctx: &Ctx, n: usize, label: &str) -> Result<Fleet> {
    let scratch = Scratch::new(label)?;
    let (config, programs) = project(&scratch, false)?;
    let names = write_programs(&programs, "s", n, "command = \"sleep 3600\"\n")?;
    let t0 = Instant::now();
    let daemon = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let events = daemon.events()?;
    let mut waiting: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut http = daemon.http();
    let remove_running = |waiting: &mut HashSet<&str>, http: &mut Http| -> Result<()> {
        let all = http.json("GET", &daemon.api("/status"))?;
        for s in all.as_array().into_iter().flatten() {
            if s["state"] == "running" {
                if let Some(name) = s["name"].as_str() {
                    waiting.remove(name);
                }
            }
        }
        Ok(())
    };
    remove_running(&mut waiting, &mut http)?;
    let mut end = Instant::now();
    let deadline = Instant::now() + PATIENCE;
    let mut lagged = 0;
    while !waiting.is_empty() && lagged == 0 {
        match events.next(deadline, "every program to run")? {
            Incoming::Transition(t) => {
                if t.to == "running" && waiting.remove(t.name.as_str()) {
                    end = t.at;
                }
            }
            Incoming::Lagged(n) => lagged = n,
            Incoming::Ended(why) => bail!("/events ended during the boot: {why}"),
        }
    }
    if lagged > 0 {
        // The daemon dropped the oldest events for this subscriber, so which instances ran is
        // unknown. The newest events are kept: keep reading, and each time the stream is quiet
        // for 50 ms ask GET /status (rarely, as it costs the daemon); once everything runs,
        // the last `running` read is the end.
        eprintln!("  /events lagged by {lagged} during the boot of {n}; confirming by GET /status");
        loop {
            match events.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Incoming::Transition(t)) => {
                    if t.to == "running" {
                        waiting.remove(t.name.as_str());
                        end = t.at;
                    }
                }
                Ok(Incoming::Lagged(_)) => {}
                Ok(Incoming::Ended(why)) => bail!("/events ended during the boot: {why}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("/events reader ended"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    remove_running(&mut waiting, &mut http)?;
                    if waiting.is_empty() {
                        break;
                    }
                    ensure!(Instant::now() < deadline, "{} never ran", waiting.len());
                }
            }
        }
    }
    drop(events);
    Ok(Fleet {
        boot: end - t0,
        lagged,
        daemon,
        names,
        _scratch: scratch,
    })
}

/// The baseline spawner: `n` × `sleep 3600`, each in its own process group. `spawn` returns
/// once the child has exec'd (std reports exec failures through a pipe), so all exist after it.
fn direct_spawn(n: usize) -> Result<(Duration, Kids)> {
    let mut kids = Kids::default();
    kids.children.reserve(n);
    let t0 = Instant::now();
    for _ in 0..n {
        kids.spawn(&mut sleep_cmd())?;
    }
    Ok((t0.elapsed(), kids))
}

/// The baseline stopper: SIGTERM to every group, then reap every child.
fn direct_stop(mut kids: Kids) -> Duration {
    let t0 = Instant::now();
    kids.signal_and_reap(Signal::SIGTERM);
    t0.elapsed()
}

/// Figures 1 (N = 200) and 2: spawn and stop of 200, alternating with the direct baselines.
fn figure_spawn_stop_200(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = 200;
    let (mut boots, mut directs, mut stops, mut kills) = (vec![], vec![], vec![], vec![]);
    for run in 1..=ctx.sizes.spawn_runs {
        let (t, kids) = direct_spawn(n)?;
        directs.push(t);
        kills.push(direct_stop(kids));

        let fleet = boot_fleet(ctx, n, "spawn200")?;
        boots.push(fleet.boot);
        let mut http = fleet.daemon.http();
        let path = fleet
            .daemon
            .api(&format!("/stop?name={}&wait=60s", fleet.names.join(",")));
        let t0 = Instant::now();
        let stopped = http.json("POST", &path)?;
        let stop = t0.elapsed();
        let states: Vec<&str> = stopped
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["state"].as_str())
            .collect();
        ensure!(
            states.len() == n && states.iter().all(|s| *s == "stopped"),
            "POST /stop answered {} statuses, not all stopped: {:?}",
            states.len(),
            states.iter().collect::<BTreeSet<_>>()
        );
        stops.push(stop);
        fleet.daemon.terminate()?;
        eprintln!(
            "  run {run}: boot {} (direct {}), stop {} (direct {})",
            secs(*boots.last().unwrap_or(&Duration::ZERO)),
            secs(*directs.last().unwrap_or(&Duration::ZERO)),
            secs(stop),
            secs(*kills.last().unwrap_or(&Duration::ZERO)),
        );
    }
    if ctx.opts.want("spawn") {
        res.spawn.insert(
            n,
            Pair {
                provisr: median(boots),
                baseline: median(directs),
            },
        );
    }
    if ctx.opts.want("stop") {
        res.stop = Some(Pair {
            provisr: median(stops),
            baseline: median(kills),
        });
    }
    Ok(())
}

/// Figures 1 (N = 1000), 4, 7 and 8 (1000): one fleet of 1000 running children.
fn figure_thousand(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = 1000;
    // Only spawn repeats: the last fleet stays up for the other figures.
    let runs = if ctx.opts.want("spawn") {
        ctx.sizes.spawn_runs
    } else {
        1
    };
    let (mut boots, mut directs) = (vec![], vec![]);
    let mut fleet = None;
    for run in 1..=runs {
        if let Some(f) = fleet.take() {
            Fleet::terminate(f)?;
        }
        let (direct, kids) = direct_spawn(n)?;
        direct_stop(kids);
        directs.push(direct);
        let f = boot_fleet(ctx, n, "fleet1000")?;
        boots.push(f.boot);
        eprintln!(
            "  run {run}: boot {} (listening after {}), direct {}",
            secs(f.boot),
            secs(f.daemon.to_listen),
            secs(direct)
        );
        if f.lagged > 0 {
            res.note(format!(
                "/events dropped {} of the {} transitions of a boot of {n} for a subscriber \
                 reading as fast as it can (the daemon's event channel holds fewer)",
                f.lagged,
                2 * n
            ));
        }
        fleet = Some(f);
    }
    let fleet = fleet.ok_or_else(|| anyhow!("no fleet was booted"))?;
    if ctx.opts.want("spawn") {
        res.spawn.insert(
            n,
            Pair {
                provisr: median(boots),
                baseline: median(directs),
            },
        );
    }
    let d = &fleet.daemon;
    if ctx.opts.want("idle") {
        let mut kids = Kids::default();
        let sleeper = kids.spawn(&mut sleep_cmd())?;
        // Let the boot's aftermath (store writes, the first detector rounds) settle first.
        thread::sleep(Duration::from_secs(3));
        let (d0, s0) = (Usage::of(d.pid)?, Usage::of(sleeper)?);
        thread::sleep(ctx.sizes.idle_window);
        let (d1, s1) = (Usage::of(d.pid)?, Usage::of(sleeper)?);
        let (dd, sd) = (d0.delta(&d1), s0.delta(&s1));
        let cpu = Duration::from_nanos(dd.cpu_ns);
        res.note(format!(
            "idle: daemon {} CPU by schedstat ({} ticks of {} by /proc/PID/stat), {} context \
             switches, {} threads came or went; by thread: {}",
            ms(cpu),
            dd.ticks,
            ms(clock_tick()),
            dd.switches,
            dd.threads_changed,
            dd.by_thread
                .iter()
                .map(|(t, ns, sw)| format!("{t} {sw} sw {}", ms(Duration::from_nanos(*ns))))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        res.idle = Some(Idle {
            window: ctx.sizes.idle_window,
            daemon_cpu: cpu,
            daemon_switches: dd.switches,
            sleep_cpu: Duration::from_nanos(sd.cpu_ns),
            sleep_switches: sd.switches,
        });
    }
    if ctx.opts.want("api") {
        let mut http = d.http();
        let (status, health) = (d.api("/status"), d.api("/health"));
        let count = http.json("GET", &status)?.as_array().map_or(0, Vec::len);
        ensure!(count == n, "GET /status listed {count} instances, not {n}");
        for _ in 0..5 {
            http.call("GET", &status)?;
            http.call("GET", &health)?;
        }
        let (mut s, mut h) = (vec![], vec![]);
        for _ in 0..ctx.sizes.api_requests {
            let t0 = Instant::now();
            let r = http.call("GET", &status)?;
            s.push(t0.elapsed());
            ensure!(r.status == 200, "GET /status: HTTP {}", r.status);
            let t0 = Instant::now();
            let r = http.call("GET", &health)?;
            h.push(t0.elapsed());
            ensure!(r.status == 200, "GET /health: HTTP {}", r.status);
        }
        let size = http.call("GET", &status)?.body.len();
        res.note(format!(
            "GET /status with {n} instances: {size} bytes of JSON"
        ));
        res.api = Some((Dist::of(s)?, Dist::of(h)?));
    }
    if ctx.opts.want("rss") {
        res.rss1000 = Some(rss_kib(d.pid)?);
    }
    let took = fleet.daemon.terminate()?;
    res.note(format!(
        "shutdown (SIGTERM) with {n} running children: {}",
        secs(took)
    ));
    Ok(())
}

/// The mean pass time from the daemon's `provisr_reconcile_duration_seconds` histogram over
/// `passes` forced passes, and their round trips.
fn reconcile_cost(d: &DaemonProc, http: &mut Http, passes: usize) -> Result<PassCost> {
    let hist = |http: &mut Http| -> Result<(f64, f64)> {
        let r = http.call("GET", "/metrics")?;
        ensure!(
            r.status == 200,
            "GET /metrics: HTTP {}: {}",
            r.status,
            r.text()
        );
        let text = r.text();
        let find = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("provisr_reconcile_duration_seconds{suffix}")))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .ok_or_else(|| anyhow!("/metrics has no reconcile_duration{suffix}"))
        };
        Ok((find("_sum")?, find("_count")?))
    };
    let (s0, c0) = hist(http)?;
    let mut rtt = Vec::new();
    for _ in 0..passes {
        let t0 = Instant::now();
        http.json("POST", &d.api("/debug/reconcile"))?;
        rtt.push(t0.elapsed());
    }
    let (s1, c1) = hist(http)?;
    ensure!(c1 - c0 >= passes as f64, "the histogram missed passes");
    Ok(PassCost {
        server_mean: Duration::from_secs_f64((s1 - s0) / (c1 - c0)),
        rtt: Dist::of(rtt)?,
    })
}

fn reload_cost(d: &DaemonProc, http: &mut Http, reloads: usize) -> Result<Dist> {
    let mut rtt = Vec::new();
    for _ in 0..reloads {
        let t0 = Instant::now();
        let r = http.json("POST", &d.api("/reload"))?;
        rtt.push(t0.elapsed());
        ensure!(
            r["errors"].as_array().is_some_and(Vec::is_empty) && r["changed"] == 0,
            "an unchanged reload reported {r}"
        );
    }
    Dist::of(rtt)
}

/// Figures 6 and 8 (10 000): a store of 10 000 programs that do not autostart.
fn figure_ten_thousand(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n = 10_000;
    let scratch = Scratch::new("store10k")?;
    let (config, programs) = project(&scratch, true)?;
    write_programs(
        &programs,
        "p",
        n,
        "command = \"sleep 3600\"\nautostart = false\n",
    )?;
    let d = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let mut http = d.http();
    let count = http
        .json("GET", &d.api("/programs"))?
        .as_array()
        .map_or(0, Vec::len);
    ensure!(count == n, "the store holds {count} programs, not {n}");
    res.note(format!(
        "{n} programs: the daemon listened {} after it was spawned",
        secs(d.to_listen)
    ));
    thread::sleep(Duration::from_secs(1));
    if ctx.opts.want("rss") {
        res.rss10k = Some(rss_kib(d.pid)?);
    }
    if ctx.opts.want("reconcile") {
        res.pass10k = Some(reconcile_cost(&d, &mut http, ctx.sizes.passes)?);
        res.reload10k = Some(reload_cost(&d, &mut http, ctx.sizes.reloads)?);
        res.note(format!(
            "RSS after the reloads with {n} programs: {}",
            mib(rss_kib(d.pid)?)
        ));
    }
    d.terminate()?;
    Ok(())
}

/// The restart baseline: `provisr-bench --respawn-loop`, which spawns `sleep`, prints its pid,
/// waits on it and respawns, forever.
struct RespawnLoop {
    child: Child,
    out: BufReader<ChildStdout>,
    current: i32,
}

impl RespawnLoop {
    fn start() -> Result<RespawnLoop> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--respawn-loop")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("spawning the respawn loop")?;
        registry().groups.insert(child.id() as i32);
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("respawn loop without stdout"))?;
        let mut l = RespawnLoop {
            child,
            out: BufReader::new(out),
            current: 0,
        };
        l.current = l.read_pid()?;
        Ok(l)
    }

    fn read_pid(&mut self) -> Result<i32> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let pid = line
            .trim()
            .parse()
            .with_context(|| format!("respawn loop said {line:?}"))?;
        registry().groups.insert(pid);
        Ok(pid)
    }

    /// SIGKILL to the current child; the time until the loop reports its replacement.
    fn sample(&mut self) -> Result<Duration> {
        let old = self.current;
        let t0 = Instant::now();
        kill(Pid::from_raw(old), Signal::SIGKILL)?;
        self.current = self.read_pid()?;
        let took = t0.elapsed();
        registry().groups.remove(&old);
        Ok(took)
    }
}

impl Drop for RespawnLoop {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = killpg(Pid::from_raw(self.current), Signal::SIGKILL);
        let mut r = registry();
        r.groups.remove(&(self.child.id() as i32));
        r.groups.remove(&self.current);
    }
}

fn respawn_loop() -> ExitCode {
    // Die with the bench so no loop outlives it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut out = io::stdout().lock();
    loop {
        let mut child = match sleep_cmd().process_group(0).spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("respawn loop: {e}");
                return ExitCode::FAILURE;
            }
        };
        if writeln!(out, "{}", child.id())
            .and_then(|()| out.flush())
            .is_err()
        {
            let _ = child.kill();
            let _ = child.wait();
            return ExitCode::SUCCESS;
        }
        let _ = child.wait();
    }
}

fn pid_of(d: &DaemonProc, http: &mut Http, name: &str) -> Result<i32> {
    let s = http.json("GET", &d.api(&format!("/status?name={name}")))?;
    s["pid"]
        .as_i64()
        .map(|p| p as i32)
        .ok_or_else(|| anyhow!("{name} has no pid: {s}"))
}

/// Figure 3: `kill -9` to running, from `/events` receive time, interleaved with the loop.
fn figure_restart(
    ctx: &Ctx,
    d: &DaemonProc,
    http: &mut Http,
    programs: &Path,
    res: &mut Results,
) -> Result<()> {
    let ev = d.events()?;
    fs::write(
        programs.join("restarter.toml"),
        "command = \"sleep 3600\"\nauto_restart = true\nrestart_interval = \"0s\"\n",
    )?;
    // A reload, not the watcher: this figure is about restarts.
    http.json("POST", &d.api("/reload"))?;
    ev.wait_for("restarter to run", PATIENCE, |t| {
        t.name == "restarter" && t.to == "running"
    })?;
    let mut lp = RespawnLoop::start()?;
    let (mut ours, mut base) = (vec![], vec![]);
    let mut pid = pid_of(d, http, "restarter")?;
    for _ in 0..ctx.sizes.restart_samples {
        ev.drain();
        let t0 = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill -9 of the child")?;
        let t = ev.wait_for("the restart", Duration::from_secs(10), |t| {
            t.name == "restarter" && t.to == "running"
        })?;
        ours.push(t.at - t0);
        base.push(lp.sample()?);
        let deadline = Instant::now() + Duration::from_secs(10);
        pid = loop {
            let p = pid_of(d, http, "restarter")?;
            if p != pid {
                break p;
            }
            ensure!(Instant::now() < deadline, "restarter kept pid {pid}");
            thread::sleep(Duration::from_millis(1));
        };
        thread::sleep(Duration::from_millis(5));
    }
    res.restart = Some((Dist::of(ours)?, Dist::of(base)?));
    Ok(())
}

/// Figure 9: a new program file to its `running` transition, vs a bare inotify watcher that
/// spawns `sleep` on the file's creation (the floor: no debounce, no parsing).
fn figure_saved(
    ctx: &Ctx,
    d: &DaemonProc,
    scratch: &Scratch,
    programs: &Path,
    res: &mut Results,
) -> Result<()> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let ev = d.events()?;
    let watched = scratch.join("watched");
    fs::create_dir_all(&watched)?;
    let (tx, rx) = mpsc::channel::<(Instant, io::Result<Child>)>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            if matches!(e.kind, EventKind::Create(_)) {
                let child = sleep_cmd().process_group(0).spawn();
                let _ = tx.send((Instant::now(), child));
            }
        }
    })?;
    watcher.watch(&watched, RecursiveMode::NonRecursive)?;
    let mut kids = Kids::default();
    let (mut ours, mut base) = (vec![], vec![]);
    let text = "command = \"sleep 3600\"\n";
    for i in 1..=ctx.sizes.saved_samples {
        let name = format!("saved-{i:03}");
        let t0 = Instant::now();
        fs::write(watched.join(format!("{name}.toml")), text)?;
        let (at, child) = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the bare watcher saw no creation"))?;
        kids.adopt(child.context("the bare watcher's spawn")?);
        base.push(at - t0);

        let t0 = Instant::now();
        fs::write(programs.join(format!("{name}.toml")), text)?;
        match ev.wait_until(&format!("{name} to run"), SAVED_GIVE_UP, |t| {
            t.name == name && t.to == "running"
        })? {
            Some(t) => ours.push(t.at - t0),
            None => {
                // Not a harness error: the daemon does not act on the programs directory.
                res.note(format!(
                    "saved file: no transition of {name} within {SAVED_GIVE_UP:?}; \
                     is the programs directory watched?"
                ));
                break;
            }
        }
        // Apart by more than any debounce window, so that every sample starts from quiet.
        thread::sleep(Duration::from_millis(250));
    }
    drop(watcher);
    res.saved = Some(Saved {
        ours: (ours.len() == ctx.sizes.saved_samples)
            .then(|| Dist::of(ours))
            .transpose()?,
        base: Dist::of(base)?,
    });
    Ok(())
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Figure 5: `yes | head -c BYTES` through the daemon's stdout capture into a file, vs the same
/// pipeline with its stdout on the file. Alternating runs, medians.
fn figure_logs(
    ctx: &Ctx,
    d: &DaemonProc,
    http: &mut Http,
    scratch: &Scratch,
    programs: &Path,
    res: &mut Results,
) -> Result<()> {
    let mib = ctx.sizes.log_mib;
    let bytes = mib << 20;
    let cmd = format!("yes {LINE} | head -c {bytes}");
    let out_dir = scratch.join("logs");
    fs::create_dir_all(&out_dir)?;
    let runs = ctx.sizes.log_runs;
    for i in 1..=runs {
        let log = out_dir.join(format!("writer-{i}.log"));
        // No rotation within the run: the direct file does not rotate either.
        let text = format!(
            "command = {}\nautostart = false\n\n[log]\nstdout = {}\nmax_size_mb = 4096\n",
            toml_str(&cmd),
            toml_str(&log.display().to_string())
        );
        fs::write(programs.join(format!("writer-{i}.toml")), text)?;
    }
    http.json("POST", &d.api("/reload"))?;
    let loaded = http.call("GET", &d.api(&format!("/status?name=writer-{runs}")))?;
    ensure!(
        loaded.status == 200,
        "the writers did not load: {}",
        loaded.text()
    );
    let ev = d.events()?;
    let (mut cap, mut direct, mut cpu) = (vec![], vec![], vec![]);
    for i in 1..=runs {
        let path = out_dir.join(format!("direct-{i}.log"));
        let file = fs::File::create(&path)?;
        let t0 = Instant::now();
        let mut kids = Kids::default();
        kids.spawn(
            Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .stdout(file),
        )?;
        let status = kids
            .children
            .first_mut()
            .ok_or_else(|| anyhow!("no writer"))?
            .wait()?;
        direct.push(t0.elapsed());
        ensure!(status.success(), "the direct writer failed: {status}");
        ensure!(
            file_len(&path) == bytes,
            "the direct writer wrote {}",
            file_len(&path)
        );
        fs::remove_file(&path)?;

        let name = format!("writer-{i}");
        let log = out_dir.join(format!("{name}.log"));
        ev.drain();
        let u0 = Usage::of(d.pid)?;
        let t0 = Instant::now();
        http.json("POST", &d.api(&format!("/start?name={name}&wait=0s")))?;
        let deadline = Instant::now() + PATIENCE;
        while file_len(&log) < bytes {
            ensure!(
                Instant::now() < deadline,
                "{name}: {} bytes captured",
                file_len(&log)
            );
            thread::sleep(Duration::from_millis(1));
        }
        cap.push(t0.elapsed());
        ev.wait_for(&format!("{name} to exit"), PATIENCE, |t| {
            t.name == name && t.to == "exited"
        })?;
        let u1 = Usage::of(d.pid)?;
        cpu.push(clock_tick() * u0.delta(&u1).ticks as u32);
        ensure!(file_len(&log) == bytes, "{name}: {} bytes", file_len(&log));
        fs::remove_file(&log)?;
        eprintln!(
            "  run {i}: capture {} (daemon CPU {}), direct {}",
            secs(*cap.last().unwrap_or(&Duration::ZERO)),
            secs(*cpu.last().unwrap_or(&Duration::ZERO)),
            secs(*direct.last().unwrap_or(&Duration::ZERO))
        );
    }
    res.logs = Some(Logs {
        mib,
        capture: median(cap),
        direct: median(direct),
        daemon_cpu: median(cpu),
    });
    Ok(())
}

/// Figures 3, 5, 9 and the zero-program baselines of 6 and 8: one daemon on an empty directory.
fn figure_empty(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let scratch = Scratch::new("empty")?;
    let (config, programs) = project(&scratch, true)?;
    let d = DaemonProc::start(&ctx.bin, &scratch.path, &config)?;
    let mut http = d.http();
    thread::sleep(Duration::from_secs(1));
    if ctx.opts.want("rss") {
        res.rss0 = Some(rss_kib(d.pid)?);
        let mut kids = Kids::default();
        let sleeper = kids.spawn(&mut sleep_cmd())?;
        // Just past exec its pages are not faulted in yet.
        thread::sleep(Duration::from_millis(200));
        res.rss_sleep = Some(rss_kib(sleeper)?);
    }
    if ctx.opts.want("reconcile") {
        res.pass0 = Some(reconcile_cost(&d, &mut http, ctx.sizes.passes)?);
        res.reload0 = Some(reload_cost(&d, &mut http, ctx.sizes.reloads)?);
    }
    if ctx.opts.want("restart") {
        eprintln!("restart latency ({} samples)", ctx.sizes.restart_samples);
        figure_restart(ctx, &d, &mut http, &programs, res)?;
    }
    if ctx.opts.want("saved") {
        eprintln!("saved file → running ({} samples)", ctx.sizes.saved_samples);
        figure_saved(ctx, &d, &scratch, &programs, res)?;
    }
    if ctx.opts.want("logs") {
        eprintln!(
            "log capture ({} MiB × {} runs)",
            ctx.sizes.log_mib, ctx.sizes.log_runs
        );
        figure_logs(ctx, &d, &mut http, &scratch, &programs, res)?;
    }
    d.terminate()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup

/// `target/<profile>/provisr`, next to this executable; built first when run through cargo.
fn provisr_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?
        .join("provisr");
    // `cargo run --bin provisr-bench` builds only this binary: build the daemon the same way.
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        eprintln!("building the daemon: cargo build --release --bin provisr");
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "provisr"])
            .current_dir(manifest)
            .status()
            .context("running cargo build")?;
        ensure!(
            status.success(),
            "cargo build --release --bin provisr failed"
        );
    }
    ensure!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release --bin provisr`",
        bin.display()
    );
    Ok(bin)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// (steal, total) jiffies of all CPUs from `/proc/stat`: on a VM, time the host gave to others.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    Some((*v.get(7)?, v.iter().take(8).sum()))
}

fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("{cpus} CPUs, {model}, Linux {kernel}")
}

fn run(ctx: &Ctx) -> (Results, Vec<String>) {
    let mut res = Results::default();
    let mut errors = Vec::new();
    let o = &ctx.opts;
    type Phase = fn(&Ctx, &mut Results) -> Result<()>;
    let phases: [(&str, &[&str], Phase); 4] = [
        (
            "empty daemon: restart, saved file, log capture, 0-program baselines",
            &["restart", "saved", "logs", "reconcile", "rss"],
            figure_empty,
        ),
        (
            "spawn and stop of 200",
            &["spawn", "stop"],
            figure_spawn_stop_200,
        ),
        (
            "1000 running children: spawn, idle, API, RSS",
            &["spawn", "idle", "api", "rss"],
            figure_thousand,
        ),
        (
            "10 000 programs in the store: reconcile, reload, RSS",
            &["reconcile", "rss"],
            figure_ten_thousand,
        ),
    ];
    for (what, figures, phase) in phases {
        if !o.want_any(figures) {
            continue;
        }
        eprintln!("== {what}");
        let t0 = Instant::now();
        if let Err(e) = phase(ctx, &mut res) {
            eprintln!("  harness error: {e:#}");
            errors.push(format!("{what}: {e:#}"));
        }
        eprintln!("  ({} s)", t0.elapsed().as_secs());
    }
    (res, errors)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Mode::Bench(o)) => o,
        Ok(Mode::RespawnLoop) => return respawn_loop(),
        Ok(Mode::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("provisr-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "provisr-bench: this is a debug build; run `cargo run --release --bin provisr-bench`"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = install_interrupt_cleanup() {
        eprintln!("provisr-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let bin = match provisr_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("provisr-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx {
        bin,
        sizes: Sizes::new(opts.quick),
        opts,
    };
    let started = Instant::now();
    eprintln!("machine: {}", machine());
    eprintln!("daemon: {}", ctx.bin.display());
    let load_before = loadavg();
    let jiffies_before = cpu_jiffies();
    let (res, errors) = run(&ctx);
    println!();
    println!(
        "provisr-bench{} — {} — {} s",
        if ctx.opts.quick { " --quick" } else { "" },
        machine(),
        started.elapsed().as_secs()
    );
    println!();
    print_table(&res.rows());
    println!();
    println!(
        "Load average (1, 5, 15 min) before the run: {load_before}; after: {}. The machine is \
         shared: a busy one inflates values and baselines alike.",
        loadavg()
    );
    if let (Some((s0, t0)), Some((s1, t1))) = (jiffies_before, cpu_jiffies()) {
        if t1 > t0 {
            println!(
                "CPU steal during the run (time the VM's host gave to others): {:.0} %.",
                (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64
            );
        }
    }
    println!(
        "Reference, not measured here: Horust starts 200 programs in 0.7 s; supervisord spends \
         0.28 s of CPU per 256 MiB of captured output."
    );
    println!(
        "Latencies end when this process reads the `running` transition off /events (receive \
         time; the event's own `time` has millisecond resolution only)."
    );
    for n in &res.notes {
        println!("- {n}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("provisr-bench: harness error in {e}");
        }
        ExitCode::FAILURE
    }
}
