//! The container entry: where the remote side hands a request to the Slipway runtime.
//!
//! Two calls, both made from [`crate`]'s remote context: [`prepare`] once per node and step
//! (slurmstepd's `user_init`), and [`Prepared::enter_task`] in every task
//! (`task_init_privileged`, as root, before Slurm makes the task the user).
//!
//! [`prepare`] loads the policy, opens the image and builds the plan here, in slurmstepd, then
//! forks a keeper ([`crate::keeper`]) that builds the mount namespace: the runtime's `prepare`
//! must run single-threaded, and squashfuse lives only as long as the thread that started it.
//! The keeper hands the namespace back over a socket and waits for the step's end.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use slipway_runtime::exec;
use slipway_runtime::host::{devices, lookup_user, slurmclient, GroupInfo, HostFacts};
use slipway_runtime::image::Image;
use slipway_runtime::plan::{self, BindSpec, MountKind, MountStep, Plan, RealFs, Request};
use slipway_runtime::policy::{BatchMode, ClientSteps, LoadedPolicy, TmpMode};

use crate::config::Config;
use crate::keeper::Keeper;
use crate::options::ContainerRequest;

/// The job step a request belongs to, as slurmstepd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepInfo {
    /// `SLURM_JOB_ID`.
    pub job_id: u32,
    /// The step id (batch and extern steps have Slurm's special values).
    pub step_id: u32,
    /// The job's user.
    pub uid: u32,
    /// The job's primary group.
    pub gid: u32,
    /// The job's supplementary groups (`S_JOB_SUPPLEMENTARY_GIDS`).
    pub groups: Vec<u32>,
    /// The job's environment (`S_JOB_ENV`). The user's to set: nothing in it steers what
    /// root does beyond what the same option on the command line may.
    pub env: Vec<(String, String)>,
    /// The step's working directory: slurmstepd's own at `user_init`, where Slurm has changed
    /// (as the user) into `srun --chdir`/`sbatch --chdir` or the submission directory.
    pub cwd: PathBuf,
    /// slurmd's spool directory, from the plugin's `spool_dir=` or slurmstepd's configuration
    /// (`SlurmdSpoolDir`): Slurm's PMIx server keeps its per-step directory there.
    pub spool_dir: Option<PathBuf>,
    /// The first word of the step's command (`S_JOB_ARGV`): the batch step's script.
    pub argv0: Option<String>,
    /// What slurmstepd's configuration says of Slurm's files (for the host client inside).
    pub slurm_conf: slipway_runtime::host::slurmclient::SlurmConf,
}

/// Slurm's step id of the batch script (`SLURM_BATCH_SCRIPT`).
pub const BATCH_STEP: u32 = 0xffff_fffb;
/// Slurm's step id of the extern step (`SLURM_EXTERN_CONT`).
pub const EXTERN_STEP: u32 = 0xffff_fffc;
/// Slurm's step id of an interactive allocation step (`SLURM_INTERACTIVE_STEP`).
pub const INTERACTIVE_STEP: u32 = 0xffff_fffa;

impl StepInfo {
    /// The directory of Slurm's PMIx server for this step (`<spool>/pmix.<job>.<step>`, as
    /// Slurm's mpi/pmix plugin names it), if it exists as a real directory (no symlink on the
    /// way) owned by root or the job's user.
    pub fn pmix_server_dir(&self) -> Option<PathBuf> {
        let dir = self
            .spool_dir
            .as_ref()?
            .join(format!("pmix.{}.{}", self.job_id, self.step_id));
        self.spool_entry(dir, true)
    }

