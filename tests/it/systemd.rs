//! The daemon under a service manager, without systemd: the test binds its own `NOTIFY_SOCKET`
//! and reads what the real daemon says there.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

/// Reads datagrams until one contains `line` (a whole line of the message), or panics after 20 s.
/// Returns every message read, the matching one last.
fn until(sock: &UnixDatagram, line: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {line:?} in {seen:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = sock.recv(&mut buf) else {
            panic!("no {line:?} in {seen:?}");
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = msg.lines().any(|l| l == line);
        seen.push(msg);
        if found {
            return seen;
        }
    }
}

fn health_ok(url: &str) -> bool {
    let client = provisr::client::ApiClient::new(url, None);
    client
        .get("/health", &[])
        .is_ok_and(|v| v["ok"] == serde_json::json!(true))
}

#[test]
fn ready_after_the_api_answers_then_reloading_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    write(
        &dir.path().join("programs/svc.toml"),
        "command = \"sleep 300\"\n",
    );
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let d = TestDaemon::start_with_env(
        dir.path(),
        Some(&cfg),
        &dir.path().join("state"),
        "127.0.0.1:0",
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut guard = GroupGuard::default();

    let before_ready = until(&sock, "READY=1");
    // The API answers the moment READY arrives, and the first pass ran: svc is known.
    assert!(health_ok(&d.url), "READY=1 before the API answers");
    let ready = before_ready.last().unwrap();
    assert!(ready.contains("STATUS=1 instances: "), "{before_ready:?}");
    let pid = wait_for(Duration::from_secs(10), "svc running", || {
        d.status("svc")["pid"].as_i64()
    }) as i32;
    guard.add(pid);
    // The child does not inherit the service manager's variables.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("NOTIFY_SOCKET="), "{environ}");
    assert!(!environ.contains("WATCHDOG_USEC="), "{environ}");

    // The watchdog is fed (every 200 ms for a 400 ms interval).
    until(&sock, "WATCHDOG=1");
    until(&sock, "WATCHDOG=1");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reload = until(&sock, "RELOADING=1");
    assert!(
        reload.last().unwrap().contains("MONOTONIC_USEC="),
        "{reload:?}"
    );
    until(&sock, "READY=1");

    let log = d.log.clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    until(&sock, "STOPPING=1");
    wait_for(Duration::from_secs(20), "the daemon to stop", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("provisr stopped"))
            .then_some(())
    });
    assert_eq!(d.terminate(), Some(0));
}
