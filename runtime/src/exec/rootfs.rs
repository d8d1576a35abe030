//! Laying out the container's root: the image itself when every mount point exists in it,
//! otherwise "layers" in place of the directories where one must be created.
//!
//! Why layers: a squashfs is read-only, and a directory image is not ours to change, so a
//! missing `/home/<user>`, `/etc/localtime` or bind destination cannot be created in the image.
//! A directory the plan needs to create something in is "replicated": a layer (a directory of
//! the staging tmpfs, bind-mounted in its place, read-only at the end) whose entries are again
//! bound one by one from the image, symlinks copied (Apptainer's "underlay"); entries a plan
//! mount covers are left out. An overlay with a tmpfs upper layer would do the same in one
//! mount as root, but in an unprivileged user namespace the image's root-owned directories are
//! not writable through it; binds work in both modes. The image's directories are read
//! through fds resolved inside the image, never through host paths.
//!
//! Destinations are resolved inside the root as the kernel's `RESOLVE_IN_ROOT` does (symlinks
//! and `..` are followed but clamped at the container's `/`), and the final open that the
//! mount goes through is `openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)`, so nothing is ever
//! mounted outside the root, whatever symlinks the image holds.
//!
//! Images are untrusted, and this runs as root: replication is bounded. A launch replicates
//! at most [`MAX_REPLICATED`] entries in all (counted before anything is bound, reading no
//! further than the limit), and destinations are at most [`MAX_DEST_DEPTH`] deep once the
//! image's symlinks are followed; paths in error messages are shortened.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::sys::{Sys, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};
use super::ExecError;
use crate::plan::{dest_too_long, shown, MAX_DEST_BYTES, MAX_DEST_DEPTH};

/// The most entries of image directories one launch replicates, all directories together.
/// Each costs a bind mount (20 to 100 µs of system time, and one of the namespace's
/// `fs.mount-max`, 100,000 by default): an image with 100,000 entries in `/etc` would cost
/// seconds per launch and then fail on a full mount table. The directories a mount point is
/// usually made in (`/`, `/etc`, `/home`, `/opt`, a library directory for a driver) hold a
/// few hundred to a few thousand.
pub const MAX_REPLICATED: usize = 8192;

/// Kind of an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// Anything else (file, device node, socket).
    Other,
}

/// The result of resolving a container path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The canonical container path (no symlinks, no `..`).
    pub path: PathBuf,
    /// Number of leading components of `path` that exist; `None` if all do.
    pub existing: Option<usize>,
    /// Kind of the final object, if it exists.
    pub kind: Option<Kind>,
}

fn io_err(syscall: &'static str, path: &Path, err: std::io::Error) -> ExecError {
    ExecError::Sys {
        syscall,
        path: path.to_path_buf(),
        err,
    }
}

/// `e` with its path shortened for a one-line message ([`shown`]); what every public function
/// here returns, whichever call failed.
fn bounded(e: ExecError) -> ExecError {
    match e {
        ExecError::Sys { syscall, path, err } => ExecError::Sys {
            syscall,
            path: PathBuf::from(shown(&path)),
            err,
        },
        ExecError::MountPoint { dest, why } => ExecError::MountPoint {
            dest: PathBuf::from(shown(&dest)),
            why,
        },
        e => e,
    }
}

/// The names and `..` steps of a path, to walk one at a time (`/` and `.` dropped).
fn steps(p: &Path) -> VecDeque<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

/// Resolves `dest` inside the tree at `root` (a host path), following symlinks but never out
/// of `root`: absolute targets restart at `root`, `..` stops at it.
/// A path deeper than [`MAX_DEST_DEPTH`] or longer than [`MAX_DEST_BYTES`] (as given or once
/// the image's symlinks are followed) is refused.
pub fn resolve(root: &Path, dest: &Path) -> Result<Resolved, ExecError> {
    resolve_inner(root, dest).map_err(bounded)
}

