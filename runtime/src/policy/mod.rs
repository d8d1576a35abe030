//! The admin policy (`/etc/slipway/policy.toml`): which images may run, how they are mounted,
//! what is bound in, and how the environment is filtered.
//!
//! CONTRACT (shared by the policy and exec work): the field names and meanings below are the
//! policy file's schema. Loading (line numbers in errors, ownership checks, glob matching by
//! path component) is implemented in this module's submodules:
//!
//! - `load`: [`LoadedPolicy::load`] / [`LoadedPolicy::parse`], the schema table every key is
//!   checked against, [`PolicyError`], and [`LoadedPolicy::rule`] (which line set a key).
//! - `check`: the decisions ([`LoadedPolicy::check_image`], [`LoadedPolicy::kernel_mount`],
//!   [`LoadedPolicy::check_user_bind`], [`LoadedPolicy::env_passes`]).
//! - `matching`: [`path_matches`] (globs matched one path component at a time) and
//!   [`env_matches`].
//! - `validate`: the checks of single values (paths, owners, binds, sizes, commands).
//! - `secure`: the owner and mode checks a root process applies before trusting a file.
//! - `summary`: the effective policy as TOML, and warnings, for `slipway policy check`.
//!
//! The admin guide is `docs/policy.md`.

mod check;
mod load;
mod matching;
mod secure;
mod summary;
mod validate;

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use check::{running_as_root, Decision, Refusal, User};
pub use load::{LoadedPolicy, PolicyError, PolicySource};
pub use matching::{env_matches, path_matches};

/// Default location of the policy file.
pub const DEFAULT_POLICY_PATH: &str = "/etc/slipway/policy.toml";

/// The whole policy. Every section and key has a safe default, used when the file omits it
/// (and, for every section, when there is no policy file at all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// `[images]`: which images may run and how they are mounted.
    pub images: Images,
    /// `[mounts]`: what is bound into every container and what users may bind.
    pub mounts: Mounts,
    /// `[tmp]`: how `/tmp` and `/var/tmp` are provided.
    pub tmp: Tmp,
    /// `[env]`: environment filtering.
    pub env: Env,
    /// `[gpu]`: NVIDIA GPUs.
    pub gpu: Gpu,
    /// `[fabric]`: InfiniBand and Omni-Path.
    pub fabric: Fabric,
    /// `[mpi]`: the hybrid model (`mpirun slipway exec`).
    pub mpi: Mpi,
    /// `[slurm]`: the batch step and the host's Slurm client inside containers.
    pub slurm: Slurm,
}

/// Where a containerized job's batch script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// In the image, as its steps (and the interactive step of `salloc`).
    #[default]
    Image,
    /// On the node; only the steps it starts enter the image.
    Host,
}

/// Which containerized steps get the host's Slurm client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientSteps {
    /// The batch step and `salloc`'s interactive step, where a script or a shell calls `srun`.
    #[default]
    Batch,
    /// Every containerized step (an `mpirun` started by `srun -n1 --container`), at the cost
    /// of the client's binds in every step's preparation.
    All,
}

/// Slurm's commands the host client puts inside by default.
pub const DEFAULT_SLURM_COMMANDS: &[&str] = &[
    "srun", "sbatch", "salloc", "scontrol", "squeue", "scancel", "sinfo", "sacct",
];

/// `[slurm]`: the batch step and the host's Slurm client in containers. See docs/slurm.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slurm {
    /// Where a containerized job's batch script runs (a user's `--container-batch` wins).
    pub batch: BatchMode,
    /// The host's Slurm client (`commands`) works inside containerized steps (`client_steps`).
    pub client: bool,
    /// Which steps get it.
    pub client_steps: ClientSteps,
    /// The commands of the client, looked up in the host's `/usr/local/bin`, `/usr/bin`,
    /// `/bin`.
    pub commands: Vec<String>,
    /// Where the client lives inside the container (its `bin` goes on `PATH`).
    pub prefix: PathBuf,
    /// The static program that starts a host command with the host's loader and libraries.
    pub hostexec: PathBuf,
    /// More host paths the client needs at their own paths (a configless node's cache).
    pub binds: Vec<PathBuf>,
}

