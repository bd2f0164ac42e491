//! The `provisr` binary: parse the command line, set up logging, dispatch, map errors to exit codes.

#[global_allocator]
static ALLOCATOR: provisr::memory::Allocator = provisr::memory::Allocator;

fn main() {
    // The daemon starts this binary again as its spawner (`supervisor/spawner.rs`), before
    // anything else of the binary runs.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(provisr::supervisor::spawner::ARG))
    {
        std::process::exit(provisr::supervisor::spawner::serve());
    }
    std::process::exit(provisr::cli::main());
}