    /// `path` if it is a directory (`dir`) or a regular file reached without a symlink, owned
    /// by root or the job's user: what slurmd made in its spool for this step.
    fn spool_entry(&self, path: PathBuf, dir: bool) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let fd = slipway_runtime::exec::sys::open_path_no_symlinks(&path).ok()?;
        let meta = std::fs::File::from(fd).metadata().ok()?;
        let kind = if dir { meta.is_dir() } else { meta.is_file() };
        (kind && (meta.uid() == 0 || meta.uid() == self.uid)).then_some(path)
    }

    /// What selects this step's GPUs: `SLURM_STEP_GPUS` (the batch and interactive steps:
    /// `SLURM_JOB_GPUS`), the one Slurm sets for this step (a step with `--gres=none` has
    /// none, whatever the job has), and `SLURM_JOB_ID` (in a job: no variable, no GPU).
    pub fn gpu_env(&self) -> Vec<(String, String)> {
        let var = match self.step_id {
            BATCH_STEP | INTERACTIVE_STEP => "SLURM_JOB_GPUS",
            _ => "SLURM_STEP_GPUS",
        };
        self.env
            .iter()
            .filter(|(k, _)| k == var || k == "SLURM_JOB_ID")
            .cloned()
            .collect()
    }

    /// Whether this step's tasks run in the container: every step but the extern step, and the
    /// batch step only when `batch` (the user's `--container-batch`, else the policy's
    /// `slurm.batch`) is `image`. With `host` the script runs on the node and the steps it
    /// starts inherit the request (`SLURM_CONTAINER`, the forwarded options).
    pub fn runs_in_container(&self, batch: BatchMode) -> bool {
        match self.step_id {
            EXTERN_STEP => false,
            BATCH_STEP => batch == BatchMode::Image,
            _ => true,
        }
    }

    /// Whether the host's Slurm client goes inside (`slurm.client_steps`): the batch and
    /// interactive steps, where a user's shell or script calls `srun`; with `all`, every step.
    pub fn wants_slurm_client(&self, steps: ClientSteps) -> bool {
        steps == ClientSteps::All || matches!(self.step_id, BATCH_STEP | INTERACTIVE_STEP)
    }

    /// The batch script slurmstepd runs, to be bound at the same path inside: the step's
    /// first word, if it is a regular file (no symlink on the way) below slurmd's spool
    /// directory, owned by root or the job's user. Only for the batch step.
    pub fn batch_script(&self) -> Option<PathBuf> {
        if self.step_id != BATCH_STEP {
            return None;
        }
        let script = PathBuf::from(self.argv0.as_ref()?);
        if !script.starts_with(self.spool_dir.as_ref()?)
            || script
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return None;
        }
        self.spool_entry(script, false)
    }
}

/// Why the container could not be prepared or entered. Shown to the user on srun's stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The policy file could not be loaded.
    #[error("policy {0}")]
    Policy(String),
    /// The image could not be opened.
    #[error("{0}")]
    Image(String),
    /// The job's user is unknown on this node.
    #[error("user {uid}: {why}")]
    User {
        /// The uid.
        uid: u32,
        /// Why.
        why: String,
    },
    /// The plan refuses the request (policy, bind safety).
    #[error("{0}")]
    Plan(String),
    /// Building the container failed (in the keeper).
    #[error("{0}")]
    Prepare(String),
    /// The keeper process failed.
    #[error("container keeper: {0}")]
    Keeper(String),
    /// Preparing the container took longer than the plugin's `timeout=` (seconds).
    #[error(
        "preparing the container took longer than {0} s and was stopped (a stopped or slow \
         squashfuse, or a very slow image; the admin sets the bound: timeout= in plugstack.conf)"
    )]
    Timeout(u64),
    /// Joining the container failed.
    #[error("task {task}: cannot enter the container: {why}")]
    Enter {
        /// Local task id.
        task: u32,
        /// Why.
        why: String,
    },
}