fn resolve_inner(root: &Path, dest: &Path) -> Result<Resolved, ExecError> {
    let too_long = |why: String| ExecError::MountPoint {
        dest: dest.to_path_buf(),
        why,
    };
    if let Some(why) = dest_too_long(dest) {
        return Err(too_long(why));
    }
    let mut pending = steps(dest);
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    let mut missing_at: Option<usize> = None;
    let mut kind = Some(Kind::Dir);
    while let Some(c) = pending.pop_front() {
        if c.as_os_str() == ".." {
            cur.pop();
            if missing_at.is_some_and(|m| cur.components().count() - 1 <= m) {
                missing_at = None;
            }
            kind = if missing_at.is_some() {
                None
            } else {
                Some(Kind::Dir)
            };
            continue;
        }
        let cand = cur.join(&c);
        // Symlinks can lengthen a short destination (40 of them, each up to 4095 bytes).
        let depth = cand.components().count() - 1;
        if depth > MAX_DEST_DEPTH || cand.as_os_str().len() > MAX_DEST_BYTES {
            return Err(too_long(format!(
                "with the image's symlinks followed it is deeper than {MAX_DEST_DEPTH} \
                 directories or longer than {MAX_DEST_BYTES} bytes ({})",
                shown(&cand)
            )));
        }
        if missing_at.is_some() {
            cur = cand;
            kind = None;
            continue;
        }
        let host = root.join(cand.strip_prefix("/").unwrap_or(&cand));
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io_err(
                        "resolve",
                        dest,
                        std::io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let target = fs::read_link(&host).map_err(|e| io_err("readlink", &host, e))?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                let mut t = steps(&target);
                t.extend(pending);
                pending = t;
                kind = Some(Kind::Dir);
            }
            Ok(m) => {
                if !m.is_dir() && !pending.is_empty() {
                    return Err(io_err(
                        "resolve",
                        dest,
                        std::io::Error::from_raw_os_error(libc::ENOTDIR),
                    ));
                }
                kind = Some(if m.is_dir() { Kind::Dir } else { Kind::Other });
                cur = cand;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing_at = Some(cur.components().count() - 1);
                kind = None;
                cur = cand;
            }
            Err(e) => return Err(io_err("lstat", &host, e)),
        }
    }
    Ok(Resolved {
        path: cur,
        existing: missing_at,
        kind,
    })
}

/// Directories (container paths) that must be replicated so that every destination's mount
/// point can be created: the existing ancestors of the first missing component, below `/`.
/// `image_fd` is an `O_PATH` fd of `image`. Refused, before anything is mounted, when the
/// directories hold more than [`MAX_REPLICATED`] entries in all (the message names the
/// directory, the destination that needs it and the fix), or a destination is too deep.
pub fn replicas(
    image: &Path,
    image_fd: &OwnedFd,
    dests: &[PathBuf],
) -> Result<BTreeSet<PathBuf>, ExecError> {
    let needed_by = replicas_inner(image, image_fd, dests).map_err(bounded)?;
    check_entries(image_fd, &needed_by, MAX_REPLICATED).map_err(bounded)?;
    Ok(needed_by.into_keys().collect())
}

/// [`replicas`], each with the first destination that needs it.
fn replicas_inner(
    image: &Path,
    image_fd: &OwnedFd,
    dests: &[PathBuf],
) -> Result<BTreeMap<PathBuf, PathBuf>, ExecError> {
    let mut out = BTreeMap::new();
    for d in dests {
        let mut need = |p: PathBuf| {
            out.entry(p).or_insert_with(|| d.clone());
        };
        if let Some(why) = dest_too_long(d) {
            return Err(ExecError::MountPoint {
                dest: d.clone(),
                why,
            });
        }
        // Existing destinations (the common case) need no walk.
        let rel = d.strip_prefix("/").unwrap_or(d);
        if super::sys::Linux
            .open_in(
                image_fd.as_fd(),
                rel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )
            .is_ok()
        {
            continue;
        }
        // A missing name in a directory that exists with no symlink on the way (the usual
        // case: /home/<user>, /etc/localtime): its ancestors are the replicas, no walk needed.
        if let Some(parents) = plain_parents(image_fd, rel) {
            if parents.is_empty() {
                need(PathBuf::from("/"));
            }
            parents.into_iter().for_each(need);
            continue;
        }
        let r = resolve_inner(image, d)?;
        if let Some(n) = r.existing {
            let mut p = PathBuf::from("/");
            if n == 0 {
                need(p.clone());
            }
            for c in r.path.components().skip(1).take(n) {
                p.push(c);
                need(p.clone());
            }
        }
    }
    Ok(out)
}

