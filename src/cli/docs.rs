//! Documents generated from the clap definitions, so they never drift from the real flags:
//! shell completion scripts (`provisr completions SHELL`) and man pages (`provisr man`).

use std::io::Write;
use std::path::Path;

use super::{command, exit, EXIT_CODES_HELP};

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> i32 {
    let mut cmd = command();
    clap_complete::generate(shell, &mut cmd, "provisr", &mut std::io::stdout());
    exit::OK
}

/// Writes provisr(1) to stdout, or into `dir` provisr(1) and a page per command
/// (`provisr-start.1`, …).
pub fn man(dir: Option<&Path>) -> i32 {
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let result = match dir {
        None => {
            let mut out = std::io::stdout().lock();
            page(&cmd, &mut out).and_then(|()| out.flush())
        }
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| pages_into(&cmd, dir)),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            let whereto = dir.map_or_else(|| "stdout".to_string(), |d| d.display().to_string());
            eprintln!("provisr: cannot write the man pages to {whereto}: {e}");
            exit::FAILED
        }
    }
}

/// `cmd`'s page and those of its subcommands, as `<name>.1` files in `dir`.
fn pages_into(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages_into(sub, dir)?;
    }
    let mut file = std::fs::File::create(dir.join(format!("{}.1", man_name(cmd))))?;
    page(cmd, &mut file)?;
    file.flush()
}

/// The page's name: `provisr`, `provisr-start`, … (clap names built subcommands that way).
fn man_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// One man page: clap_mangen's sections, with an EXIT STATUS section in place of its generic
/// EXTRA one (the exit codes are the `after_help` of every command).
fn page(cmd: &clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    let mut exit_status = roff::Roff::new();
    exit_status
        .control("SH", ["EXIT STATUS"])
        .text([roff::roman(EXIT_CODES_HELP)]);
    exit_status.to_writer(w)?;
    man.render_version_section(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and argument of every command explains itself in `--help`.
    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "provisr", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:?}");
    }

    #[test]
    fn help_names_the_exit_codes() {
        let mut cmd = command();
        let help = cmd.render_help().to_string();
        assert!(help.contains("Exit codes: 0 success"), "{help}");
        assert!(help.contains("3 the daemon cannot be reached"), "{help}");
        let status = cmd.find_subcommand_mut("status").unwrap();
        assert!(status.render_help().to_string().contains("Exit codes"));
    }
}
