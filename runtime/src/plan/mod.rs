//! The plan: everything a launch will do, as plain data, built by a pure function of the
//! request, the policy and the host facts ([`build`]), printed by `slipway explain`
//! ([`render`]) and carried out by [`crate::exec`].
//!
//! Each step carries the rule that caused it (a policy key with its file and line, or the
//! Slipway default that needs it), so `explain` can answer "why is this here?".

pub mod bind;
mod devices;
pub mod environment;
mod image;
mod paths;
mod render;
mod slurmclient;
mod types;

use std::path::{Component, Path};

pub use bind::BindSpec;
use paths::normalize;
pub use paths::{dest_too_long, shown, MAX_DEST_BYTES, MAX_DEST_DEPTH};
pub use types::*;

use crate::host::HostFacts;
use crate::image::Image;
use crate::policy::{LoadedPolicy, PolicySource, TmpMode, User};

/// `PATH` inside the container before the image's scripts run (Apptainer's default); the
/// host's `PATH` names host directories and is not passed.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the image keeps its environment scripts.
pub const IMAGE_ENV_DIR: &str = "/.singularity.d/env";

const BASE: &str = "slipway (container base)";
/// The PMIx server's directories a client finds it through.
const PMIX_DIRS: [&str; 2] = ["PMIX_SERVER_TMPDIR", "PMIX_SYSTEM_TMPDIR"];
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
    let (mount, rule, reason) = match image::mount(image, mode, req, policy, host.user.uid)? {
        image::Decided::Mount(m, rule, reason) => (m, rule, reason),
        image::Decided::Refused(m, rule, reason, refusal) => {
            refuse(&mut refused, refusal.0, refusal.1, refusal.2);
            (m, rule, reason)
        }
    };
    let image_step = ImageStep {
        path: image.path.clone(),
        format: image.format,
        mount,
        rule,
        reason,
        writable_tmpfs: req.writable_tmpfs,
        named: None,
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

    // Unprivileged ranks of a job launched by a host daemon (srun --mpi=pmix, mpirun's orted)
    // meet its PMIx server through rendezvous files in these directories: bound at the same
    // paths, like the SPANK plugin binds the step's (the user reaches them on the host anyway).
    if mode == Mode::Unprivileged {
        for var in PMIX_DIRS {
            let Some((_, dir)) = host.env.iter().rev().find(|(k, _)| k == var) else {
                continue;
            };
            let dir = Path::new(dir);
            let covered = mounts.iter().any(|m| match &m.kind {
                MountKind::Bind { source, .. } => {
                    dir.starts_with(source) && source == &m.dest && source != Path::new("/")
                }
                _ => false,
            });
            if !dir.is_absolute() || covered || !fs.exists(dir) || dest_too_long(dir).is_some() {
                continue;
            }
            mounts.push(MountStep {
                dest: normalize(dir),
                kind: MountKind::Bind {
                    source: fs.real(dir),
                    recursive: false,
                },
                readonly: false,
                nosuid: true,
                nodev: true,
                rule: format!("slipway (${var}: the launcher's PMIx rendezvous directory)"),
                as_user: true,
            });
        }
    }

    // The host's Slurm client (the SPANK plugin's batch and interactive steps).
    let client = slurmclient::steps(req, policy, host);
    mounts.extend(client.mounts);
    skipped.extend(client.skipped);

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
            fallback_passwd: client.passwd.clone(),
            fallback_group: client.group.clone(),
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
            fallback_passwd: client.passwd.clone(),
            fallback_group: client.group.clone(),
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
    let mut injected: Vec<EnvDecision> = Vec::new();
    for (k, v) in host_env {
        if let Some(d) = environment::apptainer_var(k, v) {
            match d {
                environment::Apptainer::Inject(name, origin) => {
                    // APPTAINERENV_X wins over SINGULARITYENV_X (both may be set).
                    let apptainer = origin.starts_with("APPTAINERENV_");
                    if let Some(i) = injected.iter().position(|e| e.name == name) {
                        if apptainer {
                            injected.remove(i);
                        } else {
                            continue;
                        }
                    }
                    injected.push(EnvDecision {
                        name,
                        action: EnvAction::Inject,
                        value: Some(v.clone()),
                        origin,
                        rule: "Apptainer's *ENV_ prefix: set in the container, evaluated".into(),
                    });
                }
                environment::Apptainer::Drop(rule) => decisions.push(EnvDecision {
                    name: k.clone(),
                    action: EnvAction::Drop,
                    value: None,
                    origin: "host".into(),
                    rule,
                }),
            }
            continue;
        }
        if k == "PATH" {
            decisions.push(EnvDecision {
                name: k.clone(),
                action: EnvAction::Drop,
                value: None,
                origin: "host".into(),
                rule: "slipway (host directories: the container's PATH is the image's, else \
                       the default)"
                    .into(),
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
    decisions.push(set(
        "PATH",
        DEFAULT_PATH,
        "default",
        "slipway (when the image's scripts set none, as Apptainer)",
    ));
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
    decisions.extend(client.env);
    decisions.extend(injected);
    for (k, v) in &req.env {
        if !crate::image::envfile::valid_name(k) {
            return Err(PlanError::Invalid(format!(
                "--env {k}: not a variable name"
            )));
        }
        decisions.push(EnvDecision {
            name: environment::injected_name(k),
            action: EnvAction::Inject,
            value: Some(v.clone()),
            origin: "--env".into(),
            rule: "--env (evaluated in the container, after the image's scripts)".into(),
        });
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

    let mut plan = Plan {
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
        argv0: req.argv0.clone(),
        devices: dev.notes,
        warnings: dev.warnings,
        shared: None,
        skipped,
        refused,
    };
    // Ranks of one parallel job on one node share one container (unprivileged); an
    // interactive `shell` is not a rank and keeps its own.
    if mode == Mode::Unprivileged && !req.shell {
        if let Some(key) = crate::jobs::shared::key(&host.env, &plan) {
            let share_rule = policy.rule("mpi.share");
            if req.no_share || !p.mpi.share {
                plan.skipped.push(Skipped {
                    what: format!("sharing the node's container of job {key}"),
                    why: if req.no_share {
                        "--no-share".into()
                    } else {
                        "disabled by policy".into()
                    },
                    rule: share_rule,
                });
            } else {
                plan.shared = Some(Shared {
                    key,
                    rule: share_rule,
                });
            }
        }
    }
    Ok(plan)
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

    /// The plan as text (what `slipway explain` prints).
    pub fn render(&self) -> String {
        render::text(self)
    }
}

#[cfg(test)]
pub(crate) mod tests;