/// Refuses replicating the directories of `needed_by` (each with the destination that needs
/// it) when they hold more than `limit` entries in all, reading each no further than the
/// limit: a directory of a million entries costs a few `getdents` before the refusal.
fn check_entries(
    image_fd: &OwnedFd,
    needed_by: &BTreeMap<PathBuf, PathBuf>,
    limit: usize,
) -> Result<(), ExecError> {
    let mut total = 0;
    for (dir, dest) in needed_by {
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        let fd = if rel.as_os_str().is_empty() {
            image_fd.try_clone().map_err(|e| io_err("dup", dir, e))?
        } else {
            super::sys::Linux.open_in(
                image_fd.as_fd(),
                rel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )?
        };
        let left = limit - total;
        let n = count_entries(&fd, dir, left)?;
        if n > left {
            return Err(too_many(dir, left, limit - left, dest, limit));
        }
        total += n;
    }
    Ok(())
}

/// The entries of the directory `fd` (`dir` for messages), `.` and `..` left out, counted up
/// to `max + 1` at most.
fn count_entries(fd: &OwnedFd, dir: &Path, max: usize) -> Result<usize, ExecError> {
    let mut n = 0;
    for_entries(fd, dir, |_, _| {
        n += 1;
        n <= max
    })?;
    Ok(n)
}

/// Calls `f` with each entry of the directory `fd` (`dir` for messages), `.` and `..` left
/// out, while it returns `true`.
fn for_entries(
    fd: &OwnedFd,
    dir: &Path,
    mut f: impl FnMut(&std::ffi::CStr, Option<nix::dir::Type>) -> bool,
) -> Result<(), ExecError> {
    use nix::dir::Dir;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let err = |what: &'static str, e: nix::Error| io_err(what, dir, e.into());
    let mut list = Dir::openat(
        Some(fd.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("opendir", e))?;
    for e in list.iter() {
        let e = e.map_err(|e| err("readdir", e))?;
        let name = e.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." && !f(name, e.file_type()) {
            break;
        }
    }
    Ok(())
}

/// The refusal when replicating `dir`, which has more than `left` entries, would pass `limit`
/// entries (`others` in the other directories), for the mount point `dest`: one line, with
/// the fix.
fn too_many(dir: &Path, left: usize, others: usize, dest: &Path, limit: usize) -> ExecError {
    let others = match others {
        0 => String::new(),
        n => format!("; with the {n} of the other directories to replicate, more than {limit}"),
    };
    ExecError::MountPoint {
        dest: dest.to_path_buf(),
        why: format!(
            "image directory {} has more than {left} entries{others}: too many to replicate \
             (each would be bound on its own to make room for the mount point; at most \
             {limit} per launch): create {} in the image, or choose another destination",
            shown(dir),
            shown(dest),
        ),
    }
}

/// For `rel` (a relative container path of plain names) whose parent exists as a directory
/// reached without any symlink and whose last name does not exist (not even as a dangling
/// symlink): the parent and its ancestors below `/`, outermost first. `None` when that is not
/// the case ([`resolve`] then walks the path).
fn plain_parents(image_fd: &OwnedFd, rel: &Path) -> Option<Vec<PathBuf>> {
    use super::sys::RESOLVE_NO_SYMLINKS;
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let parent = rel.parent()?;
    let linux = super::sys::Linux;
    let how = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    if !parent.as_os_str().is_empty() {
        let fd = linux.open_in(image_fd.as_fd(), parent, how).ok()?;
        // SAFETY: stat is plain old data; zeroed is a valid initial value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is valid for fstat to fill.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0
            || st.st_mode & libc::S_IFMT != libc::S_IFDIR
        {
            return None;
        }
    }
    match linux.open_in(image_fd.as_fd(), rel, how) {
        Err(ExecError::Sys { err, .. }) if err.raw_os_error() == Some(libc::ENOENT) => {}
        _ => return None,
    }
    let mut out = Vec::new();
    let mut p = PathBuf::from("/");
    for c in parent.components() {
        p.push(c);
        out.push(p.clone());
    }
    Some(out)
}

