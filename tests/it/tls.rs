//! HTTPS and scoped tokens, as a remote client would use them: curl with `--cacert` against the
//! real daemon, as `nobody` so only the token can let it in.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::daemon::{write, TestDaemon};
use crate::util::{wait_for, GroupGuard};

const BIN: &str = env!("CARGO_BIN_EXE_provisr");

/// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
fn self_signed(cn: &str) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `curl` as `nobody` over HTTPS trusting `ca`: (status, body).
fn curl(
    method: &str,
    url: &str,
    ca: &Path,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-sS",
    ])
    .arg("--cacert")
    .arg(ca)
    .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "-d", b]);
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    (
        code,
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn secret_file(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    write(path, secret);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn https_with_scoped_tokens_and_a_renewed_certificate() {
    let dir = readable_dir();
    let d = dir.path();
    let (cert, key) = self_signed("first");
    write(&d.join("tls/cert.pem"), &cert);
    write(&d.join("tls/key.pem"), &key);
    // What curl trusts: a copy, so renewing the served files does not change it.
    write(&d.join("ca-first.pem"), &cert);
    for (name, secret) in [
        ("read", "r-secret"),
        ("operate", "o-secret"),
        ("admin", "a-secret"),
    ] {
        secret_file(&d.join(format!("{name}.token")), secret);
    }
    write(
        &d.join("cfg.toml"),
        r#"programs_directory = "programs"
[server]
tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
tokens = [
  { name = "viewer", file = "read.token", scope = "read" },
  { name = "ops", file = "operate.token", scope = "operate" },
  { name = "boss", file = "admin.token", scope = "admin" },
]
"#,
    );
    write(&d.join("programs/svc.toml"), "command = \"sleep 300\"\n");
    let daemon = TestDaemon::start(d, Some(&d.join("cfg.toml")), &d.join("state"));
    let mut guard = GroupGuard::default();
    assert!(
        daemon.url.starts_with("https://127.0.0.1:"),
        "{}",
        daemon.url
    );
    let url = |p: &str| format!("{}{p}", daemon.url);
    let ca = d.join("ca-first.pem");

    let (code, body) = curl("GET", &url("/health"), &ca, None, None);
    assert_eq!(code, 200, "{body}");
    let pid = wait_for(Duration::from_secs(10), "svc running", || {
        let (code, body) = curl("GET", &url("/status?name=svc"), &ca, Some("r-secret"), None);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["state"] == "running").then(|| v["pid"].as_i64().unwrap() as i32)
    });
    guard.add(pid);

    // read: sees, cannot act.
    let (code, body) = curl("POST", &url("/stop?name=svc"), &ca, Some("r-secret"), None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("viewer") && body.contains("needs operate"),
        "{body}"
    );
    let (code, body) = curl("GET", &url("/logs?name=svc"), &ca, Some("r-secret"), None);
    assert_eq!(code, 200, "{body}");
    // operate: acts, cannot register (neither directly nor through a /start body).
    let (code, body) = curl("POST", &url("/stop?name=svc"), &ca, Some("o-secret"), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"stopped\""), "{body}");
    let spec = r#"{"name":"extra","command":"sleep 300"}"#;
    let (code, body) = curl("POST", &url("/register"), &ca, Some("o-secret"), Some(spec));
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl("POST", &url("/start"), &ca, Some("o-secret"), Some(spec));
    assert_eq!(code, 403, "{body}");
    // admin: registers.
    let (code, body) = curl("POST", &url("/register"), &ca, Some("a-secret"), Some(spec));
    assert_eq!(code, 201, "{body}");
    // A wrong token is 401.
    let (code, _) = curl("GET", &url("/status"), &ca, Some("nope"), None);
    assert_eq!(code, 401);
    // The CLI speaks HTTPS too, trusting the daemon's certificate with --cacert.
    let out = Command::new(BIN)
        .args(["--api-url", &daemon.url, "--token", "r-secret", "--cacert"])
        .arg(&ca)
        .args(["status", "--name", "extra", "-o", "json"])
        .env_remove("PROVISR_API_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extra: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(extra["name"], "extra");

    // Renewed certificate, saved by renaming over the old files: served from the next
    // connection on, no restart.
    let (cert2, key2) = self_signed("second");
    write(&d.join("ca-second.pem"), &cert2);
    write(&d.join("tls/key.pem.new"), &key2);
    write(&d.join("tls/cert.pem.new"), &cert2);
    std::fs::rename(d.join("tls/key.pem.new"), d.join("tls/key.pem")).unwrap();
    std::fs::rename(d.join("tls/cert.pem.new"), d.join("tls/cert.pem")).unwrap();
    let (code, body) = curl("GET", &url("/health"), &d.join("ca-second.pem"), None, None);
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl("GET", &url("/health"), &ca, None, None);
    assert_eq!(code, 0, "the old certificate is still served");
}

#[test]
fn a_non_loopback_listen_needs_tls_or_allow_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    secret_file(&d.join("admin.token"), "s");
    std::fs::create_dir_all(d.join("programs")).unwrap();
    let config = |extra: &str| {
        write(
            &d.join("cfg.toml"),
            &format!("programs_directory = \"programs\"\n[server]\ntoken_file = \"admin.token\"\n{extra}"),
        );
    };
    config("");
    let out = Command::new(BIN)
        .args(["serve", "--api-listen", "0.0.0.0:0", "--state-dir"])
        .arg(d.join("state"))
        .arg("--config")
        .arg(d.join("cfg.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS") && err.contains("allow_plaintext"),
        "{err}"
    );

    config("allow_plaintext = true\nallowed_hosts = [\"dash.example\"]\n");
    let daemon = TestDaemon::start_on(d, Some(&d.join("cfg.toml")), &d.join("state"), "0.0.0.0:0");
    // A remote browser's Host is its name for the box: only configured names pass.
    let host_status = |host: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("{}/status", daemon.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(host_status("dash.example:8080"), "200");
    assert_eq!(host_status("evil.example"), "403");
    let warned = daemon
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("without TLS") && l.contains("WARN"));
    assert!(warned, "{:?}", daemon.log.lock().unwrap());
}
