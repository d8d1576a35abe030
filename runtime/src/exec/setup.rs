//! Small steps of laying out the container, for [`super::prepare`]: mount points and generated
//! files made directly in a directory on a Slipway tmpfs ("ours"), and the fd and stat helpers
//! the launch uses.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::sys::{self, Sys, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};
use super::{io_err, sys_err, ExecError};
use crate::plan::Plan;

/// An fd of the container directory `dir` (resolved inside the root) if it is a directory on a
/// Slipway tmpfs (`ours`), reusing `cache` when it holds that directory. `None` when `dir`
/// is missing, is not a plain container path (`..`), or is not ours.
pub(super) fn ours_dir<'a>(
    sys: &dyn Sys,
    root_fd: &OwnedFd,
    dir: &Path,
    ours: &[u64],
    cache: &'a mut Option<(PathBuf, OwnedFd)>,
) -> Result<Option<&'a OwnedFd>, ExecError> {
    if cache.as_ref().map(|(p, _)| p.as_path()) != Some(dir) {
        *cache = None;
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        if rel.as_os_str().is_empty()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Ok(None);
        }
        let Ok(fd) = sys.open_in(
            root_fd.as_fd(),
            rel,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        ) else {
            return Ok(None);
        };
        let st = fd_stat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR || !ours.contains(&st.st_dev) {
            return Ok(None);
        }
        *cache = Some((dir.to_path_buf(), fd));
    }
    Ok(cache.as_ref().map(|(_, fd)| fd))
}

/// The parent of `dest` as an fd when it is a directory on a Slipway tmpfs (see [`ours_dir`]),
/// with the last name of `dest`; `None` when `dest` has no such parent or name.
pub(super) fn ours_parent<'a>(
    sys: &dyn Sys,
    root_fd: &OwnedFd,
    dest: &Path,
    ours: &[u64],
    cache: &'a mut Option<(PathBuf, OwnedFd)>,
) -> Result<Option<(&'a OwnedFd, CString)>, ExecError> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Ok(None);
    };
    let Ok(name) = CString::new(name.as_bytes()) else {
        return Ok(None);
    };
    Ok(ours_dir(sys, root_fd, parent, ours, cache)?.map(|fd| (fd, name)))
}

/// Creates the empty file `name` in the directory `dir` (never through a symlink, never an
/// existing one), mode 0644 before the umask; the fd, or -1.
pub(super) fn create_excl(dir: &OwnedFd, name: &CString) -> libc::c_int {
    // SAFETY: dir is an open directory fd; name is NUL-terminated.
    unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    }
}

