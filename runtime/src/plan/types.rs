//! The plan's types: what a launch will do, as plain data (built by [`super::build`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::image::envfile::{EnvScript, Leftover};
use crate::image::Span;
use crate::policy::Format;

use super::BindSpec;

/// Errors from building a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Policy or safety refused part of the request.
    #[error("{message} [{rule}]")]
    Refused {
        /// What was refused and why.
        message: String,
        /// The rule that refused it.
        rule: String,
    },
}

/// What the user asked for (the command line of `exec`/`run`/`shell`, already parsed).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// For `slipway shell`: fall back to `/bin/sh` when the command (`/bin/bash`) is missing.
    pub shell: bool,
    /// The command's `argv[0]` when it is not the command itself (`-bash`: a login shell).
    pub argv0: Option<String>,
    /// `--bind` (and `SLIPWAY_BIND`...) specifications, in order.
    pub binds: Vec<BindSpec>,
    /// `--pwd`.
    pub pwd: Option<PathBuf>,
    /// `--cleanenv`.
    pub cleanenv: bool,
    /// `--env K=V`, in order.
    pub env: Vec<(String, String)>,
    /// `--env-file`: its name and parsed contents.
    pub env_file: Option<(PathBuf, EnvScript)>,
    /// `--contain`: no home, cwd or /tmp from the host.
    pub contain: bool,
    /// `--no-home`.
    pub no_home: bool,
    /// `--writable-tmpfs`.
    pub writable_tmpfs: bool,
    /// `--no-share`: one container per process even for the ranks of a parallel job.
    pub no_share: bool,
    /// `--unpack`: run a SIF or squashfs image from its unpacked copy (`images.unpack`).
    pub unpack: bool,
    /// `--nv` (`--container-nv`): the node's NVIDIA GPUs (those the job has) and driver.
    pub nv: bool,
    /// `--rocm` (`--container-rocm`): the same for AMD GPUs.
    pub rocm: bool,
    /// The host's Slurm client inside (`[slurm]`; the SPANK plugin's batch and interactive
    /// steps).
    pub slurm_client: bool,
    /// The image's environment scripts when known ahead (`explain` reads them without
    /// mounting); shown by `explain`. The launch itself reads them from the mounted image.
    pub image_env: Option<Vec<EnvScript>>,
}

/// Privileged (root: mount namespace only) or unprivileged (user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Slipway runs as root; a mount namespace, identity dropped before exec.
    Privileged,
    /// A user namespace mapping the user to themselves, plus a mount namespace.
    Unprivileged,
}

/// How the image's root file system is made available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum ImageMount {
    /// A directory, bind-mounted read-only.
    Directory,
    /// The kernel's squashfs through a loop device (offset and size limit, read-only,
    /// autoclear).
    KernelLoop {
        /// Where the squashfs lies in the file.
        span: Span,
    },
    /// `squashfuse_ll -o offset=N`, as the user.
    Squashfuse {
        /// Where the squashfs lies in the file.
        span: Span,
    },
    /// Unpacked once (`unsquashfs`, as the user) into a directory of the user's under
    /// `cache` named for the image file's identity, then bound read-only like a directory
    /// image; later launches of the same file find it there (unprivileged mode).
    Unpacked {
        /// Where the squashfs lies in the file.
        span: Span,
        /// The user's unpacked-image directory (`images.unpack_dir`, `%u` replaced).
        cache: PathBuf,
    },
}

/// The image step.
#[derive(Debug, Clone, Serialize)]
pub struct ImageStep {
    /// The image, resolved.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// How it is mounted.
    pub mount: ImageMount,
    /// The rule that chose it.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// `--writable-tmpfs`: an overlay with a tmpfs upper layer.
    pub writable_tmpfs: bool,
    /// The image the user named, when `path` is root's mount of it (the SPANK plugin's
    /// mount for the job, the PBS hook's premount): what `APPTAINER_CONTAINER` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub named: Option<PathBuf>,
}

/// What a mount step mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MountKind {
    /// A bind mount of a host path.
    Bind {
        /// The host path (resolved).
        source: PathBuf,
        /// With the mounts below it (`rbind`).
        recursive: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Mode of its root.
        mode: u32,
        /// Size limit (`mount -o size=`), if any.
        size: Option<String>,
    },
    /// A file Slipway writes (`passwd`, `group`), bound read-only.
    Generated {
        /// Which file.
        file: String,
    },
}

/// One mount inside the container.
#[derive(Debug, Clone, Serialize)]
pub struct MountStep {
    /// Container path.
    pub dest: PathBuf,
    /// What.
    pub kind: MountKind,
    /// Read-only.
    pub readonly: bool,
    /// nosuid.
    pub nosuid: bool,
    /// nodev.
    pub nodev: bool,
    /// The rule that caused it.
    pub rule: String,
    /// The source is the user's choice (home, cwd, `--bind`): in privileged mode it is
    /// looked up with the user's permissions.
    pub as_user: bool,
}

