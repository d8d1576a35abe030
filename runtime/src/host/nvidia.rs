//! NVIDIA GPUs: the device nodes (`/dev/nvidia<minor>`, the control nodes) and the driver's
//! per-GPU information (`/proc/driver/nvidia/gpus/<bus id>/information`: `Device Minor:`,
//! `Bus Location:`, `GPU UUID:`), which gives the GPUs' PCI bus order: nvidia-smi's and NVML's
//! order, in which `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` indices count.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gpu::{char_dev, GpuInfo, Inventory};

/// The NVIDIA character device major.
pub const NVIDIA_MAJOR: u32 = 195;

/// Control nodes bound with any GPU, when they exist (`nvidia-caps` is added per entry).
pub const CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// The variables that select NVIDIA GPUs outside Slurm, first wins (NVIDIA's container
/// toolkit reads `NVIDIA_VISIBLE_DEVICES`; CUDA itself `CUDA_VISIBLE_DEVICES`).
pub const VISIBLE_VARS: [&str; 2] = ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"];

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

    /// What selection works on: the GPUs in PCI bus order and the nodes present.
    pub fn inventory(&self) -> Inventory {
        Inventory {
            vendor: "NVIDIA",
            major: NVIDIA_MAJOR,
            dest_prefix: "/dev/nvidia",
            device_dir: self.device_dir.clone(),
            order_from: self.driver_info.clone(),
            gpus: self.gpus.as_ref().map(|list| {
                list.iter()
                    .map(|g| GpuInfo {
                        minor: g.minor,
                        label: g.bus_id.clone(),
                        uuid: g.uuid.clone(),
                    })
                    .collect()
            }),
            nodes: self.nodes.clone(),
        }
    }
}

fn is_char(p: &Path) -> bool {
    char_dev(p, false).is_some()
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

#[cfg(test)]
#[path = "gpu/tests.rs"]
mod tests;
