//! AMD GPUs: `/dev/kfd` (the compute driver's one node, every GPU), the GPUs' DRM render nodes
//! (`/dev/dri/renderD<minor>`, major 226), and the KFD topology
//! (`/sys/class/kfd/kfd/topology/nodes/<n>/{gpu_id,properties}`), whose GPU nodes in node order
//! are ROCr's enumeration order: what `ROCR_VISIBLE_DEVICES` indices count.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gpu::{char_dev, GpuInfo, Inventory};

/// The DRM character device major (render nodes are minors 128 and up).
pub const DRM_MAJOR: u32 = 226;

/// The variable that selects AMD GPUs outside Slurm (ROCr's; Slurm sets it for AMD gres).
pub const VISIBLE_VARS: [&str; 1] = ["ROCR_VISIBLE_DEVICES"];

/// One GPU as the KFD topology describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AmdGpu {
    /// KFD topology node number.
    pub node: u32,
    /// Its render node's minor (`drm_render_minor`).
    pub minor: u32,
    /// `unique_id`, when the driver says (ROCr names the GPU `GPU-<hex>`).
    pub unique_id: Option<u64>,
}

/// What the node has.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AmdHost {
    /// Where device nodes are looked for.
    pub device_dir: PathBuf,
    /// The KFD topology's node directory.
    pub topology: PathBuf,
    /// The GPUs in KFD node order; `None` without a topology.
    pub gpus: Option<Vec<AmdGpu>>,
    /// Render nodes present (`dri/renderD<N>`, major 226), `(minor, path)`, by minor.
    pub nodes: Vec<(u32, PathBuf)>,
    /// `/dev/kfd`, when it exists.
    pub kfd: Option<PathBuf>,
}

impl AmdHost {
    /// Looks at `device_dir` (`kfd`, `dri/renderD*`) and the topology.
    pub fn discover(device_dir: &Path, topology: &Path) -> AmdHost {
        let mut nodes = Vec::new();
        if let Ok(dir) = std::fs::read_dir(device_dir.join("dri")) {
            for e in dir.flatten().take(4096) {
                let name = e.file_name();
                let Some(n) = name.to_str().and_then(|n| n.strip_prefix("renderD")) else {
                    continue;
                };
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                // Not followed if a link: only a real render node of this directory.
                if let Some((DRM_MAJOR, minor)) = char_dev(&e.path(), false) {
                    nodes.push((minor, e.path()));
                }
            }
        }
        nodes.sort();
        let kfd = device_dir.join("kfd");
        AmdHost {
            device_dir: device_dir.to_path_buf(),
            topology: topology.to_path_buf(),
            gpus: read_topology(topology),
            nodes,
            kfd: char_dev(&kfd, false).map(|_| kfd),
        }
    }

    /// What selection works on.
    pub fn inventory(&self) -> Inventory {
        Inventory {
            vendor: "AMD",
            major: DRM_MAJOR,
            dest_prefix: "/dev/dri/renderD",
            device_dir: self.device_dir.clone(),
            order_from: self.topology.clone(),
            gpus: self.gpus.as_ref().map(|list| {
                list.iter()
                    .map(|g| GpuInfo {
                        minor: g.minor,
                        label: format!("KFD node {}", g.node),
                        uuid: g.unique_id.map(|u| format!("GPU-{u:016x}")),
                    })
                    .collect()
            }),
            nodes: self.nodes.clone(),
        }
    }
}

/// The GPU nodes of the topology (`gpu_id` not 0), in node order.
fn read_topology(dir: &Path) -> Option<Vec<AmdGpu>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut gpus = Vec::new();
    for e in entries.flatten().take(1024) {
        let Some(node) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let gpu_id = std::fs::read_to_string(e.path().join("gpu_id")).unwrap_or_default();
        if gpu_id.trim().parse::<u64>().unwrap_or(0) == 0 {
            continue; // a CPU node
        }
        let Ok(props) = std::fs::read_to_string(e.path().join("properties")) else {
            continue;
        };
        if let Some(g) = parse_properties(node, &props) {
            gpus.push(g);
        }
    }
    gpus.sort_by_key(|g| g.node);
    Some(gpus)
}

/// Parses a node's `properties` (`key value` lines); `None` without `drm_render_minor`.
pub fn parse_properties(node: u32, text: &str) -> Option<AmdGpu> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    Some(AmdGpu {
        node,
        minor: u32::try_from(field("drm_render_minor")?).ok()?,
        unique_id: field("unique_id").filter(|u| *u != 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::gpu::{select, wanted};
    use std::ffi::CString;

    /// Stand-ins: /dev/kfd (its major is allocated at load time; 240 here), render nodes by
    /// mknod (DRM's major 226), and a KFD topology in the driver's format: a CPU node 0 and
    /// GPU nodes 1-2 whose render minors are 129 and 128 (node order is not minor order).
    #[test]
    fn rocr_indices_are_kfd_node_order() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: mknod needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("dev");
        std::fs::create_dir_all(dev.join("dri")).unwrap();
        let mk = |p: PathBuf, major, minor| {
            let c = CString::new(p.to_str().unwrap()).unwrap();
            let rc = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                )
            };
            assert_eq!(rc, 0);
        };
        mk(dev.join("kfd"), 240, 0);
        mk(dev.join("dri/renderD128"), DRM_MAJOR, 128);
        mk(dev.join("dri/renderD129"), DRM_MAJOR, 129);
        mk(dev.join("dri/card0"), DRM_MAJOR, 0);
        let topo = t.path().join("nodes");
        for (n, gpu_id, minor) in [(0, 0, 0), (1, 4242, 129), (2, 4343, 128)] {
            let d = topo.join(n.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("gpu_id"), format!("{gpu_id}\n")).unwrap();
            std::fs::write(
                d.join("properties"),
                format!(
                    "cpu_cores_count 0\nsimd_count 256\ndrm_render_minor {minor}\nunique_id {}\n",
                    1000 + n
                ),
            )
            .unwrap();
        }
        let host = AmdHost::discover(&dev, &topo);
        assert!(host.kfd.is_some());
        assert_eq!(
            host.nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
            [128, 129]
        );
        let inv = host.inventory();
        let env = |v: &str| vec![("ROCR_VISIBLE_DEVICES".to_string(), v.to_string())];
        let s = select(&inv, &wanted(&env("0"), &VISIBLE_VARS), None, "n1").unwrap();
        assert_eq!(s.gpus[0].minor, 129);
        assert_eq!(s.gpus[0].dest, Path::new("/dev/dri/renderD129"));
        let s = select(
            &inv,
            &wanted(&env("GPU-00000000000003ea"), &VISIBLE_VARS),
            None,
            "n1",
        )
        .unwrap();
        assert_eq!(s.gpus[0].minor, 128);
        let all = select(&inv, &wanted(&[], &VISIBLE_VARS), None, "n1").unwrap();
        assert_eq!(all.gpus.len(), 2);
        assert_eq!(all.visible(), "0,1");
    }
}