impl MountStep {
    /// The flags as `mount(8)` would show them.
    pub fn flags(&self) -> String {
        let mut f = vec![if self.readonly { "ro" } else { "rw" }];
        if self.nosuid {
            f.push("nosuid");
        }
        if self.nodev {
            f.push("nodev");
        }
        f.join(",")
    }
}

/// A symlink Slipway creates (in `/dev`).
#[derive(Debug, Clone, Serialize)]
pub struct LinkStep {
    /// Container path of the link.
    pub dest: PathBuf,
    /// Its target.
    pub target: String,
    /// Why.
    pub rule: String,
}

/// What happens to one environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvAction {
    /// A host variable passes into the container.
    Pass,
    /// A host variable is dropped.
    Drop,
    /// A variable is set to a value.
    Set,
    /// A directory is appended to a `:` list (after the image's scripts).
    Append,
    /// A variable is set in the container after the image's scripts, its value evaluated there
    /// as a double-quoted shell word (`--env`, `APPTAINERENV_*`; Apptainer's injection).
    Inject,
}

/// One environment decision.
#[derive(Debug, Clone, Serialize)]
pub struct EnvDecision {
    /// Variable name.
    pub name: String,
    /// What happens.
    pub action: EnvAction,
    /// For `Set`: the value (host values are not shown).
    pub value: Option<String>,
    /// Where from (`host`, `identity`, `--env-file FILE`, `--env`, `policy`).
    pub origin: String,
    /// The rule.
    pub rule: String,
}

/// The environment, in the order it is built: host variables passed by policy, the identity
/// variables, the image's scripts, `--env-file`, `--env`, then the policy's `env.set`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvPlan {
    /// Every decision, in order of application.
    pub decisions: Vec<EnvDecision>,
    /// The `--env-file` script.
    #[serde(skip)]
    pub env_file: Option<EnvScript>,
    /// Leftover lines of `--env-file` (not applied).
    pub env_file_leftovers: Vec<Leftover>,
    /// The image's scripts, when known at planning time (for `explain`).
    pub image_scripts: Option<Vec<EnvScript>>,
}

/// Who the command runs as.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// User name.
    pub user: String,
    /// Supplementary groups set with `setgroups` (privileged mode).
    pub groups: Vec<u32>,
    /// How groups are handled and why.
    pub groups_note: String,
    /// The user's line for `/etc/passwd` (shell fixed up at start if the image lacks it).
    pub passwd_line: String,
    /// Lines for `/etc/group`.
    pub group_lines: Vec<String>,
    /// `/etc/passwd` lines added only where the image has no entry of that name (the host
    /// Slurm client's `SlurmUser`).
    pub fallback_passwd: Vec<String>,
    /// `/etc/group` lines added only where the image has no group of that name.
    pub fallback_group: Vec<String>,
}

/// The working directory.
#[derive(Debug, Clone, Serialize)]
pub struct Cwd {
    /// Container path.
    pub path: PathBuf,
    /// Why this one.
    pub rule: String,
}

/// A container shared by the ranks of one parallel job on one node ([`crate::jobs::shared`]).
#[derive(Debug, Clone, Serialize)]
pub struct Shared {
    /// The job and a digest of the container.
    pub key: String,
    /// The rule that allows it (`mpi.share`).
    pub rule: String,
}

/// Something requested or configured that will not happen.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// What.
    pub what: String,
    /// Why.
    pub why: String,
    /// The rule.
    pub rule: String,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Privileged or unprivileged.
    pub mode: Mode,
    /// Why that mode.
    pub mode_reason: String,
    /// Where the policy came from (`/etc/slipway/policy.toml`, or the built-in defaults).
    pub policy: String,
    /// The image.
    pub image: ImageStep,
    /// Mounts, in order.
    pub mounts: Vec<MountStep>,
    /// Symlinks.
    pub links: Vec<LinkStep>,
    /// Identity.
    pub identity: Identity,
    /// Environment.
    pub env: EnvPlan,
    /// Working directory.
    pub cwd: Cwd,
    /// The command.
    pub command: Vec<String>,
    /// `slipway shell`: try `/bin/sh` if the command is missing.
    pub shell_fallback: bool,
    /// `argv[0]` when it is not the command (`-bash`).
    pub argv0: Option<String>,
    /// What the device steps are based on (GPU selection, driver list, fabric notes).
    pub devices: Vec<Skipped>,
    /// Said to the user before the command starts (`gpu.missing = "warn"`).
    pub warnings: Vec<String>,
    /// The node's container this launch shares with the other ranks of its job, if it does.
    pub shared: Option<Shared>,
    /// Configured or requested steps that will not happen (not errors).
    pub skipped: Vec<Skipped>,
    /// Requests refused: the launch will not start while this is not empty.
    pub refused: Vec<Skipped>,
}

/// How the plan builder sees the host file system (a trait so tests can fake it).
pub trait HostFs {
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// The real path of `path` (symlinks resolved), where the launch binds it from: it opens
    /// a user's bind source with no symlink followed. The path itself by default.
    fn real(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

/// The real host file system.
pub struct RealFs;

impl HostFs for RealFs {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn real(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}
