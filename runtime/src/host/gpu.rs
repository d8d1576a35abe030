//! The node's NVIDIA GPUs, and which of them a launch gets.
//!
//! What the host says, never assumptions: a GPU's device minor comes from the driver's
//! per-GPU information (`/proc/driver/nvidia/gpus/<bus id>/information`, `Device Minor:`) or
//! from the device file Slurm's `gres.conf` names (its `st_rdev`); an index (`0`, `1`, as in
//! `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`) is a position in PCI bus order, which
//! is nvidia-smi's order and NVML's. Minors and indices often differ (a node whose GPU in
//! the first slot is `/dev/nvidia2`).
//!
//! Which GPUs ([`wanted`], [`select`]):
//! 1. Under Slurm, the step's (or the batch job's) allocation: `SLURM_STEP_GPUS` /
//!    `SLURM_JOB_GPUS` are indices into `gres.conf`'s `Name=gpu` `File=` list for this node
//!    (with `AutoDetect=nvml`, into the PCI-ordered list).
//! 2. Else `NVIDIA_VISIBLE_DEVICES`, else `CUDA_VISIBLE_DEVICES` (indices or `GPU-` UUIDs;
//!    `all`, `none`, `void` as NVIDIA's container toolkit reads them).
//! 3. Else every GPU of the node.
//!
//! Only the selected GPUs' device nodes are in the container, so CUDA there numbers them from
//! 0: inside, `CUDA_VISIBLE_DEVICES` is `0,...,n-1` ([`Selection::visible`]), whatever the
//! host value was (the NVIDIA container toolkit documents the same renumbering; Slurm does the
//! same with `ConstrainDevices`). Honouring the caller's variables is safe even for a root
//! launch: binding a device node grants nothing its permissions and the job's device cgroup
//! do not.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gres::GresConf;

/// The NVIDIA character device major.
pub const NVIDIA_MAJOR: u32 = 195;

/// Control nodes bound with any GPU, when they exist (`nvidia-caps` is added per entry).
pub const CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// The persistence daemon's socket (NVML talks to it when it runs).
pub const PERSISTENCED_SOCKET: &str = "/var/run/nvidia-persistenced/socket";

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NvidiaGpu {
    /// Device minor (`/dev/nvidia<minor>`).
    pub minor: u32,
    /// PCI bus id (`0000:3b:00.0`).
    pub bus_id: String,
    /// The name of its driver-information directory (the bus id as the driver writes it).
    pub dir: String,
    /// `GPU-...` UUID, when the driver says.
    pub uuid: Option<String>,
    /// Model name, when the driver says.
    pub model: Option<String>,
}

/// What the node has.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NvidiaHost {
    /// Where device nodes are looked for.
    pub device_dir: PathBuf,
    /// Where the driver's per-GPU information is.
    pub driver_info: PathBuf,
    /// The GPUs in PCI bus order (index = position); `None` when there is no driver
    /// information (no driver loaded, or a stand-in without it).
    pub gpus: Option<Vec<NvidiaGpu>>,
    /// `nvidia<N>` nodes present in `device_dir`, with the minor of each, by minor.
    pub nodes: Vec<(u32, PathBuf)>,
    /// Control nodes present (`nvidiactl`, `nvidia-uvm`, ..., `nvidia-caps/*`).
    pub control: Vec<PathBuf>,
}

impl NvidiaHost {
    /// Looks at `device_dir` and `driver_info` (a few stats and small reads).
    pub fn discover(device_dir: &Path, driver_info: &Path) -> NvidiaHost {
        let mut nodes = Vec::new();
        if let Ok(dir) = std::fs::read_dir(device_dir) {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(n) = name.to_str().and_then(|n| n.strip_prefix("nvidia")) else {
                    continue;
                };
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                // Not followed if a link: only a real NVIDIA node of this directory.
                if let Some((NVIDIA_MAJOR, minor)) = char_dev(&e.path(), false) {
                    nodes.push((minor, e.path()));
                }
            }
        }
        nodes.sort();
        let mut control: Vec<PathBuf> = CONTROL_NODES
            .iter()
            .map(|n| device_dir.join(n))
            .filter(|p| is_char(p))
            .collect();
        if let Ok(dir) = std::fs::read_dir(device_dir.join("nvidia-caps")) {
            let mut caps: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_char(p))
                .collect();
            caps.sort();
            control.extend(caps);
        }
        NvidiaHost {
            device_dir: device_dir.to_path_buf(),
            driver_info: driver_info.to_path_buf(),
            gpus: read_driver_info(driver_info),
            nodes,
            control,
        }
    }

    /// Whether a driver is there to talk to: its control node exists.
    pub fn has_driver(&self) -> bool {
        self.control
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == "nvidiactl"))
    }
}

