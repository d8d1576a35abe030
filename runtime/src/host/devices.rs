//! Gathering device facts for a launch: the GPUs it may get (NVIDIA, AMD), with the driver's
//! files, and the fabric devices of the node. Done once per launch (once per node and step
//! under Slurm), before the plan; everything here only reads.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::amd::{self, AmdHost};
use super::driverfiles::{self, Resolved};
use super::fabric::FabricHost;
use super::gpu::{self, Selection, Wanted};
use super::gres::GresConf;
use super::ldcache::{LdCache, LD_SO_CACHE};
use super::liblist::LibList;
use super::nvidia::{self, NvidiaHost};
use crate::policy::{FabricMode, GpuMode, Policy, DEFAULT_NVLIBLIST, DEFAULT_ROCMLIBLIST};

/// The NVIDIA driver list used when the policy names the default path and no file is there:
/// the one shipped in `packaging/nvliblist.conf`.
pub const BUILTIN_NVLIBLIST: &str = include_str!("../../../packaging/nvliblist.conf");

/// The same for AMD (`packaging/rocmliblist.conf`).
pub const BUILTIN_ROCMLIBLIST: &str = include_str!("../../../packaging/rocmliblist.conf");

/// A GPU vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Vendor {
    /// `--nv`.
    Nvidia,
    /// `--rocm`.
    Amd,
}

impl Vendor {
    /// The user's flag (`--nv`, `--rocm`).
    pub fn flag(self) -> &'static str {
        match self {
            Vendor::Nvidia => "--nv",
            Vendor::Amd => "--rocm",
        }
    }

    /// The policy key of its mode (`gpu.nvidia`, `gpu.amd`).
    pub fn key(self) -> &'static str {
        match self {
            Vendor::Nvidia => "gpu.nvidia",
            Vendor::Amd => "gpu.amd",
        }
    }

    /// The variable that numbers its GPUs inside.
    pub fn visible_var(self) -> &'static str {
        match self {
            Vendor::Nvidia => "CUDA_VISIBLE_DEVICES",
            Vendor::Amd => "ROCR_VISIBLE_DEVICES",
        }
    }
}

/// Device facts of a launch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Devices {
    /// NVIDIA GPUs: gathered when the launch may get them (`--nv`, or `gpu.nvidia = "always"`).
    pub nvidia: Option<GpuFacts>,
    /// AMD GPUs: the same for `--rocm` and `gpu.amd`.
    pub amd: Option<GpuFacts>,
    /// Fabric devices (always looked for, unless both fabrics are `never`).
    pub fabric: FabricFacts,
}

/// The part of a GPU's driver information shown in the container when it gets a subset of
/// the GPUs: a tmpfs over `dir` with `keep` bound back.
#[derive(Debug, Clone, Serialize)]
pub struct InfoMask {
    /// The directory (same path inside: it is below the bound `/proc`).
    pub dir: PathBuf,
    /// The selected GPUs' entries, with their labels.
    pub keep: Vec<(PathBuf, String)>,
}

/// What the node has for a GPU launch of one vendor.
#[derive(Debug, Clone, Serialize)]
pub struct GpuFacts {
    /// Which vendor.
    pub vendor: Vendor,
    /// Where device nodes are.
    pub device_dir: PathBuf,
    /// Control nodes present (`nvidiactl`, `nvidia-uvm`, ...; `/dev/kfd`).
    pub control: Vec<PathBuf>,
    /// `Err`: why there is no driver to talk to (one phrase with the fix).
    pub driver: Result<(), String>,
    /// The GPUs chosen, or why none can be.
    pub selection: Result<Selection, String>,
    /// The driver list's name (a path, or the built-in list).
    pub liblist: String,
    /// The list resolved, or why it could not be read.
    pub files: Result<Resolved, String>,
    /// A library prefix without which the vendor's runtime cannot work (`libcuda.so`).
    pub required_library: Option<&'static str>,
    /// Why the loader's cache could not be read, if it could not.
    pub ldcache_error: Option<String>,
    /// Sockets bound at the same path (nvidia-persistenced's, when it runs).
    pub sockets: Vec<PathBuf>,
    /// `gpu.devices` globs expanded (existing paths).
    pub extra_devices: Vec<PathBuf>,
    /// The driver information to mask, when the selection is a strict subset.
    pub mask: Option<InfoMask>,
}

/// What the node has for its fabrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FabricFacts {
    /// Devices (only of fabrics the policy does not turn off).
    pub host: FabricHost,
    /// `fabric.liblist` resolved, when set and a device exists.
    pub files: Option<Result<Resolved, String>>,
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    /// `--nv`.
    pub nv: bool,
    /// `--rocm`.
    pub rocm: bool,
}

