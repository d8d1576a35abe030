//! Carrying a plan out, in two halves that the SPANK plugin reuses:
//!
//! - [`prepare`] builds the container's mount namespace once (namespaces, image mount, the
//!   tmpfs root, every mount of the plan, `pivot_root`) and returns a [`Prepared`] that holds
//!   the namespace fds (mount, and user in unprivileged mode), the container environment and
//!   what teardown needs.
//! - Entering is a set of steps a caller can take piecemeal: [`enter_namespace`] (`setns`,
//!   for a task that did not prepare), [`drop_identity`], [`apply_env`] or [`environ`],
//!   [`chdir`], and [`exec`]. `slipway exec` does all of them in one process; Slurm execs the
//!   task itself after the first four.
//!
//! On failure nothing is left in the host namespace: every mount is made in the private mount
//! namespace (gone with the process), loop devices are autoclear, squashfuse is killed.

pub mod creds;
mod enter;
pub mod fuse;
pub mod image_files;
pub mod loopdev;
pub mod prefetch;
pub mod rootfs;
mod setup;
use setup::{
    dev_of, fd_is_dir, fd_stat, image_dests, make_in_ours, mkdir, mount_flags, open_ro,
    open_user_source, ours_dir, write_file, write_in_ours,
};
pub mod shellenv;
pub mod sys;
pub mod unpack;

pub use enter::{
    apply_env, chdir, drop_bounding_set, drop_identity, enter_namespace, environ, exec,
    set_no_new_privs,
};
use image_files::identity_files;
pub use image_files::{
    read_env_scripts, read_env_scripts_in_container, MAX_ENV_DIR_ENTRIES, MAX_ENV_SCRIPT,
    MAX_ENV_SCRIPTS, MAX_ENV_SCRIPTS_TOTAL, MAX_IDENTITY_FILE, MAX_WARNINGS,
};

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::plan::{ImageMount, Mode, MountKind, Plan, PlanError};
use sys::{
    Sys, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
};

/// Where the staging tmpfs is mounted inside the new (private) mount namespace. `/tmp`
/// exists on every host; mounting over it in our namespace changes nothing on the host, and
/// every host path the container needs is opened before.
pub const STAGING: &str = "/tmp";

/// Errors from preparing or entering a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A system call failed.
    #[error("{syscall} {}: {err}", path.display())]
    Sys {
        /// The call.
        syscall: &'static str,
        /// The path it was about.
        path: PathBuf,
        /// The errno (in the message, not chained, so it is printed once).
        err: std::io::Error,
    },
    /// The image's environment could not be evaluated (its scripts timed out, failed, ...).
    #[error("{0}")]
    Environment(String),
    /// The image could not be unpacked ([`unpack`]).
    #[error("{0}")]
    Unpack(String),
    /// A mount point cannot be made.
    #[error("mount point {}: {why}", dest.display())]
    MountPoint {
        /// Container path.
        dest: PathBuf,
        /// Why.
        why: String,
    },
    /// The plan refuses the launch.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A helper program could not be started.
    #[error("cannot start {program}: {err}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        err: std::io::Error,
    },
    /// A bind source cannot be used.
    #[error("bind source {}: {why}", path.display())]
    Source {
        /// Host path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file the launch reads from the image cannot be used.
    #[error("image file {}: {why}", path.display())]
    ImageFile {
        /// Container path.
        path: PathBuf,
        /// Why (and what would fix it).
        why: String,
    },
    /// The command could not be executed.
    #[error("{command}: {err}")]
    Exec {
        /// The command as given.
        command: String,
        /// The errno (in the message, not chained, so it is printed once).
        err: std::io::Error,
    },
}

fn sys_err(syscall: &'static str, path: impl AsRef<Path>) -> ExecError {
    ExecError::Sys {
        syscall,
        path: path.as_ref().to_path_buf(),
        err: std::io::Error::last_os_error(),
    }
}

fn io_err(syscall: &'static str, path: impl AsRef<Path>, err: std::io::Error) -> ExecError {
    ExecError::Sys {
        syscall,
        path: path.as_ref().to_path_buf(),
        err,
    }
}

