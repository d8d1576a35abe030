//! The job's per-node container: created by the first task's keeper, joined by every task.
//!
//! [`join_or_start`] (as the job's user, single-threaded): under a lock in the user's job
//! directory, join the recorded keeper if it lives, else start one. A keeper is a grandchild
//! of the task (its own session, reparented away from the task) named `slipway-keeper`, that
//! builds the container with [`exec::prepare`] (user and mount namespace), records its pid,
//! and waits until the job's `state.json` is gone (`end`) or it is killed. Joining is
//! `setns` into its user namespace (owned by the same uid, so allowed), then its mount
//! namespace, whose root is the container's `/`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::state::{JobDir, JobError};
use crate::exec::{self, sys::Linux};
use crate::plan::Plan;

/// The keeper's process name (`/proc/PID/comm`), checked before it is joined or killed.
pub const KEEPER_NAME: &str = "slipway-keeper";

/// How long a task waits for a new keeper to build the container.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

fn sys_err(what: &'static str, path: &Path) -> JobError {
    JobError::Io {
        what,
        path: path.to_path_buf(),
        err: std::io::Error::last_os_error(),
    }
}

/// The pid the job's keeper recorded, if that process lives, is a keeper, and belongs to
/// `uid` (when given).
///
/// The pid file is in the user's directory and root reads it (`slipway pbs end`): it is opened
/// without following a symlink or blocking on a FIFO, must be a regular file, and at most 32
/// bytes are read.
pub fn recorded_keeper(user_dir: &Path, uid: Option<u32>) -> Option<libc::pid_t> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(user_dir.join("keeper.pid"))
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(32).read_to_string(&mut text).ok()?;
    let pid: libc::pid_t = text.trim().parse().ok()?;
    if pid <= 1 {
        return None;
    }
    let proc = Path::new("/proc").join(pid.to_string());
    let comm = std::fs::read_to_string(proc.join("comm")).ok()?;
    if comm.trim_end() != KEEPER_NAME {
        return None;
    }
    if let Some(uid) = uid {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&proc).ok()?.uid() != uid {
            return None;
        }
    }
    Some(pid)
}

/// How long a keeper holds its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Until the job's `state.json` is gone (PBS's `execjob_end`) or it is killed.
    UntilEnd,
    /// While processes use the container: it leaves after [`IDLE_CHECKS`] checks a second
    /// apart found none in its mount namespace but itself and its children (`slipway exec`
    /// ranks of one job sharing a node's container).
    WhileUsed,
}

/// Consecutive idle checks (a second apart) before a [`Lifetime::WhileUsed`] keeper leaves:
/// ranks that start a little after the first one ends still find its container.
pub const IDLE_CHECKS: u32 = 3;

/// Joins the job's container on this node, starting its keeper first if none lives. On
/// return the calling process is in the container (root and working directory its `/`).
pub fn join_or_start(
    dir: &JobDir,
    plan: &Plan,
    host_env: &[(String, String)],
) -> Result<(), JobError> {
    join_or_start_in(
        &dir.path,
        &dir.user_dir(),
        Lifetime::UntilEnd,
        plan,
        host_env,
    )
}

/// [`join_or_start`] with the lock and pid in `udir` (the user's), for a keeper that watches
/// `dir` (its `state.json`, for [`Lifetime::UntilEnd`]).
pub fn join_or_start_in(
    dir: &Path,
    udir: &Path,
    lifetime: Lifetime,
    plan: &Plan,
    host_env: &[(String, String)],
) -> Result<(), JobError> {
    let udir = udir.to_path_buf();
    let lock_path = udir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| JobError::Io {
            what: "open",
            path: lock_path.clone(),
            err: e,
        })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(sys_err("flock", &lock_path));
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let pid = match recorded_keeper(&udir, Some(uid)) {
        Some(pid) => pid,
        None => start(dir, &udir, lifetime, plan, host_env, lock.as_raw_fd())?,
    };
    let joined = join(pid);
    // Unlocked explicitly: a flock belongs to the open file, which a child could share.
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
    drop(lock);
    joined
}

/// `setns` into the keeper's user namespace, then its mount namespace.
fn join(pid: libc::pid_t) -> Result<(), JobError> {
    let ns = |kind: &str| {
        let p = format!("/proc/{pid}/ns/{kind}");
        std::fs::File::open(&p).map_err(|e| JobError::Io {
            what: "open",
            path: p.into(),
            err: e,
        })
    };
    let (user, mnt) = (ns("user")?, ns("mnt")?);
    for (f, flag, what) in [
        (&user, libc::CLONE_NEWUSER, "user namespace"),
        (&mnt, libc::CLONE_NEWNS, "mount namespace"),
    ] {
        // SAFETY: setns with an open namespace fd.
        if unsafe { libc::setns(f.as_raw_fd(), flag) } < 0 {
            let err = std::io::Error::last_os_error();
            return Err(JobError::Container(format!(
                "cannot join the job's container (keeper {pid}): setns {what}: {err}"
            )));
        }
    }
    Ok(())
}

