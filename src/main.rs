//! The `provisr` binary: parse the command line, set up logging, dispatch, map errors to exit codes.

fn main() {
    std::process::exit(provisr::cli::main());
}
