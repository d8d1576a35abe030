//! Slurm SPANK plugin for Slipway.
//!
//! Not built out yet: see issue "Slurm: the SPANK plugin". This crate exists so the workspace
//! has its final shape; it exports no SPANK symbols, so slurmstepd cannot load it by mistake.
