//! The system calls that change the mount tree and the process, behind a trait so the mount
//! logic can be run and checked without root ([`Recording`]) and for real ([`Linux`]).
//! The implementation is passed in by the caller (no `cfg(test)` switch).

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::ExecError;

/// `open_how` for `openat2(2)` (the libc one cannot be built outside libc).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dirfd, path, {flags, 0, resolve})`: the new fd, or -1 with errno set.
fn openat2(dirfd: BorrowedFd, path: &CStr, flags: libc::c_int, resolve: u64) -> libc::c_long {
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: how is a valid open_how of the size given; path is NUL-terminated.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    }
}

/// Why a file of an image was not read ([`read_in`]).
#[derive(Debug)]
pub enum Unreadable {
    /// It could not be opened (other than missing): permissions, a loop of symlinks.
    Open(std::io::Error),
    /// Not a regular file: a FIFO would block the open or the read, a device could be endless.
    NotRegular(&'static str),
    /// Longer than the limit (the limit in bytes).
    TooLong(u64),
    /// A read failed.
    Read(std::io::Error),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Open(e) => write!(f, "cannot be opened: {e}"),
            Unreadable::NotRegular(what) => write!(f, "{what}, not a regular file"),
            Unreadable::TooLong(m) if m % (1 << 20) == 0 => {
                write!(f, "longer than {} MiB", m >> 20)
            }
            Unreadable::TooLong(m) if m % (1 << 10) == 0 => {
                write!(f, "longer than {} KiB", m >> 10)
            }
            Unreadable::TooLong(m) => write!(f, "longer than {m} bytes"),
            Unreadable::Read(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// Reads the file at `path` resolved inside `dirfd` (`RESOLVE_IN_ROOT`,
/// `RESOLVE_NO_MAGICLINKS`, `RESOLVE_NO_XDEV`: one `openat2` instead of a walk of the path,
/// never leaving the mount of `dirfd`), opened without
/// blocking. `Ok(None)` if it does not exist; [`Unreadable`] if it is not a regular file, is
/// longer than `max` bytes, or cannot be opened or read. Images are untrusted: a squashfs
/// holds terabytes of zeros in a few kilobytes, and these reads run as root.
pub fn read_in(dirfd: BorrowedFd, path: &Path, max: u64) -> Result<Option<Vec<u8>>, Unreadable> {
    read_in_how(
        dirfd,
        path,
        max,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    )
}

/// [`read_in`] with the `openat2` resolve flags `how`.
pub fn read_in_how(
    dirfd: BorrowedFd,
    path: &Path,
    max: u64,
    how: u64,
) -> Result<Option<Vec<u8>>, Unreadable> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let f = match open_file_in_how(dirfd, path, how) {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(e) => return Err(Unreadable::Open(e)),
    };
    let meta = f.metadata().map_err(Unreadable::Read)?;
    let t = meta.file_type();
    if !t.is_file() {
        return Err(Unreadable::NotRegular(if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_dir() {
            "a directory"
        } else {
            "a special file"
        }));
    }
    if meta.len() > max {
        return Err(Unreadable::TooLong(max));
    }
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(Unreadable::Read)?;
    if buf.len() as u64 > max {
        return Err(Unreadable::TooLong(max));
    }
    Ok(Some(buf))
}

/// Opens `path` for reading, resolved inside `dirfd` as [`read_in`] does (no blocking on a
/// FIFO, no controlling terminal), and never off the mount `dirfd` is on (`RESOLVE_NO_XDEV`):
/// what is read from an image comes from the image, not from anything mounted into it.
pub fn open_file_in(dirfd: BorrowedFd, path: &Path) -> std::io::Result<std::fs::File> {
    open_file_in_how(
        dirfd,
        path,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    )
}

/// [`open_file_in`] with the `openat2` resolve flags `how`.
pub fn open_file_in_how(
    dirfd: BorrowedFd,
    path: &Path,
    how: u64,
) -> std::io::Result<std::fs::File> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let rc = openat2(
        dirfd,
        &p,
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        how,
    );
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: rc is a file descriptor just opened here and owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(rc as RawFd) })
}

