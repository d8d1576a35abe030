//! `slipway inspect IMAGE [--json]`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `slipway inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A SIF, a squashfs file or a directory.
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `slipway inspect`.
pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("inspect is not implemented yet")
}
