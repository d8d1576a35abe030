//! squashfuse for images the kernel may not mount (unprivileged mode, or a policy that does
//! not trust the image).
//!
//! Slipway mounts the FUSE file system itself (`mount("fuse.squashfuse", "fd=N,...")` on an
//! fd of `/dev/fuse` opened in the container's user namespace) and hands that fd to
//! `squashfuse_ll` as its mount point `/dev/fd/N` (libfuse ≥ 3.3 then serves it without
//! mounting). So the mount is in place when this returns (no polling for it), needs no setuid
//! `fusermount`, and lives only in the container's mount namespace: when that namespace dies
//! the kernel aborts the connection and squashfuse exits. It is also killed
//! (`PR_SET_PDEATHSIG`) when its parent (the process that becomes the command) ends, and by
//! [`super::Prepared`]'s teardown on failure, so no squashfuse process is left behind.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::sys::Sys;
use super::ExecError;
use crate::image::Span;

/// The squashfuse program (found on `PATH`; `SLIPWAY_SQUASHFUSE` overrides).
pub fn program() -> String {
    std::env::var("SLIPWAY_SQUASHFUSE").unwrap_or_else(|_| "squashfuse_ll".into())
}

/// Mounts `image[span]` at `target` and starts squashfuse to serve it. In privileged mode
/// squashfuse runs as `(uid, gid)`, the container's user, and the mount allows other users.
pub fn mount(
    sys: &dyn Sys,
    image: &File,
    span: Span,
    target: &Path,
    privileged: bool,
    uid: u32,
    gid: u32,
) -> Result<Child, ExecError> {
    let dev = Path::new("/dev/fuse");
    let fuse: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dev)
        .map_err(|err| ExecError::Sys {
            syscall: "open",
            path: dev.into(),
            err,
        })?
        .into();
    let (mu, mg) = if privileged { (0, 0) } else { (uid, gid) };
    let opts = format!(
        "fd={},rootmode=40000,user_id={mu},group_id={mg}{}",
        fuse.as_raw_fd(),
        if privileged { ",allow_other" } else { "" }
    );
    sys.mount(
        "squashfuse",
        target,
        Some("fuse.squashfuse"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        Some(&opts),
    )?;
    let (ifd, ffd) = (image.as_raw_fd(), fuse.as_raw_fd());
    let prog = program();
    let mut cmd = Command::new(&prog);
    cmd.arg("-f")
        .arg("-o")
        .arg(format!("offset={}", span.offset))
        .arg(format!("/dev/fd/{ifd}"))
        .arg(format!("/dev/fd/{ffd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if privileged && uid != 0 {
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [ifd, ffd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // squashfuse serves an untrusted image: it gains nothing by any exec, and (as
            // root's child) keeps no capability in its bounding set. Raw calls only (no
            // allocation after fork).
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                    break;
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|err| ExecError::Spawn { program: prog, err })?;
    // Our copy of the device fd must go: if squashfuse dies, accesses then fail (ENOTCONN)
    // instead of hanging.
    drop(fuse);
    Ok(child)
}
