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
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man -l (man-db)");
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