/// A prepared container: its namespaces and what is needed to enter and tear it down.
#[derive(Debug)]
pub struct Prepared {
    /// The container's mount namespace (`/proc/self/ns/mnt` after `pivot_root`); `None` from
    /// [`prepare_for_exec`].
    pub mnt_ns: Option<OwnedFd>,
    /// The user namespace, in unprivileged mode (and not from [`prepare_for_exec`]).
    pub user_ns: Option<OwnedFd>,
    /// The container's environment (image scripts applied).
    pub env: BTreeMap<String, String>,
    /// Environment lines that were not applied (reported, never silently dropped).
    pub warnings: Vec<String>,
    /// Number of mounts made.
    pub mounts: usize,
    squashfuse: Option<Child>,
    /// From [`prepare`]: the read-ahead of the command, still going while the first
    /// processes join and exec it.
    read_ahead: StopOnDrop,
}

impl Prepared {
    /// Ends what outlives the namespace's users (the read-ahead, squashfuse). Mounts and loop
    /// devices go with the mount namespace when its last process and fd are gone.
    pub fn teardown(mut self) {
        drop(std::mem::replace(&mut self.read_ahead, StopOnDrop(None)));
        kill(&mut self.squashfuse);
    }
}

fn kill(c: &mut Option<Child>) {
    if let Some(mut c) = c.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Stops a [`prefetch::Prefetch`] when dropped.
struct StopOnDrop(Option<prefetch::Prefetch>);

impl std::fmt::Debug for StopOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "reading ahead"
        } else {
            "-"
        })
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.finish();
        }
    }
}

/// Kills squashfuse if preparing fails half-way.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// Runs `f` with the file-system identity of the container user (privileged mode), so host
/// paths are looked up with the user's permissions: a bind cannot reach what the user
/// could not reach on the host.
fn as_user<T>(plan: &Plan, f: impl FnOnce() -> Result<T, ExecError>) -> Result<T, ExecError> {
    let id = &plan.identity;
    if plan.mode != Mode::Privileged || id.uid == 0 {
        return f();
    }
    let _user = creds::FsIdentity::enter(id.uid, id.gid, &id.groups)?;
    f()
}

/// When the command's read-ahead ([`prefetch`]) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadAhead {
    /// While the container is laid out, stopped before `prepare_for_exec` returns (its caller
    /// changes credentials and execs).
    WhileLaying,
    /// Once the container is laid out, past the return: the processes that join the
    /// container exec the command while it is read ([`Prepared::teardown`] stops it).
    Kept,
}

/// Builds the container's mount namespace and moves the calling process into its root, keeping
/// fds of the namespaces for other processes to join ([`enter_namespace`]). The plan's
/// command (the step's program, for the SPANK plugin) is read ahead from a squashfs image on
/// helper threads started once the container is laid out, which go on after the return while
/// the first processes join and exec it.
/// Must be called single-threaded (user namespaces require it).
pub fn prepare(
    plan: &Plan,
    host_env: &[(String, String)],
    sys: &dyn Sys,
    staging: &Path,
) -> Result<Prepared, ExecError> {
    let mut p = prepare_inner(plan, host_env, sys, staging, ReadAhead::Kept)?;
    p.mnt_ns = Some(open_ro("/proc/self/ns/mnt")?);
    if plan.mode != Mode::Privileged {
        p.user_ns = Some(open_ro("/proc/self/ns/user")?);
    }
    Ok(p)
}

/// [`prepare`] for a caller that stays in the container and execs (`slipway exec`): no
/// namespace fds are opened, and the command's executable is read ahead from a squashfs
/// image while the container is laid out ([`prefetch`]).
pub fn prepare_for_exec(
    plan: &Plan,
    host_env: &[(String, String)],
    sys: &dyn Sys,
    staging: &Path,
) -> Result<Prepared, ExecError> {
    prepare_inner(plan, host_env, sys, staging, ReadAhead::WhileLaying)
}

