//! Slipway's runtime: everything that decides and does.
//!
//! - [`sif`]: the Singularity Image Format (read, validate, print, write).
//! - [`image`]: opening an image of any supported format (SIF, squashfs, directory) and
//!   reading its Apptainer metadata.
//! - [`build`]: building SIF images from directories, Docker archives and OCI layouts.
//! - [`policy`]: the admin policy file.
//! - [`host`]: facts about the host and the user (identity, groups, home, cwd, environment).
//! - [`plan`]: what a launch will do, as data (`slipway explain` prints it).
//! - [`exec`]: carrying a plan out: prepare the container's mount namespace, enter it.
//! - [`jobs`]: one container per job and node, shared by its tasks (PBS).
#![warn(missing_docs)]

pub mod build;
pub mod exec;
pub mod host;
pub mod image;
pub mod jobs;
pub mod plan;
pub mod policy;
pub mod sif;
