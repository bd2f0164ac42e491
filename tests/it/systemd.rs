//! The daemon under a service manager, without systemd: the test daemon's own `NOTIFY_SOCKET`
//! (`TestDaemon`) records what the real daemon says there.

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

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
    // The test daemon's own notify socket: it waits for READY=1 there and keeps every message.
    let mut d = TestDaemon::start_with_env(
        dir.path(),
        Some(&cfg),
        &dir.path().join("state"),
        "127.0.0.1:0",
        &[("WATCHDOG_USEC", "400000")],
    );
    let mut guard = GroupGuard::default();

    let before_ready = d.notified("READY=1", WAIT);
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
    d.notified("WATCHDOG=1", WAIT);
    d.notified("WATCHDOG=1", WAIT);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reload = d.notified("RELOADING=1", WAIT);
    assert!(
        reload.last().unwrap().contains("MONOTONIC_USEC="),
        "{reload:?}"
    );
    d.notified("READY=1", WAIT);

    let log = d.log.clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    d.notified("STOPPING=1", WAIT);
    wait_for(Duration::from_secs(20), "the daemon to stop", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("provisr stopped"))
            .then_some(())
    });
    assert_eq!(d.terminate(), Some(0));
}