/// A container prepared on this node, ready for the step's tasks to enter.
#[derive(Debug)]
pub struct Prepared {
    /// The container's mount namespace.
    mnt_ns: OwnedFd,
    /// What turns the job's environment into the container's.
    task_env: Vec<EnvChange>,
    /// The working directory inside the container (`--container-workdir`).
    workdir: Option<PathBuf>,
    /// The keeper, ended (and reaped) when this is dropped.
    _keeper: Keeper,
    /// Image environment lines not applied (logged, and shown by the step's first task).
    pub warnings: Vec<String>,
    /// With GPUs: the step's `SLURM_STEP_GPUS`, and each vendor variable the container sets
    /// (`CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES`) with its value, for tasks that Slurm
    /// gives a subset of the GPUs (`--gpu-bind`).
    pub gpus: Option<(String, Vec<(String, String)>)>,
    /// Microseconds spent building the plan (policy, image, user; the rest of `prepare` is
    /// the keeper's).
    pub plan_us: u128,
    /// Where the keeper's start spent its time.
    pub phases: crate::keeper::Phases,
    /// What the keeper had to say for the node's log.
    pub notes: Vec<String>,
}

/// One change to a task's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvChange {
    /// Set (overwrite).
    Set(String, String),
    /// Remove.
    Unset(String),
}

/// Variables whose host value always wins: Slurm's and PMIx's wiring of the step, and the
/// job's container request (`SLIPWAY_CONTAINER_*`, and the options sbatch forwards as
/// `_SLURM_SPANK_OPTION_*`), which a `srun` in a containerized batch script passes on.
pub fn host_owned(name: &str) -> bool {
    [
        "SLURM_",
        "PMIX_",
        "SPANK_",
        "_SLURM_SPANK_OPTION_",
        "SLIPWAY_CONTAINER_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Resolves the requested image against the step's working directory.
pub fn image_path(request: &ContainerRequest, step: &StepInfo) -> Option<PathBuf> {
    let given = request
        .image
        .as_ref()
        .or(request.slurm_container.as_ref())?;
    let p = Path::new(given);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        step.cwd.join(p)
    })
}

/// Loads the policy the plugin enforces, as root (`slurm_spank_init` in slurmstepd, before
/// Slurm takes the user's identity): a policy file only root can read (0600) is fine. The
/// default path may be absent (built-in defaults), as for the slipway command; a path the
/// admin named in plugstack.conf must exist.
pub fn load_policy(config: &Config) -> Result<LoadedPolicy, EntryError> {
    let named = config.policy_named.then_some(config.policy.as_path());
    LoadedPolicy::load(named, true).map_err(|e| EntryError::Policy(e.to_string()))
}

/// The spool directory: the plugin's `spool_dir=`, else `SlurmdSpoolDir` as slurmstepd's
/// configuration holds it (`raw`), with `%n` and `%h` replaced by this host's name.
pub fn spool_dir(config: &Config, raw: Option<String>, host: &str) -> Option<PathBuf> {
    if let Some(s) = &config.spool_dir {
        return Some(s.clone());
    }
    let raw = raw?;
    let p = PathBuf::from(raw.replace("%n", host).replace("%h", host));
    p.is_absolute().then_some(p)
}

/// `--container-env` keeps host values in the container: only for variables the policy lets
/// pass (a name in `env.deny`, such as `LD_LIBRARY_PATH`, is refused, not silently kept).
pub fn check_container_env(
    request: &ContainerRequest,
    policy: &LoadedPolicy,
) -> Result<(), EntryError> {
    for name in &request.env {
        let d = policy.env_passes(name, false);
        if !d.allowed {
            return Err(EntryError::Plan(format!(
                "--container-env={name}: the policy does not let this variable into the \
                 container ({}) [{}]",
                d.reason, d.rule
            )));
        }
    }
    Ok(())
}

