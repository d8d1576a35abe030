//! Ownership checks: may a root process trust what a file says (the policy file) or what a
//! file holds (an image the kernel is to mount)?
//!
//! The rule is OpenSSH's `StrictModes`: the file and every directory above it, up to `/`, must
//! be owned by root and writable by nobody else (no group or other write bit). Anyone who can
//! write a directory on the way can rename the file away and put their own in its place.
//! There is no exception for sticky directories such as `/tmp`: keep trusted files elsewhere.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a file or directory cannot be trusted.
#[derive(Debug)]
pub(crate) enum Untrusted {
    /// Its metadata could not be read.
    Io {
        /// The path.
        path: PathBuf,
        /// The error (with errno).
        source: std::io::Error,
    },
    /// It is owned by someone other than root, or writable by someone else.
    Insecure {
        /// The path.
        path: PathBuf,
        /// What is wrong ("owned by uid 1234, not root").
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Untrusted::Insecure { path, problem, .. } => {
                write!(f, "{} is {problem}", path.display())
            }
        }
    }
}

/// Checks one file or directory's owner and mode.
pub(crate) fn check_meta(path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
    let mode = meta.mode() & 0o7777;
    let insecure = |problem: String, fix: String| Untrusted::Insecure {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    if meta.uid() != 0 {
        return Err(insecure(
            format!("owned by uid {}, not root", meta.uid()),
            format!("chown root {}", path.display()),
        ));
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        (false, true) => "others",
        (false, false) => return Ok(()),
    };
    // chmod go-w on a sticky directory such as /tmp would break the system: say where not
    // to keep the file instead.
    let fix = if meta.is_dir() && mode & 0o1002 == 0o1002 {
        format!(
            "keep the file out of {}, which anyone can write to",
            path.display()
        )
    } else {
        format!("chmod go-w {}", path.display())
    };
    Err(insecure(
        format!("writable by {who} (mode {mode:04o})"),
        fix,
    ))
}

/// Checks every directory from `dir` up to `/`.
pub(crate) fn check_dirs_up(dir: &Path) -> Result<(), Untrusted> {
    for d in dir.ancestors() {
        if d.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::metadata(d).map_err(|source| Untrusted::Io {
            path: d.to_path_buf(),
            source,
        })?;
        check_meta(d, &meta)?;
    }
    Ok(())
}
