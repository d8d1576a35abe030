//! The job's directory and state: made by root at the job's start ([`begin`]), read by every
//! task, removed by root at the job's end ([`end`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exec::{creds::FsIdentity, loopdev};
use crate::host::lookup_user;
use crate::image::Image;
use crate::policy::{LoadedPolicy, User};

/// Where job directories live (root's, on a tmpfs: nothing survives a reboot).
pub const STATE_ROOT: &str = "/run/slipway/jobs";

/// Errors of the job container's set-up.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job id cannot name a directory.
    #[error(
        "job id {0:?}: expected letters, digits and . _ - [ ] (a PBS job id such as 123.server)"
    )]
    BadJobId(String),
    /// No `begin` ran for this job on this node.
    #[error(
        "job {0}: no container was set up for it on this node (execjob_begin did not run: is \
         the slipway hook enabled for execjob_begin? see docs/pbs.md)"
    )]
    NotBegun(String),
    /// The job's directory or state is not root's.
    #[error("{}: {why}: refusing to trust it", path.display())]
    Untrusted {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// What `begin` refused (the policy, the image), reported by every task.
    #[error("{0}")]
    Refused(String),
    /// A system call failed.
    #[error("{what} {}: {err}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// The container could not be built or joined.
    #[error("{0}")]
    Container(String),
    /// The lock (or the directory holding it) was removed while the task waited for it: the
    /// container's keeper left (a shared container, [`super::shared`]) or the job ended. For
    /// a shared container, taking the lock again from a fresh directory is the answer.
    #[error(
        "{}: removed while this task waited for it (the container's keeper left, or the job \
         ended)",
        .0.display()
    )]
    LockGone(PathBuf),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JobError + 'a {
    move |err| JobError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// What `begin` decided, in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The job id.
    pub job: String,
    /// The job's user.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// The image, as the job named it (absolute).
    pub image: PathBuf,
    /// Where the kernel mounted the image's squashfs (`<dir>/image`), when the policy trusts it.
    pub premounted: Option<PathBuf>,
    /// Why the job cannot run in its container, when `begin` refused.
    pub error: Option<String>,
}

/// A job's directory.
#[derive(Debug, Clone)]
pub struct JobDir {
    /// `<STATE_ROOT>/<job>`.
    pub path: PathBuf,
}

impl JobDir {
    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }
    /// The user's directory (the keeper's pid and lock).
    pub fn user_dir(&self) -> PathBuf {
        self.path.join("user")
    }
    /// Where the image is premounted.
    pub fn image_dir(&self) -> PathBuf {
        self.path.join("image")
    }

    /// Reads the state, after checking that root made it: the directory and the file are
    /// root's and writable by no one else (a user's own `state.json` would choose the mount).
    pub fn load_state(&self) -> Result<JobState, JobError> {
        let job = self
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dir_meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(JobError::NotBegun(job))
            }
            Err(e) => return Err(io("stat", &self.path)(e)),
        };
        trusted(&self.path, &dir_meta)?;
        let file = self.state_file();
        let f = File::open(&file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => JobError::NotBegun(job.clone()),
            _ => io("open", &file)(e),
        })?;
        let meta = f.metadata().map_err(io("stat", &file))?;
        trusted(&file, &meta)?;
        serde_json::from_reader(std::io::Read::take(f, 1 << 20)).map_err(|e| JobError::Untrusted {
            path: file.clone(),
            why: format!("unreadable ({e})"),
        })
    }
}

fn trusted(path: &Path, meta: &std::fs::Metadata) -> Result<(), JobError> {
    if meta.file_type().is_symlink() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(JobError::Untrusted {
            path: path.to_path_buf(),
            why: format!(
                "owned by uid {} with mode {:04o} (root's, writable by root alone, expected)",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// The directory of `job` (checked: a PBS job id, `123.server`, `45[7].server`).
pub fn job_dir(job: &str) -> Result<JobDir, JobError> {
    let ok = !job.is_empty()
        && job.len() <= 200
        && !job.starts_with('.')
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-[]".contains(&b));
    if !ok {
        return Err(JobError::BadJobId(job.to_string()));
    }
    Ok(JobDir {
        path: Path::new(STATE_ROOT).join(job),
    })
}

/// What `begin` is asked.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    /// The job id.
    pub job: String,
    /// The job's user name.
    pub user: String,
    /// The image (absolute).
    pub image: PathBuf,
    /// The policy file (`None`: the default path).
    pub policy: Option<PathBuf>,
}

/// Sets up the job's directory (root; see the module documentation). `Ok` with the state
/// written, whose `error` says what was refused; `Err` when nothing could be written.
pub fn begin(req: &BeginRequest) -> Result<JobState, JobError> {
    let dir = job_dir(&req.job)?;
    // A directory left by an earlier run of the same job id (a requeued job): start afresh.
    end(&req.job)?;
    let user = lookup_user_by_name(&req.user)?;
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o755);
    b.create(STATE_ROOT)
        .map_err(io("mkdir", Path::new(STATE_ROOT)))?;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&dir.path)
        .map_err(io("mkdir", &dir.path))?;
    let udir = dir.user_dir();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&udir)
        .map_err(io("mkdir", &udir))?;
    std::os::unix::fs::chown(&udir, Some(user.uid), Some(user.gid)).map_err(io("chown", &udir))?;
    let mut state = JobState {
        job: req.job.clone(),
        uid: user.uid,
        gid: user.gid,
        image: req.image.clone(),
        premounted: None,
        error: None,
    };
    match premount(req, &dir, &user) {
        Ok(p) => state.premounted = p,
        Err(e) => state.error = Some(e),
    }
    write_state(&dir, &state)?;
    Ok(state)
}

