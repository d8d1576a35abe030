//! The plan: everything a launch will do, as plain data, built by a pure function of the
//! request, the policy and the host facts ([`build`]), printed by `slipway explain`
//! ([`render`]) and carried out by [`crate::exec`].
//!
//! Each step carries the rule that caused it (a policy key with its file and line, or the
//! Slipway default that needs it), so `explain` can answer "why is this here?".

pub mod bind;
mod devices;
mod render;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

pub use bind::BindSpec;

use crate::host::HostFacts;
use crate::image::envfile::{EnvScript, Leftover};
use crate::image::{Image, Span};
use crate::policy::{Format, LoadedPolicy, PolicySource, TmpMode, User};

/// `PATH` inside the container before the image's scripts run (Apptainer's default); the
/// host's `PATH` names host directories and is not passed.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the image keeps its environment scripts.
pub const IMAGE_ENV_DIR: &str = "/.singularity.d/env";

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
    /// `--nv` (`--container-nv`): the node's NVIDIA GPUs (those the job has) and driver.
    pub nv: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// The working directory.
#[derive(Debug, Clone, Serialize)]
pub struct Cwd {
    /// Container path.
    pub path: PathBuf,
    /// Why this one.
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
    /// What the device steps are based on (GPU selection, driver list, fabric notes).
    pub devices: Vec<Skipped>,
    /// Said to the user before the command starts (`gpu.missing = "warn"`).
    pub warnings: Vec<String>,
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

const BASE: &str = "slipway (container base)";
const DEVS: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Host directories whose binding as the working directory would shadow the image's own.
const SYSTEM_DIRS: [&str; 13] = [
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr",
    "/var", "/run",
];

/// Builds the plan. Pure: everything it looks at is in its arguments (and the policy's own
/// path checks).
pub fn build(
    req: &Request,
    policy: &LoadedPolicy,
    host: &HostFacts,
    image: &Image,
    fs: &dyn HostFs,
) -> Result<Plan, PlanError> {
    if req.command.is_empty() {
        return Err(PlanError::Invalid("no command given".into()));
    }
    let p = &policy.policy;
    let mut skipped = Vec::new();
    let mut refused = Vec::new();
    let refuse = |refused: &mut Vec<Skipped>, what: String, why: String, rule: String| {
        refused.push(Skipped { what, why, rule })
    };

    // Mode.
    let (mode, mode_reason) = if host.euid == 0 {
        (
            Mode::Privileged,
            "slipway runs as root (euid 0): mount namespace only, identity dropped before exec"
                .to_string(),
        )
    } else {
        (
            Mode::Unprivileged,
            format!(
                "slipway runs as uid {}: user namespace mapping the user to themselves, \
                 plus a mount namespace",
                host.euid
            ),
        )
    };

    // The image.
    let user = User {
        uid: host.user.uid,
        name: host.user.name.clone(),
    };
    if let Err(r) = policy.check_image(image, &user) {
        // The refusal names the image itself: subject and reason apart, so that `what: why`
        // names it once.
        refuse(&mut refused, r.subject, r.reason, r.rule);
    }
    let (mount, rule, reason) = match (image.format, image.squashfs) {
        (Format::Dir, _) => (
            ImageMount::Directory,
            BASE.to_string(),
            "a directory image is bind-mounted read-only".to_string(),
        ),
        (_, Some(span)) => {
            if mode == Mode::Privileged {
                let d = policy.kernel_mount(image);
                if d.allowed {
                    (ImageMount::KernelLoop { span }, d.rule, d.reason)
                } else {
                    (ImageMount::Squashfuse { span }, d.rule, d.reason)
                }
            } else {
                (
                    ImageMount::Squashfuse { span },
                    BASE.to_string(),
                    "unprivileged: the kernel mounts squashfs only for root".to_string(),
                )
            }
        }
        (f, None) => {
            return Err(PlanError::Invalid(format!(
                "image {}: {f:?} image without a squashfs",
                image.path.display()
            )))
        }
    };
    let image_step = ImageStep {
        path: image.path.clone(),
        format: image.format,
        mount,
        rule,
        reason,
        writable_tmpfs: req.writable_tmpfs,
    };

    // Mounts.
    let mut mounts = Vec::new();
    let bind =
        |src: &str, dst: &str, recursive: bool, ro: bool, nodev: bool, rule: &str| MountStep {
            dest: dst.into(),
            kind: MountKind::Bind {
                source: src.into(),
                recursive,
            },
            readonly: ro,
            nosuid: true,
            nodev,
            rule: rule.to_string(),
            as_user: false,
        };
    mounts.push(bind(
        "/proc",
        "/proc",
        true,
        false,
        true,
        "slipway (host /proc, recursive: no pid namespace, so Slurm and MPI see real pids; \
         a fresh proc needs a pid namespace of our own)",
    ));
    mounts.push(bind("/sys", "/sys", true, true, true, BASE));
    mounts.push(MountStep {
        dest: "/dev".into(),
        kind: MountKind::Tmpfs {
            mode: 0o755,
            size: Some("64k".into()),
        },
        readonly: false,
        nosuid: true,
        nodev: false,
        rule: "slipway (minimal /dev: host nodes bind-mounted, never mknod'ed)".into(),
        as_user: false,
    });
    // Device nodes keep their host mount's flags: nodev would disable them, and nosuid means
    // nothing for a node (nothing on it is executed).
    let node = |path: &str| MountStep {
        nosuid: false,
        ..bind(path, path, false, false, false, BASE)
    };
    for d in DEVS {
        mounts.push(node(&format!("/dev/{d}")));
    }
    mounts.push(bind("/dev/pts", "/dev/pts", false, false, false, BASE));
    mounts.push(node("/dev/ptmx"));
    mounts.push(bind("/dev/shm", "/dev/shm", false, false, true, BASE));
    // GPUs and fabric devices (device nodes in the minimal /dev, the driver's files).
    let dev = devices::steps(req, policy, host);
    mounts.extend(dev.mounts);
    skipped.extend(dev.skipped);
    refused.extend(dev.refused);
    let links = [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ]
    .iter()
    .map(|(d, t)| LinkStep {
        dest: d.into(),
        target: t.to_string(),
        rule: BASE.into(),
    })
    .collect();

    // System binds (policy mounts.system): a missing source is skipped, since nodes differ.
    let sys_rule = policy.rule("mounts.system");
    for b in policy.system_binds() {
        if !fs.exists(&b.src) {
            skipped.push(Skipped {
                what: format!("bind {}", b.src.display()),
                why: "source does not exist on this host".into(),
                rule: sys_rule.clone(),
            });
        } else {
            mounts.push(MountStep {
                dest: b.dst,
                kind: MountKind::Bind {
                    source: b.src,
                    recursive: false,
                },
                readonly: b.read_only,
                nosuid: true,
                nodev: true,
                rule: sys_rule.clone(),
                as_user: false,
            });
        }
    }

    // /tmp and /var/tmp.
    let tmp_rule = if req.contain {
        "--contain".to_string()
    } else {
        policy.rule("tmp.mode")
    };
    for t in ["/tmp", "/var/tmp"] {
        if p.tmp.mode == TmpMode::Host && !req.contain {
            if fs.exists(Path::new(t)) {
                mounts.push(bind(t, t, false, false, true, &tmp_rule));
            } else {
                skipped.push(Skipped {
                    what: format!("bind {t}"),
                    why: "missing on this host".into(),
                    rule: tmp_rule.clone(),
                });
            }
        } else {
            mounts.push(MountStep {
                dest: t.into(),
                kind: MountKind::Tmpfs {
                    mode: 0o1777,
                    size: Some(p.tmp.size.clone()),
                },
                readonly: false,
                nosuid: true,
                nodev: true,
                rule: tmp_rule.clone(),
                as_user: false,
            });
        }
    }

    // Home.
    let home = &host.user.home;
    let mut home_bound = false;
    let home_rule = policy.rule("mounts.home");
    if req.contain || req.no_home || !p.mounts.home {
        skipped.push(Skipped {
            what: format!("bind home {}", home.display()),
            why: if req.contain {
                "--contain".into()
            } else if req.no_home {
                "--no-home".into()
            } else {
                "disabled by policy".into()
            },
            rule: home_rule.clone(),
        });
    } else if home == Path::new("/") || !home.is_absolute() || !fs.exists(home) {
        skipped.push(Skipped {
            what: format!("bind home {}", home.display()),
            why: "no such directory on this host".into(),
            rule: home_rule.clone(),
        });
    } else {
        home_bound = true;
        mounts.push(MountStep {
            dest: home.clone(),
            kind: MountKind::Bind {
                // Where the home really is (/home may be a link to /gpfs/home): the launch
                // opens it without following symlinks.
                source: fs.real(home),
                recursive: false,
            },
            readonly: false,
            nosuid: true,
            nodev: true,
            rule: home_rule.clone(),
            as_user: true,
        });
    }

    // User binds, checked now so that a refusal stops everything before anything is mounted.
    let bind_rule = policy.rule("mounts.user_allowed");
    let mut user_mounts = Vec::new();
    for b in &req.binds {
        // Paths shortened: a 4000-character destination makes no useful message.
        let what = format!("bind {}:{}", shown(&b.src), shown(&b.dst));
        if !b.src.is_absolute() || !b.dst.is_absolute() {
            refuse(
                &mut refused,
                what,
                "bind paths must be absolute".into(),
                "slipway (bind safety)".into(),
            );
            continue;
        }
        if b.dst.components().any(|c| c == Component::ParentDir) || b.dst == Path::new("/") {
            refuse(
                &mut refused,
                what,
                "destination must not be / nor contain `..`".into(),
                "slipway (bind safety)".into(),
            );
            continue;
        }
        if let Some(generated) = bind::covers_generated(&b.dst) {
            let dst = normalize(&b.dst);
            let why = if dst != Path::new(generated) && Path::new(generated).starts_with(&dst) {
                format!(
                    "destination {} would cover /etc/passwd and /etc/group, which slipway \
                     generates for every container: bind single files below it instead \
                     (e.g. SRC:{}/myapp.conf)",
                    shown(&b.dst),
                    shown(&dst)
                )
            } else {
                format!(
                    "{generated} is generated by slipway (the image's entries plus yours) and \
                     cannot be a bind destination: bind to another path (e.g. SRC:/mnt{generated})"
                )
            };
            refuse(&mut refused, what, why, "slipway (bind safety)".into());
            continue;
        }
        if let Some(why) = dest_too_long(&normalize(&b.dst)) {
            refuse(&mut refused, what, why, "slipway (bind safety)".into());
            continue;
        }
        if !fs.exists(&b.src) {
            refuse(
                &mut refused,
                what,
                "source does not exist".into(),
                "slipway (bind safety)".into(),
            );
            continue;
        }
        match policy.check_user_bind(&b.src) {
            Ok(real) => user_mounts.push(MountStep {
                dest: normalize(&b.dst),
                kind: MountKind::Bind {
                    source: real,
                    recursive: false,
                },
                readonly: b.readonly,
                nosuid: true,
                nodev: true,
                rule: bind_rule.clone(),
                as_user: true,
            }),
            Err(r) => refuse(&mut refused, what, r.message(), r.rule.clone()),
        }
    }

    // The working directory: bound at the same path unless it is already inside a bound tree.
    let cwd_rule = policy.rule("mounts.cwd");
    let host_cwd = &host.cwd;
    let bound_same = |mounts: &[MountStep], user: &[MountStep]| {
        mounts.iter().chain(user).any(|m| match &m.kind {
            MountKind::Bind { source, .. } => {
                source == &m.dest
                    && host_cwd.starts_with(source)
                    && source != Path::new("/")
                    && !["/proc", "/sys", "/dev"]
                        .iter()
                        .any(|s| source.starts_with(s))
            }
            _ => false,
        })
    };
    let mut cwd_bound = false;
    if req.contain || !p.mounts.cwd {
        skipped.push(Skipped {
            what: format!("bind cwd {}", host_cwd.display()),
            why: if req.contain {
                "--contain".into()
            } else {
                "disabled by policy".into()
            },
            rule: cwd_rule.clone(),
        });
    } else if bound_same(&mounts, &user_mounts) {
        cwd_bound = true;
    } else if !policy.user_may_bind_real(host_cwd) {
        // The working directory is the user's choice like a --bind source: the same trees.
        let list: Vec<String> = p
            .mounts
            .user_allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        skipped.push(Skipped {
            what: format!("bind cwd {}", host_cwd.display()),
            why: format!(
                "outside the trees users may bind (mounts.user_allowed: {})",
                list.join(", ")
            ),
            rule: policy.rule("mounts.user_allowed"),
        });
    } else if SYSTEM_DIRS
        .iter()
        .any(|s| host_cwd == Path::new(s) || (*s != "/" && host_cwd.starts_with(s)))
    {
        skipped.push(Skipped {
            what: format!("bind cwd {}", host_cwd.display()),
            why: "a system directory (would shadow the image's)".into(),
            rule: cwd_rule.clone(),
        });
    } else {
        cwd_bound = true;
        mounts.push(MountStep {
            dest: host_cwd.clone(),
            kind: MountKind::Bind {
                source: host_cwd.clone(),
                recursive: false,
            },
            readonly: false,
            nosuid: true,
            nodev: true,
            rule: cwd_rule.clone(),
            as_user: true,
        });
    }
    mounts.extend(user_mounts);

    // Identity and the generated passwd/group.
    let u = &host.user;
    let identity = match mode {
        Mode::Privileged => Identity {
            uid: u.uid,
            gid: u.gid,
            user: u.name.clone(),
            groups: host.groups.iter().map(|g| g.gid).collect(),
            groups_note: "setgroups, setresgid, setresuid; no capabilities; no_new_privs".into(),
            passwd_line: String::new(),
            group_lines: Vec::new(),
        },
        Mode::Unprivileged => Identity {
            uid: u.uid,
            gid: u.gid,
            user: u.name.clone(),
            groups: vec![u.gid],
            groups_note: "only the user and primary group are mapped (uid_map/gid_map, \
                          setgroups deny); supplementary groups still grant host access but \
                          show as 65534 (nogroup): mapping them needs newgidmap"
                .into(),
            passwd_line: String::new(),
            group_lines: Vec::new(),
        },
    };
    let mut identity = identity;
    identity.passwd_line = format!(
        "{}:x:{}:{}:{}:{}:{}",
        u.name,
        u.uid,
        u.gid,
        u.gecos,
        u.home.display(),
        u.shell
    );
    identity.group_lines = host
        .groups
        .iter()
        .filter(|g| mode == Mode::Privileged || g.gid == u.gid)
        .map(|g| {
            let members = if g.gid == u.gid { "" } else { u.name.as_str() };
            format!("{}:x:{}:{}", g.name, g.gid, members)
        })
        .collect();
    for f in ["passwd", "group"] {
        mounts.push(MountStep {
            dest: format!("/etc/{f}").into(),
            kind: MountKind::Generated { file: f.into() },
            readonly: true,
            nosuid: true,
            nodev: true,
            rule: "slipway (the image's entries plus the user's)".into(),
            as_user: false,
        });
    }

    // The environment.
    let mut decisions = Vec::new();
    let mut host_env: Vec<&(String, String)> = host.env.iter().collect();
    host_env.sort();
    host_env.dedup_by(|a, b| a.0 == b.0);
    for (k, _) in host_env {
        if k == "PATH" {
            decisions.push(EnvDecision {
                name: k.clone(),
                action: EnvAction::Drop,
                value: None,
                origin: "host".into(),
                rule: format!("slipway (container PATH starts as {DEFAULT_PATH})"),
            });
            continue;
        }
        let mut d = policy.env_passes(k, req.cleanenv);
        // A bound fabric's tuning variables pass even with --cleanenv, unless denied.
        if !d.allowed
            && dev.fabric_env
            && crate::host::fabric::FABRIC_ENV
                .iter()
                .any(|p| crate::policy::env_matches(p, k))
            && policy.env_passes(k, false).allowed
        {
            d.allowed = true;
            d.rule = "slipway (fabric devices are bound: their variables pass)".into();
        }
        decisions.push(EnvDecision {
            name: k.clone(),
            action: if d.allowed {
                EnvAction::Pass
            } else {
                EnvAction::Drop
            },
            value: None,
            origin: "host".into(),
            rule: d.rule,
        });
    }
    let set = |name: &str, value: &str, origin: &str, rule: &str| EnvDecision {
        name: name.into(),
        action: EnvAction::Set,
        value: Some(value.into()),
        origin: origin.into(),
        rule: rule.into(),
    };
    decisions.push(set("PATH", DEFAULT_PATH, "slipway", BASE));
    let home_s = u.home.display().to_string();
    for (k, v) in [
        ("HOME", home_s.as_str()),
        ("USER", &u.name),
        ("LOGNAME", &u.name),
    ] {
        decisions.push(set(k, v, "identity", "slipway (the container user)"));
    }
    decisions.push(set(
        "SLIPWAY_CONTAINER",
        &image.path.display().to_string(),
        "slipway",
        BASE,
    ));
    let mut env_file_leftovers = Vec::new();
    if let Some((path, script)) = &req.env_file {
        env_file_leftovers = script.leftovers.clone();
        for a in &script.assignments {
            decisions.push(EnvDecision {
                name: a.name.clone(),
                action: EnvAction::Set,
                value: None,
                origin: format!("--env-file {}:{}", path.display(), a.line),
                rule: "--env-file".into(),
            });
        }
    }
    decisions.extend(dev.env);
    for (k, v) in &req.env {
        if !crate::image::envfile::valid_name(k) {
            return Err(PlanError::Invalid(format!(
                "--env {k}: not a variable name"
            )));
        }
        decisions.push(set(k, v, "--env", "--env"));
    }
    let set_rule = policy.rule("env.set");
    for (k, v) in &p.env.set {
        decisions.push(set(k, v, "policy", &set_rule));
    }

    // Working directory.
    let cwd = if let Some(pwd) = &req.pwd {
        if !pwd.is_absolute() {
            return Err(PlanError::Invalid(format!(
                "--pwd {}: must be an absolute path",
                pwd.display()
            )));
        }
        Cwd {
            path: normalize(pwd),
            rule: "--pwd".into(),
        }
    } else if cwd_bound {
        Cwd {
            path: host_cwd.clone(),
            rule: "host working directory (bound)".into(),
        }
    } else if home_bound {
        Cwd {
            path: home.clone(),
            rule: "home (the host working directory is not bound)".into(),
        }
    } else {
        Cwd {
            path: "/".into(),
            rule: "/ (neither the working directory nor home is bound)".into(),
        }
    };

    Ok(Plan {
        mode,
        mode_reason,
        policy: match &policy.source {
            PolicySource::File(f) => f.display().to_string(),
            PolicySource::BuiltIn => format!(
                "built-in defaults (no policy file at {})",
                crate::policy::DEFAULT_POLICY_PATH
            ),
        },
        image: image_step,
        mounts,
        links,
        identity,
        env: EnvPlan {
            decisions,
            env_file: req.env_file.as_ref().map(|(_, s)| s.clone()),
            env_file_leftovers,
            image_scripts: req.image_env.clone(),
        },
        cwd,
        command: req.command.clone(),
        shell_fallback: req.shell,
        devices: dev.notes,
        warnings: dev.warnings,
        skipped,
        refused,
    })
}

/// The most names a mount destination may have (`/a/b` has two). Making a missing mount point
/// replicates each existing directory on its way, and filling one holds an fd and a stack
/// frame per level: 1,500 levels exhaust the fds or the stack. Real destinations have a few.
pub const MAX_DEST_DEPTH: usize = 64;

/// The longest mount destination, in bytes: well under `PATH_MAX` (4096) below the staging
/// directory, where mount points are made.
pub const MAX_DEST_BYTES: usize = 1024;

/// Why `dest` (a container path, canonical or as given) is too deep or too long for a mount
/// destination ([`MAX_DEST_DEPTH`], [`MAX_DEST_BYTES`]); `None` when it is not.
pub fn dest_too_long(dest: &Path) -> Option<String> {
    let depth = dest
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .count();
    let bytes = dest.as_os_str().len();
    if depth > MAX_DEST_DEPTH {
        Some(format!(
            "destination is {depth} directories deep (at most {MAX_DEST_DEPTH})"
        ))
    } else if bytes > MAX_DEST_BYTES {
        Some(format!(
            "destination is {bytes} bytes long (at most {MAX_DEST_BYTES})"
        ))
    } else {
        None
    }
}

/// `p` for a one-line message: at most 100 characters (then `...`), control characters
/// escaped. Paths come from users and images, and can be 4096 bytes long.
pub fn shown(p: &Path) -> String {
    crate::image::envfile::printable(&p.to_string_lossy(), 100)
}

/// Removes `.` components and duplicate slashes (`..` is refused before this is called).
fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

impl Plan {
    /// `Err` with the first refusal, if any.
    pub fn check(&self) -> Result<(), PlanError> {
        match self.refused.first() {
            Some(r) => Err(PlanError::Refused {
                message: format!("{}: {}", r.what, r.why),
                rule: r.rule.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The container's environment, given the image's parsed scripts (in order). Returns the
    /// variables and the lines that were not applied.
    pub fn environment(
        &self,
        host_env: &[(String, String)],
        image_scripts: &[EnvScript],
    ) -> (BTreeMap<String, String>, Vec<Leftover>) {
        let mut env = BTreeMap::new();
        let passed: std::collections::BTreeSet<&str> = self
            .env
            .decisions
            .iter()
            .filter(|d| d.action == EnvAction::Pass)
            .map(|d| d.name.as_str())
            .collect();
        for (k, v) in host_env {
            if passed.contains(k.as_str()) {
                env.insert(k.clone(), v.clone());
            }
        }
        let mut leftovers = Vec::new();
        let (before, after): (Vec<_>, Vec<_>) = self
            .env
            .decisions
            .iter()
            .filter(|d| d.action != EnvAction::Pass && d.action != EnvAction::Drop)
            .filter(|d| d.value.is_some())
            .partition(|d| d.origin == "slipway" || d.origin == "identity");
        for d in before {
            env.insert(d.name.clone(), d.value.clone().unwrap_or_default());
        }
        for s in image_scripts.iter().chain(&self.env.env_file) {
            let late = s.apply(&mut env);
            leftovers.extend(s.leftovers.iter().cloned());
            leftovers.extend(late);
        }
        for d in after {
            let v = d.value.clone().unwrap_or_default();
            if d.action == EnvAction::Append {
                let cur = env.get(&d.name).cloned().unwrap_or_default();
                if cur.split(':').any(|e| e == v) {
                    continue;
                }
                let joined = if cur.is_empty() {
                    v
                } else {
                    format!("{cur}:{v}")
                };
                env.insert(d.name.clone(), joined);
            } else {
                env.insert(d.name.clone(), v);
            }
        }
        (env, leftovers)
    }

    /// The plan as text (what `slipway explain` prints).
    pub fn render(&self) -> String {
        render::text(self)
    }
}

#[cfg(test)]
mod tests;
