//! Looking at files as the container user while staying root: the file-system uid and gid
//! (`setfsuid(2)`, `setfsgid(2)`, which also drop the capabilities that bypass permission
//! checks) and the supplementary groups (`setgroups(2)`). Root uses it for everything it reads
//! or opens on a user's behalf (the image, bind sources, the image's own files), so a user can
//! never have root read what they could not.

use super::ExecError;

/// While alive, file access from this thread is checked as `(uid, gid, groups)`; root's again
/// when dropped. The groups are process-wide: use it single-threaded (planning, the keeper),
/// or where other threads only read the image (the read-ahead helpers).
#[derive(Debug)]
pub struct FsIdentity {
    /// The groups before, restored on drop.
    saved: Vec<libc::gid_t>,
}

fn err(syscall: &'static str, what: String) -> ExecError {
    ExecError::Sys {
        syscall,
        path: what.into(),
        err: std::io::Error::last_os_error(),
    }
}

impl FsIdentity {
    /// Takes `(uid, gid, groups)` as this thread's file-system identity.
    pub fn enter(uid: u32, gid: u32, groups: &[u32]) -> Result<FsIdentity, ExecError> {
        // SAFETY: a zero size only asks for the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut saved = vec![0 as libc::gid_t; n.max(0) as usize];
        // SAFETY: `saved` has room for `n` groups.
        let n = unsafe { libc::getgroups(n, saved.as_mut_ptr()) };
        if n < 0 {
            return Err(err("getgroups", "self".into()));
        }
        saved.truncate(n as usize);
        // SAFETY: `groups` holds `groups.len()` gids.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
            return Err(err("setgroups", format!("uid {uid}")));
        }
        let guard = FsIdentity { saved };
        // SAFETY: plain credential calls. Neither reports failure, so ask for the values back
        // (an invalid id, -1, changes nothing and returns the current one).
        let ok = unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
            libc::setfsgid(u32::MAX) as u32 == gid && libc::setfsuid(u32::MAX) as u32 == uid
        };
        if !ok {
            return Err(ExecError::Sys {
                syscall: "setfsuid",
                path: format!("uid {uid} gid {gid}").into(),
                err: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        Ok(guard)
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; back to root's identity and groups.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
            libc::setgroups(self.saved.len(), self.saved.as_ptr());
        }
    }
}
