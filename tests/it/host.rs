//! Fitting the host: shell completions and man pages generated from the real command line.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_provisr");

fn provisr(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run provisr")
}

#[test]
fn bash_accepts_the_completion_script() {
    let out = provisr(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("provisr.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Sourced, it completes the commands.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("group-start") && text.contains("--api-url"));
    for shell in ["zsh", "fish"] {
        let out = provisr(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

#[test]
fn man_renders_the_pages() {
    let out = provisr(&["man"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("provisr.1");
    std::fs::write(&page, &out.stdout).unwrap();
    let rendered = match Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
    {
        Ok(out) => out,
        // `.ci/run` installs man-db; a bare machine still checks the page was written.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "NOTICE: man (man-db) is not installed; the page was written but not rendered"
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(".TH provisr 1"));
            return;
        }
        Err(e) => panic!("man -l: {e}"),
    };
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8_lossy(&rendered.stdout);
    // man justifies lines: compare word by word.
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("provisr - A declarative process supervisor"),
        "{text}"
    );
    assert!(
        words.contains("EXIT STATUS Exit codes: 0 success"),
        "{text}"
    );

    let pages = dir.path().join("pages");
    let out = provisr(&["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success());
    for name in ["provisr.1", "provisr-start.1", "provisr-group-stop.1"] {
        assert!(pages.join(name).is_file(), "{name}");
    }
}

/// A daemon running as root with one program, from a temp dir everyone can enter.
mod privileges {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use crate::daemon::{write, TestDaemon};
    use crate::util::{proc_line, wait_for, GroupGuard};

    #[test]
    fn a_program_runs_as_nobody_with_its_limits_and_umask_and_its_output_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let shared = d.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        for p in [d, shared.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        write(
            &d.join("cfg.toml"),
            "programs_directory = \"programs\"\n[log]\ndir = \"logs\"\n",
        );
        let made = shared.join("made");
        write(
            &d.join("programs/lowly.toml"),
            &format!(
                r#"command = "echo hello from $(id -un); touch {}; exec sleep 300"
user = "nobody"
umask = "077"
oom_score_adj = 500
[limits]
nofile = 1024
core = 0
"#,
                made.display()
            ),
        );
        let daemon = TestDaemon::start(d, Some(&d.join("cfg.toml")), &d.join("state"));
        let mut guard = GroupGuard::default();
        let pid = wait_for(Duration::from_secs(20), "lowly running", || {
            let s = daemon.status("lowly");
            (s["state"] == "running").then(|| s["pid"].as_i64().unwrap() as i32)
        });
        guard.add(pid);
        let uid = proc_line(pid, "status", "Uid:");
        assert_eq!(
            uid.split_whitespace().collect::<Vec<_>>(),
            ["Uid:", "65534", "65534", "65534", "65534"],
            "{uid}"
        );
        let gid = proc_line(pid, "status", "Gid:");
        assert!(gid.contains("65534"), "{gid}");
        let nofile = proc_line(pid, "limits", "Max open files");
        assert_eq!(
            nofile.split_whitespace().collect::<Vec<_>>()[3..5],
            ["1024", "1024"],
            "{nofile}"
        );
        let core = proc_line(pid, "limits", "Max core file size");
        assert!(core.contains(" 0 "), "{core}");
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
                .unwrap()
                .trim(),
            "500"
        );
        wait_for(Duration::from_secs(10), "the file the program made", || {
            made.exists().then_some(())
        });
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "umask 077 makes files 0600");
        let log = d.join("logs/lowly.stdout.log");
        wait_for(
            Duration::from_secs(10),
            "the output in its log file",
            || {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.contains("hello from nobody"))
            },
        );
    }

    fn provisr_as_nobody(args: &[&str], cwd: &Path) -> std::process::Output {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_provisr"))
            .args(args)
            .current_dir(cwd)
            .env_remove("PROVISR_API_URL")
            .env("PROVISR_API_URL", "http://127.0.0.1:1/api")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    #[test]
    fn unknown_accounts_and_switching_users_without_root_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(&d.join("cfg.toml"), "programs_directory = \"programs\"\n");
        write(
            &d.join("programs/ghost.toml"),
            "command = \"sleep 1\"\nuser = \"no-such-user-here\"\n",
        );
        write(
            &d.join("programs/rooty.toml"),
            "command = \"sleep 1\"\nuser = \"root\"\nnice = -5\n",
        );
        for p in [
            "cfg.toml",
            "programs",
            "programs/ghost.toml",
            "programs/rooty.toml",
        ] {
            let mode = if p == "programs" { 0o755 } else { 0o644 };
            std::fs::set_permissions(d.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let out = provisr_as_nobody(&["start", "--config", "cfg.toml", "--dry-run"], d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("ghost.toml:2") && err.contains("no user named \"no-such-user-here\""),
            "{err}"
        );
        assert!(
            err.contains("rooty.toml:2") && err.contains("`user`") && err.contains("needs root"),
            "{err}"
        );
        assert!(
            err.contains("rooty.toml:3") && err.contains("`nice`"),
            "{err}"
        );
    }
}