/// Makes the missing mount point `dest` (a directory if `dir`, else an empty file) in its
/// parent directory when that exists on a Slipway tmpfs, relative to an fd of the parent
/// (`cache`, see [`ours_dir`]), and returns an fd of it to mount on. `None` when this does not
/// apply (the parent is missing or not ours, or the name is taken, e.g. by a dangling
/// symlink): [`rootfs::mount_point`] then walks the destination and decides.
pub(super) fn make_in_ours(
    sys: &dyn Sys,
    root_fd: &OwnedFd,
    dest: &Path,
    dir: bool,
    ours: &[u64],
    cache: &mut Option<(PathBuf, OwnedFd)>,
) -> Result<Option<OwnedFd>, ExecError> {
    let Some((pfd, name)) = ours_parent(sys, root_fd, dest, ours, cache)? else {
        return Ok(None);
    };
    let fd = if dir {
        // SAFETY: pfd is an open directory fd; name is NUL-terminated.
        if unsafe { libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
            return Ok(None);
        }
        // SAFETY: as above; the directory was just made here, in a directory only Slipway
        // writes to.
        unsafe {
            libc::openat(
                pfd.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        }
    } else {
        // The new file's fd is the mount target itself.
        create_excl(pfd, &name)
    };
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: fd was just opened here and nothing else owns it.
    Ok(Some(unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}

/// Writes the generated file `dest` with `text` straight into its parent directory when that
/// is on a Slipway tmpfs and the name is free (as [`make_in_ours`]), mode 0644 whatever the
/// umask; the layer is made read-only with the others. `false` when this does not apply: the
/// file is then bind-mounted.
pub(super) fn write_in_ours(
    sys: &dyn Sys,
    root_fd: &OwnedFd,
    dest: &Path,
    text: &str,
    ours: &[u64],
    cache: &mut Option<(PathBuf, OwnedFd)>,
) -> Result<bool, ExecError> {
    let Some((pfd, cname)) = ours_parent(sys, root_fd, dest, ours, cache)? else {
        return Ok(false);
    };
    let fd = create_excl(pfd, &cname);
    if fd < 0 {
        return Ok(false);
    }
    // SAFETY: fd was just opened here and is owned by the File from now on.
    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| f.write_all(text.as_bytes()))
        .map_err(|e| io_err("write", dest, e))?;
    Ok(true)
}

/// Destinations that are checked against the image (for replication): those not below an
/// earlier mount of the plan (a mount point below a tmpfs step is made on that tmpfs; below
/// a bind it must already exist).
pub(super) fn image_dests(plan: &Plan) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut done: Vec<&Path> = Vec::new();
    for m in &plan.mounts {
        if !done.iter().any(|d| m.dest.starts_with(d) && m.dest != *d) {
            out.push(m.dest.clone());
        }
        done.push(&m.dest);
    }
    out
}

pub(super) fn mkdir(p: &Path) -> Result<(), ExecError> {
    std::fs::create_dir(p).map_err(|e| io_err("mkdir", p, e))
}

pub(super) fn dev_of(p: &Path) -> Result<u64, ExecError> {
    Ok(std::fs::metadata(p)
        .map_err(|e| io_err("stat", p, e))?
        .dev())
}

pub(super) fn fd_stat(fd: &OwnedFd) -> Result<libc::stat, ExecError> {
    // SAFETY: stat is plain old data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is valid.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(sys_err("fstat", format!("fd {}", fd.as_raw_fd())));
    }
    Ok(st)
}

/// The read-only, nosuid and nodev flags of the mount `fd` is on, as `MOUNT_ATTR_*` bits
/// (`ST_RDONLY`, `ST_NOSUID`, `ST_NODEV` have the same values).
pub(super) fn mount_flags(fd: &OwnedFd) -> Result<u64, ExecError> {
    // SAFETY: statvfs is plain old data; fstatvfs fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (O_PATH is enough for fstatvfs since Linux 3.12); st is valid.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(sys_err("fstatvfs", format!("fd {}", fd.as_raw_fd())));
    }
    Ok(st.f_flag & (libc::ST_RDONLY | libc::ST_NOSUID | libc::ST_NODEV))
}

pub(super) fn fd_is_dir(fd: &OwnedFd) -> Result<bool, ExecError> {
    Ok(fd_stat(fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

pub(super) fn open_ro(p: &str) -> Result<OwnedFd, ExecError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| io_err("open", p, e))
}

pub(super) fn write_file(p: &Path, text: &str) -> Result<(), ExecError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p)
        .map_err(|e| io_err("create", p, e))?;
    // 0644 whatever the umask (a root launcher with umask 077 would hide passwd from the user).
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| f.write_all(text.as_bytes()))
        .map_err(|e| io_err("write", p, e))
}

/// Opens a user's bind source (a real path, checked by the plan) with no symlink followed;
/// see [`sys::open_path_no_symlinks`].
pub(super) fn open_user_source(source: &Path) -> Result<OwnedFd, ExecError> {
    sys::open_path_no_symlinks(source).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => ExecError::Source {
            path: source.to_path_buf(),
            why: "a symlink now stands on its path (it changed while the container was set up, \
                  or names a link): bind the real path, and leave it alone while the job starts"
                .into(),
        },
        _ => ExecError::Source {
            path: source.to_path_buf(),
            why: e.to_string(),
        },
    })
}
