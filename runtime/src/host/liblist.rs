//! Driver file lists in Apptainer's `nvliblist.conf` format, so that sites reuse theirs.
//!
//! One entry per line, `#` starts a comment. A name containing `.so` is a library prefix
//! (`libcuda.so` matches `libcuda.so.1` and `libcuda.so` in the loader's cache); an absolute
//! path is a file bound at the same path; anything else is a program looked up on the host's
//! system `PATH` and bound at `/usr/bin/NAME` (as Apptainer does).

use super::ConfigError;
use std::path::{Path, PathBuf};

/// The most entries a list may hold (Apptainer's own has about 50).
pub const MAX_ENTRIES: usize = 4096;

/// What one entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibEntry {
    /// A library prefix, resolved through the loader's cache.
    Library(String),
    /// A program, looked up on the system `PATH`.
    Binary(String),
    /// A host file or directory, bound at the same path.
    Path(PathBuf),
}

/// A parsed list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LibList {
    /// Where it came from.
    pub path: PathBuf,
    /// Entries with their line numbers, in file order.
    pub entries: Vec<(usize, LibEntry)>,
}

impl LibList {
    /// Reads ([`super::read_config`]) and parses `path`.
    pub fn load(path: &Path) -> Result<LibList, ConfigError> {
        let text = super::read_config(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        LibList::parse(&text, path)
    }

    /// Parses list text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<LibList, ConfigError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |why: String| ConfigError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            if line.split_whitespace().count() > 1 {
                return Err(err(format!(
                    "{line:?}: one name per line (a library prefix such as libcuda.so, a \
                     program such as nvidia-smi, or an absolute path)"
                )));
            }
            if entries.len() >= MAX_ENTRIES {
                return Err(err(format!("more than {MAX_ENTRIES} entries")));
            }
            let entry = if line.starts_with('/') {
                if line.split('/').any(|c| c == "..") {
                    return Err(err(format!("{line:?}: a path must not contain `..`")));
                }
                LibEntry::Path(PathBuf::from(line))
            } else if line.contains('/') {
                return Err(err(format!(
                    "{line:?}: a relative path; write a program name (looked up on the \
                     system PATH) or an absolute path"
                )));
            } else if line.contains(".so") {
                LibEntry::Library(line.to_string())
            } else {
                LibEntry::Binary(line.to_string())
            };
            entries.push((i + 1, entry));
        }
        Ok(LibList {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// `path:line`, for `explain`.
    pub fn rule(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }
}

/// The system `PATH` programs are looked up on: fixed, never the caller's (a root-run slipway
/// must not bind what a user's `PATH` points at).
pub const SYSTEM_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apptainer_format() {
        let text = "# binaries\nnvidia-smi\nnvidia-persistenced  # daemon\n\n# libs\n\
                    libcuda.so\nlibnvidia-ml.so\n/etc/vulkan/icd.d/nvidia_icd.json\n";
        let l = LibList::parse(text, Path::new("nvliblist.conf")).unwrap();
        assert_eq!(
            l.entries,
            [
                (2, LibEntry::Binary("nvidia-smi".into())),
                (3, LibEntry::Binary("nvidia-persistenced".into())),
                (6, LibEntry::Library("libcuda.so".into())),
                (7, LibEntry::Library("libnvidia-ml.so".into())),
                (
                    8,
                    LibEntry::Path("/etc/vulkan/icd.d/nvidia_icd.json".into())
                ),
            ]
        );
        assert_eq!(l.rule(6), "nvliblist.conf:6");
    }

    #[test]
    fn bad_lines_name_file_line_and_fix() {
        for (text, want) in [
            (
                "libcuda.so libnvidia-ml.so\n",
                "nvliblist.conf:1: \"libcuda.so libnvidia",
            ),
            (
                "\nbin/nvidia-smi\n",
                "nvliblist.conf:2: \"bin/nvidia-smi\": a relative path",
            ),
            (
                "/usr/../etc/shadow\n",
                "nvliblist.conf:1: \"/usr/../etc/shadow\": a path must",
            ),
        ] {
            let e = LibList::parse(text, Path::new("nvliblist.conf"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn the_shipped_default_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/nvliblist.conf");
        let l = LibList::load(&p).unwrap();
        assert!(l
            .entries
            .iter()
            .any(|(_, e)| *e == LibEntry::Library("libcuda.so".into())));
        assert!(l
            .entries
            .iter()
            .any(|(_, e)| *e == LibEntry::Binary("nvidia-smi".into())));
    }
}