impl Default for Slurm {
    fn default() -> Self {
        Slurm {
            batch: BatchMode::Image,
            client: true,
            client_steps: ClientSteps::Batch,
            commands: DEFAULT_SLURM_COMMANDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            prefix: "/.slipway/slurm".into(),
            hostexec: "/usr/libexec/slipway/slipway-hostexec".into(),
            binds: Vec::new(),
        }
    }
}

/// `[mpi]`: how `slipway exec` ranks of one parallel job behave. See docs/mpi.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mpi {
    /// Ranks of one job on one node share one container (unprivileged); `false`: one container
    /// per process, as with `--no-share`.
    pub share: bool,
}

impl Default for Mpi {
    fn default() -> Self {
        Mpi { share: true }
    }
}

/// When the kernel may mount an image's squashfs (a loop device, as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KernelMount {
    /// Never: squashfuse is always used.
    Never,
    /// Only images inside `images.trusted_dirs` (root-owned, not writable by others, all the
    /// way up), whose files are owned by root and not writable by others.
    #[default]
    Trusted,
    /// Always (the kernel's squashfs parser then sees user-supplied images).
    Always,
}

/// `images.unpack`: whether an unprivileged launch may run a SIF or squashfs image from a
/// directory it was unpacked into once (instead of squashfuse at every launch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Unpack {
    /// Never: squashfuse at every unprivileged launch.
    Never,
    /// When the user asks (`--unpack`, `SLIPWAY_UNPACK=1`).
    #[default]
    OnRequest,
    /// Every unprivileged launch of a SIF or squashfs image.
    Always,
}

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A SIF file with a squashfs primary partition.
    Sif,
    /// A bare squashfs file.
    Squashfs,
    /// A directory holding a root filesystem.
    Dir,
}

/// `[images]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    /// Absolute path globs an image must match, matched one path component at a time (`*`
    /// never crosses `/`, so `/apps/*` does not admit `/apps2/x` nor `/apps/a/b`; `**` matches
    /// any number of components). Empty list: any path.
    pub allowed: Vec<String>,
    /// Owners an image file (or directory) must have: user names, numeric uids, or `"user"`
    /// for the user running it. Empty list: any owner.
    pub owners: Vec<String>,
    /// Formats that may run.
    pub formats: Vec<Format>,
    /// When the kernel may mount an image (privileged mode only).
    pub kernel_mount: KernelMount,
    /// Directories whose images count as trusted for `kernel_mount = "trusted"`.
    pub trusted_dirs: Vec<PathBuf>,
    /// When unprivileged launches run an image from its unpacked copy.
    pub unpack: Unpack,
    /// Where a user's unpacked images are kept (`%u`: the uid): node-local storage.
    pub unpack_dir: String,
}

/// The default `images.unpack_dir`.
pub const DEFAULT_UNPACK_DIR: &str = "/var/tmp/slipway-%u/images";

impl Default for Images {
    fn default() -> Self {
        Images {
            allowed: Vec::new(),
            owners: Vec::new(),
            formats: vec![Format::Sif, Format::Squashfs, Format::Dir],
            kernel_mount: KernelMount::Trusted,
            trusted_dirs: Vec::new(),
            unpack: Unpack::OnRequest,
            unpack_dir: DEFAULT_UNPACK_DIR.to_string(),
        }
    }
}

/// `[mounts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mounts {
    /// Binds added to every container, in `SRC[:DST[:ro|rw]]` form. A missing source is
    /// skipped (and reported by `explain`), since nodes differ.
    pub system: Vec<String>,
    /// Host trees users may bind from (`--bind`); empty list: users may not bind anything.
    /// Matched by path component after resolving symlinks on the host.
    pub user_allowed: Vec<PathBuf>,
    /// Bind the user's home directory at the same path.
    pub home: bool,
    /// Bind the current working directory at the same path (when it is not already inside a
    /// bound tree).
    pub cwd: bool,
}

impl Default for Mounts {
    fn default() -> Self {
        Mounts {
            system: vec![
                "/etc/hosts".into(),
                "/etc/resolv.conf".into(),
                "/etc/localtime".into(),
            ],
            user_allowed: vec!["/home".into(), "/tmp".into(), "/var/tmp".into()],
            home: true,
            cwd: true,
        }
    }
}

