//! What the image's shell gave, kept for the other processes that enter the same container:
//! the ranks of one job on one node (`slipway exec` sharing a container, PBS tasks) run the
//! same scripts with the same inputs in the same container, so the first one's result serves
//! the rest, as the SPANK plugin's keeper evaluates once per node and step. Never across
//! containers: the memo lives in the job's own private directory (the user's, 0700, checked
//! by its caller) and its name is a digest of everything the shell is given (the action
//! script with the injections, its starting environment, the identity, the working
//! directory); a file that is not the user's own regular file, or does not parse, is ignored.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::plan::Plan;

/// The most a memo file may hold (the environment is bounded to 4 MiB anyway).
const MAX_MEMO: u64 = 8 << 20;

/// A directory for memos, opened before the caller enters the container (its host path is
/// not visible from inside).
#[derive(Debug)]
pub struct Memo {
    dir: OwnedFd,
}

impl Memo {
    /// Opens `dir` (which must exist: the job's private directory).
    pub fn open(dir: &Path) -> std::io::Result<Memo> {
        let c = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated path; the fd is ours.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Memo {
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The memo's file name for this launch's shell run of `script`.
    pub fn name(plan: &Plan, script: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            script.as_bytes(),
            &serde_json::to_vec(&plan.script_start_env()).unwrap_or_default(),
            &serde_json::to_vec(&(
                plan.identity.uid,
                plan.identity.gid,
                &plan.identity.groups,
                &plan.cwd.path,
            ))
            .unwrap_or_default(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let d = h.finalize();
        let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("env-{hex}.json")
    }

    fn openat(&self, name: &str, flags: i32, mode: libc::mode_t) -> Option<std::fs::File> {
        let c = CString::new(name).ok()?;
        // SAFETY: a NUL-terminated name relative to our directory fd.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode,
            )
        };
        // SAFETY: a fresh fd we own.
        (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) })
    }

    /// The shell's `export -p` recorded under `name`, if any (the user's own regular file).
    pub fn get(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let mut f = self.openat(name, libc::O_RDONLY, 0)?;
        let m = f.metadata().ok()?;
        // Owner and caller as seen from the same (user) namespace.
        // SAFETY: geteuid has no preconditions.
        if !m.is_file() || m.uid() != unsafe { libc::geteuid() } || m.len() > MAX_MEMO {
            return None;
        }
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records `env` under `name` (written aside, then renamed: a reader sees all or nothing).
    /// Failing to record is not an error: the next process runs the shell itself.
    pub fn put(&self, name: &str, env: &BTreeMap<String, String>) {
        let Ok(text) = serde_json::to_vec(env) else {
            return;
        };
        // SAFETY: getpid has no preconditions.
        let tmp = format!(".{name}.{}", unsafe { libc::getpid() });
        let Some(mut f) = self.openat(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
        else {
            return;
        };
        let ok = f.write_all(&text).is_ok();
        drop(f);
        let (Ok(from), Ok(to)) = (CString::new(tmp), CString::new(name)) else {
            return;
        };
        let d = self.dir.as_raw_fd();
        // SAFETY: NUL-terminated names relative to our directory fd.
        unsafe {
            if !ok || libc::renameat(d, from.as_ptr(), d, to.as_ptr()) < 0 {
                libc::unlinkat(d, from.as_ptr(), 0);
            }
        }
    }
}
