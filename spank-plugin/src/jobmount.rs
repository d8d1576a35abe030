//! One mount of an image per job and node, kept across the job's steps (plugin argument
//! `mount_per=job`, the default): the Slurm counterpart of the PBS hook's premount.
//!
//! Without it every step attaches the image's loop device and mounts its squashfs anew, and
//! the new superblock starts with an empty page cache: each step decompresses its program
//! again. With it, the first step's keeper (root, in slurmd's mount namespace, before it makes
//! the container's) mounts the image read-only, nosuid and nodev at
//! `<spool>/slipway-images/job-<id>/<key>`, `<key>` naming the image file (device, inode, size,
//! modification time) and the squashfs's offset in it; the container binds that directory as a
//! directory image is bound. Later steps of the job on the node find the mount and bind it too.
//! The job's epilog (`slurm_spank_job_epilog`, root, in slurmd's namespace) detaches the mounts
//! and removes the directory; the loop devices go with the last mount (autoclear).
//!
//! Only images the policy has the kernel mount (`images.kernel_mount`) are kept so; the
//! policy is checked at every step before. The directories are root's (0711: the job's user
//! may pass through to its image, not list them); the image file is opened with the user's
//! identity, as for a step's own mount. Anything that fails here leaves the step to mount the
//! image itself, as before.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use slipway_runtime::exec::{creds::FsIdentity, loopdev};
use slipway_runtime::plan::{ImageMount, Plan};
use slipway_runtime::policy::Format;

/// The directory under slurmd's spool that holds the jobs' image mounts.
pub const IMAGES_DIR: &str = "slipway-images";

/// The most images one job keeps mounted on a node.
pub const MAX_PER_JOB: usize = 16;

/// Where job `job`'s images are mounted on this node.
pub fn job_dir(spool: &Path, job: u32) -> PathBuf {
    spool.join(IMAGES_DIR).join(format!("job-{job}"))
}

/// In the keeper (root, before its own mount namespace): `plan` with its kernel-mounted image
/// replaced by the job's mount of it under `dir` (made now if the job has none yet), or `None`
/// when the plan mounts no image with the kernel.
pub fn bind_job_mount(plan: &Plan, dir: &Path) -> Result<Option<Plan>, String> {
    let ImageMount::KernelLoop { span } = plan.image.mount else {
        return Ok(None);
    };
    let id = &plan.identity;
    let file = {
        let _user = FsIdentity::enter(id.uid, id.gid, &id.groups).map_err(|e| e.to_string())?;
        // Never blocks (a FIFO swapped in since the plan looked).
        slipway_runtime::sif::open_regular(&plan.image.path)
            .map_err(|e| format!("{}: {e}", plan.image.path.display()))?
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let key = format!(
        "{:x}-{:x}-{}-{}-{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        span.offset
    );
    root_dir(dir.parent().ok_or("no parent")?)?;
    root_dir(dir)?;
    let lock = File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: flock on an fd we own; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(format!(
            "lock {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    let at = dir.join(&key);
    if !is_mount_point(&at, dir) {
        // A job that keeps changing its image file (a new key each time) would hold a loop
        // device per version until its end: past a few, its steps mount for themselves.
        let held = std::fs::read_dir(dir).map_or(0, |d| d.count());
        if held >= MAX_PER_JOB {
            return Err(format!(
                "the job has {held} images mounted on this node already (at most {MAX_PER_JOB})"
            ));
        }
        match std::fs::DirBuilder::new().mode(0o755).create(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("mkdir {}: {e}", at.display())),
        }
        let (dev, path) = match loopdev::find_shared(&file, span) {
            Some(shared) => shared,
            None => loopdev::attach(&file, &plan.image.path, span).map_err(|e| e.to_string())?,
        };
        let (src, target) = (c_path(&path)?, c_path(&at)?);
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                c"squashfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(format!(
                "mount {} on {}: {}",
                plan.image.path.display(),
                at.display(),
                std::io::Error::last_os_error()
            ));
        }
        // The mount holds the loop device now; autoclear frees it when the mount goes.
        drop(dev);
    }
    let mut plan = plan.clone();
    plan.image.named = Some(std::mem::replace(&mut plan.image.path, at));
    plan.image.format = Format::Dir;
    plan.image.mount = ImageMount::Directory;
    plan.image.rule = format!("{} (mounted once for the job)", plan.image.rule);
    Ok(Some(plan))
}

fn c_path(p: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL", p.display()))
}

