//! One module per verb.

use std::process::ExitCode;

use clap::Subcommand;

mod build;
mod inspect;
mod policy;

/// The verbs.
#[derive(Subcommand)]
pub enum Command {
    /// Build a SIF image from a directory, a Docker archive or an OCI layout.
    Build(build::Args),
    /// Show what an image holds: SIF header and objects, environment, runscript, labels.
    Inspect(inspect::Args),
    /// Check the admin policy file (`policy check [FILE]`).
    Policy(policy::Args),
}

/// Runs a verb; `Ok` carries the exit status to return.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Build(a) => build::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Policy(a) => policy::run(a),
    }
}
