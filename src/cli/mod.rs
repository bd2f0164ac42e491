//! The command line (`docs/cli.md`): clap types, dispatch, and the exit-code policy.
//!
//! Exit codes: 0 success, 1 a failed operation, 2 bad usage or an invalid config, 3 the daemon
//! cannot be reached.

mod commands;
mod daemon_log;
mod docs;
mod output;
mod plan_view;
mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use output::{OutputFormat, Table};

/// The exit codes, as `--help` and the man page state them.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success; 1 a failed operation; 2 bad usage or an invalid configuration; 3 the daemon cannot be reached. `diff`: 0 no change, 1 changes, 2 an error.";

/// Exit codes shared by every command.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "provisr",
    version,
    about = "A declarative process supervisor",
    propagate_version = true,
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the command (`provisr status --api-url URL`).
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// API base URL; else PROVISR_API_URL, else [server] of --config, else http://127.0.0.1:8080/api.
    /// Without one, the daemon's unix socket is used when it is there and answers.
    #[arg(long, global = true, env = "PROVISR_API_URL")]
    pub api_url: Option<String>,
    /// The daemon's unix socket; else PROVISR_SOCKET, else the socket of --config's state
    /// directory (./.provisr/provisr.sock without --config) when no API URL is given.
    #[arg(long, global = true, env = "PROVISR_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Trust only this CA (a PEM file) for an https API URL, e.g. the daemon's own self-signed
    /// certificate; without it, the public roots.
    #[arg(long, global = true, env = "PROVISR_CACERT", value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Bearer token for the API.
    #[arg(long, global = true, env = "PROVISR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format: a table on a terminal, JSON when piped.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Serve(ServeArgs),
    /// Desire programs running: every program of --config, one --name, or a new ad-hoc --cmd.
    Start(StartArgs),
    /// Desire programs stopped: every program of --config, or one --name.
    Stop(StopArgs),
    /// Stop then start.
    Restart(NameArgs),
    /// Status objects: all, one --name, or the programs of --config.
    Status(StatusArgs),
    /// Start a group's members in priority order.
    #[command(name = "group-start")]
    GroupStart(GroupArgs),
    /// Stop a group's members in reverse priority order.
    #[command(name = "group-stop")]
    GroupStop(GroupArgs),
    /// The status of a group's members.
    #[command(name = "group-status")]
    GroupStatus(GroupArgs),
    /// The recent output of an instance.
    Logs(LogsArgs),
    /// What applying --config would change: exit 0 no change, 1 changes, 2 error.
    Diff(DiffArgs),
    /// Make a programs directory's programs the file-defined programs of the daemon, or of
    /// the whole fleet on a fleet node, showing the per-field plan (with --dry-run, only that).
    Apply(ApplyArgs),
    /// Register an API-source program (persisted) without starting it.
    Register(RegisterArgs),
    /// Remove an API-source program.
    Unregister(NameArgs),
    /// Print every state transition as it happens (server-sent events).
    Events,
    /// Cron jobs: list them, run one now, suspend or resume its schedule, show its runs.
    #[command(subcommand)]
    Cron(CronCommand),
    /// Print a shell completion script (e.g. `provisr completions bash > /etc/bash_completion.d/provisr`).
    Completions(CompletionsArgs),
    /// Write the man pages: provisr(1) to stdout, or every page into --dir.
    Man(ManArgs),
}

/// `provisr cron …`.
#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Every cron job: schedule, next and last run, result.
    List(CronListArgs),
    /// Run a cron job now, as its concurrency allows.
    Trigger(CronJobArgs),
    /// Hold a cron job's scheduled runs (a trigger still runs it).
    Suspend(CronJobArgs),
    /// Schedule a suspended cron job again, from its next scheduled time on.
    Resume(CronJobArgs),
    /// A cron job's runs, newest first: start, duration, result, exit, log files.
    History(CronJobArgs),
}

#[derive(Debug, Args)]
pub struct CronListArgs {
    /// Main config file, to find the daemon's URL and token; `--config ""` means none.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CronJobArgs {
    /// The cron job's name.
    pub name: String,
    /// Main config file, to find the daemon's URL and token; `--config ""` means none.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write provisr.1 and one page per command (provisr-start.1, …) into this directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Main config file (same as --config).
    #[arg(value_name = "CONFIG")]
    pub config_pos: Option<PathBuf>,
    /// Main config file; without one, ./programs with the defaults (the embedded default).
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// Listen address, overriding [server] listen; `:PORT` means 127.0.0.1:PORT.
    #[arg(long)]
    pub api_listen: Option<String>,
    /// State directory, overriding [daemon] state_dir.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Main config file; `--config ""` means none.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// A program, an instance, or a `name-*` pattern.
    #[arg(long)]
    pub name: Option<String>,
    /// Register an ad-hoc program running this command (source `api`, persisted) and start it.
    #[arg(long)]
    pub cmd: Option<String>,
    #[command(flatten)]
    pub adhoc: AdhocArgs,
    /// Print the plan and change nothing (works without a daemon too).
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the programs to settle, e.g. 10s.
    #[arg(long)]
    pub wait: Option<String>,
}

