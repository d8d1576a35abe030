//! `slipway build OUT.sif SOURCE`.

use std::io::IsTerminal;
use std::path::PathBuf;

use slipway_runtime::build::{self, BuildError, BuildOptions, Event, Platform};

/// Arguments of `slipway build`.
#[derive(clap::Args)]
pub struct Args {
    /// Overwrite OUT.sif if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print only errors and notes, no progress.
    #[arg(short, long)]
    pub quiet: bool,
    /// Platform to take from a multi-platform image: OS/ARCH[/VARIANT] (default: this machine).
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<Platform>,
    /// Squashfs compressor passed to mksquashfs (gzip, zstd, xz, lz4; default: gzip).
    #[arg(long)]
    pub compression: Option<String>,
    /// The SIF file to write.
    pub output: PathBuf,
    /// A root filesystem directory, a Docker archive (`docker save`) or an OCI layout
    /// (`DIR` or `DIR:TAG`).
    pub source: PathBuf,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).ok_or_else(|| format!("{s:?} is not OS/ARCH[/VARIANT] (e.g. linux/amd64)"))
}

/// Runs `slipway build`.
pub fn run(a: Args) -> anyhow::Result<u8> {
    if let Err(e) = build::interrupt::install() {
        anyhow::bail!("cannot install the Ctrl-C handler: {e}");
    }
    let quiet = a.quiet;
    let on_event = move |e: &Event| match e {
        Event::Progress(line) if !quiet => eprintln!("slipway build: {line}"),
        Event::Progress(_) => {}
        Event::Note(line) => eprintln!("slipway build: note: {line}"),
    };
    let opts = BuildOptions {
        force: a.force,
        platform: a.platform,
        compression: a.compression,
        tool_progress: !quiet && std::io::stderr().is_terminal(),
        on_event: Some(&on_event),
        ..BuildOptions::new(a.output, a.source)
    };
    match build::build_sif(&opts) {
        Ok(_) => Ok(0),
        Err(BuildError::Interrupted) => {
            eprintln!("slipway build: interrupted; nothing was written");
            Ok(130)
        }
        // The message already quotes its source; the chain would repeat it.
        Err(e) => Err(anyhow::anyhow!(e.to_string())),
    }
}
