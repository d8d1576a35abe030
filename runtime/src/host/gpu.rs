//! Which GPUs a launch gets, for any vendor ([`super::nvidia`], [`super::amd`]).
//!
//! What the host says, never assumptions: a GPU's device minor comes from the driver (NVIDIA's
//! per-GPU information, AMD's KFD topology) or from the device file Slurm's `gres.conf` names
//! (its `st_rdev`); an index (`0`, `1`, as in `CUDA_VISIBLE_DEVICES`) is a position in the
//! driver's enumeration order (PCI bus order for NVIDIA: nvidia-smi's and NVML's; KFD node
//! order for AMD: ROCr's). Minors and indices often differ (a node whose first GPU is
//! `/dev/nvidia2`).
//!
//! Which GPUs ([`wanted`], [`select`]):
//! 1. Under Slurm, the step's (or the batch job's) allocation: `SLURM_STEP_GPUS` /
//!    `SLURM_JOB_GPUS` are indices into `gres.conf`'s `Name=gpu` `File=` list for this node
//!    (with `AutoDetect`, into the driver's order).
//! 2. Else the vendor's variables (`NVIDIA_VISIBLE_DEVICES`, then `CUDA_VISIBLE_DEVICES`;
//!    `ROCR_VISIBLE_DEVICES`): indices or `GPU-` UUIDs; `all`, `none`, `void` as NVIDIA's
//!    container toolkit reads them.
//! 3. Else every GPU of the node.
//!
//! Only the selected GPUs' device nodes are in the container, so the runtime there numbers
//! them from 0: inside, the vendor's variable is `0,...,n-1` ([`Selection::visible`]),
//! whatever the host value was (the NVIDIA container toolkit documents the same renumbering;
//! Slurm does the same with `ConstrainDevices`). Honouring the caller's variables is safe even
//! for a root launch: binding a device node grants nothing its permissions and the job's
//! device cgroup do not.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gres::GresConf;

/// One GPU in the driver's enumeration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// Its device minor.
    pub minor: u32,
    /// How the driver names it (PCI bus id, KFD node).
    pub label: String,
    /// `GPU-...` UUID, when the driver says.
    pub uuid: Option<String>,
}

/// What selection works on: a vendor's GPUs as the host shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// `NVIDIA`, `AMD` (for messages).
    pub vendor: &'static str,
    /// The GPU device nodes' major (195; 226 for DRM render nodes).
    pub major: u32,
    /// A GPU with minor M is bound at `<dest_prefix>M` inside.
    pub dest_prefix: &'static str,
    /// Where device nodes are.
    pub device_dir: PathBuf,
    /// Where the enumeration order comes from (for messages).
    pub order_from: PathBuf,
    /// The GPUs in the driver's order (index = position); `None` when the driver does not
    /// say (not loaded, or a stand-in without it).
    pub gpus: Option<Vec<GpuInfo>>,
    /// GPU nodes present, `(minor, path)`, by minor.
    pub nodes: Vec<(u32, PathBuf)>,
}

/// `(major, minor)` of character device `p` (`follow`: through a symlink).
pub fn char_dev(p: &Path, follow: bool) -> Option<(u32, u32)> {
    let m = if follow {
        std::fs::metadata(p)
    } else {
        std::fs::symlink_metadata(p)
    }
    .ok()?;
    m.file_type()
        .is_char_device()
        .then(|| (libc::major(m.rdev()), libc::minor(m.rdev())))
}

/// Which GPUs the caller's environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// Slurm's allocation: `var` (`SLURM_STEP_GPUS`/`SLURM_JOB_GPUS`) = gres indices.
    Slurm {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A Slurm job without GPUs (`SLURM_JOB_ID` set, no `SLURM_*_GPUS`).
    SlurmNone,
    /// `NVIDIA_VISIBLE_DEVICES` or `CUDA_VISIBLE_DEVICES`.
    Visible {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// Every GPU of the node.
    All,
}

/// What the environment asks for: see the module documentation for the order.
/// `visible`: the vendor's variables, first wins (`["NVIDIA_VISIBLE_DEVICES",
/// "CUDA_VISIBLE_DEVICES"]`).
pub fn wanted(env: &[(String, String)], visible: &[&str]) -> Wanted {
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    for var in ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"] {
        if let Some(value) = get(var) {
            return Wanted::Slurm {
                var: var.into(),
                value,
            };
        }
    }
    if get("SLURM_JOB_ID").is_some() {
        return Wanted::SlurmNone;
    }
    for var in visible {
        if let Some(value) = get(var) {
            return Wanted::Visible {
                var: var.to_string(),
                value,
            };
        }
    }
    Wanted::All
}

