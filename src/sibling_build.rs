//! The `cargo build` that brings the `provisr` binary up to date for the tools run beside it under
//! `cargo run` (`provisr-bench`, `provisr-torture`): `cargo run` builds only the tool, and the tool
//! drives `target/<profile>/provisr` as a separate process.

use std::process::Command;

/// Under `cargo run` (`$CARGO` and `$CARGO_MANIFEST_DIR` set), `cargo build <args>` in the tool's
/// package directory; `None` when the tool was started otherwise.
///
/// The variables `cargo run` set for the tool's package are removed: a dependency's build script
/// that reads them (ring reads `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`) would be rebuilt by this
/// build, and again by the next `cargo run`.
pub fn cargo_build(args: &[&str]) -> Option<Command> {
    let cargo = std::env::var_os("CARGO")?;
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(args).current_dir(manifest);
    for (key, _) in std::env::vars_os() {
        let set_by_run = key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                ]
                .contains(&k)
        });
        if set_by_run {
            cmd.env_remove(key);
        }
    }
    Some(cmd)
}
