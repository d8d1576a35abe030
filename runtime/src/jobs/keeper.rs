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
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use super::depart;
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

/// How many times a task starts again when the directory of a shared container went while it
/// waited for the lock ([`JobError::LockGone`]): each time, a keeper left just then; one
/// retry is the rule.
const RETRIES: u32 = 10;

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
        None,
        plan,
        host_env,
    )
    .map(|_| ())
}

/// [`join_or_start`] with the lock and pid in `udir` (the user's), for a keeper that watches
/// `dir` (its `state.json`, for [`Lifetime::UntilEnd`]). With `expected` (the ranks of the
/// job on this node, [`Lifetime::WhileUsed`]), the joins are counted and the last rank gets
/// the keeper's [`depart::Release`]: it tells the keeper to go before it execs.
pub fn join_or_start_in(
    dir: &Path,
    udir: &Path,
    lifetime: Lifetime,
    expected: Option<u32>,
    plan: &Plan,
    host_env: &[(String, String)],
) -> Result<Option<depart::Release>, JobError> {
    let udir = udir.to_path_buf();
    let mut tries = 0;
    let lock = loop {
        match take_lock(&udir) {
            // The keeper of a shared container left while this task waited, taking the
            // directory with it (`remove_job_dir`): make it again and start a new container.
            // Made 0700 by this user in the user's private runtime directory, which the
            // caller checked (`shared::job_dir`), so it is as trustworthy as the first one.
            Err(JobError::LockGone(_)) if lifetime == Lifetime::WhileUsed && tries < RETRIES => {
                tries += 1;
                match std::fs::DirBuilder::new().mode(0o700).create(&udir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(err) => {
                        return Err(JobError::Io {
                            what: "mkdir",
                            path: udir,
                            err,
                        })
                    }
                }
            }
            taken => break taken?,
        }
    };
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let expected = expected.filter(|_| may_leave_early(lifetime, plan));
    let pid = match recorded_keeper(&udir, Some(uid)) {
        Some(pid) => pid,
        None => {
            depart::reset(&udir);
            start(dir, &udir, lifetime, plan, host_env, lock.as_raw_fd())?
        }
    };
    // Counted (and the keeper's handle taken) while the lock keeps the keeper here.
    let release = match expected.map(|n| (n, depart::count_join(&udir))) {
        Some((n, Ok(c))) if c >= n => depart::Release::new(pid),
        _ => None,
    };
    let joined = join(pid);
    // Unlocked explicitly: a flock belongs to the open file, which a child could share.
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
    drop(lock);
    joined.map(|()| release)
}

