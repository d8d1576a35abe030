//! Device steps: the GPUs a launch gets, NVIDIA's and AMD's (device nodes, the driver's files,
//! the environment that selects them) and the node's fabric devices, from the facts gathered by
//! [`crate::host::devices`] and the policy's `[gpu]` and `[fabric]`. Pure, like the rest of
//! the plan: every step carries the rule that caused it.

use std::path::{Path, PathBuf};

use super::{EnvAction, EnvDecision, MountKind, MountStep, Request, Skipped};
use crate::host::devices::{FabricFacts, GpuFacts, InfoMask, Vendor};
use crate::host::driverfiles::{Resolved, LIB_DIR};
use crate::host::HostFacts;
use crate::policy::{GpuMode, LoadedPolicy, Missing};

/// What the device part of a plan adds.
#[derive(Debug, Default)]
pub(super) struct DeviceSteps {
    pub mounts: Vec<MountStep>,
    pub env: Vec<EnvDecision>,
    pub notes: Vec<Skipped>,
    pub skipped: Vec<Skipped>,
    pub refused: Vec<Skipped>,
    pub warnings: Vec<String>,
    /// A fabric device is bound: its variables pass even with `--cleanenv`.
    pub fabric_env: bool,
}

fn note(what: impl Into<String>, why: impl Into<String>, rule: impl Into<String>) -> Skipped {
    Skipped {
        what: what.into(),
        why: why.into(),
        rule: rule.into(),
    }
}

/// A host device node bound at `dest`, keeping its host mount's flags (nodev would disable
/// it; nothing on a node is executed).
fn node(source: &Path, dest: PathBuf, rule: &str) -> MountStep {
    MountStep {
        dest,
        kind: MountKind::Bind {
            source: source.to_path_buf(),
            recursive: false,
        },
        readonly: false,
        nosuid: false,
        nodev: false,
        rule: rule.to_string(),
        as_user: false,
    }
}

/// A driver file: read-only, nosuid, nodev.
fn file(source: &Path, dest: &Path, rule: &str) -> MountStep {
    MountStep {
        readonly: true,
        nosuid: true,
        nodev: true,
        ..node(source, dest.to_path_buf(), rule)
    }
}

/// `/dev/<path below dir>` for a node found in the device directory `dir`.
fn in_dev(dir: &Path, p: &Path) -> PathBuf {
    match p.strip_prefix(dir) {
        Ok(rel) => Path::new("/dev").join(rel),
        Err(_) => p.to_path_buf(),
    }
}

/// The device steps of a launch.
pub(super) fn steps(req: &Request, policy: &LoadedPolicy, host: &HostFacts) -> DeviceSteps {
    let mut out = DeviceSteps::default();
    let d = &host.devices;
    gpu(Vendor::Nvidia, req.nv, policy, d.nvidia.as_ref(), &mut out);
    gpu(Vendor::Amd, req.rocm, policy, d.amd.as_ref(), &mut out);
    fabric(policy, &d.fabric, &mut out);
    out
}

