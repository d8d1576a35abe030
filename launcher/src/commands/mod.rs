//! One module per verb.

use std::process::ExitCode;

use clap::Subcommand;

mod build;
mod exec;
mod explain;
mod inspect;
mod policy;

/// The verbs.
#[derive(Subcommand)]
pub enum Command {
    /// Build a SIF image from a directory, a Docker archive or an OCI layout.
    Build(build::Args),
    /// Show what an image holds: SIF header and objects, environment, runscript, labels.
    Inspect(inspect::Args),
    /// Run a command inside an image.
    Exec(exec::ExecArgs),
    /// Run an image's runscript.
    Run(exec::RunArgs),
    /// Start a shell inside an image.
    Shell(exec::ShellArgs),
    /// Show everything `exec` would do, and why, without doing it.
    Explain(explain::Args),
    /// Check the admin policy file (`policy check [FILE]`).
    Policy(policy::Args),
}

/// Runs a verb; `Ok` carries the exit status to return.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Build(a) => build::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Exec(a) => exec::run_exec(a),
        Command::Run(a) => exec::run_run(a),
        Command::Shell(a) => exec::run_shell(a),
        Command::Explain(a) => explain::run(a),
        Command::Policy(a) => policy::run(a),
    }
}
