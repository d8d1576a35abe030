//! `slipway pbs begin|launch|end`: what the PBS hook (`pbs-hook/slipway_hook.py`) runs. Thin:
//! the job's container lives in [`slipway_runtime::jobs`].
//!
//! - `begin` (root, `execjob_begin`, every node of the job): the job's directory, the policy
//!   checked for the job's user, the image premounted when the policy trusts it.
//! - `launch` (the job's user, what `execjob_launch` makes MoM exec for the job script and
//!   every task): join (or start) the job's container on this node and exec the task in it.
//!   MoM starts a job script as `-slipway pbs launch ... --shell /bin/bash` with the script's
//!   path on stdin: the shell is started as a login shell (`-bash`) with that stdin.
//! - `end` (root, `execjob_end`): everything of the job on this node removed.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use slipway_runtime::exec;
use slipway_runtime::jobs::{self, keeper, BeginRequest};
use slipway_runtime::plan::{ImageMount, MountKind, MountStep, Plan};
use slipway_runtime::policy::Format;

use super::exec::{build_plan, Opts};

/// `slipway pbs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Verb,
}

#[derive(clap::Subcommand, Debug)]
enum Verb {
    /// (root; the hook's execjob_begin) Set up the job's container directory on this node.
    Begin {
        /// The PBS job id.
        #[arg(long)]
        job: String,
        /// The job's user.
        #[arg(long)]
        user: String,
        /// The image (absolute).
        #[arg(long)]
        image: PathBuf,
        /// Policy file (default /etc/slipway/policy.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// (the job's user; what the hook's execjob_launch runs) Run a task in the job's container.
    Launch(LaunchArgs),
    /// (root; the hook's execjob_end) Remove everything of the job on this node.
    End {
        /// The PBS job id.
        #[arg(long)]
        job: String,
    },
}

#[derive(clap::Args, Debug)]
struct LaunchArgs {
    /// The PBS job id.
    #[arg(long)]
    job: String,
    /// The image (as given to execjob_begin).
    #[arg(long)]
    image: PathBuf,
    #[command(flatten)]
    opts: Opts,
    /// A job script: start this shell as a login shell, stdin (the script's path) kept.
    #[arg(long, value_name = "SHELL", conflicts_with = "command")]
    shell: Option<String>,
    /// argv[0] of the program, when it is not the program's path.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    argv0: Option<String>,
    /// The program and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs `slipway pbs`.
pub fn run(a: Args) -> anyhow::Result<u8> {
    match a.cmd {
        Verb::Begin {
            job,
            user,
            image,
            policy,
        } => {
            need_root("begin")?;
            let state = jobs::begin(&BeginRequest {
                job,
                user,
                image,
                policy,
            })?;
            match state.error {
                Some(e) => {
                    // Recorded for the tasks, which print it in the job's output.
                    eprintln!("slipway: {e}");
                    Ok(1)
                }
                None => Ok(0),
            }
        }
        Verb::End { job } => {
            need_root("end")?;
            jobs::end(&job)?;
            Ok(0)
        }
        Verb::Launch(l) => launch(l),
    }
}

fn need_root(verb: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("slipway pbs {verb} is run by the PBS hook, as root");
    }
    Ok(())
}

fn launch(l: LaunchArgs) -> anyhow::Result<u8> {
    let dir = jobs::job_dir(&l.job)?;
    let state = dir.load_state()?;
    if let Some(e) = state.error {
        bail!("{e}");
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid != state.uid {
        bail!(
            "job {}: its container belongs to uid {}, not {uid}",
            l.job,
            state.uid
        );
    }
    if l.image != state.image {
        bail!(
            "job {}: its container is of {} (execjob_begin), not {}",
            l.job,
            state.image.display(),
            l.image.display()
        );
    }
    let (command, argv0) = match (&l.shell, l.command.is_empty()) {
        (Some(sh), _) => {
            let base = Path::new(sh)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            (vec![sh.clone()], Some(format!("-{base}")))
        }
        (None, false) => (l.command.clone(), l.argv0.clone()),
        (None, true) => bail!("no program to launch (give --shell SHELL or -- PROGRAM ARGS)"),
    };
    let (mut plan, host) = build_plan(&l.opts, &l.image, command, false, false)?;
    plan.argv0 = argv0;
    add_pbs_mounts(&mut plan, &pbs_conf());
    if let Some(at) = &state.premounted {
        // Root mounted and checked the image at execjob_begin; the container binds that.
        plan.image.named = Some(std::mem::replace(&mut plan.image.path, at.clone()));
        plan.image.format = Format::Dir;
        plan.image.mount = ImageMount::Directory;
        plan.image.rule = "slipway pbs (premounted by execjob_begin)".into();
    }
    plan.check()?;
    // The user's part of the job's directory, opened first: the tasks share what the image's
    // shell gave.
    let memo = exec::shellenv::Memo::open(&dir.user_dir()).ok();
    keeper::join_or_start(&dir, &plan, &host.env)?;
    // In the container: its environment from the image's scripts, read from its root.
    let root = std::fs::File::open("/").context("open /")?;
    let scripts = exec::read_env_scripts_in_container(root.as_fd());
    let (env, told) = exec::shellenv::environment(&plan, &host.env, &scripts, memo.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let first_task = host
        .env
        .iter()
        .find(|(k, _)| k == "PBS_TASKNUM")
        .is_none_or(|(_, v)| v == "1");
    if first_task {
        for w in told.iter().take(exec::MAX_WARNINGS) {
            eprintln!("slipway: warning: {w}");
        }
    }
    drop(root);
    exec::drop_identity(&plan)?;
    if let Some(w) = exec::chdir(&plan)? {
        eprintln!("slipway: warning: {w}");
    }
    Err(exec::exec(&plan, &env).into())
}

/// `/etc/pbs.conf` (or `$PBS_CONF_FILE`): `(PBS_EXEC, PBS_HOME)` and the file, when it exists.
fn pbs_conf() -> Option<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    let path = std::env::var_os("PBS_CONF_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/etc/pbs.conf".into());
    let text = std::fs::read_to_string(&path).ok()?;
    let get = |k: &str| {
        text.lines().find_map(|l| {
            let (key, v) = l.split_once('=')?;
            (key.trim() == k).then(|| PathBuf::from(v.trim()))
        })
    };
    Some((path.clone(), get("PBS_EXEC"), get("PBS_HOME")))
}

/// PBS's client side at the same paths inside, read-only, so that an `mpirun` in the image
/// starts its daemons through `pbs_tmrsh`/`pbsdsh` and a job script is found where MoM says:
/// the configuration file, `PBS_EXEC`, and `PBS_HOME/mom_priv/jobs` (job scripts: each
/// readable by its owner only, as on the host).
fn add_pbs_mounts(plan: &mut Plan, conf: &Option<(PathBuf, Option<PathBuf>, Option<PathBuf>)>) {
    let Some((file, exec_dir, home)) = conf else {
        return;
    };
    let mut paths = vec![file.clone()];
    paths.extend(exec_dir.iter().cloned());
    paths.extend(home.iter().map(|h| h.join("mom_priv/jobs")));
    // Before the generated /etc files (the last mounts).
    let at = plan
        .mounts
        .iter()
        .position(|m| matches!(m.kind, MountKind::Generated { .. }))
        .unwrap_or(plan.mounts.len());
    for (i, p) in paths
        .into_iter()
        .filter(|p| p.is_absolute() && p.exists())
        .enumerate()
    {
        plan.mounts.insert(
            at + i,
            MountStep {
                dest: p.clone(),
                kind: MountKind::Bind {
                    source: p,
                    recursive: false,
                },
                readonly: true,
                nosuid: true,
                nodev: true,
                rule: "slipway pbs (the PBS client: pbs.conf, PBS_EXEC, the job scripts)".into(),
                as_user: true,
            },
        );
    }
}
