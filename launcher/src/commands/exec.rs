//! `slipway exec`, `slipway run`, `slipway shell`: build the plan, prepare the container,
//! become the user, exec the command (no fork: the command's exit status, or its death by a
//! signal, is slipway's).

use std::path::{Path, PathBuf};

use anyhow::Context;
use slipway_runtime::exec::{self, sys::Linux};
use slipway_runtime::host::{devices, HostFacts};
use slipway_runtime::image::{envfile, Image};
use slipway_runtime::plan::{self, bind, Plan, RealFs, Request};
use slipway_runtime::policy::LoadedPolicy;

/// Options shared by `exec`, `run`, `shell` and `explain` (as Apptainer's).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Opts {
    /// Bind a host path: SRC[:DST[:ro|rw]], comma-separated lists, `\,` and `\:` escapes
    /// (also from $SLIPWAY_BIND, $APPTAINER_BIND, $SINGULARITY_BIND).
    #[arg(short = 'B', long = "bind", value_name = "SPEC")]
    pub bind: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, value_name = "DIR")]
    pub pwd: Option<PathBuf>,
    /// Pass only the host variables the policy's env.pass lists.
    #[arg(short = 'e', long)]
    pub cleanenv: bool,
    /// Set a variable inside: K=V (repeatable, or a comma-separated list).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read variables from a file (`export K=V` lines).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Bind nothing from the host's home, working directory or /tmp.
    #[arg(short = 'c', long)]
    pub contain: bool,
    /// Do not bind the home directory.
    #[arg(long)]
    pub no_home: bool,
    /// A tmpfs overlay over the image: writes succeed and are lost at exit.
    #[arg(long)]
    pub writable_tmpfs: bool,
    /// The node's NVIDIA GPUs (those the job has) with the host's driver (also from
    /// $SLIPWAY_NV, $APPTAINER_NV, $SINGULARITY_NV).
    #[arg(long)]
    pub nv: bool,
    /// The node's AMD GPUs (those the job has) with /dev/kfd and the host's ROCm files (also
    /// from $SLIPWAY_ROCM, $APPTAINER_ROCM, $SINGULARITY_ROCM).
    #[arg(long)]
    pub rocm: bool,
    /// One container per process even for the ranks of a parallel job (by default those of one
    /// job on one node share one; also from $SLIPWAY_NO_SHARE).
    #[arg(long)]
    pub no_share: bool,
    /// Unprivileged: run a SIF or squashfs image from a copy unpacked once on this node
    /// (policy `images.unpack`; kept under `images.unpack_dir`) instead of squashfuse at
    /// every launch (also from $SLIPWAY_UNPACK; `--unsquash`, $APPTAINER_UNSQUASH as Apptainer
    /// spells it).
    #[arg(long, visible_alias = "unsquash")]
    pub unpack: bool,
    /// Policy file (default /etc/slipway/policy.toml; built-in defaults if it is missing).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// (root only) Run as this uid with its groups, as the SPANK plugin does.
    #[arg(long, hide = true, value_name = "UID")]
    pub as_user: Option<u32>,
}

