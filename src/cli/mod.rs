//! The command line: clap types and the client-side commands.

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    0
}