fn is_char(p: &Path) -> bool {
    char_dev(p, false).is_some()
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

/// Reads `<driver_info>/<bus id>/information` for every GPU, sorted by bus id.
fn read_driver_info(dir: &Path) -> Option<Vec<NvidiaGpu>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut gpus = Vec::new();
    for e in entries.flatten().take(1024) {
        let Ok(text) = std::fs::read_to_string(e.path().join("information")) else {
            continue;
        };
        if let Some(g) = parse_information(&e.file_name().to_string_lossy(), &text) {
            gpus.push(g);
        }
    }
    gpus.sort_by(|a, b| a.bus_id.cmp(&b.bus_id));
    Some(gpus)
}

/// Parses one `information` file (`Key:   value` lines); `None` without a `Device Minor`.
pub fn parse_information(dir_name: &str, text: &str) -> Option<NvidiaGpu> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    Some(NvidiaGpu {
        minor: field("Device Minor")?.parse().ok()?,
        bus_id: field("Bus Location")
            .unwrap_or_else(|| dir_name.to_string())
            .to_ascii_lowercase(),
        dir: dir_name.to_string(),
        uuid: field("GPU UUID"),
        model: field("Model"),
    })
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
pub fn wanted(env: &[(String, String)]) -> Wanted {
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
    for var in ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"] {
        if let Some(value) = get(var) {
            return Wanted::Visible {
                var: var.into(),
                value,
            };
        }
    }
    Wanted::All
}

/// One selected GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectedGpu {
    /// Its device minor: bound at `/dev/nvidia<minor>`.
    pub minor: u32,
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
    /// `CUDA_VISIBLE_DEVICES` inside: `0,...,n-1` (only these GPUs are there), empty for none.
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
    host: &NvidiaHost,
    wanted: &Wanted,
    gres: Option<&Result<GresConf, String>>,
    node: &str,
) -> Result<Selection, String> {
    match wanted {
        Wanted::All => {
            let gpus = match &host.gpus {
                Some(list) => list
                    .iter()
                    .map(|g| by_minor(host, g.minor, format!("GPU {} ({})", g.minor, g.bus_id)))
                    .collect::<Result<Vec<_>, _>>()?,
                None => host
                    .nodes
                    .iter()
                    .map(|(m, p)| SelectedGpu {
                        minor: *m,
                        node: p.clone(),
                        why: "present (no driver information: every GPU node)".into(),
                    })
                    .collect(),
            };
            Ok(Selection {
                gpus,
                how: "every GPU of the node (no SLURM_*_GPUS, NVIDIA_VISIBLE_DEVICES or \
                      CUDA_VISIBLE_DEVICES)"
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
                        Some((NVIDIA_MAJOR, minor)) => minor,
                        _ => {
                            return Err(format!(
                                "{var} index {i} is {} ({}), which is not an NVIDIA device \
                                 node on this node",
                                file.display(),
                                conf.path.display()
                            ))
                        }
                    };
                    gpus.push(SelectedGpu {
                        minor,
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
                how: format!("{var}={value} (indices in PCI bus order, as nvidia-smi lists them)"),
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

fn driver_list<'a>(
    host: &'a NvidiaHost,
    var: &str,
    value: &str,
) -> Result<&'a [NvidiaGpu], String> {
    host.gpus.as_deref().ok_or_else(|| {
        format!(
            "{var}={value}: cannot tell which device that is: the driver's GPU information \
             ({}) is missing (is the NVIDIA driver loaded?)",
            host.driver_info.display()
        )
    })
}

fn by_index(host: &NvidiaHost, i: u32, why: &str) -> Result<SelectedGpu, String> {
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
        format!("{why} = GPU {} ({})", g.minor, g.bus_id),
    )
}

fn by_minor(host: &NvidiaHost, minor: u32, why: String) -> Result<SelectedGpu, String> {
    let node = host
        .nodes
        .iter()
        .find(|(m, _)| *m == minor)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            format!(
                "{why}: no device node for minor {minor} in {} (nvidia{minor})",
                host.device_dir.display()
            )
        })?;
    Ok(SelectedGpu { minor, node, why })
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

#[cfg(test)]
mod tests;
