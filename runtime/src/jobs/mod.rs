//! One container per job and node, shared by every task of the job on the node, for
//! schedulers whose tasks start as the user with no root code in between (PBS: MoM drops to
//! the user before it execs what the `execjob_launch` hook chose).
//!
//! The parts, in the order a job meets them:
//! - [`begin`] (root, once per node, PBS's `execjob_begin`): the job's directory
//!   `<STATE_ROOT>/<job>/` (root's) with `state.json` (image, user, how it is mounted) and the
//!   user's `user/` directory; the image's squashfs mounted by the kernel below it (read-only,
//!   nosuid, nodev) when the policy trusts the image, in the host's mount namespace. A refusal
//!   is written to `state.json` too, for each task to report in the job's output.
//! - [`keeper`] (the user): the first task of the job on the node forks a keeper that builds
//!   the container (user and mount namespace, unprivileged, onto the premounted image or
//!   through squashfuse) and stays; every task, the first included, joins it with `setns`
//!   (user namespace first: one owned by the same uid). The keeper is its own session, so a
//!   first task that exits early takes nothing with it; it leaves when the job's directory
//!   goes.
//! - [`end`] (root, PBS's `execjob_end`): kills the keeper, unmounts the image, removes the
//!   directory; idempotent, and it needs nothing but the directory (after a MoM restart too).
//! - [`shared`]: the same keeper for the hybrid model (`mpirun slipway exec`): no root part;
//!   the container lives while its ranks use it.

pub mod depart;
pub mod keeper;
pub mod shared;
mod state;

pub use state::{begin, end, job_dir, BeginRequest, JobDir, JobError, JobState, STATE_ROOT};