/// How `/tmp` and `/var/tmp` are provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TmpMode {
    /// Bind the host's `/tmp` and `/var/tmp` (needed by PMIx, which keeps rendezvous files
    /// in `/tmp`).
    #[default]
    Host,
    /// A private tmpfs, mode 1777.
    Private,
}

/// `[tmp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tmp {
    /// Host bind or private tmpfs.
    pub mode: TmpMode,
    /// Size limit of a private tmpfs, as mount(8) takes it (`"1g"`, `"50%"`).
    pub size: String,
}

impl Default for Tmp {
    fn default() -> Self {
        Tmp {
            mode: TmpMode::Host,
            size: "50%".into(),
        }
    }
}

/// `[env]`: environment rules. Without `--cleanenv` the host environment passes except names
/// matching `deny`; with `--cleanenv` only names matching `pass` do. `set` always applies,
/// last. Patterns are names with `*` wildcards (`SLURM_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Env {
    /// Names passed even with `--cleanenv` (the scheduler and MPI wiring).
    pub pass: Vec<String>,
    /// Names never passed from the host.
    pub deny: Vec<String>,
    /// Variables forced inside every container.
    pub set: std::collections::BTreeMap<String, String>,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            pass: [
                "SLURM_*", "PMIX_*", "PMI_*", "OMPI_*", "PRTE_*", "UCX_*", "HOME", "USER",
                "LOGNAME", "TERM", "LANG", "LC_*", "TZ",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            deny: ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            set: Default::default(),
        }
    }
}

/// When a launch gets the node's NVIDIA GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum GpuMode {
    /// When the user asks (`--nv`, `--container-nv`).
    #[default]
    #[serde(rename = "on-request")]
    OnRequest,
    /// Every launch on a node that has them (as if `--nv` were always given).
    #[serde(rename = "always")]
    Always,
    /// Never: `--nv` is refused.
    #[serde(rename = "never")]
    Never,
}

/// What a missing GPU part does to a launch that asked for GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// The launch fails with one line naming what is missing.
    #[default]
    Fail,
    /// The launch goes on without it, with a warning.
    Warn,
}

/// Default driver file list: `/etc/slipway/nvliblist.conf`; when that file is absent, the
/// list shipped in `packaging/nvliblist.conf` (compiled in).
pub const DEFAULT_NVLIBLIST: &str = "/etc/slipway/nvliblist.conf";

/// Default AMD list: `/etc/slipway/rocmliblist.conf`, else `packaging/rocmliblist.conf`.
pub const DEFAULT_ROCMLIBLIST: &str = "/etc/slipway/rocmliblist.conf";

/// `[gpu]`: NVIDIA GPUs (`slipway exec --nv`, `srun --container-nv`) and AMD GPUs (`--rocm`,
/// `--container-rocm`). See docs/gpu.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gpu {
    /// When NVIDIA GPUs are given.
    pub nvidia: GpuMode,
    /// The NVIDIA driver file list (Apptainer's `nvliblist.conf` format).
    pub liblist: PathBuf,
    /// When AMD GPUs are given.
    pub amd: GpuMode,
    /// The AMD (ROCm) file list, same format (Apptainer's `rocmliblist.conf`).
    pub rocm_liblist: PathBuf,
    /// AMD's KFD topology (`/sys/class/kfd/kfd/topology/nodes`): render minors and ROCr's order.
    pub kfd_topology: PathBuf,
    /// Extra host device paths or globs bound for GPU launches (e.g. `/dev/nvidia-nvswitch*`).
    pub devices: Vec<String>,
    /// Where the NVIDIA device nodes are (`/dev`; another directory only for stand-ins in
    /// tests or unusual installs: they are bound at `/dev/NAME` inside).
    pub device_dir: PathBuf,
    /// The driver's per-GPU information (`Device Minor:`, `Bus Location:`), one directory per
    /// GPU named by its PCI bus id.
    pub driver_info: PathBuf,
    /// Slurm's `gres.conf`: which device files `SLURM_STEP_GPUS` indices name.
    pub gres_conf: PathBuf,
    /// A missing driver, GPUs the job does not have, or a listed absolute path that is
    /// missing: fail the launch, or warn and go on.
    pub missing: Missing,
}