/// Opens `udir/lock` (made if missing) and takes it (`flock`, exclusive, waiting).
///
/// A [`Lifetime::WhileUsed`] keeper that leaves removes the lock file and its directory
/// ([`remove_job_dir`]) while it holds the lock. A task that was waiting for that lock then
/// holds an unlinked file that excludes nobody: it checks that the file it locked is still
/// the one at `udir/lock` (same device and inode; the open fd keeps the inode from being
/// reused) and answers [`JobError::LockGone`] when not, as when the directory is already gone
/// at the open (`ENOENT`); the caller starts again from a fresh directory.
pub fn take_lock(udir: &Path) -> Result<std::fs::File, JobError> {
    let lock_path = udir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => JobError::LockGone(lock_path.clone()),
            _ => JobError::Io {
                what: "open",
                path: lock_path.clone(),
                err: e,
            },
        })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(sys_err("flock", &lock_path));
    }
    use std::os::unix::fs::MetadataExt;
    let held = lock.metadata().map_err(|e| JobError::Io {
        what: "fstat",
        path: lock_path.clone(),
        err: e,
    })?;
    match std::fs::symlink_metadata(&lock_path) {
        Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => Ok(lock),
        Ok(_) => Err(JobError::LockGone(lock_path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(JobError::LockGone(lock_path)),
        Err(e) => Err(JobError::Io {
            what: "stat",
            path: lock_path,
            err: e,
        }),
    }
}

/// What a leaving [`Lifetime::WhileUsed`] keeper removes, called with the lock held: its pid
/// file, the container's environment memos (`env-*.json`, [`crate::exec::shellenv::Memo`]:
/// they serve the processes of this container only, and none is left), the lock file, then
/// the job's directory (`name` in `parent`) if it is still `udir` and now empty. Best effort:
/// whatever cannot be removed stays, and the next rank uses it.
///
/// Why this never races a rank:
/// - a rank that found this keeper (its pid file) holds the lock until its `setns` is done,
///   so it has joined, and counts as a user, before the keeper can look (the idle checks);
/// - a rank waiting for the lock gets it once the keeper lets go, sees that it holds an
///   unlinked file ([`take_lock`]) and starts again: `mkdir` of a fresh directory, a new
///   lock, a new keeper;
/// - a rank between its `mkdir` and its `open` of the lock either finds the directory gone
///   (`ENOENT`: it starts again) or creates a new lock file in it first, and then `rmdir`
///   fails (`ENOTEMPTY`) and the directory stays for that rank;
/// - `rmdir` removes only an empty directory, so nothing another rank made is ever lost.
pub fn remove_job_dir(
    udir: std::os::fd::BorrowedFd<'_>,
    parent: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
) {
    // SAFETY: unlinkat and fstat/fstatat with open directory fds and NUL-terminated names;
    // the stat buffers are plain old data.
    let memos: Vec<std::ffi::CString> = nix::dir::Dir::openat(
        Some(udir.as_raw_fd()),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|mut d| {
        d.iter()
            .flatten()
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.to_bytes().starts_with(b"env-") && n.to_bytes().ends_with(b".json"))
            .collect()
    })
    .unwrap_or_default();
    unsafe {
        libc::unlinkat(udir.as_raw_fd(), c"keeper.pid".as_ptr(), 0);
        libc::unlinkat(udir.as_raw_fd(), c"joined".as_ptr(), 0);
        // Flags 0: never a directory.
        for m in &memos {
            libc::unlinkat(udir.as_raw_fd(), m.as_ptr(), 0);
        }
        libc::unlinkat(udir.as_raw_fd(), c"lock".as_ptr(), 0);
        let mut here: libc::stat = std::mem::zeroed();
        let mut named: libc::stat = std::mem::zeroed();
        if libc::fstat(udir.as_raw_fd(), &mut here) == 0
            && libc::fstatat(
                parent.as_raw_fd(),
                name.as_ptr(),
                &mut named,
                libc::AT_SYMLINK_NOFOLLOW,
            ) == 0
            && (here.st_dev, here.st_ino) == (named.st_dev, named.st_ino)
        {
            libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR);
        }
    }
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
    // A keeper that leaves when unused removes its directory: it needs the parent's fd and
    // the name (it cannot reach the host's paths from the container).
    let parent = match (lifetime, udir.parent(), udir.file_name()) {
        (Lifetime::WhileUsed, Some(p), Some(n)) => Some((
            open(p)?,
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(n)).map_err(|_| {
                JobError::Container(format!("{}: a NUL in the name", udir.display()))
            })?,
        )),
        _ => None,
    };
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
                0 => keeper_main(
                    plan,
                    host_env,
                    wr,
                    Dirs {
                        dir: dir_fd,
                        udir: udir_fd,
                        parent,
                    },
                    own_lock,
                    lifetime,
                ),
                p if p > 0 => 0,
                _ => 71,
            }
        };
        // SAFETY: leave without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(wr);
    drop((dir_fd, udir_fd, own_lock, parent));
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

/// The directories a keeper works in, open (it leaves the host's file system).
struct Dirs {
    /// The job's directory (`state.json`).
    dir: std::fs::File,
    /// The user's (pid file, lock).
    udir: std::fs::File,
    /// `udir`'s parent and its name there, for a [`Lifetime::WhileUsed`] keeper, which
    /// removes `udir` when it leaves.
    parent: Option<(std::fs::File, std::ffi::CString)>,
}

