//! The files of the image a launch reads: `/etc/passwd` and `/etc/group` (merged with the
//! user's entries) and the environment scripts `/.singularity.d/env/*.sh`. Images are
//! untrusted and these reads run as root in privileged mode, so every read is resolved inside
//! the image and on its own mount, made with the user's file-system identity (the caller's
//! part), never blocks, and is bounded in size, count and what it reports.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use super::sys::{self, Sys, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};
use super::ExecError;
use crate::image::envfile::{self, EnvScript};
use crate::plan::{Plan, IMAGE_ENV_DIR};

/// The largest `/etc/passwd` or `/etc/group` read from an image (about 200,000 entries).
pub const MAX_IDENTITY_FILE: u64 = 16 * 1024 * 1024;

/// The largest image environment script read (larger ones are reported, not applied).
pub const MAX_ENV_SCRIPT: u64 = 1024 * 1024;

/// Reads `/etc/passwd` or `/etc/group` of the image (`img_fd`), resolving it inside the image.
/// `None` (with a warning) when it cannot be opened, e.g. not readable by the user in
/// unprivileged mode: the container's file then has only the user's entries. A file that is
/// not a regular one or is too long is an error: it is the image's fault, not the user's.
/// Bytes that are not UTF-8 (a Latin-1 GECOS field) are replaced.
fn read_image_file(
    img_fd: &OwnedFd,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, ExecError> {
    let rel = Path::new(path.trim_start_matches('/'));
    match sys::read_in(img_fd.as_fd(), rel, MAX_IDENTITY_FILE) {
        Ok(b) => Ok(b.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(e @ sys::Unreadable::Open(_)) | Err(e @ sys::Unreadable::Read(_)) => {
            warnings.push(format!(
                "image {path}: {e}; the container's {path} has only your entries"
            ));
            Ok(None)
        }
        Err(e) => Err(ExecError::ImageFile {
            path: path.into(),
            why: format!("{e} (the container's {path} is built from it: fix it in the image)"),
        }),
    }
}

/// The image's `/etc/passwd` and `/etc/group` with the user's entries (replacing any of the
/// same id or name).
pub(super) fn identity_files(
    sys: &dyn Sys,
    plan: &Plan,
    img_fd: &OwnedFd,
    warnings: &mut Vec<String>,
) -> Result<(String, String), ExecError> {
    let id = &plan.identity;
    let mut line: Vec<String> = id.passwd_line.split(':').map(String::from).collect();
    // A shell the image lacks would make login shells fail: use /bin/sh.
    if let Some(shell) = line.get(6) {
        // Resolved inside the image, as the kernel will when the shell is run.
        let exists = !shell.is_empty()
            && sys
                .open_in(
                    img_fd.as_fd(),
                    Path::new(shell.trim_start_matches('/')),
                    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
                )
                .is_ok();
        if !exists {
            line[6] = "/bin/sh".into();
        }
    }
    let ours = line.join(":");
    let merge = |base: Option<String>, add: &[String]| {
        let keys: BTreeSet<(String, String)> = add
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[0].to_string(), f.get(2).unwrap_or(&"").to_string())
            })
            .collect();
        let mut out = String::new();
        for l in base.unwrap_or_default().lines() {
            let f: Vec<&str> = l.split(':').collect();
            let clash = keys
                .iter()
                .any(|(n, i)| f.first() == Some(&n.as_str()) || f.get(2) == Some(&i.as_str()));
            if !clash && !l.trim().is_empty() {
                out.push_str(l);
                out.push('\n');
            }
        }
        for l in add {
            out.push_str(l);
            out.push('\n');
        }
        out
    };
    // Lines the image may lack (the host Slurm client's SlurmUser): added only where no entry
    // of the same name is there already.
    let fallback = |mut text: String, lines: &[String]| {
        for l in lines {
            let name = l.split(':').next().unwrap_or_default();
            if !text.lines().any(|t| t.split(':').next() == Some(name)) {
                text.push_str(l);
                text.push('\n');
            }
        }
        text
    };
    Ok((
        fallback(
            merge(read_image_file(img_fd, "/etc/passwd", warnings)?, &[ours]),
            &id.fallback_passwd,
        ),
        fallback(
            merge(
                read_image_file(img_fd, "/etc/group", warnings)?,
                &id.group_lines,
            ),
            &id.fallback_group,
        ),
    ))
}

