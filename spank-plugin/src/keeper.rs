//! The keeper: a process forked from slurmstepd that builds the step's container and keeps it
//! for the step's life.
//!
//! Why a process: the runtime's `prepare` must run single-threaded (user namespaces require
//! it, and its temporary group change affects every thread) while slurmstepd has many
//! threads; and squashfuse is killed (`PR_SET_PDEATHSIG`) when the thread that started it
//! exits. The keeper is that thread, and waits.
//!
//! Protocol over a socketpair: the keeper sends one message, an 8-byte length and a payload,
//! the mount namespace fd attached (`SCM_RIGHTS`) on success. Payload: `O` then `T<setup
//! us>,<container us>`, `E<K>=<V>`, `W<warning>` (for the user) and `N<note>` (for the node's
//! log) entries, each NUL-terminated; or `F<error>`. Then it reads until end of file:
//! slurmstepd closes its end in `slurm_spank_exit` (or dies), the keeper tears down (squashfuse
//! ends; mounts and loop devices go with the namespace) and exits; the plugin reaps it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use slipway_runtime::exec::{self, sys::Linux};
use slipway_runtime::plan::Plan;

use crate::entry::EntryError;

/// The parent's handle on a running keeper: dropping it ends the keeper and reaps it.
#[derive(Debug)]
pub struct Keeper {
    pid: libc::pid_t,
    sock: Option<UnixStream>,
}

/// Where a keeper's start spent its time, in microseconds (logged by the plugin as
/// `slipway-timing:` markers; bench/scale.sh reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// The `fork` of slurmstepd, as the parent sees it.
    pub fork_us: u64,
    /// The keeper's own start: fds, signals, credentials.
    pub setup_us: u64,
    /// The container's construction (`exec::prepare`: namespace, image, mounts, files).
    pub container_us: u64,
}

/// A keeper's answer: the container is ready.
#[derive(Debug)]
pub struct Ready {
    /// The container's mount namespace.
    pub mnt_ns: OwnedFd,
    /// The container's environment.
    pub env: BTreeMap<String, String>,
    /// The image's environment lines not applied.
    pub warnings: Vec<String>,
    /// What the keeper has to say for the node's log (not the user's).
    pub notes: Vec<String>,
    /// Where the start spent its time.
    pub phases: Phases,
}

fn keeper_err(what: &str, e: std::io::Error) -> EntryError {
    EntryError::Keeper(format!("{what}: {e}"))
}