/// Lays out the container root at `root` (an empty directory) from `image` (the mounted
/// image, `image_fd` an `O_PATH` fd of it); layer directories are made in `layer_dir` (on the
/// staging tmpfs). When nothing must be created at the top level the
/// image itself becomes the root (one mount, the fast path for images that have their mount
/// points); otherwise, and for every other directory in `replicate`, a tmpfs takes the
/// directory's place, holding its entries bound in from the image (symlinks copied) and room
/// for new mount points. Entries named in `covered` (destinations of the plan's mounts) are
/// left out of a replicated directory: whatever the image has there would be hidden, and the
/// mount point is made when the mount comes. Returns the number of mounts and the tmpfs
/// layers, each with an fd of its own mount (to make it read-only at the end, whatever is
/// mounted over it later). At most [`MAX_REPLICATED`] entries are replicated in all (the
/// directories' entries are counted by [`replicas`] first; this holds if they grew since).
pub fn build_root(
    sys: &dyn Sys,
    image_fd: &OwnedFd,
    entry_attrs: u64,
    root: &Path,
    replicate: &BTreeSet<PathBuf>,
    covered: &BTreeSet<PathBuf>,
    layer_dir: &Path,
) -> Result<(usize, Vec<(PathBuf, OwnedFd)>), ExecError> {
    build_root_inner(
        sys,
        image_fd,
        entry_attrs,
        root,
        replicate,
        covered,
        layer_dir,
    )
    .map_err(bounded)
}

fn build_root_inner(
    sys: &dyn Sys,
    image_fd: &OwnedFd,
    entry_attrs: u64,
    root: &Path,
    replicate: &BTreeSet<PathBuf>,
    covered: &BTreeSet<PathBuf>,
    layer_dir: &Path,
) -> Result<(usize, Vec<(PathBuf, OwnedFd)>), ExecError> {
    let mut mounts = 1;
    let mut layers = Vec::new();
    let tops: Vec<&PathBuf> = replicate
        .iter()
        .filter(|r| !r.ancestors().skip(1).any(|a| replicate.contains(a)))
        .collect();
    if replicate.contains(Path::new("/")) {
        let to = open_path(root)?;
        new_layer(sys, layer_dir, 0, mode_of(image_fd)?, &to, Path::new("/"))?;
    } else {
        let tree = sys.clone_tree(image_fd.as_fd(), false, Path::new("/"))?;
        if entry_attrs != 0 {
            sys.set_attr(tree.as_fd(), false, entry_attrs, Path::new("/"))?;
        }
        let to = open_path(root)?;
        sys.move_mount(tree.as_fd(), to.as_fd(), Path::new("/"))?;
    }
    let root_fd = open_path(root)?;
    let dirs = Dirs {
        entry_attrs,
        root,
        root_fd: &root_fd,
        replicate,
        covered,
        left: std::cell::Cell::new(MAX_REPLICATED),
    };
    for (n, top) in tops.into_iter().enumerate() {
        let rel = top.strip_prefix("/").unwrap_or(top);
        // The image's directory, looked up inside the image (really: the lookups only read,
        // also when the mount calls are recorded).
        let src = if rel.as_os_str().is_empty() {
            image_fd.try_clone().map_err(|e| io_err("dup", top, e))?
        } else {
            super::sys::Linux.open_in(
                image_fd.as_fd(),
                rel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )?
        };
        if !rel.as_os_str().is_empty() {
            let to = sys.open_in(
                root_fd.as_fd(),
                rel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )?;
            new_layer(sys, layer_dir, n + 1, mode_of(&src)?, &to, top)?;
            mounts += 1;
        }
        let layer = open_path(&root.join(rel))?;
        fill(sys, &dirs, top, &src, &mut mounts)?;
        layers.push((top.clone(), layer));
    }
    Ok((mounts, layers))
}

/// Makes layer `n`: a directory with `mode` on the staging tmpfs (in `layer_dir`), bound onto
/// `target` (the container directory `what` it replaces). A bind of a directory of the one
/// staging tmpfs costs less than a tmpfs of its own (no superblock to set up and tear down);
/// each layer is still its own mount, made read-only at the end.
fn new_layer(
    sys: &dyn Sys,
    layer_dir: &Path,
    n: usize,
    mode: u32,
    target: &OwnedFd,
    what: &Path,
) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = layer_dir.join(n.to_string());
    mkdir(&dir, 0o700)?;
    // The image directory's mode exactly (mkdir's is cut by the umask).
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("chmod", &dir, e))?;
    let src = open_path(&dir)?;
    let tree = sys.clone_tree(src.as_fd(), false, what)?;
    sys.move_mount(tree.as_fd(), target.as_fd(), what)
}