/// Starts a keeper and waits until it has built the container (or failed: its error).
fn start(
    dir: &Path,
    udir: &Path,
    lifetime: Lifetime,
    plan: &Plan,
    host_env: &[(String, String)],
    lock: std::os::fd::RawFd,
) -> Result<libc::pid_t, JobError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(sys_err("pipe", dir));
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Fds of the job's directory (the keeper watches state.json through it after it has left
    // the host's file system) and of the user's (its pid file; its own lock, a separate open
    // file, for a keeper that decides to leave).
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|e| JobError::Io {
            what: "open",
            path: p.to_path_buf(),
            err: e,
        })
    };
    let dir_fd = open(dir)?;
    let udir_fd = open(udir)?;
    let own_lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(udir.join("lock"))
        .map_err(|e| JobError::Io {
            what: "open",
            path: udir.join("lock"),
            err: e,
        })?;
    // SAFETY: the launcher is single-threaded; the children only _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(sys_err("fork", dir));
    }
    if child == 0 {
        drop(rd);
        // SAFETY: as above; the intermediate child leaves at once, so the keeper is
        // nobody's child in the job and lives past the task that started it. The keeper
        // holds no copy of the lock (it would keep it locked for as long as it lives).
        let code = unsafe {
            libc::close(lock);
            libc::setsid();
            match libc::fork() {
                0 => keeper_main(plan, host_env, wr, dir_fd, udir_fd, own_lock, lifetime),
                p if p > 0 => 0,
                _ => 71,
            }
        };
        // SAFETY: leave without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(wr);
    drop((dir_fd, udir_fd, own_lock));
    let mut status = 0;
    // SAFETY: reaps the intermediate child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let mut answer = String::new();
    let mut f = std::fs::File::from(rd);
    let _ = (&mut f).take(64 * 1024).read_to_string(&mut answer);
    match answer.strip_prefix("ok ") {
        Some(pid) => pid
            .trim()
            .parse()
            .map_err(|_| JobError::Container(format!("keeper answered {answer:?}"))),
        None if answer.is_empty() => Err(JobError::Container(format!(
            "the job's container keeper died while building the container (stopped after \
                 {} s, or killed): check squashfuse_ll and the image, or run slipway exec on \
                 it to see the error",
            START_TIMEOUT.as_secs()
        ))),
        None => Err(JobError::Container(answer.trim_end().to_string())),
    }
}

/// The keeper: build the container, say so, hold it until the job ends. Returns the exit
/// code.
fn keeper_main(
    plan: &Plan,
    host_env: &[(String, String)],
    answer: OwnedFd,
    dir: std::fs::File,
    udir: std::fs::File,
    lock: std::fs::File,
    lifetime: Lifetime,
) -> i32 {
    let name = std::ffi::CString::new(KEEPER_NAME).expect("no NUL");
    // SAFETY: prctl with a valid string; dup2 onto the standard fds.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
        // A bound on building: a FUSE server that never answers ends the keeper.
        libc::alarm(START_TIMEOUT.as_secs() as u32);
    }
    let mut out = std::fs::File::from(answer);
    let prepared = match exec::prepare(plan, host_env, &Linux, Path::new(exec::STAGING)) {
        Ok(p) => p,
        Err(e) => {
            let _ = out.write_all(e.to_string().as_bytes());
            return 1;
        }
    };
    // SAFETY: alarm and getpid have no preconditions.
    let pid = unsafe {
        libc::alarm(0);
        libc::getpid()
    };
    // The pid file, written through the job directory's fd (the host's paths are gone).
    let write_pid = || -> std::io::Result<()> {
        let tmp = c"keeper.pid.tmp";
        // SAFETY: openat relative to an open directory fd, with a literal name.
        let fd = unsafe {
            libc::openat(
                udir.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(format!("{pid}\n").as_bytes())?;
        // SAFETY: renameat within the same directory fd.
        if unsafe {
            libc::renameat(
                udir.as_raw_fd(),
                tmp.as_ptr(),
                udir.as_raw_fd(),
                c"keeper.pid".as_ptr(),
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(e) = write_pid() {
        let _ = out.write_all(format!("keeper: cannot record its pid: {e}").as_bytes());
        return 1;
    }
    let _ = out.write_all(format!("ok {pid}\n").as_bytes());
    drop(out);
    // Hold the container: until the job's state is removed (end), or while it is used,
    // checking every second.
    let mut idle = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        match lifetime {
            Lifetime::UntilEnd => {
                // SAFETY: faccessat relative to an open directory fd.
                let gone = unsafe {
                    libc::faccessat(
                        dir.as_fd().as_raw_fd(),
                        c"state.json".as_ptr(),
                        libc::F_OK,
                        0,
                    )
                } < 0;
                if gone {
                    break;
                }
            }
            Lifetime::WhileUsed => {
                // Under the tasks' lock: a task that found this keeper joins before it looks.
                // SAFETY: flock on an fd we own.
                unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
                idle = if users(pid) == 0 { idle + 1 } else { 0 };
                if idle >= IDLE_CHECKS {
                    // SAFETY: unlinkat relative to an open directory fd.
                    unsafe { libc::unlinkat(udir.as_raw_fd(), c"keeper.pid".as_ptr(), 0) };
                    break;
                }
                // SAFETY: as above.
                unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
            }
        }
    }
    prepared.teardown();
    0
}

/// Processes in the keeper's (`pid`) mount namespace but the keeper and its children.
fn users(pid: libc::pid_t) -> usize {
    let Ok(own) = std::fs::read_link("/proc/self/ns/mnt") else {
        return 0;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|e| {
            let Some(p) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<libc::pid_t>().ok())
            else {
                return false;
            };
            if p == pid || std::fs::read_link(e.path().join("ns/mnt")).ok().as_ref() != Some(&own) {
                return false;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit(") ").next().unwrap_or("");
            let ppid: libc::pid_t = after
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            !after.starts_with('Z') && ppid != pid
        })
        .count()
}
