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
//! - [`slurmclient`]: the host's Slurm commands, loader, libraries and configuration, for a
//!   container's batch step.

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
pub mod slurmclient;

pub use identity::{group_name, lookup_user, GroupInfo, HostError, HostFacts, UserInfo};

/// Errors reading a host configuration file (`gres.conf`, a driver list).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}:{line}: {why}", path.display())]
    Syntax {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, and what to write.
        why: String,
    },
}

/// The most a host configuration file (`gres.conf`, a driver list) may hold.
pub const MAX_CONFIG: u64 = 1 << 20;

/// Reads a host configuration file named by the policy: never blocking (a FIFO in its place is
/// refused, not waited on), a regular file, at most [`MAX_CONFIG`] bytes of UTF-8.
pub fn read_config(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_config_refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("gres.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_config(&fifo).unwrap_err();
        assert!(err.to_string().contains("regular file"), "{err}");
    }

    #[test]
    fn read_config_stops_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("list");
        std::fs::write(&big, vec![b'a'; MAX_CONFIG as usize + 10]).unwrap();
        assert_eq!(read_config(&big).unwrap().len() as u64, MAX_CONFIG);
    }
}
