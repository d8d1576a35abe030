//! Starting a step's container before `user_init`.
//!
//! slurmstepd calls `slurm_spank_init_post_opt` (the options known) well before
//! `slurm_spank_user_init`: in between it sets up the step's cgroups, MPI (Slurm's PMIx
//! server) and the node's topology, and connects the tasks' I/O to srun: 5-10 ms on the test
//! rig, longer with PMIx. The plugin forks the keeper at `init_post_opt`, so the container is
//! built beside that work, and `user_init` only collects it.
//!
//! What the container is built from must be what `user_init` would have used: the request,
//! the user and groups, the environment and the working directory. Two of these are only
//! predicted at `init_post_opt`: the working directory (slurmstepd changes into it just before
//! `user_init`; predicted from `PWD`, which srun passes from the user's shell) and the
//! environment (another plugin may still change it; slurmstepd adds PMIx's variables and takes
//! the batch step's `SLURM_UMASK` out, which the tasks get from the host anyway). `user_init`
//! compares everything with what it sees; on any other difference the early container is
//! killed and built again there, as without the early start ([`Early::mismatch`]).
//!
//! The plan is built at `init_post_opt`, where slurmstepd is still root, on a thread of its own
//! that has taken the job user's identity first, as slurmstepd has at `user_init`: root never
//! opens an image or a bind source the user names.

use std::path::{Component, Path, PathBuf};

use crate::entry::{Pending, StepInfo, EXTERN_STEP};
use crate::options::ContainerRequest;

/// Whether slurmstepd itself changes variable `name` in the job's environment between
/// `init_post_opt` and `user_init`: the MPI set-up (`mpi/pmix`) adds PMIx's (`PMIX_MCA_gds`),
/// the batch step takes `SLURM_UMASK` out (and applies it). A task gets the host's value of
/// each of them whatever the container's environment holds ([`crate::entry::host_owned`]), so
/// they do not make the early container a different one.
fn set_by_slurm(name: &str) -> bool {
    name.starts_with("PMIX_") || name == "SLURM_UMASK"
}

/// A container started at `init_post_opt`, with what it was started from.
#[derive(Debug)]
pub struct Early {
    /// The keeper at work.
    pub pending: Pending,
    basis: Basis,
    /// Slurm's PMIx server directory of the step when the keeper started (bound in the
    /// container when it exists; slurmstepd makes it after `init_post_opt`).
    pmix: Option<PathBuf>,
}

impl Early {
    /// `pending`, started for `request` and `step`.
    pub fn new(pending: Pending, request: ContainerRequest, step: StepInfo) -> Early {
        let pmix = step.pmix_server_dir();
        Early {
            pending,
            basis: Basis { request, step },
            pmix,
        }
    }

    /// Why the early container is not the one `user_init` would build for `request` and
    /// `step` (`None`: it is).
    pub fn mismatch(&self, request: &ContainerRequest, step: &StepInfo) -> Option<String> {
        if step.pmix_server_dir() != self.pmix {
            return Some("Slurm's PMIx server directory was made since".into());
        }
        self.basis.mismatch(request, step)
    }
}

/// Whether the step will use Slurm's PMIx plugin, whose server directory is bound into the
/// container but made only after `init_post_opt`: the job's `SLURM_MPI_TYPE` (where srun puts
/// its `--mpi`), else the configuration's `MpiDefault`. Such a step does not start early (its
/// container would only be built again: [`Early::mismatch`] compares the directory too).
pub fn pmix_expected(env: &[(String, String)], mpi_default: Option<&str>) -> bool {
    let asked = env
        .iter()
        .rev()
        .find(|(k, _)| k == "SLURM_MPI_TYPE")
        .map(|(_, v)| v.as_str());
    asked.or(mpi_default).is_some_and(|t| t.starts_with("pmix"))
}

/// What an early container was built from.
#[derive(Debug)]
struct Basis {
    request: ContainerRequest,
    step: StepInfo,
}

impl Basis {
    fn mismatch(&self, request: &ContainerRequest, step: &StepInfo) -> Option<String> {
        if request != &self.request {
            return Some("the request changed".into());
        }
        if step.cwd != self.step.cwd {
            return Some(format!(
                "working directory {} (predicted {})",
                step.cwd.display(),
                self.step.cwd.display()
            ));
        }
        let changed: Vec<String> = env_changed(&self.step.env, &step.env)
            .into_iter()
            .filter(|k| !set_by_slurm(k))
            .collect();
        if !changed.is_empty() {
            let mut names = changed
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if changed.len() > 5 {
                names.push_str(", ...");
            }
            return Some(format!("environment changed: {names}"));
        }
        let same = StepInfo {
            env: Vec::new(),
            ..step.clone()
        } == StepInfo {
            env: Vec::new(),
            ..self.step.clone()
        };
        (!same).then(|| "the step's identity or configuration changed".into())
    }
}

/// Whether step `step_id` may start its container early: every step that can run in one
/// (not the extern step).
pub fn may_start(step_id: u32) -> bool {
    step_id != EXTERN_STEP
}

/// The working directory a step will have, predicted from its environment's `PWD` (the
/// user's shell's, passed by srun): an absolute path without `.` or `..`.
pub fn predicted_cwd(env: &[(String, String)]) -> Option<PathBuf> {
    let pwd = env.iter().rev().find(|(k, _)| k == "PWD")?;
    let p = Path::new(&pwd.1);
    let plain = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    plain.then(|| p.to_path_buf())
}

/// The names whose values differ between `a` and `b` (the last value of a name counts).
pub fn env_changed(a: &[(String, String)], b: &[(String, String)]) -> Vec<String> {
    use std::collections::BTreeMap;
    let map = |e: &[(String, String)]| -> BTreeMap<String, String> { e.iter().cloned().collect() };
    let (a, b) = (map(a), map(b));
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out.sort();
    out
}