/// Gathers the device facts. `env`: the caller's environment (which GPUs: see
/// [`gpu::wanted`]); `node`: this node's Slurm name (short hostname); `privileged`: a root
/// launch, which only trusts root-owned lists.
pub fn gather(
    policy: &Policy,
    asked: Asked,
    env: &[(String, String)],
    node: &str,
    privileged: bool,
) -> Devices {
    let g = &policy.gpu;
    let wants = |mode: GpuMode, asked: bool| match mode {
        GpuMode::Never => false,
        GpuMode::Always => true,
        GpuMode::OnRequest => asked,
    };
    let (want_nv, want_amd) = (wants(g.nvidia, asked.nv), wants(g.amd, asked.rocm));
    let f = &policy.fabric;
    let mut fabric = FabricFacts::default();
    if f.infiniband == FabricMode::Auto || f.omnipath == FabricMode::Auto {
        let mut h = FabricHost::discover(&f.device_dir);
        if f.infiniband == FabricMode::Never {
            h.infiniband.clear();
        }
        if f.omnipath == FabricMode::Never {
            h.omnipath.clear();
        }
        fabric.host = h;
    }
    let has_fabric = !fabric.host.infiniband.is_empty() || !fabric.host.omnipath.is_empty();
    let fabric_list = !f.liblist.as_os_str().is_empty();
    // The loader's cache, read once when a list needs it.
    let cache = (want_nv || want_amd || (has_fabric && fabric_list))
        .then(|| LdCache::load(Path::new(LD_SO_CACHE)).map_err(|e| e.to_string()));
    let cache_ok = cache.as_ref().and_then(|c| c.as_ref().ok());
    let cache_err = cache.as_ref().and_then(|c| c.as_ref().err().cloned());
    if has_fabric && fabric_list {
        fabric.files =
            Some(load_list(&f.liblist, privileged).map(|l| driverfiles::resolve(&l, cache_ok)));
    }
    let gres = || GresConf::load(&g.gres_conf).map_err(|e| e.to_string());
    let list = |path: &Path, default: &str, builtin: &str| {
        let (name, list) = if path == Path::new(default) && std::fs::symlink_metadata(path).is_err()
        {
            let name = format!(
                "built-in {}",
                Path::new(default)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            );
            let l = LibList::parse(builtin, Path::new(&name)).map_err(|e| e.to_string());
            (name, l)
        } else {
            (path.display().to_string(), load_list(path, privileged))
        };
        (name, list.map(|l| driverfiles::resolve(&l, cache_ok)))
    };
    let extra_devices: Vec<PathBuf> = g
        .devices
        .iter()
        .flat_map(|pat| {
            glob::glob(pat)
                .map(|paths| paths.flatten().take(1024).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();

    let nvidia = want_nv.then(|| {
        let host = NvidiaHost::discover(&g.device_dir, &g.driver_info);
        let wanted = gpu::wanted(env, &nvidia::VISIBLE_VARS);
        let gres = matches!(wanted, Wanted::Slurm { .. }).then(gres);
        let selection = gpu::select(&host.inventory(), &wanted, gres.as_ref(), node)
            .and_then(|s| nonempty(s, &wanted, "NVIDIA"));
        let (liblist, files) = list(&g.liblist, DEFAULT_NVLIBLIST, BUILTIN_NVLIBLIST);
        let mask = match (&host.gpus, &selection) {
            (Some(all), Ok(sel)) if sel.gpus.len() < all.len() => Some(InfoMask {
                dir: host.driver_info.clone(),
                keep: all
                    .iter()
                    .filter(|g| sel.gpus.iter().any(|s| s.minor == g.minor))
                    .map(|g| {
                        (
                            host.driver_info.join(&g.dir),
                            format!("GPU {} ({})", g.minor, g.bus_id),
                        )
                    })
                    .collect(),
            }),
            _ => None,
        };
        GpuFacts {
            vendor: Vendor::Nvidia,
            device_dir: host.device_dir.clone(),
            driver: if host.has_driver() {
                Ok(())
            } else {
                Err(format!(
                    "no NVIDIA driver on this node (no nvidiactl in {}): run on a GPU node, or \
                     without --nv",
                    host.device_dir.display()
                ))
            },
            control: host.control.clone(),
            selection,
            liblist,
            files,
            required_library: Some("libcuda.so"),
            ldcache_error: cache_err.clone(),
            sockets: Path::new(nvidia::PERSISTENCED_SOCKET)
                .exists()
                .then(|| nvidia::PERSISTENCED_SOCKET.into())
                .into_iter()
                .collect(),
            extra_devices: extra_devices.clone(),
            mask,
        }
    });
    let amd = want_amd.then(|| {
        let host = AmdHost::discover(&g.device_dir, &g.kfd_topology);
        let wanted = gpu::wanted(env, &amd::VISIBLE_VARS);
        let gres = matches!(wanted, Wanted::Slurm { .. }).then(gres);
        let selection = gpu::select(&host.inventory(), &wanted, gres.as_ref(), node)
            .and_then(|s| nonempty(s, &wanted, "AMD"));
        let (liblist, files) = list(&g.rocm_liblist, DEFAULT_ROCMLIBLIST, BUILTIN_ROCMLIBLIST);
        GpuFacts {
            vendor: Vendor::Amd,
            device_dir: host.device_dir.clone(),
            driver: match &host.kfd {
                Some(_) => Ok(()),
                None => Err(format!(
                    "no AMD GPU driver on this node (no kfd in {}): run on a GPU node, or \
                     without --rocm",
                    host.device_dir.display()
                )),
            },
            control: host.kfd.iter().cloned().collect(),
            selection,
            liblist,
            files,
            required_library: None,
            ldcache_error: cache_err.clone(),
            sockets: Vec::new(),
            extra_devices,
            mask: None,
        }
    });
    Devices {
        nvidia,
        amd,
        fabric,
    }
}

/// A node with a driver but no GPU gives every GPU of the node: none. Say so when nothing
/// asked for none.
fn nonempty(s: Selection, wanted: &Wanted, vendor: &str) -> Result<Selection, String> {
    if s.gpus.is_empty() && matches!(wanted, Wanted::All) {
        return Err(format!("this node has no {vendor} GPU"));
    }
    Ok(s)
}

/// Reads a list the policy names; a root launch first checks that root owns it.
fn load_list(path: &Path, privileged: bool) -> Result<LibList, String> {
    if privileged {
        crate::policy::check_trusted_file(path)?;
    }
    LibList::load(path).map_err(|e| e.to_string())
}

/// This node's short host name (Slurm's default `NodeName`).
pub fn short_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or("").to_string())
        .unwrap_or_default()
}
