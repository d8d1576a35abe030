//! Who the container runs as and where from: identity, groups, home, working directory and
//! environment of the calling process (or of the job's user, for the SPANK plugin).

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use serde::Serialize;

/// Errors from reading host facts.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A user id has no passwd entry.
    #[error("getpwuid({uid}): no such user")]
    NoUser {
        /// The uid looked up.
        uid: u32,
    },
    /// A system call failed.
    #[error("{syscall}: {err}")]
    Sys {
        /// The call.
        syscall: &'static str,
        /// The errno (in the message, not chained, so it is printed once).
        err: std::io::Error,
    },
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Login name.
    pub name: String,
    /// GECOS field.
    pub gecos: String,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInfo {
    /// gid.
    pub gid: u32,
    /// Name (the number when the host has no entry).
    pub name: String,
}

/// Everything the plan needs to know about the host side.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    /// Effective uid of the slipway process (0: privileged mode).
    pub euid: u32,
    /// The user the container runs as.
    pub user: UserInfo,
    /// The user's groups: primary first, then supplementary.
    pub groups: Vec<GroupInfo>,
    /// Working directory on the host.
    pub cwd: PathBuf,
    /// The host environment, in order.
    pub env: Vec<(String, String)>,
    /// GPUs and fabric devices ([`super::devices::gather`]; empty until gathered).
    pub devices: super::devices::Devices,
    /// The host's Slurm client ([`super::slurmclient::gather`]; `None` until gathered).
    pub slurm_client: Option<super::slurmclient::Client>,
}

impl HostFacts {
    /// Gathers the facts for the calling process. With `as_user` (root only, checked by the
    /// caller) the container user is that uid, with its groups from the group database, as the
    /// SPANK plugin does for the job's user.
    pub fn gather(as_user: Option<u32>) -> Result<HostFacts, HostError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        // SAFETY: getuid has no preconditions.
        let uid = as_user.unwrap_or(unsafe { libc::getuid() });
        let user = lookup_user(uid)?;
        let gids = if as_user.is_some() {
            grouplist(&user)?
        } else {
            own_groups(user.gid)?
        };
        let groups = gids
            .into_iter()
            .map(|gid| GroupInfo {
                gid,
                name: group_name(gid).unwrap_or_else(|| gid.to_string()),
            })
            .collect();
        let cwd = std::env::current_dir().map_err(|err| HostError::Sys {
            syscall: "getcwd",
            err,
        })?;
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Ok(HostFacts {
            euid,
            user,
            groups,
            cwd,
            env,
            devices: Default::default(),
            slurm_client: None,
        })
    }
}

/// Looks a user up by uid (NSS: files, LDAP, sssd as the host has them).
pub fn lookup_user(uid: u32) -> Result<UserInfo, HostError> {
    // A small buffer first (one page is plenty for a passwd entry), larger on ERANGE.
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd is plain old data; zeroed is a valid initial value.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the given sizes; getpwuid_r fills pw from buf.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf = vec![0u8; buf.len() * 4];
            continue;
        }
        if rc != 0 {
            return Err(HostError::Sys {
                syscall: "getpwuid_r",
                err: std::io::Error::from_raw_os_error(rc),
            });
        }
        if res.is_null() {
            return Err(HostError::NoUser { uid });
        }
        // SAFETY: on success the fields point into buf, NUL-terminated.
        let s =
            |p: *const libc::c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        return Ok(UserInfo {
            uid,
            gid: pw.pw_gid,
            name: s(pw.pw_name),
            gecos: s(pw.pw_gecos),
            home: PathBuf::from(s(pw.pw_dir)),
            shell: s(pw.pw_shell),
        });
    }
}

/// The name of group `gid` (NSS), if it has one.
pub fn group_name(gid: u32) -> Option<String> {
    // Group entries list their members and can be long: start at 4 KiB, grow on ERANGE.
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: group is plain old data.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid pointers and sizes.
        let rc =
            unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
        if rc == libc::ERANGE && buf.len() < 16 << 20 {
            buf = vec![0u8; buf.len() * 8];
            continue;
        }
        if rc != 0 || res.is_null() {
            return None;
        }
        // SAFETY: gr_name points into buf.
        return Some(
            unsafe { CStr::from_ptr(gr.gr_name) }
                .to_string_lossy()
                .into_owned(),
        );
    }
}

/// The calling process's groups, primary gid first.
fn own_groups(primary: u32) -> Result<Vec<u32>, HostError> {
    let err = || HostError::Sys {
        syscall: "getgroups",
        err: std::io::Error::last_os_error(),
    };
    // SAFETY: a zero size only asks for the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(err());
    }
    let mut list = vec![0 as libc::gid_t; n as usize];
    // SAFETY: list has room for the count given.
    let n = unsafe { libc::getgroups(n, list.as_mut_ptr()) };
    if n < 0 {
        return Err(err());
    }
    list.truncate(n as usize);
    Ok(order(primary, list))
}

/// A user's groups from the group database (what `initgroups` would set).
fn grouplist(user: &UserInfo) -> Result<Vec<u32>, HostError> {
    let name = CString::new(user.name.clone()).map_err(|_| HostError::NoUser { uid: user.uid })?;
    let mut n: libc::c_int = 256;
    loop {
        let mut list = vec![0 as libc::gid_t; n as usize];
        let cap = n;
        // SAFETY: list has room for n entries; n is updated with the real count.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), user.gid, list.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            list.truncate(n as usize);
            return Ok(order(user.gid, list));
        }
        if n <= cap {
            n = cap * 2;
        }
    }
}

fn order(primary: u32, list: Vec<u32>) -> Vec<u32> {
    let mut out = vec![primary];
    for g in list {
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}
