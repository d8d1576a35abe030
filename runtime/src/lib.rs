//! Slipway's runtime: everything that decides and does.
//!
//! - [`sif`]: the Singularity Image Format (read, validate, print, write).
//! - [`image`]: opening an image of any supported format (SIF, squashfs, directory) and
//!   reading its Apptainer metadata.
//! - [`build`]: building SIF images from directories, Docker archives and OCI layouts.
//! - [`policy`]: the admin policy file.
#![warn(missing_docs)]

pub mod build;
pub mod image;
pub mod policy;
pub mod sif;
