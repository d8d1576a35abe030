//! The hybrid model (`mpirun slipway exec img ./app`, `srun slipway exec ...`): the ranks of
//! one parallel job on one node share one container, so shared memory and cross-memory attach
//! work between them (ranks in different user namespaces cannot `process_vm_readv` each
//! other) and the node pays one mount, not one per rank.
//!
//! The first rank starts a keeper ([`super::keeper`], [`Lifetime::WhileUsed`]) that builds the
//! container (unprivileged) and holds it while processes use it; every rank joins it with
//! `setns`. The key ([`key`]) is the job (the scheduler's or the MPI launcher's id) and the
//! container (image, mounts, identity), so two different containers of one job never merge.
//! Coordination is a lock in the user's own runtime directory (`$XDG_RUNTIME_DIR/slipway`, else
//! `/tmp/slipway-<uid>`, 0700 and checked to be the user's), which another user cannot enter.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::keeper::{self, Lifetime};
use super::state::JobError;
use crate::plan::Plan;

/// Variables that name the parallel job a rank belongs to, first found wins: PMIx's namespace
/// (one per `mpirun` or `srun --mpi=pmix` step), Slurm's job and step, PBS's job, Open MPI's.
pub const JOB_VARS: [&[&str]; 4] = [
    &["PMIX_NAMESPACE"],
    &["SLURM_JOB_ID", "SLURM_STEP_ID"],
    &["PBS_JOBID"],
    &["OMPI_MCA_orte_ess_jobid"],
];

/// The key of the container a rank with environment `env` shares: the job, then a digest of
/// what the container is. `None`: not a rank of a parallel job.
pub fn key(env: &[(String, String)], plan: &Plan) -> Option<String> {
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let job = JOB_VARS.iter().find_map(|vars| {
        let vals: Option<Vec<&str>> = vars.iter().map(|v| get(v)).collect();
        vals.map(|v| v.join("."))
    })?;
    let job: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let what =
        serde_json::to_string(&(&plan.image, &plan.mounts, plan.identity.uid)).unwrap_or_default();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(what.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("{job}-{digest}"))
}

/// The user's runtime directory for shared containers, made if missing and checked: a real
/// directory of the user's that no one else can write.
pub fn runtime_dir(uid: u32, env: &[(String, String)]) -> Result<PathBuf, JobError> {
    let xdg = env
        .iter()
        .rev()
        .find(|(k, _)| k == "XDG_RUNTIME_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .filter(|p| {
            p.is_absolute()
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid)
        });
    let dir = match xdg {
        Some(x) => x.join("slipway"),
        None => PathBuf::from(format!("/tmp/slipway-{uid}")),
    };
    mine(&dir, uid)?;
    Ok(dir)
}

/// Makes `dir` (0700) if missing; `Err` unless it is a directory of `uid` that only it can use.
fn mine(dir: &Path, uid: u32) -> Result<(), JobError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(JobError::Io {
                what: "mkdir",
                path: dir.to_path_buf(),
                err,
            })
        }
    }
    let m = std::fs::symlink_metadata(dir).map_err(|err| JobError::Io {
        what: "stat",
        path: dir.to_path_buf(),
        err,
    })?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(JobError::Untrusted {
            path: dir.to_path_buf(),
            why: format!(
                "not a private directory of uid {uid} (owner {}, mode {:04o}): remove it",
                m.uid(),
                m.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// Joins (or creates) the node's container of this rank's job, whose directory `dir` is
/// [`job_dir`]'s for the key from [`key`]. On return the caller is in the container. The last
/// rank the launcher announced for this node gets the keeper's [`super::depart::Release`]: it
/// calls `go` just before it execs.
pub fn enter(
    dir: &Path,
    plan: &Plan,
    host_env: &[(String, String)],
) -> Result<Option<super::depart::Release>, JobError> {
    keeper::join_or_start_in(
        dir,
        dir,
        Lifetime::WhileUsed,
        super::depart::expected_local(host_env),
        plan,
        host_env,
    )
}

/// The private directory of the job's container on this node (made if missing, checked):
/// its lock, its keeper's pid, and what its processes share (the environment memo,
/// [`crate::exec::shellenv::Memo`]).
pub fn job_dir(key: &str, plan: &Plan, host_env: &[(String, String)]) -> Result<PathBuf, JobError> {
    let uid = plan.identity.uid;
    let dir = runtime_dir(uid, host_env)?.join(key);
    mine(&dir, uid)?;
    Ok(dir)
}
