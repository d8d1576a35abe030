//! `slipway inspect IMAGE [--json]`.

use std::path::PathBuf;

use slipway_runtime::image::{inspect, inspection_text, Image};

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
pub fn run(a: Args) -> anyhow::Result<u8> {
    let image = Image::open_any(&a.image)?;
    let report = inspect(&image)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspection_text(&report));
    }
    Ok(0)
}
