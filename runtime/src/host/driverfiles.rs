//! Host driver files named by a list ([`super::liblist`]) resolved to what is bound where:
//! libraries through the loader's cache ([`super::ldcache`]) into one directory, programs from
//! the system `PATH` into `/usr/bin`, absolute paths at themselves.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ldcache::LdCache;
use super::liblist::{LibEntry, LibList, SYSTEM_PATH};

/// Where libraries go inside (Apptainer's place: images built by it expect them there).
pub const LIB_DIR: &str = "/.singularity.d/libs";

/// One file to bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriverFile {
    /// The host file (symlinks resolved: the real file is bound).
    pub source: PathBuf,
    /// Where it goes inside.
    pub dest: PathBuf,
    /// The list entry that asked for it (`nvliblist.conf:12`).
    pub rule: String,
}

/// An entry that matched nothing on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingFile {
    /// The entry as written.
    pub entry: String,
    /// Library, program or path.
    pub kind: &'static str,
    /// `nvliblist.conf:12`.
    pub rule: String,
}

/// A list resolved on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// What is bound, in list order (one file per container name).
    pub files: Vec<DriverFile>,
    /// Entries with no file here.
    pub missing: Vec<MissingFile>,
}

impl Resolved {
    /// Whether a library named `prefix*` was found (`libcuda.so`).
    pub fn has_library(&self, prefix: &str) -> bool {
        self.files.iter().any(|f| {
            f.dest.starts_with(LIB_DIR)
                && f.dest
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
    }
}

/// Resolves `list` with the loader's cache `cache` (`None`: no library is found).
pub fn resolve(list: &LibList, cache: Option<&LdCache>) -> Resolved {
    let mut out = Resolved::default();
    let mut seen = std::collections::BTreeSet::new();
    for (line, entry) in &list.entries {
        let rule = list.rule(*line);
        let mut push = |source: PathBuf, dest: PathBuf, out: &mut Resolved| {
            if seen.insert(dest.clone()) {
                out.files.push(DriverFile {
                    source,
                    dest,
                    rule: rule.clone(),
                });
            }
        };
        let missing = |kind, entry: &str, out: &mut Resolved| {
            out.missing.push(MissingFile {
                entry: entry.to_string(),
                kind,
                rule: list.rule(*line),
            })
        };
        match entry {
            LibEntry::Library(prefix) => {
                let found: Vec<_> = cache.map(|c| c.find_prefix(prefix)).unwrap_or_default();
                let mut any = false;
                for e in found {
                    if let Ok(real) = std::fs::canonicalize(&e.path) {
                        any = true;
                        push(real, Path::new(LIB_DIR).join(&e.name), &mut out);
                    }
                }
                if !any {
                    missing("library", prefix, &mut out);
                }
            }
            LibEntry::Binary(name) => {
                let found = SYSTEM_PATH
                    .iter()
                    .map(|d| Path::new(d).join(name))
                    .find(|p| is_executable(p))
                    .and_then(|p| std::fs::canonicalize(p).ok());
                match found {
                    Some(real) => push(real, Path::new("/usr/bin").join(name), &mut out),
                    None => missing("program", name, &mut out),
                }
            }
            LibEntry::Path(p) => {
                if std::fs::symlink_metadata(p).is_ok() {
                    match std::fs::canonicalize(p) {
                        Ok(real) => push(real, p.clone(), &mut out),
                        Err(_) => missing("path", &p.display().to_string(), &mut out),
                    }
                } else {
                    missing("path", &p.display().to_string(), &mut out)
                }
            }
        }
    }
    out
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