impl Keeper {
    /// Forks the keeper, which prepares `plan`, and returns at once (with how long the fork
    /// took, in microseconds): [`Keeper::answer`] waits for the container. The keeper bounds
    /// its work by `timeout` (with `alarm`), counted from now.
    pub fn spawn(
        plan: &Plan,
        host_env: &[(String, String)],
        images: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<(Keeper, u64), EntryError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| keeper_err("socketpair", e))?;
        let t = Instant::now();
        // SAFETY: the child runs only async-signal-safe work until it is alone in its process
        // (glibc's fork makes malloc usable in the child), and always leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(keeper_err("fork", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(ours);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(plan, host_env, images, theirs, timeout)
            }))
            .unwrap_or(70);
            // SAFETY: leave the forked process without running slurmstepd's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let fork_us = micros(t.elapsed());
        drop(theirs);
        let keeper = Keeper {
            pid,
            sock: Some(ours),
        };
        Ok((keeper, fork_us))
    }

    /// Waits for the answer of a keeper [`spawn`](Keeper::spawn)ed with `timeout`: the
    /// namespace, the environment, the warnings and the keeper's own timings (`fork_us` is
    /// the spawn's). A keeper that failed or is late is killed and reaped.
    pub fn answer(&mut self, timeout: Duration, fork_us: u64) -> Result<Ready, EntryError> {
        // A little longer than the keeper's own alarm: normally the alarm ends it first
        // (and its end is the answer); this bound holds even if it could not.
        let wait = timeout + Duration::from_secs(5);
        self.receive(wait, fork_us).map_err(|e| {
            let status = self.kill_and_reap();
            let by_alarm = status
                .is_some_and(|st| libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGALRM);
            if by_alarm || matches!(e, EntryError::Timeout(_)) {
                EntryError::Timeout(timeout.as_secs())
            } else {
                e
            }
        })
    }

    /// Gives up on a keeper whose container is no longer wanted: killed and reaped (what it
    /// built goes with its namespace).
    pub fn cancel(mut self) {
        self.kill_and_reap();
    }

    fn receive(&mut self, wait: Duration, fork_us: u64) -> Result<Ready, EntryError> {
        let sock = self.sock.as_mut().expect("open until stop");
        if !readable_within(sock, wait)? {
            // Whatever the keeper waits on (a FUSE server the user stopped, say), it ends now.
            abort_fuse_of(self.pid);
            return Err(EntryError::Timeout(wait.as_secs()));
        }
        let (len, fd) = recv_header(sock)?;
        let mut payload = vec![0u8; len];
        sock.read_exact(&mut payload)
            .map_err(|e| keeper_err("read", e))?;
        match payload.first() {
            Some(b'O') => {
                let fd = fd.ok_or_else(|| EntryError::Keeper("no namespace fd".into()))?;
                let mut ready = Ready {
                    mnt_ns: fd,
                    env: BTreeMap::new(),
                    warnings: Vec::new(),
                    notes: Vec::new(),
                    phases: Phases {
                        fork_us,
                        ..Phases::default()
                    },
                };
                for entry in payload[1..].split(|b| *b == 0).filter(|e| !e.is_empty()) {
                    let text = String::from_utf8_lossy(&entry[1..]).into_owned();
                    match entry[0] {
                        b'E' => {
                            if let Some((k, v)) = text.split_once('=') {
                                ready.env.insert(k.to_string(), v.to_string());
                            }
                        }
                        b'N' => ready.notes.push(text),
                        b'T' => {
                            let mut n = text.split(',').map(|x| x.parse().unwrap_or(0));
                            ready.phases.setup_us = n.next().unwrap_or(0);
                            ready.phases.container_us = n.next().unwrap_or(0);
                        }
                        _ => ready.warnings.push(text),
                    }
                }
                Ok(ready)
            }
            Some(b'F') => Err(EntryError::Prepare(
                String::from_utf8_lossy(&payload[1..]).into_owned(),
            )),
            _ => Err(EntryError::Keeper("malformed answer".into())),
        }
    }

    /// Kills the keeper (a failed or timed-out start) and reaps it: its exit status.
    fn kill_and_reap(&mut self) -> Option<libc::c_int> {
        drop(self.sock.take());
        if self.pid <= 0 {
            return None;
        }
        // SAFETY: signalling our own child, not yet reaped (pid > 0).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut status = 0;
        let r = loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break r;
            }
        };
        self.pid = 0;
        (r > 0).then_some(status)
    }

    /// Ends the keeper (closing the socket is its signal) and reaps it.
    fn stop(&mut self) {
        let t = Instant::now();
        drop(self.sock.take());
        if self.pid > 0 {
            let mut status = 0;
            loop {
                // SAFETY: waiting for our own child. ECHILD (slurmstepd's own reaping loop
                // took it) ends the wait too.
                let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
                if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
            self.pid = 0;
            // The container's teardown as slurmstepd waits for it (bench/scale.sh reads it).
            #[cfg(not(test))]
            crate::ffi::log_verbose(&format!(
                "slipway-timing: teardown {} us",
                t.elapsed().as_micros()
            ));
            #[cfg(test)]
            let _ = t;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A duration in whole microseconds.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whether `sock` has something to read (or is closed) within `wait`.
fn readable_within(sock: &UnixStream, wait: Duration) -> Result<bool, EntryError> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(keeper_err("poll", e));
        }
    }
}

/// Aborts every FUSE connection mounted in the mount namespace of process `pid` (through
/// `/sys/fs/fuse/connections/N/abort`, N the mount's device minor): a process blocked on a
/// FUSE server that does not answer (stopped by its owner) is released at once.
fn abort_fuse_of(pid: libc::pid_t) {
    // slurmstepd runs user_init with the user's effective uid, and the abort files are
    // root's: look with root's file-system identity for these calls (setfsuid is per thread,
    // and allowed since the real uid is 0), then back.
    // SAFETY: plain credential calls.
    let before = unsafe { libc::setfsuid(0) } as libc::uid_t;
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
        for minor in fuse_minors(&text) {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }
    // SAFETY: as above.
    unsafe { libc::setfsuid(before) };
}