fn gpu(
    vendor: Vendor,
    requested: bool,
    policy: &LoadedPolicy,
    facts: Option<&GpuFacts>,
    out: &mut DeviceSteps,
) {
    let g = &policy.policy.gpu;
    let mode = match vendor {
        Vendor::Nvidia => g.nvidia,
        Vendor::Amd => g.amd,
    };
    let flag = vendor.flag();
    let mode_rule = policy.rule(vendor.key());
    if mode == GpuMode::Never {
        if requested {
            out.refused.push(note(
                flag,
                format!(
                    "{} GPUs are turned off on this system ({} = \"never\"): run without {flag}",
                    if vendor == Vendor::Nvidia {
                        "NVIDIA"
                    } else {
                        "AMD"
                    },
                    vendor.key()
                ),
                mode_rule,
            ));
        }
        return;
    }
    if !requested && mode != GpuMode::Always {
        return;
    }
    let asked = if requested {
        flag.to_string()
    } else {
        mode_rule.clone()
    };
    let Some(f) = facts else {
        out.refused.push(note(
            flag,
            "the node's GPUs were not looked up (slipway bug: devices not gathered)",
            asked,
        ));
        return;
    };
    let list_rule = policy.rule(match vendor {
        Vendor::Nvidia => "gpu.liblist",
        Vendor::Amd => "gpu.rocm_liblist",
    });

    // What is missing for the launch the user asked for.
    let mut problems = Vec::new();
    if let Err(why) = &f.driver {
        problems.push(note(flag, why.clone(), policy.rule("gpu.device_dir")));
    }
    match &f.files {
        Err(e) => problems.push(note(
            flag,
            format!("the driver list cannot be used: {e}"),
            list_rule.clone(),
        )),
        Ok(files) => {
            if let Some(lib) = f.required_library.filter(|l| !files.has_library(l)) {
                problems.push(note(
                    flag,
                    format!(
                        "no driver library on this node: {lib} is not in the loader's \
                         cache{} (is the driver installed? run ldconfig)",
                        f.ldcache_error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                    list_rule.clone(),
                ));
            }
            for m in files.missing.iter().filter(|m| m.kind == "path") {
                problems.push(note(
                    m.entry.clone(),
                    "listed but missing on this node: fix the list or the node",
                    m.rule.clone(),
                ));
            }
        }
    }
    if let Err(e) = &f.selection {
        problems.push(note("GPUs", e.clone(), asked.clone()));
    }
    if !problems.is_empty() {
        if !requested {
            // "always" on a node (or in a job) without GPUs: nothing to give.
            out.skipped.extend(problems.into_iter().map(|p| Skipped {
                rule: mode_rule.clone(),
                ..p
            }));
            return;
        }
        if g.missing == Missing::Fail {
            out.refused.extend(problems);
            return;
        }
        out.warnings.extend(
            problems
                .iter()
                .map(|p| format!("{}: {} (gpu.missing = \"warn\": going on)", p.what, p.why)),
        );
        out.skipped.extend(problems);
    }

    // Devices: the control nodes, then exactly the selected GPUs.
    for c in &f.control {
        out.mounts.push(node(
            c,
            in_dev(&f.device_dir, c),
            &format!("{asked}: driver control node"),
        ));
    }
    if let Ok(sel) = &f.selection {
        out.notes.push(note("GPUs", sel.how.clone(), asked.clone()));
        for s in &sel.gpus {
            out.mounts.push(node(
                &s.node,
                s.dest.clone(),
                &format!("{asked}: {}", s.why),
            ));
        }
        if let Some(m) = &f.mask {
            mask_driver_info(m, &asked, out);
        }
        out.env.push(EnvDecision {
            name: vendor.visible_var().into(),
            action: EnvAction::Set,
            value: Some(sel.visible()),
            origin: "gpu".into(),
            rule: format!(
                "{asked}: only the selected GPUs are in the container, numbered from 0 \
                 (docs/gpu.md)"
            ),
        });
    }
    for d in &f.extra_devices {
        out.mounts.push(node(
            d,
            in_dev(&f.device_dir, d),
            &policy.rule("gpu.devices"),
        ));
    }
    for sock in &f.sockets {
        out.mounts.push(MountStep {
            readonly: false,
            nosuid: true,
            nodev: true,
            ..node(
                sock,
                sock.clone(),
                &format!("{asked}: the driver daemon's socket"),
            )
        });
    }
    if let Ok(files) = &f.files {
        out.notes
            .push(note("driver files", f.liblist.clone(), list_rule.clone()));
        add_files(files, out);
    }
}

/// With a subset of the node's GPUs, the driver's per-GPU information shows only those
/// (nvidia-smi and NVML list what is there), as NVIDIA's container toolkit does: a tmpfs over
/// the directory with the selected GPUs' entries bound back.
fn mask_driver_info(m: &InfoMask, asked: &str, out: &mut DeviceSteps) {
    out.mounts.push(MountStep {
        dest: m.dir.clone(),
        kind: MountKind::Tmpfs {
            mode: 0o555,
            size: Some("64k".into()),
        },
        readonly: true,
        nosuid: true,
        nodev: true,
        rule: format!("{asked}: only the selected GPUs' driver information"),
        as_user: false,
    });
    for (p, label) in &m.keep {
        out.mounts.push(file(p, p, &format!("{asked}: {label}")));
    }
}

/// Binds a resolved list's files; entries the node lacks are reported, not fatal.
fn add_files(files: &Resolved, out: &mut DeviceSteps) {
    for f in &files.files {
        out.mounts.push(file(&f.source, &f.dest, &f.rule));
    }
    for m in files.missing.iter().filter(|m| m.kind != "path") {
        out.skipped.push(note(
            format!("{} {}", m.kind, m.entry),
            "not on this node",
            m.rule.clone(),
        ));
    }
    let libs = files.files.iter().any(|f| f.dest.starts_with(LIB_DIR));
    let already = out.env.iter().any(|d| d.action == EnvAction::Append);
    if libs && !already {
        out.env.push(EnvDecision {
            name: "LD_LIBRARY_PATH".into(),
            action: EnvAction::Append,
            value: Some(LIB_DIR.into()),
            origin: "gpu".into(),
            rule: format!("slipway (the host's driver libraries are in {LIB_DIR})"),
        });
    }
}

fn fabric(policy: &LoadedPolicy, f: &FabricFacts, out: &mut DeviceSteps) {
    let dir = &policy.policy.fabric.device_dir;
    for (list, key) in [
        (&f.host.infiniband, "fabric.infiniband"),
        (&f.host.omnipath, "fabric.omnipath"),
    ] {
        let rule = policy.rule(key);
        for d in list {
            out.mounts.push(node(d, in_dev(dir, d), &rule));
        }
    }
    if f.host.infiniband.is_empty() && f.host.omnipath.is_empty() {
        return;
    }
    out.fabric_env = true;
    let rule = "slipway (fabric)";
    out.notes.push(note(
        "RLIMIT_MEMLOCK",
        "kept as the task has it (slipway changes no limits; verbs and PSM2 pin memory)",
        rule,
    ));
    out.notes.push(note(
        "/sys/class/infiniband",
        "visible: the host's /sys is bound",
        rule,
    ));
    out.notes.push(note(
        "variables",
        format!(
            "{} pass even with --cleanenv (unless env.deny names them)",
            crate::host::fabric::FABRIC_ENV.join(" ")
        ),
        rule,
    ));
    match &f.files {
        None => {}
        Some(Ok(files)) => add_files(files, out),
        Some(Err(e)) => out.refused.push(note(
            "fabric.liblist",
            format!("cannot be used: {e}"),
            policy.rule("fabric.liblist"),
        )),
    }
}