/// Opens the host path `path` (absolute) `O_PATH` without following any symlink on the way
/// (`RESOLVE_NO_SYMLINKS`): a path that was checked while it had none opens the object that
/// stands at that very path now, never one a symlink swapped in since leads to.
pub fn open_path_no_symlinks(path: &Path) -> std::io::Result<OwnedFd> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: AT_FDCWD is a valid dirfd for openat2 (an absolute path ignores it anyway).
    let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    let rc = openat2(
        cwd,
        &p,
        libc::O_PATH | libc::O_CLOEXEC,
        RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    );
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd from the kernel, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// `struct mount_attr` for `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `RESOLVE_NO_XDEV`: fail (`EXDEV`) where the path crosses a mount point.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
/// `RESOLVE_NO_MAGICLINKS`: no `/proc/self/fd`-style jumps.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `RESOLVE_IN_ROOT`: resolve as if `dirfd` were `/` (no escape by `..` or absolute links).
pub const RESOLVE_IN_ROOT: u64 = 0x10;
/// `RESOLVE_NO_SYMLINKS`: fail (`ELOOP`) on any symlink on the way.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// `MOUNT_ATTR_RDONLY`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x01;
/// `MOUNT_ATTR_NOSUID`.
pub const MOUNT_ATTR_NOSUID: u64 = 0x02;
/// `MOUNT_ATTR_NODEV`.
pub const MOUNT_ATTR_NODEV: u64 = 0x04;
const OPEN_TREE_CLONE: u32 = 1;
// NUL-terminated paths (not C string literals: the workspace's rust-version is 1.75).
const EMPTY: &[u8] = b"\0";
const DOT: &[u8] = b".\0";
const SLASH: &[u8] = b"/\0";
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