impl Default for Gpu {
    fn default() -> Self {
        Gpu {
            nvidia: GpuMode::OnRequest,
            liblist: DEFAULT_NVLIBLIST.into(),
            amd: GpuMode::OnRequest,
            rocm_liblist: DEFAULT_ROCMLIBLIST.into(),
            kfd_topology: "/sys/class/kfd/kfd/topology/nodes".into(),
            devices: Vec::new(),
            device_dir: "/dev".into(),
            driver_info: "/proc/driver/nvidia/gpus".into(),
            gres_conf: "/etc/slurm/gres.conf".into(),
            missing: Missing::Fail,
        }
    }
}

/// Whether a fabric's devices are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FabricMode {
    /// Bind what exists on the node, in every container.
    #[default]
    Auto,
    /// Never.
    Never,
}

/// `[fabric]`: InfiniBand and Omni-Path devices. See docs/gpu.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fabric {
    /// `/dev/infiniband/{uverbs*,rdma_cm,umad*,issm*}`.
    pub infiniband: FabricMode,
    /// `/dev/hfi1*` (PSM2).
    pub omnipath: FabricMode,
    /// Where the device nodes are (`/dev`; another directory only for stand-ins).
    pub device_dir: PathBuf,
    /// A host library list in the `nvliblist.conf` format (providers such as libmlx5,
    /// libpsm2, `/etc/libibverbs.d`), bound when a fabric device is; `""` (the default): none.
    pub liblist: PathBuf,
}

impl Default for Fabric {
    fn default() -> Self {
        Fabric {
            infiniband: FabricMode::Auto,
            omnipath: FabricMode::Auto,
            device_dir: "/dev".into(),
            liblist: PathBuf::new(),
        }
    }
}

/// Whether a root process may trust what the file `path` says (a driver list named by the
/// policy): owned by root and writable by no one else, as are all directories above it.
/// `Err`: one line naming the path, the problem and the fix.
pub fn check_trusted_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fix = |u: secure::Untrusted| match u {
        secure::Untrusted::Insecure { path, problem, fix } => {
            format!("{} is {problem} ({fix})", path.display())
        }
        other => other.to_string(),
    };
    secure::check_meta(path, &meta).map_err(fix)?;
    if let Some(dir) = path.parent() {
        secure::check_dirs_up(dir).map_err(fix)?;
    }
    Ok(())
}

/// A bind in `SRC[:DST[:ro|rw]]` form (`mounts.system`, and the same syntax as `--bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub src: PathBuf,
    /// Path inside the container (`src` when not given).
    pub dst: PathBuf,
    /// `:ro` was given (the default is read-write, as with Apptainer's `--bind`).
    pub read_only: bool,
}

/// Parses `SRC[:DST[:ro|rw]]`; both paths must be absolute and free of `..`. `Err` says what
/// is wrong and how to write it.
pub fn parse_bind(spec: &str) -> Result<Bind, String> {
    const HOW: &str = "write SRC[:DST[:ro|rw]] with absolute paths, e.g. \"/etc/hosts\" or \
                       \"/scratch:/scratch:rw\"";
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 3 {
        return Err(format!("too many `:` ({HOW})"));
    }
    let path = |s: &str, what: &str| -> Result<PathBuf, String> {
        if s.is_empty() {
            return Err(format!("empty {what} ({HOW})"));
        }
        if !s.starts_with('/') {
            return Err(format!("{what} {s:?} must be an absolute path ({HOW})"));
        }
        if Path::new(s).components().any(|c| c == Component::ParentDir) {
            return Err(format!("{what} {s:?} must not contain `..`"));
        }
        Ok(PathBuf::from(s))
    };
    let src = path(parts[0], "source")?;
    let dst = match parts.get(1) {
        Some(d) => path(d, "destination")?,
        None => src.clone(),
    };
    if dst == Path::new("/") {
        return Err("cannot bind over the container's `/`".into());
    }
    let read_only = match parts.get(2) {
        None | Some(&"rw") => false,
        Some(&"ro") => true,
        Some(o) => return Err(format!("option {o:?} must be \"ro\" or \"rw\"")),
    };
    Ok(Bind {
        src,
        dst,
        read_only,
    })
}

#[cfg(test)]
mod tests;
