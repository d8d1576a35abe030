//! Laying out the container's root: a tmpfs that holds the image's top-level entries (each
//! bound in from the mounted image, symlinks copied) and every mount point the plan needs.
//!
//! Why a tmpfs root and not the image itself: a squashfs is read-only, so a missing
//! `/home/<user>`, `/tmp` or bind destination cannot be created in it. A directory the plan
//! needs to create something in is "replicated": made a directory on the tmpfs whose entries
//! are again bound one by one from the image (Apptainer's "underlay"). An overlay with a tmpfs
//! upper layer would do the same in one mount as root, but in an unprivileged user namespace
//! the image's root-owned directories are not writable through it; binds work in both modes.
//!
//! Destinations are resolved inside the root as the kernel's `RESOLVE_IN_ROOT` does (symlinks
//! and `..` are followed but clamped at the container's `/`), and the final open that the
//! mount goes through is `openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)`, so nothing is ever
//! mounted outside the root, whatever symlinks the image holds.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::sys::{Sys, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};
use super::ExecError;

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
pub fn resolve(root: &Path, dest: &Path) -> Result<Resolved, ExecError> {
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
/// `image_fd` is an `O_PATH` fd of `image`.
pub fn replicas(
    image: &Path,
    image_fd: &OwnedFd,
    dests: &[PathBuf],
) -> Result<BTreeSet<PathBuf>, ExecError> {
    let mut out = BTreeSet::new();
    for d in dests {
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
        let r = resolve(image, d)?;
        if let Some(n) = r.existing {
            let mut p = PathBuf::from("/");
            if n == 0 {
                out.insert(p.clone());
            }
            for c in r.path.components().skip(1).take(n) {
                p.push(c);
                out.insert(p.clone());
            }
        }
    }
    Ok(out)
}

/// Lays out the container root at `root` (an empty directory) from `image` (the mounted
/// image, `image_fd` an `O_PATH` fd of it). When nothing must be created at the top level the
/// image itself becomes the root (one mount, the fast path for images that have their mount
/// points); otherwise, and for every other directory in `replicate`, a tmpfs takes the
/// directory's place, holding its entries bound in from the image (symlinks copied) and room
/// for new mount points. Entries named in `covered` (destinations of the plan's mounts) are
/// left out of a replicated directory: whatever the image has there would be hidden, and the
/// mount point is made when the mount comes. Returns the number of mounts and the tmpfs
/// layers, each with an fd of its own mount (to make it read-only at the end, whatever is
/// mounted over it later).
pub fn build_root(
    sys: &dyn Sys,
    image: &Path,
    image_fd: &OwnedFd,
    root: &Path,
    replicate: &BTreeSet<PathBuf>,
    covered: &BTreeSet<PathBuf>,
) -> Result<(usize, Vec<(PathBuf, OwnedFd)>), ExecError> {
    let mut mounts = 1;
    let mut layers = Vec::new();
    let tops: Vec<&PathBuf> = replicate
        .iter()
        .filter(|r| !r.ancestors().skip(1).any(|a| replicate.contains(a)))
        .collect();
    if replicate.contains(Path::new("/")) {
        let data = format!("mode={:o}", dir_mode(image));
        sys.mount(
            "tmpfs",
            root,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&data),
        )?;
    } else {
        let tree = sys.clone_tree(image_fd.as_fd(), false, Path::new("/"))?;
        let to = open_path(root)?;
        sys.move_mount(tree.as_fd(), to.as_fd(), Path::new("/"))?;
    }
    let root_fd = open_path(root)?;
    for top in tops {
        let rel = top.strip_prefix("/").unwrap_or(top);
        if !rel.as_os_str().is_empty() {
            let to = sys.open_in(
                root_fd.as_fd(),
                rel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )?;
            let data = format!("mode={:o}", dir_mode(&image.join(rel)));
            let target = PathBuf::from(format!("/proc/self/fd/{}", to.as_raw_fd()));
            sys.mount(
                "tmpfs",
                &target,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&data),
            )?;
            mounts += 1;
        }
        let layer = open_path(&root.join(rel))?;
        let dirs = Dirs {
            image,
            image_fd,
            root,
            root_fd: &root_fd,
            replicate,
            covered,
        };
        fill(sys, &dirs, top, &mut mounts)?;
        layers.push((top.clone(), layer));
    }
    Ok((mounts, layers))
}

fn dir_mode(p: &Path) -> u32 {
    fs::metadata(p).map(|m| m.mode() & 0o7777).unwrap_or(0o755)
}

/// What [`fill`] works from: the mounted image and the root being laid out (paths and fds),
/// the directories to replicate and the paths the plan mounts over.
struct Dirs<'a> {
    image: &'a Path,
    image_fd: &'a OwnedFd,
    root: &'a Path,
    root_fd: &'a OwnedFd,
    replicate: &'a BTreeSet<PathBuf>,
    covered: &'a BTreeSet<PathBuf>,
}