fn cstr(p: &Path) -> Result<CString, ExecError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ExecError::Sys {
        syscall: "path",
        path: p.to_path_buf(),
        err: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

fn check(rc: libc::c_long, syscall: &'static str, path: &Path) -> Result<libc::c_long, ExecError> {
    if rc < 0 {
        Err(ExecError::Sys {
            syscall,
            path: path.to_path_buf(),
            err: std::io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

/// The mount-tree system calls Slipway uses. Paths are only for error messages where an fd is
/// the real argument.
pub trait Sys {
    /// `unshare(2)`.
    fn unshare(&self, flags: libc::c_int) -> Result<(), ExecError>;
    /// Writes a `/proc/self/{uid_map,gid_map,setgroups}` file.
    fn write_proc(&self, path: &Path, data: &str) -> Result<(), ExecError>;
    /// `mount(2)`.
    fn mount(
        &self,
        src: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> Result<(), ExecError>;
    /// `open_tree(fd, "", OPEN_TREE_CLONE|AT_EMPTY_PATH[|AT_RECURSIVE])`: a detached copy of
    /// the mount at `fd`.
    fn clone_tree(
        &self,
        fd: BorrowedFd,
        recursive: bool,
        what: &Path,
    ) -> Result<OwnedFd, ExecError>;
    /// `mount_setattr(2)` on a mount fd.
    fn set_attr(
        &self,
        fd: BorrowedFd,
        recursive: bool,
        set: u64,
        what: &Path,
    ) -> Result<(), ExecError>;
    /// `move_mount(2)` from a detached tree onto the object `to`.
    fn move_mount(&self, from: BorrowedFd, to: BorrowedFd, what: &Path) -> Result<(), ExecError>;
    /// `openat2(dirfd, path, O_PATH|O_CLOEXEC[|O_NOFOLLOW], resolve)`.
    fn open_in(&self, dirfd: BorrowedFd, path: &Path, resolve: u64) -> Result<OwnedFd, ExecError>;
    /// `pivot_root(".", ".")` after `chdir(new_root)`, then detaches the old root.
    fn pivot_root(&self, new_root: &Path) -> Result<(), ExecError>;
}

/// The real system calls.
pub struct Linux;

impl Sys for Linux {
    fn unshare(&self, flags: libc::c_int) -> Result<(), ExecError> {
        // SAFETY: unshare has no memory preconditions.
        check(
            unsafe { libc::unshare(flags) } as _,
            "unshare",
            Path::new(""),
        )?;
        Ok(())
    }

    fn write_proc(&self, path: &Path, data: &str) -> Result<(), ExecError> {
        std::fs::write(path, data).map_err(|err| ExecError::Sys {
            syscall: "write",
            path: path.to_path_buf(),
            err,
        })
    }

    fn mount(
        &self,
        src: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> Result<(), ExecError> {
        let s = CString::new(src).unwrap_or_default();
        let t = cstr(target)?;
        let f = fstype.map(|f| CString::new(f).unwrap_or_default());
        let d = data.map(|d| CString::new(d).unwrap_or_default());
        // SAFETY: all strings are NUL-terminated and live across the call.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                t.as_ptr(),
                f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                flags,
                d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            )
        };
        check(rc as _, "mount", target)?;
        Ok(())
    }

    fn clone_tree(
        &self,
        fd: BorrowedFd,
        recursive: bool,
        what: &Path,
    ) -> Result<OwnedFd, ExecError> {
        let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | libc::AT_EMPTY_PATH as u32;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        // SAFETY: open_tree with an fd and an empty NUL-terminated path.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                fd.as_raw_fd(),
                EMPTY.as_ptr().cast::<libc::c_char>(),
                flags,
            )
        };
        let fd = check(rc, "open_tree", what)?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn set_attr(
        &self,
        fd: BorrowedFd,
        recursive: bool,
        set: u64,
        what: &Path,
    ) -> Result<(), ExecError> {
        let attr = MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let mut flags = libc::AT_EMPTY_PATH as u32;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        // SAFETY: attr is a valid mount_attr of the size given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                EMPTY.as_ptr().cast::<libc::c_char>(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        check(rc, "mount_setattr", what)?;
        Ok(())
    }

    fn move_mount(&self, from: BorrowedFd, to: BorrowedFd, what: &Path) -> Result<(), ExecError> {
        // SAFETY: two fds and empty paths.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                from.as_raw_fd(),
                EMPTY.as_ptr().cast::<libc::c_char>(),
                to.as_raw_fd(),
                EMPTY.as_ptr().cast::<libc::c_char>(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        check(rc, "move_mount", what)?;
        Ok(())
    }

    fn open_in(&self, dirfd: BorrowedFd, path: &Path, resolve: u64) -> Result<OwnedFd, ExecError> {
        let p = cstr(path)?;
        let rc = openat2(dirfd, &p, libc::O_PATH | libc::O_CLOEXEC, resolve);
        let fd = check(rc, "openat2", path)?;
        // SAFETY: a new fd from the kernel.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn pivot_root(&self, new_root: &Path) -> Result<(), ExecError> {
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
        // removes it without needing a directory for it (see pivot_root(2), NOTES).
        let r = cstr(new_root)?;
        // SAFETY: r is NUL-terminated.
        check(unsafe { libc::chdir(r.as_ptr()) } as _, "chdir", new_root)?;
        // SAFETY: "." is NUL-terminated.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pivot_root,
                DOT.as_ptr().cast::<libc::c_char>(),
                DOT.as_ptr().cast::<libc::c_char>(),
            )
        };
        check(rc, "pivot_root", new_root)?;
        // SAFETY: as above.
        let rc = unsafe { libc::umount2(DOT.as_ptr().cast::<libc::c_char>(), libc::MNT_DETACH) };
        check(rc as _, "umount2", Path::new("(old root)"))?;
        // SAFETY: as above.
        check(
            unsafe { libc::chdir(SLASH.as_ptr().cast::<libc::c_char>()) } as _,
            "chdir",
            Path::new("/"),
        )?;
        Ok(())
    }
}

/// Records every call as a line of text instead of making it; `open_in` and `clone_tree`
/// return fresh fds on `/dev/null` so the caller's fd handling runs unchanged.
#[derive(Default)]
pub struct Recording {
    /// The calls, in order.
    pub calls: RefCell<Vec<String>>,
}

impl Recording {
    fn push(&self, s: String) {
        self.calls.borrow_mut().push(s);
    }
    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("/dev/null").into()
    }
}

impl Sys for Recording {
    fn unshare(&self, flags: libc::c_int) -> Result<(), ExecError> {
        self.push(format!("unshare({flags:#x})"));
        Ok(())
    }
    fn write_proc(&self, path: &Path, data: &str) -> Result<(), ExecError> {
        self.push(format!("write {} {:?}", path.display(), data));
        Ok(())
    }
    fn mount(
        &self,
        src: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> Result<(), ExecError> {
        self.push(format!(
            "mount {src} {} {} {flags:#x} {}",
            target.display(),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn clone_tree(
        &self,
        _: BorrowedFd,
        recursive: bool,
        what: &Path,
    ) -> Result<OwnedFd, ExecError> {
        self.push(format!(
            "open_tree {}{}",
            what.display(),
            if recursive { " recursive" } else { "" }
        ));
        Ok(Self::null())
    }
    fn set_attr(
        &self,
        _: BorrowedFd,
        recursive: bool,
        set: u64,
        what: &Path,
    ) -> Result<(), ExecError> {
        self.push(format!(
            "mount_setattr {} {set:#x}{}",
            what.display(),
            if recursive { " recursive" } else { "" }
        ));
        Ok(())
    }
    fn move_mount(&self, _: BorrowedFd, _: BorrowedFd, what: &Path) -> Result<(), ExecError> {
        self.push(format!("move_mount {}", what.display()));
        Ok(())
    }
    fn open_in(&self, dirfd: BorrowedFd, path: &Path, resolve: u64) -> Result<OwnedFd, ExecError> {
        // Resolution is real (it only reads), so destination checks are exercised too.
        let fd = Linux.open_in(dirfd, path, resolve)?;
        drop(fd);
        self.push(format!("openat2 {} {resolve:#x}", path.display()));
        Ok(Self::null())
    }
    fn pivot_root(&self, new_root: &Path) -> Result<(), ExecError> {
        self.push(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
}
