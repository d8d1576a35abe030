//! Facts about the host, gathered once before anything is changed, so the plan builder stays
//! a pure function of (request, policy, host facts):
//!
//! - [`identity`]: the user, groups, home, working directory and environment.
//! - [`ldcache`]: the dynamic loader's cache (`/etc/ld.so.cache`), parsed in Rust.
//! - [`liblist`]: driver file lists in Apptainer's `nvliblist.conf` format.
//! - [`gres`]: Slurm's `gres.conf` (which device files a node's GPUs are).
//! - [`gpu`]: which of a node's GPUs a launch gets (any vendor).
//! - [`nvidia`]: NVIDIA GPUs: device nodes and the driver's information.
//! - [`amd`]: AMD GPUs: `/dev/kfd`, render nodes and the KFD topology.
//! - [`fabric`]: InfiniBand and Omni-Path devices.
//! - [`driverfiles`]: a driver list resolved to the files bound where.
//! - [`devices`]: all of the above gathered for one launch.

pub mod amd;
pub mod devices;
pub mod driverfiles;
pub mod fabric;
pub mod gpu;
pub mod gres;
mod identity;
pub mod ldcache;
pub mod liblist;
pub mod nvidia;

pub use identity::{group_name, lookup_user, GroupInfo, HostError, HostFacts, UserInfo};