/// The most environment scripts applied from one image (Apptainer's own images have about
/// ten); the others are reported in one line.
pub const MAX_ENV_SCRIPTS: usize = 128;

/// The most bytes of environment scripts read from one image, all scripts together.
pub const MAX_ENV_SCRIPTS_TOTAL: u64 = 4 * 1024 * 1024;

/// The most names of the environment directory looked at: past that the directory is not
/// read at all (a directory of millions of entries would cost time and memory as root).
pub const MAX_ENV_DIR_ENTRIES: usize = 4096;

/// The most lines of the image's unapplied environment reported (the rest are counted).
pub const MAX_WARNINGS: usize = 20;

/// Reads and parses `/.singularity.d/env/*.sh` of the image whose root is `image`, in name
/// order. The directory and each script are opened inside the image (`RESOLVE_IN_ROOT`: no
/// symlink leads out of it) and on its own mount (`RESOLVE_NO_XDEV`: nothing bound into the
/// container is ever read), without blocking; a script is read only if it is a regular file
/// of at most [`MAX_ENV_SCRIPT`] bytes of UTF-8 text, and at most [`MAX_ENV_SCRIPTS`] scripts
/// and [`MAX_ENV_SCRIPTS_TOTAL`] bytes are read in all. Anything else is reported as not
/// applied, with the reason. Call it with the user's file-system identity.
pub fn read_env_scripts(image: std::os::fd::BorrowedFd) -> Vec<EnvScript> {
    read_env_scripts_how(
        image,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | sys::RESOLVE_NO_XDEV,
    )
}

/// [`read_env_scripts`] for a process already in the container (a rank or task that joined
/// it) as the user: from the container's root `root`, where the image is a mount below the
/// root (so mounts are crossed), still never leaving the container.
pub fn read_env_scripts_in_container(root: std::os::fd::BorrowedFd) -> Vec<EnvScript> {
    read_env_scripts_how(root, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
}

fn read_env_scripts_how(image: std::os::fd::BorrowedFd, how: u64) -> Vec<EnvScript> {
    use std::os::unix::ffi::OsStrExt;
    let rel_dir = Path::new(IMAGE_ENV_DIR.trim_start_matches('/'));
    let Ok(dir) = sys::Linux.open_in(image, rel_dir, how) else {
        return Vec::new();
    };
    let Ok(mut list) = nix::dir::Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        if i >= MAX_ENV_DIR_ENTRIES {
            return vec![EnvScript::unreadable(
                IMAGE_ENV_DIR,
                &format!("more than {MAX_ENV_DIR_ENTRIES} entries: no script applied"),
            )];
        }
        let Ok(e) = e else { break };
        let n = std::ffi::OsStr::from_bytes(e.file_name().to_bytes());
        if Path::new(n).extension().is_some_and(|x| x == "sh") {
            names.push(n.to_os_string());
        }
    }
    names.sort();
    let mut out = Vec::new();
    let mut budget = MAX_ENV_SCRIPTS_TOTAL;
    for (i, n) in names.iter().enumerate() {
        let name = format!("{IMAGE_ENV_DIR}/{}", n.to_string_lossy());
        if i == MAX_ENV_SCRIPTS {
            out.push(EnvScript::unreadable(
                &name,
                &format!(
                    "this and {} more scripts not read (at most {MAX_ENV_SCRIPTS})",
                    names.len() - i - 1
                ),
            ));
            break;
        }
        let max = MAX_ENV_SCRIPT.min(budget);
        let script = match sys::read_in_how(image, &rel_dir.join(n), max, how) {
            Ok(Some(b)) => {
                budget -= b.len() as u64;
                match String::from_utf8(b) {
                    Ok(text) => envfile::parse_image_script(&name, &text),
                    Err(_) => EnvScript::unreadable(&name, "not UTF-8 text"),
                }
            }
            Ok(None) => EnvScript::unreadable(&name, "not found: a dangling symlink?"),
            Err(sys::Unreadable::TooLong(_)) if max < MAX_ENV_SCRIPT => EnvScript::unreadable(
                &name,
                &format!(
                    "not read: the image's scripts exceed {} MiB in all",
                    MAX_ENV_SCRIPTS_TOTAL >> 20
                ),
            ),
            Err(e) => EnvScript::unreadable(&name, &e.to_string()),
        };
        out.push(script);
    }
    out
}
