//! InfiniBand and Omni-Path devices: what the image's verbs, UCX, libfabric or PSM2 need to
//! reach the node's adapters.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Device names below `<dev>/infiniband` that are bound (uverbs for verbs/UCX, rdma_cm for
/// connection management, umad/issm for management datagrams).
pub const INFINIBAND_PREFIXES: [&str; 4] = ["uverbs", "rdma_cm", "umad", "issm"];

/// Host variables that configure the fabric stacks, passed into the container even with
/// `--cleanenv` when a fabric device is bound (unless `env.deny` names them).
pub const FABRIC_ENV: [&str; 6] = ["UCX_*", "FI_*", "PSM2_*", "HFI_*", "OMPI_MCA_*", "NCCL_*"];

/// The fabric devices of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FabricHost {
    /// `<dev>/infiniband/{uverbs*,rdma_cm,umad*,issm*}`, sorted.
    pub infiniband: Vec<PathBuf>,
    /// `<dev>/hfi1*` (Omni-Path's PSM2 devices), sorted.
    pub omnipath: Vec<PathBuf>,
}

impl FabricHost {
    /// Looks below `device_dir` (two directory reads; nothing when the node has no adapter).
    pub fn discover(device_dir: &Path) -> FabricHost {
        let list = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_str().is_some_and(keep))
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_char_device()))
                        .map(|e| e.path())
                        .take(4096)
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        FabricHost {
            infiniband: list(&device_dir.join("infiniband"), &|n| {
                INFINIBAND_PREFIXES.iter().any(|p| n.starts_with(p))
            }),
            omnipath: list(device_dir, &|n| n.starts_with("hfi1")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// Device nodes made with mknod stand for an HCA's (uverbs major 231) and an Omni-Path
    /// adapter's (hfi1's major is allocated at load time; 246 here).
    #[test]
    fn finds_verbs_and_hfi1_nodes_only() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: mknod needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let ib = t.path().join("infiniband");
        std::fs::create_dir(&ib).unwrap();
        let mk = |p: PathBuf, major, minor| {
            let c = CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(
                unsafe {
                    libc::mknod(
                        c.as_ptr(),
                        libc::S_IFCHR | 0o666,
                        libc::makedev(major, minor),
                    )
                },
                0
            );
        };
        mk(ib.join("uverbs0"), 231, 192);
        mk(ib.join("umad0"), 231, 0);
        mk(ib.join("issm0"), 231, 64);
        mk(ib.join("rdma_cm"), 10, 58);
        mk(ib.join("other"), 231, 1);
        std::fs::write(ib.join("uverbs9"), "not a node").unwrap();
        mk(t.path().join("hfi1_0"), 246, 0);
        mk(t.path().join("hfi1"), 246, 128);
        let f = FabricHost::discover(t.path());
        let names = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into())
                .collect()
        };
        assert_eq!(
            names(&f.infiniband),
            ["issm0", "rdma_cm", "umad0", "uverbs0"]
        );
        assert_eq!(names(&f.omnipath), ["hfi1", "hfi1_0"]);
        assert_eq!(
            FabricHost::discover(&t.path().join("none")),
            FabricHost::default()
        );
    }
}
