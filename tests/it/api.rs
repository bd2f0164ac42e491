//! The API router driven without a socket (`tower::ServiceExt::oneshot`), and the unix socket.

use std::io::{Read, Write};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::daemon::{write, TestDaemon};
use crate::util::{alive, GroupGuard};

async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1")
        .body(Body::from(body.to_string()))
        .unwrap();
    // What the listener attaches to a connection from root.
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        provisr::api::peer::Caller::Local {
            uid: 0,
            via: provisr::api::peer::Via::UnixSocket,
        },
    ));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_works_without_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "programs_directory = \"programs\"\n");
    write(
        &dir.path().join("programs/svc.toml"),
        "command = \"sleep 300\"\n",
    );
    let opts = provisr::daemon::ServeOptions {
        config: Some(cfg),
        api_listen: Some("127.0.0.1:0".into()),
        state_dir: Some(dir.path().join("state")),
        store: None,
    };
    let opened = provisr::daemon::open(&opts).await.unwrap();
    let app = opened.router();
    let mut guard = GroupGuard::default();

    let (code, health) = call(&app, "GET", "/api/health", "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(health["ok"], true);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let (_, s) = call(&app, "GET", "/api/status?name=svc", "").await;
        if s["state"] == "running" {
            break s["pid"].as_i64().unwrap() as i32;
        }
        assert!(tokio::time::Instant::now() < deadline, "svc never ran: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    guard.add(pid);

    let (code, err) = call(&app, "POST", "/api/register", "{\"name\": ").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("not valid JSON"),
        "{err}"
    );
    let (code, _) = call(&app, "GET", "/api/status?name=nope", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = call(&app, "GET", "/api/nowhere", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    opened.shutdown().await.unwrap();
    assert!(!alive(pid), "shutdown left the child running");
}

#[test]
fn the_unix_socket_is_created_with_mode_0660_and_serves_the_api() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/provisr.sock");
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        &format!(
            "programs_directory = \"programs\"\n[server]\nsocket = \"{}\"\n",
            sock.display()
        ),
    );
    std::fs::create_dir_all(dir.path().join("programs")).unwrap();
    let d = TestDaemon::start(dir.path(), Some(&cfg), &dir.path().join("state"));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ok\":true"), "{answer}");
    assert_eq!(d.terminate(), Some(0));
    assert!(!sock.exists(), "the socket file outlived the daemon");
}