/// Arguments of `slipway exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub opts: Opts,
    /// A SIF, a squashfs file or a directory.
    pub image: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Arguments of `slipway run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: Opts,
    /// A SIF, a squashfs file or a directory.
    pub image: PathBuf,
    /// Arguments for the runscript.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Arguments of `slipway shell`.
#[derive(clap::Args, Debug)]
pub struct ShellArgs {
    #[command(flatten)]
    pub opts: Opts,
    /// A SIF, a squashfs file or a directory.
    pub image: PathBuf,
}

/// The runscript `slipway run` executes.
pub const RUNSCRIPT: &str = "/.singularity.d/runscript";

/// Splits `--env` values: `A=1,B=2`, where a piece without `=` belongs to the previous value.
fn split_env(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        for piece in item.split(',') {
            match piece.split_once('=') {
                Some((k, v)) if envfile::valid_name(k) => out.push((k.into(), v.into())),
                _ => match out.last_mut() {
                    Some(last) => {
                        last.1.push(',');
                        last.1.push_str(piece);
                    }
                    None => anyhow::bail!("--env {item}: expected K=V"),
                },
            }
        }
    }
    Ok(out)
}

/// Builds the plan for a command (shared with `explain`).
pub fn build_plan(
    opts: &Opts,
    image: &Path,
    command: Vec<String>,
    shell: bool,
    read_image_env: bool,
) -> anyhow::Result<(Plan, HostFacts)> {
    // SAFETY: geteuid has no preconditions.
    let euid = libc_geteuid();
    if opts.as_user.is_some() && euid != 0 {
        anyhow::bail!("--as-user is for root only");
    }
    let mut host = HostFacts::gather(opts.as_user).context("host facts")?;
    let policy = LoadedPolicy::load(opts.policy.as_deref(), euid == 0)?;
    let asked = devices::Asked {
        nv: opts.nv || flag_from_env("NV"),
        rocm: opts.rocm || flag_from_env("ROCM"),
    };
    host.devices = devices::gather(
        &policy.policy,
        asked,
        &host.env,
        &devices::short_hostname(),
        euid == 0,
    );
    // The policy is root's to read; everything after it (the image, the --env-file, the
    // bind sources the plan resolves) is read as the user would, as the SPANK plugin plans
    // with the job user's identity: root must not read for the user what they cannot.
    let _read_as = match opts.as_user {
        Some(uid) if uid != 0 => {
            let groups: Vec<u32> = host.groups.iter().map(|g| g.gid).collect();
            Some(exec::creds::FsIdentity::enter(uid, host.user.gid, &groups)?)
        }
        _ => None,
    };
    let image = Image::open(image)?;
    let mut binds = Vec::new();
    for var in ["SINGULARITY_BIND", "APPTAINER_BIND", "SLIPWAY_BIND"] {
        if let Ok(v) = std::env::var(var) {
            binds.extend(bind::parse_list(&v).map_err(|e| anyhow::anyhow!("${var}: {e}"))?);
        }
    }
    for b in &opts.bind {
        binds.extend(bind::parse_list(b).map_err(|e| anyhow::anyhow!("--bind {e}"))?);
    }
    let env_file = match &opts.env_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--env-file {}", p.display()))?;
            Some((p.clone(), envfile::parse(&p.display().to_string(), &text)))
        }
        None => None,
    };
    let req = Request {
        command,
        shell,
        binds,
        pwd: opts.pwd.clone(),
        cleanenv: opts.cleanenv,
        env: split_env(&opts.env)?,
        env_file,
        contain: opts.contain,
        no_home: opts.no_home,
        writable_tmpfs: opts.writable_tmpfs,
        no_share: opts.no_share || flag_from_env("NO_SHARE"),
        unpack: opts.unpack || flag_from_env("UNPACK") || flag_from_env("UNSQUASH"),
        nv: asked.nv,
        argv0: None,
        rocm: asked.rocm,
        // The host's Slurm client is the SPANK plugin's, for its batch and interactive steps.
        slurm_client: false,
        // `explain` shows the image's environment, read without mounting; the launch reads it
        // from the mounted image instead (no second pass over the file).
        image_env: read_image_env.then(|| image_env(&image)).flatten(),
    };
    let plan = plan::build(&req, &policy, &host, &image, &RealFs)?;
    Ok((plan, host))
}

/// The image's environment scripts, parsed, if the image can be read without mounting.
fn image_env(image: &Image) -> Option<Vec<envfile::EnvScript>> {
    let i = slipway_runtime::image::inspect(image).ok()?;
    Some(
        i.environment
            .iter()
            .map(|f| envfile::parse_image_script(&f.path, &f.content))
            .collect(),
    )
}

/// `$SLIPWAY_<name>`, `$APPTAINER_<name>` or `$SINGULARITY_<name>` (`NV`, `ROCM`) set to a
/// true value (Apptainer's spelling: anything but empty, `0`, `false`, `no`, `off`).
pub fn flag_from_env(name: &str) -> bool {
    ["SLIPWAY_", "APPTAINER_", "SINGULARITY_"].iter().any(|p| {
        std::env::var(format!("{p}{name}")).is_ok_and(|v| {
            !matches!(
                v.to_ascii_lowercase().as_str(),
                "" | "0" | "false" | "no" | "off"
            )
        })
    })
}

fn libc_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Prepares and enters the container, then execs; returns only on failure.
fn launch(plan: Plan, host: HostFacts) -> anyhow::Result<u8> {
    plan.check()?;
    let (env, release) = match &plan.shared {
        Some(shared) => {
            // A rank of a parallel job: join (or create) the node's container of the job.
            // The job's directory, opened first: the ranks share what the image's shell gave.
            let dir = slipway_runtime::jobs::shared::job_dir(&shared.key, &plan, &host.env)?;
            let memo = exec::shellenv::Memo::open(&dir).ok();
            let release = slipway_runtime::jobs::shared::enter(&dir, &plan, &host.env)?;
            let root = std::fs::File::open("/").context("open /")?;
            let scripts = exec::read_env_scripts_in_container(std::os::fd::AsFd::as_fd(&root));
            let (env, told) =
                exec::shellenv::environment(&plan, &host.env, &scripts, memo.as_ref())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let first = ["PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"]
                .iter()
                .find_map(|k| host.env.iter().find(|(n, _)| n == k))
                .is_none_or(|(_, v)| v == "0");
            if first {
                for w in told.iter().take(exec::MAX_WARNINGS) {
                    eprintln!("slipway: warning: {w}");
                }
            }
            (env, release)
        }
        None => {
            let prepared =
                exec::prepare_for_exec(&plan, &host.env, &Linux, Path::new(exec::STAGING))?;
            for w in &prepared.warnings {
                eprintln!("slipway: warning: {w}");
            }
            (prepared.env.clone(), None)
        }
    };
    // The last rank of the node: the keeper goes now, before the ranks can end (under Slurm a
    // keeper outliving its step's tasks costs the step a second).
    if let Some(r) = release {
        r.go();
    }
    exec::drop_identity(&plan)?;
    if let Some(w) = exec::chdir(&plan)? {
        eprintln!("slipway: warning: {w}");
    }
    let e = exec::exec(&plan, &env);
    Err(e.into())
}

/// Runs `slipway exec`.
pub fn run_exec(a: ExecArgs) -> anyhow::Result<u8> {
    let (plan, host) = build_plan(&a.opts, &a.image, a.command, false, false)?;
    launch(plan, host)
}

/// Runs `slipway run`.
pub fn run_run(a: RunArgs) -> anyhow::Result<u8> {
    let mut cmd = vec![RUNSCRIPT.to_string()];
    cmd.extend(a.args);
    let (plan, host) = build_plan(&a.opts, &a.image, cmd, false, false)?;
    launch(plan, host)
}

/// Runs `slipway shell`.
pub fn run_shell(a: ShellArgs) -> anyhow::Result<u8> {
    let (plan, host) = build_plan(&a.opts, &a.image, vec!["/bin/bash".into()], true, false)?;
    launch(plan, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lists() {
        let v = split_env(&["A=1,B=2".into(), "C=x,y".into()]).unwrap();
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("C".into(), "x,y".into())
            ]
        );
        assert!(split_env(&["nope".into()]).is_err());
    }
}