/// The settings of an ad-hoc program (`start --cmd`, `register`).
#[derive(Debug, Args)]
pub struct AdhocArgs {
    /// Restart the program whenever it exits.
    #[arg(long = "auto_restart", alias = "auto-restart", value_name = "BOOL")]
    pub auto_restart: Option<bool>,
    /// How many instances.
    #[arg(long)]
    pub instances: Option<u32>,
    /// The priority.
    #[arg(long)]
    pub priority: Option<i32>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Main config file: stop every program in it; `--config ""` means none.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// A program, an instance, or a `name-*` pattern.
    #[arg(long)]
    pub name: Option<String>,
    /// How long to wait for the programs to stop, e.g. 10s.
    #[arg(long)]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// A program, an instance, or a `name-*` pattern.
    #[arg(long)]
    pub name: String,
    /// Main config file, to find the daemon's URL and token; `--config ""` means none.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// How long to wait for the programs to settle, e.g. 10s.
    #[arg(long)]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A program, an instance, or a `name-*` pattern; one object for a single instance.
    #[arg(long)]
    pub name: Option<String>,
    /// Main config file: the status of its programs, from the daemon its [server] names.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// Every node of the fleet with its instances, as this node knows them (`GET /nodes`).
    #[arg(long)]
    pub all_nodes: bool,
}

#[derive(Debug, Args)]
pub struct GroupArgs {
    /// The group's name, from [[groups]] of the daemon's config.
    #[arg(long)]
    pub group: String,
    /// Main config file, to find the daemon's URL and token.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// How long to wait for the members to settle, e.g. 10s.
    #[arg(long)]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The instance (`web`, `web-2`).
    pub name: String,
    /// Keep printing new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many recent lines.
    #[arg(short = 'n', long = "lines", default_value_t = 100)]
    pub lines: usize,
    /// Show stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Main config file, to find the daemon's URL and token.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Main config file whose programs are compared with the daemon's.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The programs directory (one file per program).
    pub dir: PathBuf,
    /// Show the plan only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Main config file: the daemon its [server] names.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The new program's name.
    #[arg(long)]
    pub name: String,
    /// The command it runs (through /bin/sh -c only when it uses shell syntax).
    #[arg(long)]
    pub cmd: String,
    #[command(flatten)]
    pub adhoc: AdhocArgs,
    /// Main config file, to find the daemon's URL and token; `--config ""` means none.
    #[arg(long, value_parser = any_path)]
    pub config: Option<PathBuf>,
}

/// The whole command line definition: the derive's, with the exit codes under every command's
/// `--help` (and so in every man page).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommands(|sub| sub.after_help(EXIT_CODES_HELP))
}

/// Parses the command line, runs the command and returns the exit code.
pub fn main() -> i32 {
    use clap::FromArgMatches;
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    let format = OutputFormat::resolve(cli.global.output);
    let g = &cli.global;
    match &cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Start(a) => commands::start(g, a, format),
        Command::Stop(a) => commands::stop(g, a, format),
        Command::Restart(a) => commands::restart(g, a, format),
        Command::Status(a) => commands::status(g, a, format),
        Command::GroupStart(a) => commands::group(g, a, "/group/start", format),
        Command::GroupStop(a) => commands::group(g, a, "/group/stop", format),
        Command::GroupStatus(a) => commands::group(g, a, "/group/status", format),
        Command::Logs(a) => commands::logs(g, a),
        Command::Diff(a) => commands::diff(g, a, format),
        Command::Apply(a) => commands::apply(g, a, format),
        Command::Register(a) => commands::register(g, a, format),
        Command::Unregister(a) => commands::unregister(g, a, format),
        Command::Events => commands::events(g, format),
        Command::Cron(c) => commands::cron(g, c, format),
        Command::Completions(a) => docs::completions(a.shell),
        Command::Man(a) => docs::man(a.dir.as_deref()),
    }
}

/// A path where the empty string is allowed: `--config ""` says "no config file" (as in the seeds).
fn any_path(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// The daemon-less environment the loader expands `${VAR}` against: this process's environment.
pub fn os_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

/// A config path where `""` means "no config file".
fn config_path(config: &Option<PathBuf>) -> Option<&std::path::Path> {
    config.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Prints `value` as JSON, or the table `render` builds.
fn print_json_or_table<T: serde::Serialize>(
    format: OutputFormat,
    value: &T,
    render: impl FnOnce() -> String,
) {
    match format {
        OutputFormat::Json => output::print_json(value),
        OutputFormat::Table => print!("{}", render()),
    }
}