fn lookup_user_by_name(name: &str) -> Result<crate::host::UserInfo, JobError> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| JobError::Refused(format!("user {name:?}: no such user")))?;
    // SAFETY: getpwnam with a valid C string; the fields are copied at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(JobError::Refused(format!(
            "user {name:?}: no such user on this node"
        )));
    }
    // SAFETY: non-null result of getpwnam.
    let uid = unsafe { (*pw).pw_uid };
    lookup_user(uid).map_err(|e| JobError::Refused(e.to_string()))
}

/// Checks the image against the policy for the user and, when the policy trusts it, mounts
/// its squashfs at `<dir>/image`. `Err`: the refusal, one line.
fn premount(
    req: &BeginRequest,
    dir: &JobDir,
    user: &crate::host::UserInfo,
) -> Result<Option<PathBuf>, String> {
    let policy = LoadedPolicy::load(req.policy.as_deref(), true).map_err(|e| e.to_string())?;
    if !req.image.is_absolute() {
        return Err(format!(
            "image {}: not an absolute path",
            req.image.display()
        ));
    }
    let groups = [user.gid];
    let (image, file) = {
        // The user must be able to read their image: opened with their identity.
        let _as = FsIdentity::enter(user.uid, user.gid, &groups).map_err(|e| e.to_string())?;
        let image = Image::open(&req.image).map_err(|e| e.to_string())?;
        let file = match image.squashfs {
            Some(_) => Some(
                File::open(&req.image)
                    .map_err(|e| format!("image {}: {e}", req.image.display()))?,
            ),
            None => None,
        };
        (image, file)
    };
    let who = User {
        uid: user.uid,
        name: user.name.clone(),
    };
    policy.check_image(&image, &who).map_err(|r| r.message())?;
    let (Some(span), Some(file)) = (image.squashfs, file) else {
        return Ok(None); // a directory image: each container binds it
    };
    if !policy.kernel_mount(&image).allowed {
        return Ok(None); // squashfuse, as the user, in the keeper
    }
    let at = dir.image_dir();
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&at)
        .map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    let (dev, path) = match loopdev::find_shared(&file, span) {
        Some(shared) => shared,
        None => loopdev::attach(&file, &req.image, span).map_err(|e| e.to_string())?,
    };
    nix::mount::mount(
        Some(path.as_path()),
        &at,
        Some("squashfs"),
        nix::mount::MsFlags::MS_RDONLY
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mount {} on {}: {e}", req.image.display(), at.display()))?;
    // The mount holds the loop device now; autoclear frees it when the mount goes.
    drop(dev);
    Ok(Some(at))
}

fn write_state(dir: &JobDir, state: &JobState) -> Result<(), JobError> {
    let tmp = dir.path.join("state.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let text = serde_json::to_string_pretty(state).expect("plain data");
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, dir.state_file()).map_err(io("rename", &tmp))
}

/// Removes everything of `job` on this node (root): the keeper and what it started, the
/// premounted image, the directory. Nothing to do is fine.
pub fn end(job: &str) -> Result<(), JobError> {
    let dir = job_dir(job)?;
    if std::fs::symlink_metadata(&dir.path).is_err() {
        return Ok(());
    }
    let state = dir.load_state().ok();
    if let Some(pid) =
        super::keeper::recorded_keeper(&dir.user_dir(), state.as_ref().map(|s| s.uid))
    {
        // The keeper leads its own session and process group (squashfuse included).
        // SAFETY: kill with a checked pid.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
        // Gone (or a zombie for init to reap) before its mounts are taken away: at most 5 s.
        let stat = Path::new("/proc").join(pid.to_string()).join("stat");
        for _ in 0..500 {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            if s.is_empty() || s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let image = dir.image_dir();
    // Unmounted whatever state says (a crash between mount and write leaves no state).
    let _ = nix::mount::umount2(&image, nix::mount::MntFlags::MNT_DETACH);
    // The state first: a keeper that outlived the kill sees it gone and leaves.
    let _ = std::fs::remove_file(dir.state_file());
    std::fs::remove_dir_all(&dir.path).map_err(io("remove", &dir.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        for ok in ["123.server", "45[7].pbs-1.example.org", "job_1"] {
            assert!(job_dir(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "a\nb"] {
            let e = job_dir(bad).unwrap_err().to_string();
            assert!(e.starts_with("job id"), "{e}");
        }
    }
}
