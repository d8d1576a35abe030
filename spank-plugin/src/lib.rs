//! Slurm SPANK plugin for Slipway: `srun --container-image=IMAGE ...` runs every task of a job
//! step inside a Slipway container.
//!
//! Load it from `plugstack.conf`:
//!
//! ```text
//! required /usr/lib/slipway/spank_slipway.so policy=/etc/slipway/policy.toml
//! ```
//!
//! Layout (one file per concern, as in pyxis):
//! - [`options`]: the user options in one table, with their `SLIPWAY_CONTAINER_*` variables;
//! - [`config`]: the plugin arguments from `plugstack.conf`;
//! - [`entry`]: the container entry, the one place where the runtime is called;
//! - [`keeper`]: the process that builds the container and keeps it for the step;
//! - [`early`]: starting the keeper at `init_post_opt`, before `user_init` needs it;
//! - [`jobmount`]: one mount of an image per job and node, kept across its steps;
//! - [`state`]: what a process remembers between callbacks;
//! - [`barrier`]: the panic barrier around every callback;
//! - `hooks` (the exported symbols and the panic barrier), `local` (srun, sbatch, salloc) and
//!   `remote` (slurmstepd), built only into the plugin: they call into the Slurm that loads it.
//!
//! Only `plugin_*` and `slurm_spank_*` symbols are exported. Slurm loads the plugin only if
//! `plugin_version` (read from the installed `<slurm/slurm_version.h>` at build time) matches
//! its own major.minor version.

#![warn(missing_docs)]

pub mod barrier;
pub mod config;
pub mod early;
pub mod entry;
pub mod jobmount;
pub mod keeper;
pub mod options;
pub mod state;

#[cfg(not(test))]
mod ffi;
#[cfg(not(test))]
pub mod hooks;
#[cfg(not(test))]
mod local;
#[cfg(not(test))]
mod remote;

/// Why a callback failed; the hooks log it as `slipway: <error>` and return -1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad plugin argument.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A bad option value, or `--container-nv`.
    #[error(transparent)]
    Option(#[from] options::OptionError),
    /// A SPANK call failed.
    #[error("{0}")]
    Spank(String),
    /// The step cannot run (reported from the tasks).
    #[error("{0}")]
    Step(String),
    /// A failure another callback of this process has already shown (not logged again).
    #[error("reported already")]
    Reported,
}
