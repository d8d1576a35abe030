//! `slipway explain [exec options] IMAGE [COMMAND...]`: the whole plan, as text or JSON,
//! without running anything. Exits 1 when the launch would be refused.

use std::io::Write;
use std::path::PathBuf;

use super::exec::{build_plan, Opts, RUNSCRIPT};

/// Arguments of `slipway explain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub opts: Opts,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// A SIF, a squashfs file or a directory.
    pub image: PathBuf,
    /// The command (default: the runscript, as `slipway run`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The environment the command will get, when it can be known without the image's shell
/// (the scripts hold plain assignments, or the image could not be read ahead: then nothing).
fn final_env(plan: &slipway_runtime::plan::Plan, host_env: &[(String, String)]) -> String {
    use std::fmt::Write;
    let Some(scripts) = &plan.env.image_scripts else {
        return String::new();
    };
    let mut s = String::new();
    if !slipway_runtime::exec::shellenv::rust_suffices(plan, scripts) {
        let _ = writeln!(
            s,
            "final environment: computed at launch by the image's /bin/sh (its scripts need a \
             shell: see the lines not applied above)"
        );
        return s;
    }
    let _ = writeln!(s, "final environment (each value's origin in brackets):");
    for (k, v, origin) in plan.explained_environment(host_env, scripts) {
        let _ = writeln!(
            s,
            "  {k}={} [{origin}]",
            slipway_runtime::image::envfile::printable(&v, 200)
        );
    }
    s
}

/// Runs `slipway explain`.
pub fn run(a: Args) -> anyhow::Result<u8> {
    let command = if a.command.is_empty() {
        vec![RUNSCRIPT.to_string()]
    } else {
        a.command
    };
    let (plan, host) = build_plan(&a.opts, &a.image, command, false, true)?;
    let text = if a.json {
        serde_json::to_string_pretty(&plan)? + "\n"
    } else {
        plan.render() + &final_env(&plan, &host.env)
    };
    // A reader that stops early (`| head`, `grep -q`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(if plan.refused.is_empty() { 0 } else { 1 })
}
