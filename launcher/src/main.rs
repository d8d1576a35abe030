//! `slipway`: build, inspect and run HPC container images.
//!
//! This binary is thin: it parses arguments, sets up logging and hands off to
//! `commands/<verb>.rs`, which call into `slipway_runtime`.

mod commands;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for Slipway's own failures (bad input, refused by policy, setup failed), distinct
/// from any status a contained command returns for itself (as Apptainer's 255).
pub const SLIPWAY_FAILURE: u8 = 255;

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Run HPC jobs inside container images"
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed and why.
            // Our error types already print their cause; add a cause from the chain only when
            // the message does not contain it yet.
            let mut msg = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !msg.contains(&cause) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&cause);
                }
            }
            eprintln!("slipway: error: {msg}");
            ExitCode::from(SLIPWAY_FAILURE)
        }
    }
}
