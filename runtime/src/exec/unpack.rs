//! Unpacked images ([`crate::plan::ImageMount::Unpacked`]): an unprivileged launch of a SIF or
//! squashfs image runs it from a directory it was unpacked into once, so that later launches
//! (the steps of a job, the ranks of `srun slipway exec`) bind a directory whose pages the
//! kernel's cache shares, instead of each starting a squashfuse that decompresses the same
//! blocks again in user space. As enroot does with its container directories.
//!
//! The entry is named for the image file's identity (device, inode, size, modification and
//! change times, and the squashfs's place in it): a rebuilt or replaced image gets a new
//! entry. It is made as the user (`unsquashfs` into a temporary name, renamed when complete),
//! under a lock in the user's cache directory, so that launches racing for it unpack it once;
//! an entry exists only complete. The cache directory must be the user's and private (0700).
//! Nothing is removed automatically (an entry may be in use by a running container): the
//! user or the node's tmp cleaner removes old entries (`chmod -R u+w` first: images hold
//! read-only directories).

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::ExecError;
use crate::image::Span;

fn io(syscall: &'static str, path: &Path, err: std::io::Error) -> ExecError {
    ExecError::Sys {
        syscall,
        path: path.to_path_buf(),
        err,
    }
}

/// The entry's name for `image` (open as `file`).
pub fn entry_name(file: &std::fs::File, span: Span) -> Result<String, std::io::Error> {
    let m = file.metadata()?;
    let mut h = Sha256::new();
    for n in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
        span.offset,
        span.size,
    ] {
        h.update(n.to_le_bytes());
    }
    let d = h.finalize();
    Ok(d.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// Makes `dir` (0700, with its parents) if missing; `Err` unless it is a directory of the
/// caller's that no one else can use.
fn private_dir(dir: &Path) -> Result<(), ExecError> {
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        return Err(io("mkdir", dir, e));
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| io("stat", dir, e))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(ExecError::Unpack(format!(
            "{}: not a private directory of uid {uid} (owner {}, mode {:04o}): remove it or \
             set images.unpack_dir",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The unpacked copy of `image[span]` under `cache` (made now if missing), as the caller
/// (the user). Returns its path.
pub fn ensure(
    image: &Path,
    file: &std::fs::File,
    span: Span,
    cache: &Path,
) -> Result<PathBuf, ExecError> {
    private_dir(cache)?;
    let name = entry_name(file, span).map_err(|e| io("stat", image, e))?;
    let entry = cache.join(&name);
    if entry.is_dir() {
        return Ok(entry);
    }
    let lock_path = cache.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| io("open", &lock_path, e))?;
    // SAFETY: flock on an fd we own; it is released when the fd closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(io("flock", &lock_path, std::io::Error::last_os_error()));
    }
    if entry.is_dir() {
        // Another launch unpacked it while this one waited.
        return Ok(entry);
    }
    // SAFETY: getpid has no preconditions.
    let tmp = cache.join(format!(".{name}.{}", unsafe { libc::getpid() }));
    let _ = remove_tree(&tmp);
    // The image through our /proc/PID/fd: the very file opened (and checked) for this launch.
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let out = Command::new("unsquashfs")
        .args(["-q", "-n", "-no-xattrs", "-o"])
        .arg(span.offset.to_string())
        .arg("-d")
        .arg(&tmp)
        .arg(format!("/proc/{me}/fd/{}", file.as_raw_fd()))
        .output();
    let failed = |why: String| {
        let _ = remove_tree(&tmp);
        Err(ExecError::Unpack(format!(
            "{}: cannot unpack into {}: {why}",
            image.display(),
            cache.display()
        )))
    };
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return failed("unsquashfs not found (install squashfs-tools)".into())
        }
        Err(e) => return failed(format!("unsquashfs: {e}")),
        // 2: non-fatal errors (device nodes and the like a user cannot make).
        Ok(o) if !matches!(o.status.code(), Some(0) | Some(2)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return failed(format!(
                "unsquashfs failed ({}): {line} (free space there, set images.unpack_dir, or \
                 run without --unpack)",
                o.status
            ));
        }
        Ok(_) => {}
    }
    if let Err(e) = std::fs::rename(&tmp, &entry) {
        return failed(format!("rename: {e}"));
    }
    drop(lock);
    Ok(entry)
}

/// Removes a partial unpacking (its directories may be read-only, as the image's were).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+rwx")
        .arg(dir)
        .status();
    std::fs::remove_dir_all(dir)
}