/// Runs `f` on a thread of its own whose effective uid, gid and groups are the job user's
/// (`uid`, `gid`, `groups`), as slurmstepd's are at `user_init`. The change is made with raw
/// system calls, which change only the calling thread (glibc's wrappers would change every
/// thread of slurmstepd), and ends with the thread.
pub fn as_job_user<T: Send>(
    uid: u32,
    gid: u32,
    groups: &[u32],
    f: impl FnOnce() -> T + Send,
) -> Result<T, String> {
    let mut gids = vec![gid];
    gids.extend(groups.iter().filter(|g| **g != gid));
    std::thread::scope(|s| {
        s.spawn(|| {
            let keep = libc::gid_t::MAX;
            // SAFETY: credential system calls on this thread only, with valid arguments.
            let ok = unsafe {
                libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) == 0
                    && libc::syscall(libc::SYS_setresgid, keep, gid, keep) == 0
                    && libc::syscall(libc::SYS_setresuid, u32::MAX, uid, u32::MAX) == 0
            };
            if !ok {
                return Err(format!(
                    "cannot take uid {uid} gid {gid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "the planning thread panicked".to_string())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_working_directory_is_predicted_from_a_plain_pwd() {
        assert_eq!(
            predicted_cwd(&e(&[("PWD", "/old"), ("PWD", "/home/u/run")])),
            Some(PathBuf::from("/home/u/run"))
        );
        assert_eq!(predicted_cwd(&e(&[("PWD", "run")])), None);
        assert_eq!(predicted_cwd(&e(&[("PWD", "/home/u/../x")])), None);
        assert_eq!(predicted_cwd(&e(&[("HOME", "/home/u")])), None);
    }

    #[test]
    fn changed_names_are_found_both_ways() {
        let a = e(&[("A", "1"), ("B", "2"), ("C", "3")]);
        let b = e(&[("A", "1"), ("B", "two"), ("D", "4")]);
        assert_eq!(env_changed(&a, &b), vec!["B", "C", "D"]);
        assert!(env_changed(&a, &a).is_empty());
    }

    #[test]
    fn what_slurmstepd_changes_does_not_count_but_the_rest_does() {
        let step = StepInfo {
            cwd: "/home/u".into(),
            env: e(&[("PWD", "/home/u"), ("A", "1")]),
            ..Default::default()
        };
        let early = Basis {
            request: ContainerRequest::default(),
            step: step.clone(),
        };
        let mut later = step.clone();
        later.env.push(("PMIX_MCA_gds".into(), "hash".into()));
        assert_eq!(early.mismatch(&ContainerRequest::default(), &later), None);
        let mut umask = early.step.clone();
        umask.env.push(("SLURM_UMASK".into(), "0022".into()));
        let batch = Basis {
            request: ContainerRequest::default(),
            step: umask,
        };
        assert_eq!(batch.mismatch(&ContainerRequest::default(), &step), None);
        later.env.push(("OMP_NUM_THREADS".into(), "4".into()));
        assert_eq!(
            early
                .mismatch(&ContainerRequest::default(), &later)
                .as_deref(),
            Some("environment changed: OMP_NUM_THREADS")
        );
        let moved = StepInfo {
            cwd: "/scratch".into(),
            ..step.clone()
        };
        assert_eq!(
            early
                .mismatch(&ContainerRequest::default(), &moved)
                .as_deref(),
            Some("working directory /scratch (predicted /home/u)")
        );
        let other_user = StepInfo {
            uid: 7,
            ..step.clone()
        };
        assert!(early
            .mismatch(&ContainerRequest::default(), &other_user)
            .is_some());
        let asked = ContainerRequest {
            writable: true,
            ..Default::default()
        };
        assert_eq!(
            early.mismatch(&asked, &step).as_deref(),
            Some("the request changed")
        );
    }

    #[test]
    fn pmix_is_expected_from_the_environment_else_the_configuration() {
        assert!(pmix_expected(&e(&[("SLURM_MPI_TYPE", "pmix_v4")]), None));
        assert!(pmix_expected(&[], Some("pmix")));
        assert!(!pmix_expected(
            &e(&[("SLURM_MPI_TYPE", "none")]),
            Some("pmix")
        ));
        assert!(!pmix_expected(&[], Some("none")));
        assert!(!pmix_expected(&[], None));
    }

    #[test]
    fn every_step_but_the_extern_one_starts_early() {
        assert!(may_start(0));
        assert!(may_start(41));
        assert!(may_start(crate::entry::BATCH_STEP));
        assert!(may_start(crate::entry::INTERACTIVE_STEP));
        assert!(!may_start(EXTERN_STEP));
    }

    #[test]
    fn the_user_thread_has_the_users_identity_and_the_caller_keeps_its_own() {
        // SAFETY: plain id queries.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid != 0 {
            eprintln!("SKIP: needs root (changes a thread's credentials)");
            return;
        }
        let got = as_job_user(4321, 4322, &[4323, 4322], || {
            let mut groups = vec![0 as libc::gid_t; 8];
            // SAFETY: buffer of 8 gids; plain id queries.
            let n = unsafe { libc::getgroups(8, groups.as_mut_ptr()) };
            groups.truncate(n.max(0) as usize);
            // SAFETY: plain id queries.
            unsafe { (libc::geteuid(), libc::getegid(), libc::getuid(), groups) }
        })
        .unwrap();
        assert_eq!(got, (4321, 4322, 0, vec![4322, 4323]));
        // SAFETY: plain id queries.
        assert_eq!(unsafe { (libc::geteuid(), libc::getegid()) }, (uid, gid));
    }
}
