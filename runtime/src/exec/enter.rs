//! Entering a prepared container and becoming the user: the steps a caller takes piecemeal
//! ([`enter_namespace`], [`drop_identity`], [`apply_env`] or [`environ`], [`chdir`], [`exec`]),
//! and the two privilege locks the SPANK plugin also puts on its tasks
//! ([`drop_bounding_set`], [`set_no_new_privs`]).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{io_err, sys_err, ExecError, Prepared};
use crate::plan::{Mode, Plan};

/// Joins a prepared container's namespaces (user first, then mount), for a process that did
/// not prepare it (a Slurm task).
pub fn enter_namespace(p: &Prepared) -> Result<(), ExecError> {
    if let Some(u) = &p.user_ns {
        // SAFETY: setns with an owned namespace fd.
        if unsafe { libc::setns(u.as_raw_fd(), libc::CLONE_NEWUSER) } < 0 {
            return Err(sys_err("setns", "user namespace"));
        }
    }
    let Some(mnt) = &p.mnt_ns else {
        return Err(ExecError::MountPoint {
            dest: "/".into(),
            why: "prepared without namespace fds (prepare_for_exec): nothing to join".into(),
        });
    };
    // SAFETY: as above.
    if unsafe { libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
        return Err(sys_err("setns", "mount namespace"));
    }
    Ok(())
}

/// Becomes the container user for good: empty capability bounding set, the user's groups
/// (privileged mode), gid, uid, no capabilities, `no_new_privs`.
pub fn drop_identity(plan: &Plan) -> Result<(), ExecError> {
    let id = &plan.identity;
    drop_bounding_set()?;
    // SAFETY: credential calls with valid arguments.
    unsafe {
        if plan.mode == Mode::Privileged && libc::setgroups(id.groups.len(), id.groups.as_ptr()) < 0
        {
            return Err(sys_err("setgroups", &id.user));
        }
        if libc::setresgid(id.gid, id.gid, id.gid) < 0 {
            return Err(sys_err("setresgid", &id.user));
        }
        if libc::setresuid(id.uid, id.uid, id.uid) < 0 {
            return Err(sys_err("setresuid", &id.user));
        }
    }
    // capset(2) with version 3 and all sets empty.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs, as capset v3 takes.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) } < 0 {
        return Err(sys_err("capset", &id.user));
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    set_no_new_privs()
}

/// Empties the capability bounding set (needs `CAP_SETPCAP`; the capabilities the process
/// has now stay until it changes identity or execs): nothing executed later, setuid-root or
/// with file capabilities, can gain a capability.
pub fn drop_bounding_set() -> Result<(), ExecError> {
    // Every capability the kernel knows, up to the first it does not (EINVAL): no need to read
    // /proc/sys/kernel/cap_last_cap.
    for cap in 0..=255 as libc::c_ulong {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(sys_err("prctl(PR_CAPBSET_DROP)", format!("cap {cap}")));
        }
    }
    Ok(())
}

/// Sets `no_new_privs`: no `execve` from here on grants privileges (setuid, file
/// capabilities).
pub fn set_no_new_privs() -> Result<(), ExecError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(sys_err("prctl(PR_SET_NO_NEW_PRIVS)", "self"));
    }
    Ok(())
}

/// Replaces the process environment with `env` (for a caller that execs by itself).
pub fn apply_env(env: &BTreeMap<String, String>) {
    let old: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in old {
        std::env::remove_var(k);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
}

/// `K=V` strings for `execve`.
pub fn environ(env: &BTreeMap<String, String>) -> Vec<CString> {
    env.iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect()
}

/// Changes to the plan's working directory. A `--pwd` that does not exist is an error; a
/// derived one falls back to `/` (returned as a warning).
pub fn chdir(plan: &Plan) -> Result<Option<String>, ExecError> {
    let p = &plan.cwd.path;
    match std::env::set_current_dir(p) {
        Ok(()) => Ok(None),
        Err(e) if plan.cwd.rule != "--pwd" => {
            std::env::set_current_dir("/").map_err(|e| io_err("chdir", "/", e))?;
            Ok(Some(format!("cannot enter {}: {e}; using /", p.display())))
        }
        Err(e) => Err(io_err("chdir", p, e)),
    }
}

/// Executes the plan's command with `env` (searching the container's `PATH` for a bare
/// name). Returns only on failure.
pub fn exec(plan: &Plan, env: &BTreeMap<String, String>) -> ExecError {
    let envp = environ(env);
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let mut argv: Vec<CString> = plan
        .command
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    if let (Some(a0), Some(first)) = (&plan.argv0, argv.first_mut()) {
        if let Ok(c) = CString::new(a0.as_bytes()) {
            *first = c;
        }
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let cmd = &plan.command[0];
    let mut candidates: Vec<PathBuf> = if cmd.contains('/') {
        vec![PathBuf::from(cmd)]
    } else {
        env.get("PATH")
            .map(String::as_str)
            .unwrap_or(crate::plan::DEFAULT_PATH)
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(cmd))
            .collect()
    };
    if plan.shell_fallback {
        candidates.push("/bin/sh".into());
    }
    let mut err = std::io::Error::from_raw_os_error(libc::ENOENT);
    for c in candidates {
        let Ok(path) = CString::new(c.as_os_str().as_bytes()) else {
            continue;
        };
        if plan.shell_fallback && c == Path::new("/bin/sh") {
            // The fallback shell gets its own name as argv[0].
            argv_ptrs[0] = path.as_ptr();
        }
        // SAFETY: path, argv and envp are NUL-terminated arrays of valid C strings.
        unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        let e = std::io::Error::last_os_error();
        // Keep the most telling error (EACCES over ENOENT), as execvp does.
        if e.raw_os_error() != Some(libc::ENOENT) {
            err = e;
        }
    }
    ExecError::Exec {
        command: cmd.clone(),
        err,
    }
}
