//! `slipway build OUT.sif SOURCE`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `slipway build`.
#[derive(clap::Args)]
pub struct Args {
    /// The SIF file to write.
    pub output: PathBuf,
    /// A root filesystem directory, a Docker archive (`docker save`) or an OCI layout.
    pub source: PathBuf,
}

/// Runs `slipway build`.
pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("build is not implemented yet")
}
