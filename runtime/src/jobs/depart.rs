//! A shared container's keeper that leaves as soon as every rank it waits for has joined,
//! for launchers that tell each rank how many of them run on its node (`srun`: Slurm's
//! `SLURM_STEP_TASKS_PER_NODE` and `SLURM_NODEID`; `mpirun`: `OMPI_COMM_WORLD_LOCAL_SIZE`).
//!
//! Why: under Slurm the keeper lives in the step's cgroup, and a step ends only when every
//! process in it has: a keeper still there when the tasks exit is killed by slurmstepd, which
//! then waits a whole second (proctrack's first `sleep(1)`) before it looks again. So the last
//! rank to join counts the joins (`joined`, in the job's directory, under the ranks' lock),
//! tells the keeper to go ([`Release::go`], SIGUSR1 through a pidfd) once its environment is
//! ready, and waits (at most [`GO_WAIT`]) until the keeper has gone before it execs its
//! command: when the last task ends, the keeper is already gone. The container itself lives
//! on in its ranks (namespaces last while a process is in them); a rank that comes later than
//! counted starts a container of its own. The keeper leaves without tearing the container
//! down (its ranks still use it).

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// The most the last rank waits for the keeper to go.
pub const GO_WAIT: Duration = Duration::from_secs(1);

/// How many ranks of this job run on this node, when the launcher says. Open MPI's daemon
/// first: its ranks also inherit the Slurm variables of the daemon's own step (one task per
/// node), which count the daemons, not the ranks.
pub fn expected_local(env: &[(String, String)]) -> Option<u32> {
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(n) = get("OMPI_COMM_WORLD_LOCAL_SIZE") {
        return n.parse().ok().filter(|n| *n > 0);
    }
    let list = get("SLURM_STEP_TASKS_PER_NODE").or_else(|| get("SLURM_TASKS_PER_NODE"))?;
    tasks_on_node(list, get("SLURM_NODEID")?.parse().ok()?)
}

/// Slurm's compressed task counts (`2(x3),1`: 2 on each of the first three nodes, 1 on the
/// fourth) at node index `node`.
pub fn tasks_on_node(list: &str, node: usize) -> Option<u32> {
    let mut at = 0usize;
    for part in list.split(',') {
        let (n, times) = match part.split_once("(x") {
            Some((n, rest)) => (n, rest.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (part, 1),
        };
        let n: u32 = n.trim().parse().ok()?;
        if node < at + times {
            return (n > 0).then_some(n);
        }
        at += times;
    }
    None
}

/// Resets the join count (a new keeper, under the lock).
pub fn reset(udir: &Path) {
    let _ = std::fs::remove_file(udir.join("joined"));
}

/// Counts one more join (under the lock); returns the count.
pub fn count_join(udir: &Path) -> std::io::Result<u32> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(udir.join("joined"))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let n = text.trim().parse::<u32>().unwrap_or(0) + 1;
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(format!("{n}\n").as_bytes())?;
    Ok(n)
}

/// The keeper, to be told to go by the last rank.
#[derive(Debug)]
pub struct Release {
    pidfd: OwnedFd,
}

impl Release {
    /// A handle on keeper `pid` (opened while it is known to live: under the lock).
    pub fn new(pid: libc::pid_t) -> Option<Release> {
        // SAFETY: pidfd_open with a pid and no flags; the fd is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        (fd >= 0).then(|| Release {
            // SAFETY: a fresh fd.
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Tells the keeper to go, and waits until it has (at most [`GO_WAIT`]).
    pub fn go(self) {
        // SAFETY: pidfd_send_signal and poll on our pidfd.
        unsafe {
            if libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGUSR1,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) < 0
            {
                return;
            }
            let mut p = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut p, 1, GO_WAIT.as_millis() as i32);
        }
    }
}

/// The keeper's side: SIGUSR1 blocked, to be taken by [`tick`].
pub fn block_go() {
    // SAFETY: a sigset on the stack, our own mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `d`; `true` when told to go (SIGUSR1) meanwhile.
pub fn tick(d: Duration) -> bool {
    // SAFETY: as above; sigtimedwait with a timespec on the stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        let ts = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) == libc::SIGUSR1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_task_counts_per_node() {
        assert_eq!(tasks_on_node("2(x3),1", 0), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 2), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 3), Some(1));
        assert_eq!(tasks_on_node("2(x3),1", 4), None);
        assert_eq!(tasks_on_node("4", 0), Some(4));
        assert_eq!(tasks_on_node("x", 0), None);
        let env = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            expected_local(&env(&[
                ("SLURM_STEP_TASKS_PER_NODE", "3,1"),
                ("SLURM_NODEID", "1")
            ])),
            Some(1)
        );
        assert_eq!(
            expected_local(&env(&[("OMPI_COMM_WORLD_LOCAL_SIZE", "8")])),
            Some(8)
        );
        assert_eq!(expected_local(&env(&[("PMIX_NAMESPACE", "x")])), None);
        // mpirun's ranks under Slurm: orted's step has one task per node.
        assert_eq!(
            expected_local(&env(&[
                ("SLURM_STEP_TASKS_PER_NODE", "1(x2)"),
                ("SLURM_NODEID", "0"),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "4")
            ])),
            Some(4)
        );
    }

    #[test]
    fn joins_are_counted() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(count_join(d.path()).unwrap(), 1);
        assert_eq!(count_join(d.path()).unwrap(), 2);
        reset(d.path());
        assert_eq!(count_join(d.path()).unwrap(), 1);
    }
}
