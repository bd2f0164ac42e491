//! The daemon under test: the release `provisr serve` as a process of its own on 127.0.0.1
//! port 0, in a process group of its own, and the project's client to reach it.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use provisr::client::ApiClient;
use serde_json::Value;

use crate::cleanup::{registry, stop_daemon_tree, Scratch};
use crate::events::Events;
use crate::usage::{alive, children_of};
use crate::PATIENCE;

/// `target/<profile>/provisr`, next to this executable; built first when run through cargo,
/// with the `etcd` feature when `etcd` (the fleet figure needs it).
pub fn provisr_binary(etcd: bool) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?
        .join("provisr");
    // `cargo run -p provisr-bench` builds only this package: build the daemon the same way, into
    // the same target directory.
    let mut args = vec!["--release", "-p", "provisr", "--bin", "provisr"];
    if etcd {
        args.extend(["--features", "etcd"]);
    }
    if let Some(mut cmd) = provisr::sibling_build::cargo_build(&args) {
        eprintln!("building the daemon: cargo build {}", args.join(" "));
        let status = cmd.status().context("running cargo build")?;
        ensure!(status.success(), "cargo build {} failed", args.join(" "));
    }
    ensure!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release --bin provisr`",
        bin.display()
    );
    Ok(bin)
}

/// `provisr serve` on 127.0.0.1 port 0 in its own process group. Dropping it stops it and every
/// child it had (see [`stop_daemon_tree`]).
pub struct DaemonProc {
    child: Child,
    pub pid: i32,
    /// `http://ADDR`, where `/metrics` is.
    site: String,
    /// The API's base path, e.g. `/api`.
    base: String,
    log: Arc<Mutex<VecDeque<String>>>,
    /// From spawning the process to reading its "listening" line.
    pub to_listen: Duration,
    done: bool,
}

impl DaemonProc {
    pub fn start(bin: &Path, dir: &Path, config: &Path) -> Result<DaemonProc> {
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
            site: String::new(),
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
        d.site = format!("http://{addr}");
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

    /// A client with a connection of its own (kept alive until the client is dropped).
    pub fn api(&self) -> Api {
        Api {
            client: ApiClient::new(&self.site, None),
            base: self.base.clone(),
        }
    }

    /// A new subscription to `/events`.
    pub fn events(&self) -> Result<Events> {
        Events::open(
            &ApiClient::new(&self.site, None),
            &format!("{}/events", self.base),
        )
    }

    /// SIGTERM and wait for the daemon to exit (it stops its children first); the time it took.
    pub fn terminate(mut self) -> Result<Duration> {
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

/// The daemon's API through the project's client: paths are under the API's base path, and
/// errors name the request.
pub struct Api {
    client: ApiClient,
    base: String,
}

impl Api {
    fn path(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path?query`, decoded.
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.client
            .get(&self.path(path), query)
            .with_context(|| format!("GET {path}"))
    }

    /// `GET path?query`, the body undecoded: for timing the daemon rather than this process.
    pub fn get_text(&self, path: &str, query: &[(&str, String)]) -> Result<String> {
        self.client
            .get_text(&self.path(path), query)
            .with_context(|| format!("GET {path}"))
    }

    /// `POST path` with a JSON body, decoded.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        self.client
            .post(&self.path(path), &[], Some(body))
            .with_context(|| format!("POST {path}"))
    }

    /// `POST path?query` without a body, decoded.
    pub fn post(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.client
            .post::<()>(&self.path(path), query, None)
            .with_context(|| format!("POST {path}"))
    }

    /// `GET /metrics`, served at the root rather than under the API's base path.
    pub fn metrics(&self) -> Result<String> {
        self.client
            .get_text("/metrics", &[])
            .context("GET /metrics")
    }
}

/// `config.toml` plus a `programs` directory in `scratch`.
pub fn project(scratch: &Scratch, metrics: bool) -> Result<(PathBuf, PathBuf)> {
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

pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
