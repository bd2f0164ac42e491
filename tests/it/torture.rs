//! `provisr-torture` at small sizes: each scenario against the real daemon binary, checked by
//! scanning `/proc` for the processes tagged with its state directory (`docs/reliability.md`).
//! The full sizes run with `cargo run --release --bin provisr-torture`.

use std::process::Command;

const TORTURE: &str = env!("CARGO_BIN_EXE_provisr-torture");
const DAEMON: &str = env!("CARGO_BIN_EXE_provisr");

/// Runs one scenario and fails with its table (which names the seed to repeat it) unless every
/// invariant held.
fn torture(args: &[&str]) {
    let out = Command::new(TORTURE)
        .arg("--provisr")
        .arg(DAEMON)
        .args(args)
        .output()
        .expect("run provisr-torture");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "provisr-torture {args:?} exited with {}:\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("PASS"), "{stdout}");
}

#[test]
fn kill9_during_writes_loses_doubles_and_leaks_nothing() {
    torture(&["--only", "kill9", "--cycles", "15"]);
}

#[test]
fn a_child_kill_storm_is_restarted_and_counted_exactly() {
    torture(&[
        "--only",
        "storm",
        "--storm-programs",
        "20",
        "--storm-kills",
        "300",
    ]);
}

#[test]
fn escapees_do_not_outlive_their_stop() {
    torture(&[
        "--only",
        "escapees",
        "--escapee-rounds",
        "3",
        "--escapee-stop-timeout-ms",
        "500",
    ]);
}

#[test]
fn editor_saves_run_the_final_content_and_never_a_partial_file() {
    torture(&["--only", "editor", "--saves", "25"]);
}
