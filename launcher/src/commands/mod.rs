//! One module per verb.

use std::ffi::OsString;

use clap::Subcommand;

mod build;
mod exec;
mod explain;
mod inspect;
mod pbs;
mod policy;
mod quick;

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
    /// What the PBS hook runs: `begin` and `end` (root), `launch` (the job's tasks).
    Pbs(pbs::Args),
}

/// Parses the launch verbs (`exec`, `run`, `shell`) on their own, without building the
/// other verbs' parsers: launch time counts. The usual lines are read without clap at all
/// ([`quick`]); the rest by clap for that verb alone. `None` for anything else (other verbs, a
/// global option before the verb), which the whole command-line parser then handles; the
/// messages and usage lines are the same either way.
pub fn parse_launch(args: &[OsString]) -> Option<Result<(u8, Command), clap::Error>> {
    if let Some(c) = quick::parse(args) {
        return Some(Ok(c));
    }
    parse_launch_clap(args)
}

/// [`parse_launch`] with clap only.
fn parse_launch_clap(args: &[OsString]) -> Option<Result<(u8, Command), clap::Error>> {
    let verb = args.get(1)?.to_str()?;
    let rest = &args[1..];
    Some(match verb {
        "exec" => crate::parse_verb("exec", "Run a command inside an image", rest)
            .map(|(v, a)| (v, Command::Exec(a))),
        "run" => crate::parse_verb("run", "Run an image's runscript", rest)
            .map(|(v, a)| (v, Command::Run(a))),
        "shell" => crate::parse_verb("shell", "Start a shell inside an image", rest)
            .map(|(v, a)| (v, Command::Shell(a))),
        _ => return None,
    })
}

/// Runs a verb; `Ok` carries the exit status to return.
pub fn run(cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Build(a) => build::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Exec(a) => exec::run_exec(a),
        Command::Run(a) => exec::run_run(a),
        Command::Shell(a) => exec::run_shell(a),
        Command::Explain(a) => explain::run(a),
        Command::Policy(a) => policy::run(a),
        Command::Pbs(a) => pbs::run(a),
    }
}