/// The permission bits of what `fd` refers to.
fn mode_of(fd: &OwnedFd) -> Result<u32, ExecError> {
    Ok(stat_at(fd, None)?.st_mode & 0o7777)
}

/// `fstatat(fd, name, AT_SYMLINK_NOFOLLOW)`, or `fstat(fd)` without a name.
fn stat_at(fd: &OwnedFd, name: Option<&std::ffi::CStr>) -> Result<libc::stat, ExecError> {
    // SAFETY: stat is plain old data; zeroed is a valid initial value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let (name, flags) = match name {
        Some(n) => (n.as_ptr(), libc::AT_SYMLINK_NOFOLLOW),
        None => (c"".as_ptr(), libc::AT_EMPTY_PATH),
    };
    // SAFETY: fd is open; name is NUL-terminated; st is valid for fstatat to fill.
    if unsafe { libc::fstatat(fd.as_raw_fd(), name, &mut st, flags) } < 0 {
        return Err(io_err(
            "fstatat",
            Path::new(&format!("fd {}", fd.as_raw_fd())),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st)
}

/// What [`fill`] works from: the mount flags each bind from the image needs, the root being
/// laid out (path and fd), the directories to replicate, the paths the plan mounts over and
/// how many more entries may be replicated.
struct Dirs<'a> {
    entry_attrs: u64,
    root: &'a Path,
    root_fd: &'a OwnedFd,
    replicate: &'a BTreeSet<PathBuf>,
    covered: &'a BTreeSet<PathBuf>,
    left: std::cell::Cell<usize>,
}

/// Fills the replicated container directory `dir` from the image's directory `src` (an fd,
/// so nothing is looked up by a host path that a concurrent change could redirect): its
/// entries bound in one by one, symlinks copied, replicated subdirectories filled in turn.
fn fill(
    sys: &dyn Sys,
    d: &Dirs,
    dir: &Path,
    src: &OwnedFd,
    mounts: &mut usize,
) -> Result<(), ExecError> {
    use nix::dir::Type;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::unix::ffi::OsStrExt;
    let Dirs {
        entry_attrs,
        root,
        root_fd,
        replicate,
        covered,
        ..
    } = *d;
    let err = |what: &'static str, p: &Path, e: nix::Error| io_err(what, p, e.into());
    let left = d.left.get();
    let mut entries: Vec<(std::ffi::CString, Option<Type>)> = Vec::new();
    let mut over = false;
    for_entries(src, dir, |name, ty| {
        over = entries.len() == left;
        if !over {
            entries.push((name.to_owned(), ty));
        }
        !over
    })?;
    if over {
        return Err(ExecError::ImageFile {
            path: dir.to_path_buf(),
            why: format!(
                "a directory of more than the {left} entries left to replicate (at most \
                 {MAX_REPLICATED} in all; did the image change during the launch?)"
            ),
        });
    }
    d.left.set(left - entries.len());
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, ty) in entries {
        let os = std::ffi::OsStr::from_bytes(name.to_bytes());
        let cpath = dir.join(os);
        let crel = cpath.strip_prefix("/").unwrap_or(&cpath);
        let dst = root.join(crel);
        // The type from the directory entry (no stat), or from lstat where d_type is unknown.
        let ty = match ty {
            Some(t) => t,
            None => match stat_at(src, Some(&name))?.st_mode & libc::S_IFMT {
                libc::S_IFLNK => Type::Symlink,
                libc::S_IFDIR => Type::Directory,
                libc::S_IFREG => Type::File,
                _ => Type::Fifo,
            },
        };
        match ty {
            Type::Symlink => {
                let t = nix::fcntl::readlinkat(Some(src.as_raw_fd()), os)
                    .map_err(|e| err("readlink", &cpath, e))?;
                std::os::unix::fs::symlink(&t, &dst).map_err(|er| io_err("symlink", &dst, er))?;
            }
            Type::Directory | Type::File
                if covered.contains(&cpath) && !replicate.contains(&cpath) =>
            {
                // A mount goes here: the image's entry would be hidden.
            }
            Type::Directory | Type::File => {
                // The entry itself (never a symlink: O_NOFOLLOW; a child of a directory inside
                // the image is inside it).
                let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let child = nix::fcntl::openat(Some(src.as_raw_fd()), os, flags, Mode::empty())
                    .map_err(|e| err("open", &cpath, e))?;
                // SAFETY: openat returned a new fd that nothing else owns.
                let child = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(child) };
                if ty == Type::Directory && replicate.contains(&cpath) {
                    mkdir(&dst, mode_of(&child)?)?;
                    fill(sys, d, &cpath, &child, mounts)?;
                    continue;
                }
                if ty == Type::Directory {
                    mkdir(&dst, 0o755)?;
                } else {
                    touch(&dst)?;
                }
                let tree = sys.clone_tree(child.as_fd(), false, &cpath)?;
                if entry_attrs != 0 {
                    sys.set_attr(tree.as_fd(), false, entry_attrs, &cpath)?;
                }
                let to = sys.open_in(
                    root_fd.as_fd(),
                    crel,
                    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
                )?;
                sys.move_mount(tree.as_fd(), to.as_fd(), &cpath)
                    .map_err(|e| full_table(e, &cpath))?;
                *mounts += 1;
            }
            // Device nodes, fifos and sockets in an image are left out (mounts are nodev
            // anyway).
            _ => {}
        }
    }
    Ok(())
}