/// Builds the plan for one step on this node (no side effects beyond reading files).
pub fn build_plan(
    request: &ContainerRequest,
    policy: &LoadedPolicy,
    step: &StepInfo,
) -> Result<Plan, EntryError> {
    check_container_env(request, policy)?;
    let path = image_path(request, step).unwrap_or_default();
    let image = Image::open(&path).map_err(|e| EntryError::Image(e.to_string()))?;
    let user = lookup_user(step.uid).map_err(|e| EntryError::User {
        uid: step.uid,
        why: e.to_string(),
    })?;
    let mut gids = vec![step.gid];
    for g in &step.groups {
        if !gids.contains(g) {
            gids.push(*g);
        }
    }
    let host = HostFacts {
        euid: 0,
        user: slipway_runtime::host::UserInfo {
            gid: step.gid,
            ..user
        },
        groups: gids
            .into_iter()
            .map(|gid| GroupInfo {
                gid,
                name: slipway_runtime::host::group_name(gid).unwrap_or_else(|| gid.to_string()),
            })
            .collect(),
        cwd: step.cwd.clone(),
        env: step.env.clone(),
        devices: devices::gather(
            &policy.policy,
            devices::Asked {
                nv: request.nv,
                rocm: request.rocm,
            },
            &step.gpu_env(),
            &devices::short_hostname(),
            true,
        ),
        slurm_client: (step.wants_slurm_client(policy.policy.slurm.client_steps)
            && policy.policy.slurm.client)
            .then(|| slurmclient::gather(&policy.policy.slurm, &step.slurm_conf)),
    };
    let req = Request {
        // The step's program: read ahead from the image while the tasks start (a name the
        // image lacks, such as the batch script in slurmd's spool, is simply not read).
        command: vec![step.argv0.clone().unwrap_or_else(|| "(slurm task)".into())],
        binds: request
            .mounts
            .iter()
            .map(|m| BindSpec {
                src: m.source.clone(),
                dst: m.destination.clone(),
                readonly: m.readonly,
            })
            .collect(),
        pwd: request.workdir.clone(),
        writable_tmpfs: request.writable,
        nv: request.nv,
        rocm: request.rocm,
        slurm_client: step.wants_slurm_client(policy.policy.slurm.client_steps),
        ..Default::default()
    };
    let mut plan = plan::build(&req, policy, &host, &image, &RealFs)
        .map_err(|e| EntryError::Plan(e.to_string()))?;
    // The batch script still runs without the client; the user learns why its srun is missing.
    if let Some(slurmclient::Client::Unavailable(why)) = &host.slurm_client {
        plan.warnings.push(format!(
            "the host's Slurm client is not in the container: {why}"
        ));
    }
    plan.check().map_err(|e| EntryError::Plan(e.to_string()))?;
    add_slurm_mounts(
        &mut plan,
        policy.policy.tmp.mode,
        step.pmix_server_dir().as_deref(),
    );
    if let Some(script) = step.batch_script() {
        plan.mounts.push(MountStep {
            dest: script.clone(),
            kind: MountKind::Bind {
                source: script,
                recursive: false,
            },
            readonly: true,
            nosuid: true,
            nodev: true,
            rule: "slipway spank (the batch script, at the path slurmstepd runs it from)".into(),
            // Opened as the user, no symlink followed: the keeper binds what was checked here
            // (the user runs the script anyway), never what a swapped path would lead to.
            as_user: true,
        });
    }
    Ok(plan)
}