/// The device minors of the FUSE mounts in a `mountinfo` text.
fn fuse_minors(mountinfo: &str) -> Vec<u32> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let fstype = tail.split(' ').next()?;
            if fstype != "fuse" && !fstype.starts_with("fuse.") {
                return None;
            }
            let dev = head.split(' ').nth(2)?;
            let (major, minor) = dev.split_once(':')?;
            (major == "0").then(|| minor.parse().ok())?
        })
        .collect()
}

/// Reads the 8-byte length and the attached fd, if any.
fn recv_header(sock: &mut UnixStream) -> Result<(usize, Option<OwnedFd>), EntryError> {
    let mut len = [0u8; 8];
    // Room for one fd.
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: len.as_mut_ptr().cast(),
        iov_len: len.len(),
    };
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: msg points at live buffers.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if n < 0 {
        return Err(keeper_err("recvmsg", std::io::Error::last_os_error()));
    }
    let mut fd = None;
    // SAFETY: walking the control buffer the kernel filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 {
        return Err(EntryError::Keeper(
            "exited before the container was ready".into(),
        ));
    }
    let mut got = n as usize;
    while got < len.len() {
        let m = sock
            .read(&mut len[got..])
            .map_err(|e| keeper_err("read", e))?;
        if m == 0 {
            return Err(EntryError::Keeper("short answer".into()));
        }
        got += m;
    }
    Ok((u64::from_le_bytes(len) as usize, fd))
}

/// Sends the header with `fd` attached, then the payload.
fn send(sock: &mut UnixStream, payload: &[u8], fd: Option<&OwnedFd>) -> std::io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut cbuf = [0u64; 4];
    let iov = libc::iovec {
        iov_base: len.as_ptr() as *mut libc::c_void,
        iov_len: len.len(),
    };
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &iov as *const libc::iovec as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_* on a buffer large enough for one int.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(CMSG_DATA_INT(c), fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at live buffers.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.write_all(&len[n as usize..])?;
    sock.write_all(payload)
}

#[allow(non_snake_case)]
unsafe fn CMSG_DATA_INT(c: *mut libc::cmsghdr) -> *mut libc::c_int {
    // SAFETY: c is a valid control message header (caller).
    unsafe { libc::CMSG_DATA(c).cast() }
}