fn prepare_inner(
    plan: &Plan,
    host_env: &[(String, String)],
    sys: &dyn Sys,
    staging: &Path,
    read_ahead: ReadAhead,
) -> Result<Prepared, ExecError> {
    plan.check()?;
    let privileged = plan.mode == Mode::Privileged;
    let id = &plan.identity;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

    // The image, opened as the user (they must be able to read it).
    let image_file = match plan.image.mount {
        ImageMount::Directory => None,
        _ => Some(as_user(plan, || {
            crate::sif::open_regular(&plan.image.path)
                .map_err(|e| io_err("open", &plan.image.path, e))
        })?),
    };

    // An unpacked image: made now if missing (as the user, on the host), then bound as a
    // directory image is.
    let unpacked = match (&plan.image.mount, &image_file) {
        (ImageMount::Unpacked { span, cache }, Some(f)) => Some(as_user(plan, || {
            unpack::ensure(&plan.image.path, f, *span, cache)
        })?),
        _ => None,
    };
    let image_dir = unpacked.as_deref().unwrap_or(&plan.image.path);
    let as_dir = matches!(
        plan.image.mount,
        ImageMount::Directory | ImageMount::Unpacked { .. }
    );

    // Namespaces.
    if privileged {
        sys.unshare(libc::CLONE_NEWNS)?;
    } else {
        sys.unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)?;
        sys.write_proc(Path::new("/proc/self/setgroups"), "deny")?;
        sys.write_proc(
            Path::new("/proc/self/uid_map"),
            &format!("{0} {0} 1\n", id.uid),
        )?;
        sys.write_proc(
            Path::new("/proc/self/gid_map"),
            &format!("{0} {0} 1\n", id.gid),
        )?;
    }
    // Nothing we mount may propagate back to the host.
    sys.mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;

    // Host sources, opened in the new namespace (binds must come from it) and before the
    // staging tmpfs covers /tmp. User-chosen ones are looked up as the user.
    // A user's source was checked by the plan at its real path (no symlinks): it is opened
    // at that path with no symlink followed, so swapping a checked directory for a symlink
    // (to /etc, say) while the launch runs fails instead of binding what the link leads to.
    let mut sources: Vec<Option<OwnedFd>> = Vec::new();
    for m in &plan.mounts {
        sources.push(match &m.kind {
            MountKind::Bind { source, .. } => Some(if m.as_user {
                as_user(plan, || open_user_source(source))?
            } else {
                rootfs::open_path(source)?
            }),
            _ => None,
        });
    }
    let image_dir_fd = match as_dir {
        true => Some(as_user(plan, || rootfs::open_path(image_dir))?),
        false => None,
    };

    // Unprivileged, the host's binds are cloned now, before the staging tmpfs exists (a
    // clone with submounts taken later would carry it along). In a user namespace every
    // inherited mount is locked, and the kernel refuses a non-recursive clone of a tree with
    // locked mounts below it (EINVAL): such a source (a node's /tmp with a per-job scratch
    // below it, an autofs home) is bound with its submounts, as the host shows it to the user.
    let mut early: Vec<Option<(OwnedFd, bool)>> = Vec::new();
    if !privileged {
        for (m, src) in plan.mounts.iter().zip(&sources) {
            early.push(match (&m.kind, src) {
                (MountKind::Bind { recursive, .. }, Some(fd)) => {
                    Some(match sys.clone_tree(fd.as_fd(), *recursive, &m.dest) {
                        Err(ExecError::Sys { ref err, .. })
                            if !*recursive && err.raw_os_error() == Some(libc::EINVAL) =>
                        {
                            (sys.clone_tree(fd.as_fd(), true, &m.dest)?, true)
                        }
                        other => (other?, *recursive),
                    })
                }
                _ => None,
            });
        }
    }

    // Staging: a tmpfs holding the image mount point, the container root, the layers and the
    // generated files.
    sys.mount(
        "tmpfs",
        staging,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    let img = staging.join("image");
    let root = staging.join("root");
    let files = staging.join("files");
    let layer_dir = staging.join("layers");
    for d in [&img, &root, &files, &layer_dir] {
        mkdir(d)?;
    }

    // The image. A directory image without --writable-tmpfs is used where it is, through the
    // fd opened (as the user) above, and each bind from it is made read-only, nosuid and
    // nodev itself; anything else is mounted at `img` first.
    let direct = as_dir && !plan.image.writable_tmpfs;
    let mut guard = Guard(None);
    match plan.image.mount {
        ImageMount::Directory | ImageMount::Unpacked { .. } if direct => {}
        ImageMount::Directory | ImageMount::Unpacked { .. } => {
            let fd = image_dir_fd.as_ref().expect("opened above");
            let t = sys.clone_tree(fd.as_fd(), false, image_dir)?;
            sys.set_attr(
                t.as_fd(),
                false,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                image_dir,
            )?;
            let to = rootfs::open_path(&img)?;
            sys.move_mount(t.as_fd(), to.as_fd(), &img)?;
        }
        ImageMount::KernelLoop { span } => {
            let f = image_file.as_ref().expect("opened above");
            let (dev, path) = match loopdev::find_shared(f, span) {
                Some(shared) => shared,
                None => loopdev::attach(f, &plan.image.path, span)?,
            };
            sys.mount(
                &path.display().to_string(),
                &img,
                Some("squashfs"),
                flags,
                None,
            )?;
            // The mount holds the device now; autoclear frees it when the mount goes.
            drop(dev);
        }
        ImageMount::Squashfuse { span } => {
            let f = image_file.as_ref().expect("opened above");
            guard.0 = Some(fuse::mount(sys, f, span, &img, privileged, id.uid, id.gid)?);
        }
    }
    drop(image_file);
    let mut img_dir = img.clone();
    if plan.image.writable_tmpfs {
        let ovl = staging.join("overlay");
        mkdir(&ovl)?;
        sys.mount(
            "tmpfs",
            &ovl,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        )?;
        let (upper, work, merged) = (ovl.join("upper"), ovl.join("work"), staging.join("merged"));
        for d in [&upper, &work, &merged] {
            mkdir(d)?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{}",
            img.display(),
            upper.display(),
            work.display(),
            if privileged { "" } else { ",userxattr" }
        );
        sys.mount(
            "overlay",
            &merged,
            Some("overlay"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&opts),
        )?;
        img_dir = merged;
    }
    let (img_dir, img_fd, entry_attrs) = match image_dir_fd {
        Some(fd) if direct => (
            image_dir.to_path_buf(),
            fd,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        ),
        _ => {
            let fd = rootfs::open_path(&img_dir)?;
            (img_dir, fd, 0)
        }
    };
    // Decompressing the command's pages: for `exec`, from now on, beside the rest of the
    // set-up; for a container others join, once it is laid out (below: with one squashfs
    // decompressor, the helpers would hold up the set-up's own reads of the image).
    let command = match (&plan.image.mount, plan.command.first()) {
        (ImageMount::Directory | ImageMount::Unpacked { .. }, _) | (_, None) => None,
        (_, Some(cmd)) => Some(cmd),
    };
    let reader = match (read_ahead, command) {
        (ReadAhead::WhileLaying, Some(cmd)) => prefetch::start(img_fd.as_fd(), cmd),
        _ => None,
    };
    // Stopped on every way out (before credentials change or the command is executed).
    let reader = StopOnDrop(reader);

    // The container root: the image, with a layer in place of each directory where a mount
    // point must be created (the root itself when a top-level one is missing).
    let dests = image_dests(plan);
    let replicate = rootfs::replicas(&img_dir, &img_fd, &dests)?;
    let covered: BTreeSet<PathBuf> = plan.mounts.iter().map(|m| m.dest.clone()).collect();
    let (mut count, layers) = rootfs::build_root(
        sys,
        &img_fd,
        entry_attrs,
        &root,
        &replicate,
        &covered,
        &layer_dir,
    )?;
    let root_fd = rootfs::open_path(&root)?;
    let mut ours = Vec::new();
    for (_, fd) in &layers {
        ours.push(fd_stat(fd)?.st_dev);
    }
    if plan.image.writable_tmpfs {
        ours.push(dev_of(&img_dir)?);
    }

    // The generated passwd and group: written where they go when that is a directory on a
    // Slipway tmpfs (a replicated /etc), else into the staging directory and bound from there.
    // Files of the image are read from the image's own mount (never through a bind: the
    // reads below do not cross mount points), before anything is mounted into it, and with
    // the user's file-system identity: root reads nothing the user could not.
    let mut warnings = plan.warnings.clone();
    let (passwd, group) = as_user(plan, || identity_files(sys, plan, &img_fd, &mut warnings))?;
    let scripts = as_user(plan, || Ok(read_env_scripts(img_fd.as_fd())))?;
    let generated = |file: &str| if file == "passwd" { &passwd } else { &group };

    // Every mount of the plan, in order. `made_in`: the directory the last missing mount point
    // was made in (container path, and an fd checked to be a directory on a Slipway tmpfs),
    // kept while only mount points made in it are mounted on: the minimal /dev's nodes all go
    // there, so each costs one create instead of a walk of its path.
    let mut made_in: Option<(PathBuf, OwnedFd)> = None;
    for (index, (m, src)) in plan.mounts.iter().zip(&sources).enumerate() {
        if let MountKind::Generated { file } = &m.kind {
            if write_in_ours(sys, &root_fd, &m.dest, generated(file), &ours, &mut made_in)? {
                continue;
            }
        }
        let gen_fd;
        let src_fd = match (&m.kind, src) {
            (MountKind::Generated { file }, _) => {
                let at = files.join(file);
                write_file(&at, generated(file))?;
                gen_fd = rootfs::open_path(&at)?;
                Some(&gen_fd)
            }
            (_, s) => s.as_ref(),
        };
        let is_dir = match (&m.kind, src_fd) {
            (MountKind::Tmpfs { .. }, _) => true,
            (MountKind::Generated { .. }, _) => false,
            (_, Some(fd)) => fd_is_dir(fd)?,
            (_, None) => false,
        };
        // Most mount points exist (in the image or on an earlier mount): one openat2, which
        // resolves inside the root. Only a missing one is made, on a Slipway tmpfs.
        let dest_rel = m.dest.strip_prefix("/").unwrap_or(&m.dest).to_path_buf();
        let mut made = false;
        let to = match sys.open_in(
            root_fd.as_fd(),
            &dest_rel,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        ) {
            Ok(fd) => {
                if fd_is_dir(&fd)? != is_dir {
                    return Err(ExecError::MountPoint {
                        dest: m.dest.clone(),
                        why: format!(
                            "the container has a {} there, the source is a {}",
                            if is_dir { "file" } else { "directory" },
                            if is_dir { "directory" } else { "file" }
                        ),
                    });
                }
                fd
            }
            Err(ExecError::Sys { ref err, .. }) if err.raw_os_error() == Some(libc::ENOENT) => {
                if let Some(fd) = make_in_ours(sys, &root_fd, &m.dest, is_dir, &ours, &mut made_in)?
                {
                    made = true;
                    fd
                } else {
                    let canon = rootfs::mount_point(&root, &m.dest, is_dir, &ours)?;
                    let rel = canon.strip_prefix("/").unwrap_or(&canon).to_path_buf();
                    sys.open_in(
                        root_fd.as_fd(),
                        &rel,
                        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
                    )?
                }
            }
            Err(e) => return Err(e),
        };
        // A mount anywhere but on an entry just made in `made_in` could cover that directory.
        if !made {
            made_in = None;
        }
        let rel = dest_rel;
        let mut attrs = 0;
        if m.readonly {
            attrs |= MOUNT_ATTR_RDONLY;
        }
        if m.nosuid {
            attrs |= MOUNT_ATTR_NOSUID;
        }
        if m.nodev {
            attrs |= MOUNT_ATTR_NODEV;
        }
        match &m.kind {
            MountKind::Tmpfs { mode, size } => {
                let mut data = format!("mode={mode:o}");
                if let Some(s) = size {
                    data.push_str(&format!(",size={s}"));
                }
                let mut fl = 0;
                if m.nosuid {
                    fl |= libc::MS_NOSUID;
                }
                if m.nodev {
                    fl |= libc::MS_NODEV;
                }
                let target = PathBuf::from(format!("/proc/self/fd/{}", to.as_raw_fd()));
                sys.mount("tmpfs", &target, Some("tmpfs"), fl, Some(&data))?;
                // The new tmpfs's device, looked up inside the root (never via a host path,
                // which could follow an image symlink out of it).
                let fresh = sys.open_in(
                    root_fd.as_fd(),
                    &rel,
                    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
                )?;
                ours.push(fd_stat(&fresh)?.st_dev);
            }
            MountKind::Bind { .. } | MountKind::Generated { .. } => {
                let recursive = matches!(
                    m.kind,
                    MountKind::Bind {
                        recursive: true,
                        ..
                    }
                );
                let fd = src_fd.expect("bind source opened");
                let (t, recursive) = match early.get_mut(index).and_then(Option::take) {
                    Some(cloned) => cloned,
                    None => (sys.clone_tree(fd.as_fd(), recursive, &m.dest)?, recursive),
                };
                // A clone keeps its source's flags: skip mount_setattr when they are already
                // there (only a non-recursive clone can be judged from the source alone).
                if !recursive && attrs != 0 {
                    attrs &= !mount_flags(fd)?;
                }
                if attrs != 0 {
                    sys.set_attr(t.as_fd(), recursive, attrs, &m.dest)?;
                }
                sys.move_mount(t.as_fd(), to.as_fd(), &m.dest)?;
            }
        }
        count += 1;
    }
    // Links (all in the minimal /dev): made relative to an fd of their parent, opened inside
    // the root once per directory and checked to be a directory on a Slipway tmpfs.
    let mut link_dir: Option<(PathBuf, OwnedFd)> = None;
    for l in &plan.links {
        let parent = l.dest.parent().unwrap_or(Path::new("/"));
        if let (Some(dir), Some(name)) = (
            ours_dir(sys, &root_fd, parent, &ours, &mut link_dir)?,
            l.dest.file_name(),
        ) {
            let t = CString::new(l.target.as_bytes()).map_err(|_| ExecError::MountPoint {
                dest: l.dest.clone(),
                why: "link target has a NUL byte".into(),
            })?;
            let n = CString::new(name.as_bytes()).map_err(|_| ExecError::MountPoint {
                dest: l.dest.clone(),
                why: "name has a NUL byte".into(),
            })?;
            // SAFETY: both strings are NUL-terminated; dir is an open directory fd.
            if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) } < 0 {
                return Err(sys_err("symlink", &l.dest));
            }
            continue;
        }
        let r = rootfs::resolve(&root, parent)?;
        let host = root.join(r.path.strip_prefix("/").unwrap_or(&r.path));
        if r.existing.is_some() || !ours.contains(&dev_of(&host)?) {
            return Err(ExecError::MountPoint {
                dest: l.dest.clone(),
                why: "parent is not a Slipway tmpfs".into(),
            });
        }
        let name = l.dest.file_name().unwrap_or_default();
        std::os::unix::fs::symlink(&l.target, host.join(name))
            .map_err(|e| io_err("symlink", &l.dest, e))?;
    }

    // The root and the other tmpfs layers stay read-only unless --writable-tmpfs (the image
    // itself is mounted read-only).
    if !plan.image.writable_tmpfs {
        for (dir, fd) in &layers {
            sys.set_attr(
                fd.as_fd(),
                false,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                dir,
            )?;
        }
    }
    drop(layers);
    drop(root_fd);
    let kept = match (read_ahead, command) {
        (ReadAhead::Kept, Some(cmd)) => StopOnDrop(prefetch::start(img_fd.as_fd(), cmd)),
        _ => StopOnDrop(None),
    };
    drop(img_fd);
    drop(sources);

    // Into the container's root (and the old root, with the staging tmpfs, detached).
    sys.pivot_root(&root)?;

    // The environment, with the image's scripts (read above, from the image alone), by the
    // Rust evaluator or the image's own shell as the user (shellenv).
    let (env, told) =
        shellenv::environment(plan, host_env, &scripts, None).map_err(ExecError::Environment)?;
    warnings.extend(told.iter().take(MAX_WARNINGS).cloned());
    if told.len() > MAX_WARNINGS {
        warnings.push(format!(
            "{} more environment lines of the image not applied (not listed)",
            told.len() - MAX_WARNINGS
        ));
    }

    drop(reader);
    Ok(Prepared {
        mnt_ns: None,
        user_ns: None,
        env,
        warnings,
        mounts: count,
        squashfuse: guard.0.take(),
        read_ahead: kept,
    })
}

#[cfg(test)]
mod tests;
