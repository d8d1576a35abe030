//! What one process (srun, sbatch, salloc or one step's slurmstepd) remembers between SPANK
//! callbacks. Callbacks run one at a time, but a panic caught by the barrier could leave the
//! lock poisoned: [`state`] takes the guard back instead of failing every later callback.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use slipway_runtime::policy::LoadedPolicy;

use crate::config::Config;
use crate::early::Early;
use crate::entry::Prepared;
use crate::options::ContainerRequest;

/// The plugin's memory for this process.
#[derive(Debug)]
pub struct State {
    /// The plugin arguments (set by `slurm_spank_init`).
    pub config: Option<Config>,
    /// The policy, loaded as root by `slurm_spank_init` in slurmstepd (remote only), or why
    /// it could not be (reported only to steps that ask for a container).
    pub policy: Option<Result<LoadedPolicy, String>>,
    /// slurmd's spool directory (remote only, from `slurm_spank_init`).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Raw option values from option callbacks, by option name ("1" for a flag).
    pub cli: BTreeMap<&'static str, String>,
    /// The request built from `cli` and the environment.
    pub request: Option<ContainerRequest>,
    /// The container started at `init_post_opt`, for `user_init` to collect (remote only).
    pub early: Option<Early>,
    /// The container this node prepared for the step (remote only).
    pub prepared: Option<Prepared>,
    /// An error found in `user_init`, where Slurm would not show it to the user (SchedMD bug
    /// 7573): reported from the tasks instead.
    pub pending_error: Option<String>,
}

impl State {
    const fn new() -> State {
        State {
            config: None,
            policy: None,
            spool_dir: None,
            cli: BTreeMap::new(),
            request: None,
            early: None,
            prepared: None,
            pending_error: None,
        }
    }
}

static STATE: Mutex<State> = Mutex::new(State::new());

/// The process's state, whether or not an earlier callback panicked while holding it.
pub fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forgets everything (`slurm_spank_exit`).
pub fn reset() {
    *state() = State::new();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_the_lock_does_not_poison_later_callbacks() {
        reset();
        let r = std::panic::catch_unwind(|| {
            let mut s = state();
            s.cli.insert("container-image", "x".into());
            panic!("callback bug");
        });
        assert!(r.is_err());
        assert_eq!(
            state().cli.get("container-image").map(String::as_str),
            Some("x")
        );
        reset();
        assert!(state().cli.is_empty());
    }
}
