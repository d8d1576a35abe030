//! Path limits and shapes shared by the plan's steps: how deep or long a mount destination may
//! be, how a path is shown in a one-line message, `.` components removed.

use std::path::{Component, Path, PathBuf};

/// The most names a mount destination may have (`/a/b` has two). Making a missing mount point
/// replicates each existing directory on its way, and filling one holds an fd and a stack
/// frame per level: 1,500 levels exhaust the fds or the stack. Real destinations have a few.
pub const MAX_DEST_DEPTH: usize = 64;

/// The longest mount destination, in bytes: well under `PATH_MAX` (4096) below the staging
/// directory, where mount points are made.
pub const MAX_DEST_BYTES: usize = 1024;

/// Why `dest` (a container path, canonical or as given) is too deep or too long for a mount
/// destination ([`MAX_DEST_DEPTH`], [`MAX_DEST_BYTES`]); `None` when it is not.
pub fn dest_too_long(dest: &Path) -> Option<String> {
    let depth = dest
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .count();
    let bytes = dest.as_os_str().len();
    if depth > MAX_DEST_DEPTH {
        Some(format!(
            "destination is {depth} directories deep (at most {MAX_DEST_DEPTH})"
        ))
    } else if bytes > MAX_DEST_BYTES {
        Some(format!(
            "destination is {bytes} bytes long (at most {MAX_DEST_BYTES})"
        ))
    } else {
        None
    }
}

/// `p` for a one-line message: at most 100 characters (then `...`), control characters
/// escaped. Paths come from users and images, and can be 4096 bytes long.
pub fn shown(p: &Path) -> String {
    crate::image::envfile::printable(&p.to_string_lossy(), 100)
}

/// Removes `.` components and duplicate slashes (`..` is refused before this is called).
pub(super) fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}