fn fill(sys: &dyn Sys, d: &Dirs, dir: &Path, mounts: &mut usize) -> Result<(), ExecError> {
    let Dirs {
        image,
        image_fd,
        root,
        root_fd,
        replicate,
        covered,
    } = *d;
    let rel = dir.strip_prefix("/").unwrap_or(dir);
    let src_dir = image.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&src_dir)
        .map_err(|e| io_err("opendir", &src_dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let cpath = dir.join(&name);
        let crel = cpath.strip_prefix("/").unwrap_or(&cpath);
        let dst = root.join(crel);
        // The type from the directory entry (no stat); d_type-less file systems make std
        // lstat the entry.
        let ft = e.file_type().map_err(|er| io_err("lstat", &e.path(), er))?;
        if ft.is_symlink() {
            let t = fs::read_link(e.path()).map_err(|er| io_err("readlink", &e.path(), er))?;
            std::os::unix::fs::symlink(&t, &dst).map_err(|er| io_err("symlink", &dst, er))?;
        } else if covered.contains(&cpath) && !replicate.contains(&cpath) {
            // A mount goes here: the image's entry would be hidden.
            continue;
        } else if ft.is_dir() && replicate.contains(&cpath) {
            let meta =
                fs::symlink_metadata(e.path()).map_err(|er| io_err("lstat", &e.path(), er))?;
            mkdir(&dst, meta.mode() & 0o7777)?;
            fill(sys, d, &cpath, mounts)?;
        } else if ft.is_dir() || ft.is_file() {
            if ft.is_dir() {
                mkdir(&dst, 0o755)?;
            } else {
                touch(&dst)?;
            }
            let src = sys.open_in(
                image_fd.as_fd(),
                crel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )?;
            let tree = sys.clone_tree(src.as_fd(), false, &cpath)?;
            let to = sys.open_in(
                root_fd.as_fd(),
                crel,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )?;
            sys.move_mount(tree.as_fd(), to.as_fd(), &cpath)?;
            *mounts += 1;
        }
        // Device nodes, fifos and sockets in an image are left out (mounts are nodev anyway).
    }
    Ok(())
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
    let r = resolve(root, dest)?;
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
                        r.path.display(),
                        p.display()
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
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("host-etc")).unwrap();
        fs::create_dir_all(r.join("var")).unwrap();
        fs::create_dir_all(r.join("a/b")).unwrap();
        symlink("/host-etc", r.join("etc")).unwrap();
        symlink("/etc", r.join("var/etc")).unwrap();
        symlink("../../..", r.join("a/b/link")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        fs::write(r.join("file"), "").unwrap();

        let x = resolve(r, Path::new("/etc/hosts")).unwrap();
        assert_eq!(x.path, PathBuf::from("/host-etc/hosts"));
        assert_eq!(x.existing, Some(1));
        let x = resolve(r, Path::new("/var/etc/passwd")).unwrap();
        assert_eq!(x.path, PathBuf::from("/host-etc/passwd"));
        let x = resolve(r, Path::new("/a/b/link/etc/x")).unwrap();
        assert_eq!(x.path, PathBuf::from("/host-etc/x"));
        let x = resolve(r, Path::new("/a/b/link/../../..")).unwrap();
        assert_eq!(x.path, PathBuf::from("/"));
        assert_eq!(x.kind, Some(Kind::Dir));
        let x = resolve(r, Path::new("/a/b")).unwrap();
        assert_eq!((x.existing, x.kind), (None, Some(Kind::Dir)));
        let x = resolve(r, Path::new("/a/new/deeper")).unwrap();
        assert_eq!(x.existing, Some(1));
        assert!(resolve(r, Path::new("/loop/x")).is_err());
        assert!(resolve(r, Path::new("/file/x")).is_err());

        let reps = replicas(
            r,
            &open_path(r).unwrap(),
            &["/a/b/new".into(), "/etc/hosts".into(), "/newtop/x".into()],
        )
        .unwrap();
        let reps: Vec<_> = reps.into_iter().collect();
        assert_eq!(
            reps,
            vec![
                PathBuf::from("/"),
                PathBuf::from("/a"),
                PathBuf::from("/a/b"),
                PathBuf::from("/host-etc")
            ]
        );
    }

    #[test]
    fn mount_points_only_on_our_layers() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr")).unwrap();
        fs::write(r.join("usr/file"), "").unwrap();
        let ours = [fs::metadata(r).unwrap().dev()];
        assert_eq!(
            mount_point(r, Path::new("/x/y/f"), false, &ours).unwrap(),
            PathBuf::from("/x/y/f")
        );
        assert!(r.join("x/y/f").is_file());
        assert!(mount_point(r, Path::new("/usr/file"), true, &ours).is_err());
        assert!(mount_point(r, Path::new("/usr/file"), false, &ours).is_ok());
        let err = mount_point(r, Path::new("/usr/new"), true, &[0]).unwrap_err();
        assert!(err.to_string().contains("not a Slipway tmpfs"), "{err}");
    }
}