/// One selected GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectedGpu {
    /// Its device minor.
    pub minor: u32,
    /// Where it is bound inside (`/dev/nvidia<minor>`, `/dev/dri/renderD<minor>`).
    pub dest: PathBuf,
    /// The host device node bound there.
    pub node: PathBuf,
    /// Why it is selected (`SLURM_STEP_GPUS index 1 = /dev/nvidia3 (gres.conf:2)`).
    pub why: String,
}

/// The GPUs a launch gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// In the order asked for.
    pub gpus: Vec<SelectedGpu>,
    /// How they were chosen, for `explain`.
    pub how: String,
}

impl Selection {
    /// The vendor's variable inside: `0,...,n-1` (only these GPUs are there), empty for none.
    pub fn visible(&self) -> String {
        (0..self.gpus.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Chooses the GPUs. `gres`: `gres.conf` when `wanted` is Slurm's (its error otherwise);
/// `node`: this node's Slurm name. `Err`: one line saying what is missing and the fix.
pub fn select(
    host: &Inventory,
    wanted: &Wanted,
    gres: Option<&Result<GresConf, String>>,
    node: &str,
) -> Result<Selection, String> {
    match wanted {
        Wanted::All => {
            let gpus = match &host.gpus {
                Some(list) => list
                    .iter()
                    .map(|g| by_minor(host, g.minor, format!("GPU {} ({})", g.minor, g.label)))
                    .collect::<Result<Vec<_>, _>>()?,
                None => host
                    .nodes
                    .iter()
                    .map(|(m, p)| SelectedGpu {
                        minor: *m,
                        dest: format!("{}{m}", host.dest_prefix).into(),
                        node: p.clone(),
                        why: "present (no driver information: every GPU node)".into(),
                    })
                    .collect(),
            };
            Ok(Selection {
                gpus,
                how: "every GPU of the node (no SLURM_*_GPUS, and none of the vendor's \
                      *_VISIBLE_DEVICES)"
                    .into(),
            })
        }
        Wanted::SlurmNone => Err(
            "this Slurm job has no GPUs on this node (no SLURM_STEP_GPUS \
                                  or SLURM_JOB_GPUS): ask for them with --gpus=N or \
                                  --gres=gpu:N"
                .into(),
        ),
        Wanted::Slurm { var, value } => {
            let indices = parse_indices(value).map_err(|e| format!("{var}={value}: {e}"))?;
            if indices.is_empty() {
                return Err(format!(
                    "{var} is empty: this step has no GPUs; ask for them with --gpus=N or \
                     --gres=gpu:N"
                ));
            }
            let conf = match gres {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(format!("{var}={value}: {e}")),
                None => return Err(format!("{var}={value}: no gres.conf to map it")),
            };
            let files = conf.files("gpu", node);
            let mut gpus = Vec::new();
            if files.is_empty() {
                if conf.autodetect("gpu", node).is_none() {
                    return Err(format!(
                        "{var}={value}: {} names no Name=gpu File= for node {node} (write \
                         File=/dev/nvidia... lines for it, or set gpu.gres_conf in the policy)",
                        conf.path.display()
                    ));
                }
                for i in indices {
                    gpus.push(by_index(host, i, &format!("{var} index {i} (AutoDetect)"))?);
                }
            } else {
                for i in indices {
                    let file = files.get(i as usize).ok_or_else(|| {
                        format!(
                            "{var}={value}: index {i}, but {} names {} GPU files for node {node}",
                            conf.path.display(),
                            files.len()
                        )
                    })?;
                    let minor = match char_dev(file, true) {
                        Some((major, minor)) if major == host.major => minor,
                        _ => {
                            return Err(format!(
                                "{var} index {i} is {} ({}), which is not an {} GPU device \
                                 node on this node",
                                file.display(),
                                conf.path.display(),
                                host.vendor
                            ))
                        }
                    };
                    gpus.push(SelectedGpu {
                        minor,
                        dest: format!("{}{minor}", host.dest_prefix).into(),
                        node: file.clone(),
                        why: format!("{var} index {i} = {} (gres.conf)", file.display()),
                    });
                }
            }
            Ok(Selection {
                gpus,
                how: format!(
                    "{var}={value} (the Slurm allocation, via {})",
                    conf.path.display()
                ),
            })
        }
        Wanted::Visible { var, value } => {
            let v = value.trim();
            if matches!(v, "none" | "void" | "") {
                return Ok(Selection {
                    gpus: Vec::new(),
                    how: format!("{var}={value}: no GPU"),
                });
            }
            if v == "all" {
                return select(host, &Wanted::All, gres, node).map(|s| Selection {
                    how: format!("{var}=all: every GPU of the node"),
                    ..s
                });
            }
            let mut gpus = Vec::new();
            for item in v.split(',').map(str::trim) {
                let why = format!("{var} entry {item}");
                let g = if item.starts_with("GPU-") {
                    let list = driver_list(host, var, value)?;
                    let g = list
                        .iter()
                        .find(|g| g.uuid.as_deref() == Some(item))
                        .ok_or_else(|| format!("{var}={value}: no GPU {item} on this node"))?;
                    by_minor(host, g.minor, why)?
                } else if item.starts_with("MIG-") {
                    return Err(format!(
                        "{var}={value}: MIG devices are not supported yet: name whole GPUs"
                    ));
                } else {
                    let i = item
                        .parse::<u32>()
                        .map_err(|_| format!("{var}={value}: {item:?} is not an index or UUID"))?;
                    by_index(host, i, &why)?
                };
                if !gpus.iter().any(|s: &SelectedGpu| s.minor == g.minor) {
                    gpus.push(g);
                }
            }
            Ok(Selection {
                gpus,
                how: format!(
                    "{var}={value} (indices in the driver's order: {})",
                    host.order_from.display()
                ),
            })
        }
    }
}

fn parse_indices(value: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let i = s
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not an index"))?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

fn driver_list<'a>(host: &'a Inventory, var: &str, value: &str) -> Result<&'a [GpuInfo], String> {
    host.gpus.as_deref().ok_or_else(|| {
        format!(
            "{var}={value}: cannot tell which device that is: the driver's GPU list ({}) is \
             missing (is the {} driver loaded?)",
            host.order_from.display(),
            host.vendor
        )
    })
}

fn by_index(host: &Inventory, i: u32, why: &str) -> Result<SelectedGpu, String> {
    let list = driver_list(host, why, "")?;
    let g = list.get(i as usize).ok_or_else(|| {
        format!(
            "{why}: the node has {} GPU{} (indices 0-{})",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            list.len().saturating_sub(1)
        )
    })?;
    by_minor(
        host,
        g.minor,
        format!("{why} = GPU {} ({})", g.minor, g.label),
    )
}

fn by_minor(host: &Inventory, minor: u32, why: String) -> Result<SelectedGpu, String> {
    let node = host
        .nodes
        .iter()
        .find(|(m, _)| *m == minor)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            format!(
                "{why}: no device node for minor {minor} in {}",
                host.device_dir.display()
            )
        })?;
    Ok(SelectedGpu {
        minor,
        dest: format!("{}{minor}", host.dest_prefix).into(),
        node,
        why,
    })
}

/// The container's `CUDA_VISIBLE_DEVICES` for one task of a step whose container holds the
/// step's GPUs (`step`: `SLURM_STEP_GPUS` at the step's start) when Slurm gave the task a
/// subset (`task`: the task's `SLURM_STEP_GPUS`, with `--gpu-bind`): each of the task's GPUs
/// by its position in the step's list. `None` when a task GPU is not in the step's list.
pub fn task_visible(step: &str, task: &str) -> Option<String> {
    let step = parse_indices(step).ok()?;
    let task = parse_indices(task).ok()?;
    let pos: Option<Vec<String>> = task
        .iter()
        .map(|t| step.iter().position(|s| s == t).map(|p| p.to_string()))
        .collect();
    pos.map(|p| p.join(","))
}