/// The keeper's life: become root for real, leave slurmstepd's fds behind, prepare, answer,
/// wait, tear down. Returns the exit code.
fn child(
    plan: &Plan,
    host_env: &[(String, String)],
    images: Option<&std::path::Path>,
    mut sock: UnixStream,
    timeout: Duration,
) -> i32 {
    let t = Instant::now();
    // Only the socket, and /dev/null as stdin/out/err: slurmstepd's connections must not be
    // held open by a process that outlives their use.
    // SAFETY: fd juggling on fds this process owns; the socket moves to fd 3.
    unsafe {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_or(-1, std::os::fd::IntoRawFd::into_raw_fd);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        let s = sock.as_raw_fd();
        if s != 3 && libc::dup3(s, 3, libc::O_CLOEXEC) < 0 {
            return 71;
        }
        std::mem::forget(sock);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        sock = UnixStream::from_raw_fd(3);
        // slurmstepd's signal handlers and mask mean nothing here: defaults, nothing blocked.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // The preparation is bounded: SIGALRM, unhandled, is fatal, and a fatal signal ends
        // even a wait on a FUSE server (the user's squashfuse) that never answers.
        libc::alarm(timeout.as_secs().clamp(1, u64::from(u32::MAX)) as libc::c_uint);
        // slurmstepd runs user_init with the user's euid and groups: back to root.
        libc::setgroups(0, std::ptr::null());
        if libc::setresgid(0, 0, 0) < 0 || libc::setresuid(0, 0, 0) < 0 {
            let _ = send(&mut sock, b"Fsetresuid(0): permission denied", None);
            return 72;
        }
        libc::umask(0o022);
    }
    if std::env::set_current_dir("/").is_err() {
        return 74;
    }
    // The job's mount of the image (made by its first step on the node), bound like a
    // directory image; if that cannot be, the container mounts the image itself, as before.
    let mut note = None;
    let job_plan = match images.map(|dir| crate::jobmount::bind_job_mount(plan, dir)) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            note = Some(format!("the image is mounted for this step only: {e}"));
            None
        }
        None => None,
    };
    let plan = job_plan.as_ref().unwrap_or(plan);
    let staging = crate::entry::staging_dir(plan);
    let setup_us = micros(t.elapsed());
    let t = Instant::now();
    match exec::prepare(plan, host_env, &Linux, &staging) {
        Ok(prepared) => {
            let container_us = micros(t.elapsed());
            let mut payload = format!("OT{setup_us},{container_us}\0").into_bytes();
            if let Some(n) = &note {
                payload.push(b'N');
                payload.extend_from_slice(n.replace('\0', " ").as_bytes());
                payload.push(0);
            }
            for (k, v) in &prepared.env {
                payload.push(b'E');
                payload.extend_from_slice(k.as_bytes());
                payload.push(b'=');
                payload.extend_from_slice(v.as_bytes());
                payload.push(0);
            }
            for w in &prepared.warnings {
                payload.push(b'W');
                payload.extend_from_slice(w.replace('\0', " ").as_bytes());
                payload.push(0);
            }
            if send(&mut sock, &payload, prepared.mnt_ns.as_ref()).is_err() {
                prepared.teardown();
                return 73;
            }
            // Ready: from now on the keeper only waits for the step's end.
            // SAFETY: alarm has no memory preconditions.
            unsafe { libc::alarm(0) };
            // Wait for the end of the step (or slurmstepd's death).
            let mut buf = [0u8; 64];
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            prepared.teardown();
            0
        }
        Err(e) => {
            let msg = format!("F{e}");
            let _ = send(&mut sock, msg.as_bytes(), None);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_carries_its_fd_and_a_long_payload() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        // Longer than a socket buffer's worth in one write: the reader must loop.
        let mut payload = vec![b'O'];
        for i in 0..20_000 {
            payload.extend_from_slice(format!("EVAR{i}=value {i}\0").as_bytes());
        }
        payload.extend_from_slice(b"Wline 3: not applied\0");
        let sent = payload.clone();
        let writer = std::thread::spawn(move || send(&mut a, &sent, Some(&fd)).unwrap());
        let (len, got) = recv_header(&mut b).unwrap();
        assert_eq!(len, payload.len());
        let got = got.expect("an fd");
        // A fresh descriptor for the same file (received with MSG_CMSG_CLOEXEC).
        // SAFETY: fcntl on a descriptor this test owns.
        let flags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let mut rest = vec![0u8; len];
        b.read_exact(&mut rest).unwrap();
        assert_eq!(rest, payload);
        writer.join().unwrap();
    }

    #[test]
    fn a_failure_has_no_fd() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, b"Fimage /x.sif: bad", None).unwrap();
        let (len, fd) = recv_header(&mut b).unwrap();
        assert!(fd.is_none());
        assert_eq!(len, 18);
    }

    #[test]
    fn fuse_mounts_are_found_in_mountinfo() {
        let text = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 36 0:51 / /tmp/image ro,nosuid,nodev - fuse.squashfuse squashfuse ro\n\
                    41 36 0:52 / /x rw - fuse /dev/fuse rw\n\
                    42 36 0:53 / /y rw - tmpfs tmpfs rw\n";
        assert_eq!(fuse_minors(text), vec![51, 52]);
    }

    #[test]
    fn a_silent_keeper_is_a_timeout() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = Instant::now();
        assert!(!readable_within(&b, Duration::from_millis(200)).unwrap());
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        drop(a);
        assert!(readable_within(&b, Duration::from_secs(5)).unwrap());
    }

    #[test]
    fn a_keeper_that_dies_early_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        drop(a);
        let e = recv_header(&mut b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container keeper: exited before the container was ready"
        );
    }
}
