//! The container entry: where the remote side hands a request to the Slipway runtime.
//!
//! Two calls, both made from [`crate`]'s remote context: [`prepare`] once per node and step
//! (slurmstepd's `user_init`, as root), and [`Prepared::enter_task`] in every task
//! (`task_init_privileged`, as root, before the task becomes the user). The runtime's
//! prepare/enter is wired in here and nowhere else; until then `prepare` refuses, and the
//! remote side fails the step with this module's message.

use crate::config::Config;
use crate::options::ContainerRequest;

/// The job step a request belongs to, as slurmstepd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    /// `SLURM_JOB_ID`.
    pub job_id: u32,
    /// The step id (batch and extern steps have Slurm's special values).
    pub step_id: u32,
    /// The job's user.
    pub uid: u32,
    /// The job's primary group.
    pub gid: u32,
}

/// Why the container could not be prepared or entered. Shown to the user on srun's stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// This build has no container entry yet.
    #[error("container entry not available in this build yet")]
    NotAvailable,
}

/// A container prepared on this node, ready for the step's tasks to enter.
#[derive(Debug)]
pub struct Prepared {
    _private: (),
}

/// Prepares the step's container on this node: the one call that will start the runtime.
pub fn prepare(
    request: &ContainerRequest,
    config: &Config,
    step: &StepInfo,
) -> Result<Prepared, EntryError> {
    let _ = (request, config, step);
    Err(EntryError::NotAvailable)
}

impl Prepared {
    /// Moves the calling task (local task id `task`) into the prepared container.
    pub fn enter_task(&self, task: u32) -> Result<(), EntryError> {
        let _ = task;
        Err(EntryError::NotAvailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_available_yet_says_so() {
        let step = StepInfo {
            job_id: 1,
            step_id: 0,
            uid: 1000,
            gid: 1000,
        };
        let err = prepare(&ContainerRequest::default(), &Config::default(), &step).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container entry not available in this build yet"
        );
    }
}