/// `e` from `move_mount` onto `dest`, explained when it says the mount namespace is full
/// (`ENOSPC`: more mounts than the `fs.mount-max` sysctl allows).
fn full_table(e: ExecError, dest: &Path) -> ExecError {
    match e {
        ExecError::Sys { ref err, .. } if err.raw_os_error() == Some(libc::ENOSPC) => {
            ExecError::MountPoint {
                dest: dest.to_path_buf(),
                why: "the mount namespace is full (more mounts than the fs.mount-max sysctl \
                      allows)"
                    .into(),
            }
        }
        e => e,
    }
}

/// Opens a host path `O_PATH`.
pub fn open_path(p: &Path) -> Result<OwnedFd, ExecError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| io_err("open", p, e))
}

fn mkdir(p: &Path, mode: u32) -> Result<(), ExecError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(p)
        .map_err(|e| io_err("mkdir", p, e))
}

fn touch(p: &Path) -> Result<(), ExecError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map(drop)
        .map_err(|e| io_err("create", p, e))
}

/// Makes sure a mount point for `dest` exists in the assembled root at `root`, creating the
/// missing part only on Slipway's own tmpfs layers (`ours`: their device numbers), never in a
/// directory bound from the host or the image. Returns the canonical container path.
pub fn mount_point(
    root: &Path,
    dest: &Path,
    dir: bool,
    ours: &[u64],
) -> Result<PathBuf, ExecError> {
    mount_point_inner(root, dest, dir, ours).map_err(bounded)
}

fn mount_point_inner(
    root: &Path,
    dest: &Path,
    dir: bool,
    ours: &[u64],
) -> Result<PathBuf, ExecError> {
    let r = resolve_inner(root, dest)?;
    let host = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    match (r.existing, r.kind) {
        (None, Some(k)) => {
            if (k == Kind::Dir) != dir {
                return Err(io_err(
                    "mount point",
                    dest,
                    std::io::Error::from_raw_os_error(if dir {
                        libc::ENOTDIR
                    } else {
                        libc::EISDIR
                    }),
                ));
            }
        }
        (Some(n), _) => {
            let mut p = PathBuf::from("/");
            for c in r.path.components().skip(1).take(n) {
                p.push(c);
            }
            let parent = host(&p);
            let dev = fs::metadata(&parent)
                .map_err(|e| io_err("stat", &parent, e))?
                .dev();
            if !ours.contains(&dev) {
                return Err(ExecError::MountPoint {
                    dest: dest.to_path_buf(),
                    why: format!(
                        "{} does not exist and {} is not a Slipway tmpfs (it comes from the \
                         image or the host, which are not changed)",
                        shown(&r.path),
                        shown(&p)
                    ),
                });
            }
            let comps: Vec<_> = r.path.components().skip(1 + n).collect();
            for (i, c) in comps.iter().enumerate() {
                p.push(c);
                if i + 1 < comps.len() || dir {
                    mkdir(&host(&p), 0o755)?;
                } else {
                    touch(&host(&p))?;
                }
            }
        }
        (None, None) => {}
    }
    Ok(r.path)
}

#[cfg(test)]
mod tests;