/// What Slurm and PMIx need at the same paths inside. With `tmp.mode = "host"` the node's
/// `/tmp` (PMIx's client directories, `PMIX_SYSTEM_TMPDIR`, Open MPI's session directories),
/// recursively, in place of the plan's; with `"private"` the plan's private `/tmp` stays (one
/// per node and step, shared by the step's tasks on the node). Then the step's PMIx server
/// directory (`pmix_dir`, below slurmd's spool directory), alone: never the whole spool,
/// which holds other jobs' scripts and credentials.
pub fn add_slurm_mounts(plan: &mut Plan, tmp_mode: TmpMode, pmix_dir: Option<&Path>) {
    let bind = |p: &Path, recursive: bool, rule: &str| MountStep {
        dest: p.to_path_buf(),
        kind: MountKind::Bind {
            source: p.to_path_buf(),
            recursive,
        },
        readonly: false,
        nosuid: true,
        nodev: true,
        rule: rule.into(),
        as_user: false,
    };
    let tmp = Path::new("/tmp");
    let i = plan.mounts.iter().position(|m| m.dest == tmp);
    if tmp_mode == TmpMode::Host {
        let rule = "slipway spank (Slurm and PMIx: the node's /tmp, recursively)";
        match i {
            Some(i) => plan.mounts[i] = bind(tmp, true, rule),
            None => plan.mounts.push(bind(tmp, true, rule)),
        }
    }
    if let Some(s) = pmix_dir {
        // Before the generated /etc files, after the base mounts and /tmp (it may lie below).
        let rule = "slipway spank (Slurm's PMIx server directory of this step)";
        let at = plan
            .mounts
            .iter()
            .position(|m| m.dest == tmp)
            .map_or(plan.mounts.len(), |i| i + 1);
        plan.mounts.insert(at, bind(s, false, rule));
    }
}

/// Where the keeper mounts its staging tmpfs (in its private namespace; the host never sees
/// it). Not the runtime's default, `/tmp`: the node's `/tmp` is bound recursively into the
/// container, and a recursive bind taken after the staging mount would carry it along. The
/// first candidate that exists and lies below no recursive bind source.
pub fn staging_dir(plan: &Plan) -> PathBuf {
    let recursive: Vec<&Path> = plan
        .mounts
        .iter()
        .filter_map(|m| match &m.kind {
            MountKind::Bind {
                source,
                recursive: true,
            } => Some(source.as_path()),
            _ => None,
        })
        .collect();
    ["/mnt", "/media", "/srv", "/opt", "/boot", "/root"]
        .iter()
        .map(Path::new)
        .find(|c| c.is_dir() && !recursive.iter().any(|r| c.starts_with(r)))
        .unwrap_or(Path::new(exec::STAGING))
        .to_path_buf()
}

/// Prepares the step's container on this node: builds the plan here and the mount namespace
/// in a forked keeper, and waits for it.
pub fn prepare(
    request: &ContainerRequest,
    config: &Config,
    policy: &LoadedPolicy,
    step: &StepInfo,
) -> Result<Prepared, EntryError> {
    let t = std::time::Instant::now();
    let plan = build_plan(request, policy, step)?;
    let plan_us = t.elapsed().as_micros();
    start(plan, plan_us, config, step)?.finish(request, step)
}

/// A container whose keeper is at work: [`start`]ed, then [`Pending::finish`]ed (or
/// [`Pending::cancel`]led).
#[derive(Debug)]
pub struct Pending {
    keeper: Keeper,
    plan: Plan,
    plan_us: u128,
    fork_us: u64,
    timeout: std::time::Duration,
}

/// Forks the keeper that builds `plan` (built in `plan_us` microseconds) and returns at once.
pub fn start(
    plan: Plan,
    plan_us: u128,
    config: &Config,
    step: &StepInfo,
) -> Result<Pending, EntryError> {
    // Where the job's image mounts are (mount_per=job), for the keeper to use or make.
    let images = step
        .spool_dir
        .as_ref()
        .filter(|_| config.mount_per_job)
        .map(|spool| crate::jobmount::job_dir(spool, step.job_id));
    let (keeper, fork_us) = Keeper::spawn(&plan, &step.env, images.as_deref(), config.timeout)?;
    Ok(Pending {
        keeper,
        plan,
        plan_us,
        fork_us,
        timeout: config.timeout,
    })
}

impl Pending {
    /// Gives the container up (its keeper is killed).
    pub fn cancel(self) {
        self.keeper.cancel();
    }