/// `dir` as a directory of root's, mode 0711 (made if missing); an existing one must be
/// root's and no symlink.
fn root_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: not a directory of root's that only root can write",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether something is mounted on `at` (a directory in `parent`): a device other than the
/// parent's.
fn is_mount_point(at: &Path, parent: &Path) -> bool {
    match (
        std::fs::symlink_metadata(at),
        std::fs::symlink_metadata(parent),
    ) {
        (Ok(a), Ok(p)) => a.is_dir() && a.dev() != p.dev(),
        _ => false,
    }
}

/// At the job's end (root, slurmd's namespace): detaches every mount under `dir` and removes
/// it. What cannot be removed is named in the result (for slurmd's log).
pub fn remove(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return problems;
    };
    for e in entries.filter_map(Result::ok) {
        let at = e.path();
        if is_mount_point(&at, dir) {
            let Ok(target) = c_path(&at) else {
                continue;
            };
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } < 0 {
                let err = std::io::Error::last_os_error();
                problems.push(format!("umount {}: {err}", at.display()));
                continue;
            }
        }
        if let Err(err) = std::fs::remove_dir(&at) {
            problems.push(format!("rmdir {}: {err}", at.display()));
        }
    }
    if let Err(err) = std::fs::remove_dir(dir) {
        problems.push(format!("rmdir {}: {err}", dir.display()));
    }
    problems
}

/// The jobs with a step on this node: slurmstepd's sockets in the spool, named
/// `<node>_<job>.<step>` (the batch and extern steps included). `None` when the spool cannot
/// be read.
pub fn jobs_with_steps(spool: &Path) -> Option<BTreeSet<u32>> {
    use std::os::unix::fs::FileTypeExt;
    let entries = std::fs::read_dir(spool).ok()?;
    let mut jobs = BTreeSet::new();
    for e in entries.filter_map(Result::ok) {
        if !e.file_type().is_ok_and(|t| t.is_socket()) {
            continue;
        }
        let name = e.file_name();
        let job = name
            .to_str()
            .and_then(|n| n.rsplit_once('_'))
            .and_then(|(_, rest)| rest.split('.').next())
            .and_then(|j| j.parse().ok());
        if let Some(job) = job {
            jobs.insert(job);
        }
    }
    Some(jobs)
}

/// At slurmd's start (root, slurmd's namespace, before it takes any request): removes the
/// image mounts of jobs that have no step on this node, left when a job's epilog ran without
/// the plugin (a plugstack.conf being edited, the plugin taken out and put back) or never ran.
/// A running job keeps its mounts; one between steps loses them, and its next step mounts the
/// image again. Returns what it did and what failed, for slurmd's log.
pub fn sweep(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let root = spool.join(IMAGES_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return out;
    };
    let Some(live) = jobs_with_steps(spool) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(job) = name
            .to_str()
            .and_then(|n| n.strip_prefix("job-"))
            .and_then(|j| j.parse::<u32>().ok())
        else {
            continue;
        };
        if live.contains(&job) {
            continue;
        }
        let problems = remove(&e.path());
        if problems.is_empty() {
            out.push(format!(
                "removed the image mounts of job {job} (no step of it runs here; its epilog \
                 did not remove them)"
            ));
        }
        out.extend(problems);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_dirs_live_under_the_spool() {
        assert_eq!(
            job_dir(Path::new("/var/spool/slurmd"), 42),
            PathBuf::from("/var/spool/slurmd/slipway-images/job-42")
        );
    }

    #[test]
    fn live_jobs_are_those_with_a_stepd_socket() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("slipway-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // As slurmstepd names them: a step, the batch step, a job with an underscore in its
        // node's name; a plain file and a directory are no steps.
        let _a = UnixListener::bind(dir.join("node1_7.0")).unwrap();
        let _b = UnixListener::bind(dir.join("node1_9.4294967291")).unwrap();
        let _c = UnixListener::bind(dir.join("gpu_node_12.3")).unwrap();
        std::fs::write(dir.join("node1_8.0"), "").unwrap();
        std::fs::create_dir(dir.join("job00010")).unwrap();
        let jobs = jobs_with_steps(&dir).unwrap();
        assert_eq!(jobs.into_iter().collect::<Vec<_>>(), [7, 9, 12]);

        // The sweep keeps job 7's directory and removes job 8's (no step).
        for j in [7, 8] {
            std::fs::create_dir_all(job_dir(&dir, j).join("key")).unwrap();
        }
        let done = sweep(&dir);
        assert!(job_dir(&dir, 7).join("key").is_dir());
        assert!(!job_dir(&dir, 8).exists(), "{done:?}");
        assert_eq!(done.len(), 1, "{done:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removing_a_missing_job_dir_is_fine() {
        assert!(remove(Path::new("/nonexistent/slipway-images/job-1")).is_empty());
    }
}
