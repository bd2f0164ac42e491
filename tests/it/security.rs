//! Who may use the API, tried as users would: the real daemon as root, callers as root and as
//! `nobody` (dropped with `setpriv`), over loopback TCP (IPv4, IPv6) and the unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

const BIN: &str = env!("CARGO_BIN_EXE_provisr");
const NOBODY: u32 = 65534;

/// `curl` as `nobody`: (HTTP status, body). `target` is a URL; `socket` sends it over a unix socket.
fn curl_as_nobody(
    method: &str,
    target: &str,
    socket: Option<&Path>,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(s) = socket {
        cmd.arg("--unix-socket").arg(s);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "-d", b]);
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl gave no status: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

/// A temp dir `nobody` can traverse (so it can reach a socket inside, if the socket lets it).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn config(dir: &Path, server: &str) -> PathBuf {
    let cfg = dir.join("cfg.toml");
    std::fs::create_dir_all(dir.join("programs")).unwrap();
    write(
        &cfg,
        &format!("programs_directory = \"programs\"\n[daemon]\nstate_dir = \"state\"\n[server]\n{server}"),
    );
    cfg
}

fn sighup(d: &TestDaemon) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// The CLI as root with no token and no API URL: (exit code, stdout, stderr).
fn cli(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .env_remove("PROVISR_API_URL")
        .env_remove("PROVISR_TOKEN")
        .env_remove("PROVISR_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run provisr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PWN: &str = r#"{"name":"pwn","command":"id > /tmp/provisr-pwned-by-test"}"#;

#[test]
fn nobody_is_refused_on_loopback_and_on_the_socket_and_nothing_is_registered() {
    let dir = open_tempdir();
    let cfg = config(dir.path(), "");
    let state = dir.path().join("state");
    let d = TestDaemon::start(dir.path(), Some(&cfg), &state);
    let sock = state.join("provisr.sock");
    // The socket is 0660 root:root; open it up as a careless admin might: the uid rules must
    // hold even when the file's mode lets anyone connect.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();

    let v6_dir = open_tempdir();
    let v6_cfg = config(v6_dir.path(), "");
    let d6 = TestDaemon::start_on(
        v6_dir.path(),
        Some(&v6_cfg),
        &v6_dir.path().join("state"),
        "[::1]:0",
    );
    assert!(d6.url.starts_with("http://[::1]:"), "{}", d6.url);

    let targets = [
        (format!("{}/register", d.url), None, "IPv4 loopback"),
        (format!("{}/register", d6.url), None, "IPv6 loopback"),
        (
            "http://localhost/api/register".to_string(),
            Some(sock.as_path()),
            "unix socket",
        ),
    ];
    for (url, socket, via) in &targets {
        let (code, body) = curl_as_nobody("POST", url, *socket, Some(PWN), None);
        assert_eq!(code, 403, "{via}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sentence = v["error"].as_str().unwrap();
        assert!(
            sentence.contains("nobody (uid 65534)") && sentence.contains("allow_users"),
            "{via}: {sentence}"
        );
    }
    // Reading is refused too (status and logs can hold secrets); only /health is open.
    let (code, _) = curl_as_nobody("GET", &format!("{}/status", d.url), None, None, None);
    assert_eq!(code, 403);
    let (code, _) = curl_as_nobody("GET", &format!("{}/logs?name=x", d.url), None, None, None);
    assert_eq!(code, 403);
    let (code, body) = curl_as_nobody("GET", &format!("{}/health", d.url), None, None, None);
    assert_eq!(code, 200, "{body}");

    for daemon in [&d, &d6] {
        let (code, out, _) = daemon.cli(&["status", "--name", "pwn"]);
        assert_ne!(code, 0, "pwn was registered: {out}");
        wait_for(Duration::from_secs(10), "the refusal in the log", || {
            let log = daemon.log.lock().unwrap();
            log.iter()
                .any(|l| l.contains("refused") && l.contains(&NOBODY.to_string()))
                .then_some(())
        });
    }
    assert!(!Path::new("/tmp/provisr-pwned-by-test").exists());
}

#[test]
fn root_uses_the_cli_without_a_token_over_tcp_and_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let state = dir.path().join("state");
    let d = TestDaemon::start(dir.path(), Some(&cfg), &state);
    let mut guard = GroupGuard::default();
    let sock = state.join("provisr.sock");
    let sock_arg = sock.to_str().unwrap();
    let cfg_arg = cfg.to_str().unwrap();

    // TCP: the seed walkthrough's commands, unchanged.
    let (code, out, err) = d.cli(&[
        "start",
        "--name",
        "test",
        "--cmd",
        "sleep 300",
        "--config",
        "",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let pid = d.status("test")["pid"].as_i64().unwrap() as i32;
    guard.add(pid);
    let (code, out, err) = d.cli(&["logs", "test"]);
    assert_eq!(code, 0, "{out} {err}");

    // The socket, named explicitly, and found through --config (no URL given: the default
    // TCP address has no daemon, so only the socket can answer).
    for args in [
        vec!["--socket", sock_arg, "status", "--name", "test"],
        vec!["status", "--name", "test", "--config", cfg_arg],
    ] {
        let (code, out, err) = cli(dir.path(), &args);
        assert_eq!(code, 0, "{args:?}: {out} {err}");
        let s: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(s["pid"].as_i64(), Some(pid as i64), "{args:?}");
    }
    let (code, out, err) = cli(dir.path(), &["--socket", sock_arg, "logs", "test"]);
    assert_eq!(code, 0, "{out} {err}");

    // `events` streams over either path: start it, cause a transition, read it.
    for via in [
        vec!["--api-url", d.url.as_str()],
        vec!["--socket", sock_arg],
    ] {
        let mut events = Command::new(BIN)
            .args(&via)
            .args(["events", "-o", "json"])
            .env_remove("PROVISR_API_URL")
            .env_remove("PROVISR_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = events.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Restart until a transition of `test` shows up: the stream may open after the first.
        let line = wait_for(Duration::from_secs(20), "an event", || {
            let (code, _, err) = d.cli(&["restart", "--name", "test"]);
            assert_eq!(code, 0, "{err}");
            if let Some(pid) = d.status("test")["pid"].as_i64() {
                guard.add(pid as i32);
            }
            rx.recv_timeout(Duration::from_millis(500))
                .ok()
                .filter(|l| l.contains("test"))
        });
        assert!(line.contains("\"name\""), "{via:?}: {line}");
        let _ = events.kill();
        let _ = events.wait();
    }
    let (code, _, err) = d.cli(&["stop", "--name", "test"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn allow_users_grants_access_and_a_reload_takes_it_away() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "allow_users = [\"nobody\"]\n");
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let status = format!("{}/status", d.url);
    let (code, body) = curl_as_nobody("GET", &status, None, None, None);
    assert_eq!(code, 200, "{body}");

    config(dir.path(), "");
    sighup(&d);
    wait_for(
        Duration::from_secs(10),
        "nobody refused after the reload",
        || (curl_as_nobody("GET", &status, None, None, None).0 == 403).then_some(()),
    );

    // A group grant works the same way (nobody's primary group is nogroup).
    config(dir.path(), "allow_groups = [\"nogroup\"]\n");
    sighup(&d);
    wait_for(
        Duration::from_secs(10),
        "nobody let in by its group",
        || (curl_as_nobody("GET", &status, None, None, None).0 == 200).then_some(()),
    );
}

#[test]
fn a_token_works_from_any_uid_and_a_wrong_one_is_401() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "token = \"s3cret\"\n");
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let status = format!("{}/status", d.url);
    let (code, body) = curl_as_nobody("GET", &status, None, None, Some("s3cret"));
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl_as_nobody("GET", &status, None, None, Some("wrong"));
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl_as_nobody("GET", &status, None, None, None);
    assert_eq!(code, 403, "{body}");
    // Root needs no token, even when the daemon has one.
    let (code, out, err) = d.cli(&["status"]);
    assert_eq!(code, 0, "{out} {err}");
}

#[test]
fn an_unknown_user_in_allow_users_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "allow_users = [\"no-such-user-xyz\"]\n");
    let out = Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("allow_users") && err.contains("no-such-user-xyz"),
        "{err}"
    );
}

#[test]
fn cron_job_reads_need_the_read_scope_and_trigger_suspend_resume_the_operate_scope() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    write(&d0.join("viewer.token"), "look-only\n");
    write(&d0.join("ops.token"), "hands-on\n");
    std::fs::set_permissions(
        d0.join("viewer.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(d0.join("ops.token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config(
        d0,
        "tokens = [{ name = \"viewer\", file = \"viewer.token\", scope = \"read\" }, { name = \"ops\", file = \"ops.token\", scope = \"operate\" }]\n",
    );
    write(
        &d0.join("programs/job.toml"),
        "schedule = \"@hourly\"\ncommand = \"true\"\n",
    );
    let d = TestDaemon::start(d0, Some(&cfg), &d0.join("state"));
    let url = |path: &str| format!("{}{path}", d.url);
    for read in ["/cronjobs", "/cronjobs/job/history"] {
        let (code, body) = curl_as_nobody("GET", &url(read), None, None, Some("look-only"));
        assert_eq!(code, 200, "{read}: {body}");
    }
    for action in ["suspend", "resume", "trigger"] {
        let path = url(&format!("/cronjobs/job/{action}"));
        let (code, body) = curl_as_nobody("POST", &path, None, None, Some("look-only"));
        assert_eq!(code, 403, "{action} with a read token: {body}");
        assert!(body.contains("operate"), "{body}");
        let (code, body) = curl_as_nobody("POST", &path, None, None, None);
        assert_eq!(code, 403, "{action} as nobody without a token: {body}");
        let (code, body) = curl_as_nobody("POST", &path, None, None, Some("hands-on"));
        assert!(
            code == 200 || code == 201,
            "{action} with an operate token: {code} {body}"
        );
    }
    let mut guard = GroupGuard::default();
    wait_for(Duration::from_secs(20), "the triggered run done", || {
        let (_, body) = curl_as_nobody(
            "GET",
            &url("/cronjobs/job/history"),
            None,
            None,
            Some("look-only"),
        );
        let runs: serde_json::Value = serde_json::from_str(&body).ok()?;
        (runs[0]["result"] == "succeeded").then_some(())
    });
    if let Some(pid) = d.status("job")["pid"].as_i64() {
        guard.add(pid as i32);
    }
}
