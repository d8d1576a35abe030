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
    /// Also build the container and run the image's environment scripts in it, as `exec`
    /// would (as you, bounded), to show the final environment and each value's origin when
    /// the scripts need the image's shell.
    #[arg(long)]
    pub evaluate_env: bool,
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
             shell: see the lines not applied above; `slipway explain --evaluate-env` runs \
             them in the container to show it)"
        );
        return s;
    }
    env_lines(&plan.explained_environment(host_env, scripts))
}

fn env_lines(list: &[(String, String, String)]) -> String {
    use std::fmt::Write;
    let mut s = String::from("final environment (each value's origin in brackets):\n");
    for (k, v, origin) in list {
        let _ = writeln!(
            s,
            "  {k}={} [{origin}]",
            slipway_runtime::image::envfile::printable(v, 200)
        );
    }
    s
}

/// `--evaluate-env`: into the container (as `exec` builds it), then the image's scripts run
/// there, traced. The process ends after printing; the container goes with it.
fn evaluated_env(
    plan: &slipway_runtime::plan::Plan,
    host_env: &[(String, String)],
) -> anyhow::Result<String> {
    use anyhow::Context;
    use slipway_runtime::exec::{self, sys::Linux};
    let _prepared =
        exec::prepare_for_exec(plan, host_env, &Linux, std::path::Path::new(exec::STAGING))?;
    let root = std::fs::File::open("/").context("open / in the container")?;
    let scripts = exec::read_env_scripts_in_container(std::os::fd::AsFd::as_fd(&root));
    let list = match exec::shellenv::explained(plan, host_env, &scripts)
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        Some(list) => list,
        None => plan.explained_environment(host_env, &scripts),
    };
    Ok(env_lines(&list))
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
    } else if a.evaluate_env && plan.refused.is_empty() {
        // The plan first: what follows needs the container, which may fail.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(plan.render().as_bytes());
        let _ = out.flush();
        evaluated_env(&plan, &host.env)?
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
