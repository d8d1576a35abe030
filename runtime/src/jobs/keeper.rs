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
pub fn recorded_keeper(dir: &JobDir, uid: Option<u32>) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(dir.user_dir().join("keeper.pid")).ok()?;
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

/// Joins the job's container on this node, starting its keeper first if none lives. On
/// return the calling process is in the container (root and working directory its `/`).
pub fn join_or_start(
    dir: &JobDir,
    plan: &Plan,
    host_env: &[(String, String)],
) -> Result<(), JobError> {
    let udir = dir.user_dir();
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
    let pid = match recorded_keeper(dir, Some(uid)) {
        Some(pid) => pid,
        None => start(dir, plan, host_env, lock.as_raw_fd())?,
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
    dir: &JobDir,
    plan: &Plan,
    host_env: &[(String, String)],
    lock: std::os::fd::RawFd,
) -> Result<libc::pid_t, JobError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(sys_err("pipe", &dir.path));
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // An fd of the job's directory: the keeper watches state.json through it after it has
    // left the host's file system.
    let dir_fd = std::fs::File::open(&dir.path).map_err(|e| JobError::Io {
        what: "open",
        path: dir.path.clone(),
        err: e,
    })?;
    // SAFETY: the launcher is single-threaded; the children only _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(sys_err("fork", &dir.path));
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
                0 => keeper_main(plan, host_env, wr, dir_fd),
                p if p > 0 => 0,
                _ => 71,
            }
        };
        // SAFETY: leave without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(wr);
    drop(dir_fd);
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
        None if answer.is_empty() => Err(JobError::Container(
            "the job's container keeper died while building the container".into(),
        )),
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
        let tmp = c"user/keeper.pid.tmp";
        // SAFETY: openat relative to an open directory fd, with a literal name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
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
                dir.as_raw_fd(),
                tmp.as_ptr(),
                dir.as_raw_fd(),
                c"user/keeper.pid".as_ptr(),
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
    // Hold the container until the job's state is removed (end), checking every second.
    loop {
        std::thread::sleep(Duration::from_secs(1));
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
    prepared.teardown();
    0
}