    /// Waits for the keeper's answer; the tasks' environment is worked out against `step`'s.
    pub fn finish(
        self,
        request: &ContainerRequest,
        step: &StepInfo,
    ) -> Result<Prepared, EntryError> {
        let Pending {
            mut keeper,
            plan,
            plan_us,
            fork_us,
            timeout,
        } = self;
        let ready = keeper.answer(timeout, fork_us)?;
        Ok(ready_container(
            request,
            step,
            (plan, plan_us),
            keeper,
            ready,
        ))
    }
}

/// The container a keeper answered for: what the tasks need from it, worked out once.
fn ready_container(
    request: &ContainerRequest,
    step: &StepInfo,
    (plan, plan_us): (Plan, u128),
    keeper: Keeper,
    ready: crate::keeper::Ready,
) -> Prepared {
    let crate::keeper::Ready {
        mnt_ns,
        env,
        warnings: image_warnings,
        phases,
        notes,
    } = ready;
    // The plan's warnings (a missing Slurm client, GPU files the node lacks), then the
    // image's environment lines not applied: logged, and shown by the step's first task.
    let mut warnings = plan.warnings.clone();
    warnings.extend(image_warnings);
    // Worked out once here, not in every task: a task is a fresh fork of slurmstepd, where
    // every allocation costs copy-on-write page faults.
    let task_env = env_changes(&env, &request.env, &step.env);
    let visible: Vec<(String, String)> = plan
        .env
        .decisions
        .iter()
        .filter(|d| d.origin == "gpu" && d.name.ends_with("_VISIBLE_DEVICES"))
        .filter_map(|d| Some((d.name.clone(), d.value.clone()?)))
        .collect();
    let gpus = (!visible.is_empty()).then(|| {
        let step_gpus = step
            .gpu_env()
            .into_iter()
            .find(|(k, _)| k != "SLURM_JOB_ID")
            .map(|(_, v)| v)
            .unwrap_or_default();
        (step_gpus, visible)
    });
    Prepared {
        gpus,
        mnt_ns,
        task_env,
        workdir: request.workdir.clone(),
        _keeper: keeper,
        warnings,
        notes,
        plan_us,
        phases,
    }
}

impl Prepared {
    /// Moves the calling task (local task id `task`) into the prepared container's mount
    /// namespace (root and working directory become the container's `/`).
    pub fn enter_task(&self, task: u32) -> Result<(), EntryError> {
        // SAFETY: setns with a namespace fd we own.
        if unsafe { libc::setns(self.mnt_ns.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
            return Err(EntryError::Enter {
                task,
                why: format!("setns: {}", std::io::Error::last_os_error()),
            });
        }
        Ok(())
    }

    /// `--container-workdir`, for the task to change into once it is the user.
    pub fn workdir(&self) -> Option<&Path> {
        self.workdir.as_deref()
    }

    /// The changes that turn a task's environment into the container's: every container
    /// variable set, every other variable of the job removed, except Slurm's and PMIx's (the
    /// host's wiring wins) and those of `--container-env`. Worked out against the job's
    /// environment at `user_init`; what Slurm adds to a task later keeps its host value.
    pub fn task_env(&self) -> &[EnvChange] {
        &self.task_env
    }
}

/// See [`Prepared::task_env`]: `container` is the container's environment, `keep` the names
/// of `--container-env`, `current` the job's environment.
pub fn env_changes(
    container: &BTreeMap<String, String>,
    keep: &[String],
    current: &[(String, String)],
) -> Vec<EnvChange> {
    let kept = |k: &str| host_owned(k) || keep.iter().any(|n| n == k);
    let mut out = Vec::new();
    for (k, _) in current {
        if !kept(k) && !container.contains_key(k) {
            out.push(EnvChange::Unset(k.clone()));
        }
    }
    for (k, v) in container {
        let host = current.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
        if host_owned(k) || (kept(k) && host.is_some()) {
            continue;
        }
        if host != Some(v) {
            out.push(EnvChange::Set(k.clone(), v.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