/// The keeper: build the container, say so, hold it until the job ends. Returns the exit
/// code.
fn keeper_main(
    plan: &Plan,
    host_env: &[(String, String)],
    answer: OwnedFd,
    dirs: Dirs,
    lock: std::fs::File,
    lifetime: Lifetime,
) -> i32 {
    let Dirs { dir, udir, parent } = dirs;
    // Told to go (SIGUSR1, [`depart`]) only once it holds the container; blocked from the
    // start, so that a quick rank that joined never kills it before it waits for the signal.
    let may_go = may_leave_early(lifetime, plan);
    if may_go {
        depart::block_go();
    }
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
    // checking every second; a WhileUsed keeper also until its last rank tells it to go
    // ([`depart`]).
    let mut idle = 0;
    // Its pid file (and, for a shared container, its directory) goes when it leaves; called
    // with the lock held.
    let forget = || match &parent {
        Some((p, name)) => remove_job_dir(udir.as_fd(), p.as_fd(), name),
        // SAFETY: unlinkat relative to an open directory fd.
        None => unsafe {
            libc::unlinkat(udir.as_raw_fd(), c"keeper.pid".as_ptr(), 0);
        },
    };
    loop {
        let go = if may_go {
            depart::tick(Duration::from_secs(1))
        } else {
            std::thread::sleep(Duration::from_secs(1));
            false
        };
        if go {
            // Every rank counted has joined: the container lives on in them. Leave without
            // tearing it down; the directory goes as when unused.
            // SAFETY: flock on an fd we own.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            forget();
            // SAFETY: as above.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
            std::mem::forget(prepared);
            return 0;
        }
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
                    forget();
                    // Let go before the teardown: the pid file is gone (and the lock file with
                    // it), so a rank that comes now starts a container of its own. Unlocked
                    // explicitly, as the tasks do (a child could share the open file).
                    // SAFETY: flock on an fd we own.
                    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
                    drop(lock);
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

/// Whether a keeper may leave once its counted ranks have joined ([`depart`]): a shared
/// container's, unless a squashfuse serves its image (it dies with the keeper: PDEATHSIG).
fn may_leave_early(lifetime: Lifetime, plan: &Plan) -> bool {
    lifetime == Lifetime::WhileUsed
        && !matches!(plan.image.mount, crate::plan::ImageMount::Squashfuse { .. })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn fds(dir: &Path) -> (std::fs::File, std::fs::File, std::ffi::CString) {
        let name = dir.file_name().unwrap().to_str().unwrap();
        (
            std::fs::File::open(dir).unwrap(),
            std::fs::File::open(dir.parent().unwrap()).unwrap(),
            std::ffi::CString::new(name).unwrap(),
        )
    }

    /// A task waiting for the lock of a directory its keeper removes learns that it holds a
    /// dead lock, and so does one that comes after; the directory is gone.
    #[test]
    fn a_removed_lock_is_never_taken_for_the_live_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("job-1-abc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keeper.pid"), "1\n").unwrap();
        std::fs::write(dir.join("env-0123abcd.json"), "{}").unwrap();
        let held = take_lock(&dir).unwrap();
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || take_lock(&dir).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the waiter waits for the lock");
        let (udir, parent, name) = fds(&dir);
        remove_job_dir(udir.as_fd(), parent.as_fd(), &name);
        drop(held);
        assert!(matches!(waiter.join().unwrap(), Err(JobError::LockGone(_))));
        assert!(!dir.exists(), "the directory went, with the memo");
        assert!(matches!(take_lock(&dir), Err(JobError::LockGone(_))));
    }

    /// Only an empty directory goes, and only the one the keeper has.
    #[test]
    fn only_the_keepers_own_empty_directory_goes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("job-2-abc");
        std::fs::create_dir(&dir).unwrap();
        drop(take_lock(&dir).unwrap());
        std::fs::write(dir.join("keeper.pid"), "1\n").unwrap();
        std::fs::write(dir.join("other"), "").unwrap();
        let (udir, parent, name) = fds(&dir);
        remove_job_dir(udir.as_fd(), parent.as_fd(), &name);
        assert!(dir.join("other").exists());
        assert!(!dir.join("lock").exists() && !dir.join("keeper.pid").exists());

        // The name now holds another directory (made after this one was renamed away): it stays.
        std::fs::remove_file(dir.join("other")).unwrap();
        std::fs::rename(&dir, t.path().join("old")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        remove_job_dir(udir.as_fd(), parent.as_fd(), &name);
        assert!(dir.exists(), "another directory at the name is left alone");
        assert!(t.path().join("old").exists());
    }
}
