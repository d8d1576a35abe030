//! Gathering device facts for a launch: the NVIDIA GPUs it may get (with the driver's files)
//! and the fabric devices of the node. Done once per launch (once per node and step under
//! Slurm), before the plan; everything here only reads.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::driverfiles::{self, Resolved};
use super::fabric::FabricHost;
use super::gpu::{self, NvidiaHost, Selection, Wanted};
use super::gres::GresConf;
use super::ldcache::{LdCache, LD_SO_CACHE};
use super::liblist::LibList;
use crate::policy::{FabricMode, GpuMode, Policy, DEFAULT_NVLIBLIST};

/// The driver list used when the policy names the default path and no file is there: the one
/// shipped in `packaging/nvliblist.conf`.
pub const BUILTIN_NVLIBLIST: &str = include_str!("../../../packaging/nvliblist.conf");

/// Device facts of a launch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Devices {
    /// NVIDIA GPUs: gathered when the launch may get them (`--nv`, or `gpu.nvidia = "always"`).
    pub nvidia: Option<NvidiaFacts>,
    /// Fabric devices (always looked for, unless both fabrics are `never`).
    pub fabric: FabricFacts,
}

/// What the node has for a GPU launch.
#[derive(Debug, Clone, Serialize)]
pub struct NvidiaFacts {
    /// Devices and driver information.
    pub host: NvidiaHost,
    /// The GPUs chosen, or why none can be.
    pub selection: Result<Selection, String>,
    /// The driver list's name (a path, or the built-in list).
    pub liblist: String,
    /// The list resolved, or why it could not be read.
    pub files: Result<Resolved, String>,
    /// Why the loader's cache could not be read, if it could not.
    pub ldcache_error: Option<String>,
    /// The persistence daemon's socket, when it runs.
    pub persistenced: Option<PathBuf>,
    /// `gpu.devices` globs expanded (existing paths).
    pub extra_devices: Vec<PathBuf>,
}

/// What the node has for its fabrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FabricFacts {
    /// Devices (only of fabrics the policy does not turn off).
    pub host: FabricHost,
    /// `fabric.liblist` resolved, when set and a device exists.
    pub files: Option<Result<Resolved, String>>,
}

/// Gathers the device facts. `nv`: the user asked for GPUs; `env`: the caller's environment
/// (which GPUs: see [`gpu::wanted`]); `node`: this node's Slurm name (short hostname);
/// `privileged`: a root launch, which only trusts root-owned lists.
pub fn gather(
    policy: &Policy,
    nv: bool,
    env: &[(String, String)],
    node: &str,
    privileged: bool,
) -> Devices {
    let g = &policy.gpu;
    let wants_gpu = match g.nvidia {
        GpuMode::Never => false,
        GpuMode::Always => true,
        GpuMode::OnRequest => nv,
    };
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
    // The loader's cache, read once when a list needs it.
    let fabric_list = !f.liblist.as_os_str().is_empty();
    let cache = (wants_gpu || (has_fabric && fabric_list))
        .then(|| LdCache::load(Path::new(LD_SO_CACHE)).map_err(|e| e.to_string()));
    let cache_ok = cache.as_ref().and_then(|c| c.as_ref().ok());
    if has_fabric && fabric_list {
        fabric.files =
            Some(load_list(&f.liblist, privileged).map(|l| driverfiles::resolve(&l, cache_ok)));
    }
    let nvidia = wants_gpu.then(|| {
        let host = NvidiaHost::discover(&g.device_dir, &g.driver_info);
        let wanted = gpu::wanted(env);
        let gres = matches!(wanted, Wanted::Slurm { .. })
            .then(|| GresConf::load(&g.gres_conf).map_err(|e| e.to_string()));
        let selection = gpu::select(&host, &wanted, gres.as_ref(), node);
        let (liblist, list) = if g.liblist == Path::new(DEFAULT_NVLIBLIST)
            && std::fs::symlink_metadata(&g.liblist).is_err()
        {
            (
                "built-in nvliblist.conf".to_string(),
                LibList::parse(BUILTIN_NVLIBLIST, Path::new("built-in nvliblist.conf"))
                    .map_err(|e| e.to_string()),
            )
        } else {
            (
                g.liblist.display().to_string(),
                load_list(&g.liblist, privileged),
            )
        };
        let files = list.map(|l| driverfiles::resolve(&l, cache_ok));
        let extra_devices = g
            .devices
            .iter()
            .flat_map(|pat| {
                glob::glob(pat)
                    .map(|paths| paths.flatten().take(1024).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        NvidiaFacts {
            host,
            selection,
            liblist,
            files,
            ldcache_error: cache.as_ref().and_then(|c| c.as_ref().err().cloned()),
            persistenced: Path::new(gpu::PERSISTENCED_SOCKET)
                .exists()
                .then(|| gpu::PERSISTENCED_SOCKET.into()),
            extra_devices,
        }
    });
    Devices { nvidia, fabric }
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
